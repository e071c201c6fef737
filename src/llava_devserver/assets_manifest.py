"""Server-side helper of the llava_assets role: fingerprints, the manifest, free space, hub downloads.

Standalone on purpose (Python 3 standard library only, like assets_verify.py beside which the role copies it):

    python3 assets_manifest.py status  --manifest M --name NAME --path P [--hash-small N] [--expect DIGEST]
                                       [--source SERVER_PATH] [--root WORK_DIR]
    python3 assets_manifest.py verify  --manifest M --name NAME --kind KIND --path P [--image-root R]
                                       [--sample N] [--hash-small N] [--source-digest DIGEST]
                                       [--root WORK_DIR]
    python3 assets_manifest.py mark    --manifest M --name NAME --path P --error MESSAGE [--root WORK_DIR]
    python3 assets_manifest.py space   --path P --bytes N [--present N] [--margin N] [--root WORK_DIR]
    python3 assets_manifest.py hub-download --repo-id ID --revision REV --repo-type T --dest P [--file NAME]
                                            [--token-stdin] --owner UID:GID
    python3 assets_manifest.py fingerprint P [--hash-small N] [--root WORK_DIR]
    python3 assets_manifest.py batch '[{"op": "status", "manifest": ..., "name": ..., "path": ...}, ...]'

`batch` runs several of status/verify/mark/space (keyword arguments as below) in one process: the role
checks all assets of a server in one SSH round trip.

Each prints one JSON object. `verify` exits 1 when the asset is not sound, `hub-download` 1 when the
download fails (with huggingface_hub where the server has it, else with hub_fetch.py, the standard
library's client of the same HTTP interface); the others exit 0 (2 on a usage error).

The fingerprint of a file or directory is cheap on purpose: every file's relative path, size and mtime
(whole seconds, which rsync -a and synchronize preserve) and, for files up to `--hash-small` bytes (configs,
tokenizers, shard indexes), their SHA-256. Large shards and the images are not re-read on a re-run: the
manifest records the fingerprint an asset had when it was verified, and `status` calls it verified only
while the fingerprint is unchanged (and equal to the source's, when the role gives one).

Root reads what the training container's user owns (everything below work_dir, `--root`/`root`, the one
trusted path), who may replace any file or folder there with a symbolic link or a FIFO at any moment:
every component below ROOT is opened without following a link, every file read through one no-follow
descriptor of a regular file (assets_verify.Tree, on assets_archive.open_below / open_file_at). An asset
that is a link, lies below one, or holds a link (or a FIFO, socket, device) anywhere inside is not
verified: `status` calls it stale and `verify` records it as failed, each naming the link (its path, never
what it points to), and nothing is read through it (real assets hold no links: huggingface_hub's local_dir
downloads and rsync -a copies of real files are real files). Without ROOT, or for a path outside it (a
source on the server's own storage, the control node's), the path itself is the admin's and followed,
nothing inside it is. The fingerprint of an asset without links is the same as before this rule.

The manifest (`{host_state_dir}/assets-manifest.json`, host_state_dir being llava.host_state_dir, the
root-only folder outside work_dir that the training container cannot reach) is honest: `verify` writes the
outcome, good or bad, with the errors; `mark` records an asset that could not be staged (e.g. not enough
space) as not verified. Writes are atomic (a fresh 0600 temporary file + rename).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from typing import Any

try:  # in the package
    from llava_devserver import as_owner, assets_archive, assets_verify, hub_fetch
except (
    ImportError
):  # copied to a server beside assets_verify.py, assets_archive.py, as_owner.py, hub_fetch.py
    import as_owner  # type: ignore[no-redef]
    import assets_archive  # type: ignore[no-redef]
    import assets_verify  # type: ignore[no-redef]
    import hub_fetch  # type: ignore[no-redef]

MANIFEST_VERSION = 1
KINDS = ("llm", "vision_tower", "pretrain_json", "images")

# What `hub-download` runs: huggingface_hub (or hub_fetch) reads HF_ENDPOINT and the proxy from the
# environment; the token, when there is one, comes on stdin (--token-stdin) and is handed over as an
# argument, never through argv or the environment of a command line.
_HUB_SCRIPT_DOC = (
    "snapshot_download(repo_id, revision=, repo_type=, local_dir=) or hf_hub_download(filename=); "
    "without huggingface_hub, the same from the hub's HTTP interface (hub_fetch.py)"
)


# --- fingerprints ---------------------------------------------------------------------------------------


def scan(path: str, hash_small: int = 0, root: str | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """(fingerprint of PATH, why it cannot be trusted): the fingerprint is None when nothing is at PATH or
    PATH (or a folder on the way below ROOT) is a link; the problems name every link, FIFO, socket or
    device at PATH or inside it, none of which is followed or read."""
    with assets_verify.Tree(path, root) as tree:
        try:
            top = tree.lstat(path)
        except assets_verify.Refused as exc:
            return None, [str(exc)]
        if top is None:
            return None, []
        problem = assets_verify.entry_problem(path, top)
        if problem and not stat.S_ISDIR(top.st_mode):
            return None, [problem]
        try:
            if stat.S_ISDIR(top.st_mode):
                return _fingerprint_dir(tree, path, hash_small)
            line = f"\t{top.st_size}\t{int(top.st_mtime)}"
            if 0 < top.st_size <= hash_small:
                line += "\t" + _sha256(tree.open_file(path))
        except assets_verify.Refused as exc:  # swapped for a link (or FIFO) since it was looked at
            return None, [str(exc)]
        except FileNotFoundError:  # gone since
            return None, []
        digest = hashlib.sha256(b"file\n")
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
        return {"files": 1, "bytes": top.st_size, "digest": digest.hexdigest()}, []


def _fingerprint_dir(
    tree: assets_verify.Tree, path: str, hash_small: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """Every file's line in os.walk order (sorted), the names an archive of the folder unpacked (and its
    marker) left out at the top; a link counts as a broken file (`-1`), never followed."""
    problems: list[str] = []
    digest = hashlib.sha256(b"dir\n")
    files = total = 0
    folder_fd = tree.open_dir(path)
    try:
        unpacked = assets_archive.unpacked_entries(folder_fd)  # the marker read on the folder's descriptor
    finally:
        os.close(folder_fd)
    for relative, dir_fd, name, info in tree.walk(path, skip=unpacked, problems=problems):
        shown = os.path.join(path, relative)
        problem = assets_verify.entry_problem(shown, info)
        if stat.S_ISLNK(info.st_mode):
            problems.append(str(problem))
            digest.update(f"{relative}\t-1\t0\n".encode("utf-8", "surrogateescape"))
            files += 1
            continue
        if problem:
            problems.append(problem)
        line = f"{relative}\t{info.st_size}\t{int(info.st_mtime)}"
        if problem is None and 0 < info.st_size <= hash_small:
            try:
                line += "\t" + _sha256(assets_archive.open_file_at(dir_fd, name, shown))
            except (assets_archive.ArchiveError, OSError) as exc:
                problems.append(str(exc))
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
        files += 1
        total += info.st_size
    return {"files": files, "bytes": total, "digest": digest.hexdigest()}, problems


def _sha256(fd: int) -> str:
    """SHA-256 of the open file FD (closed afterwards)."""
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str, hash_small: int = 0, root: str | None = None) -> dict[str, Any] | None:
    """`{"files", "bytes", "digest"}` of a file or directory, None when it does not exist (or cannot be
    reached without following a link below ROOT)."""
    return scan(path, hash_small, root)[0]


def _not_verified(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"not verified: {problems[0]}{more}"


# --- the manifest ---------------------------------------------------------------------------------------


def read_manifest(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {"version": MANIFEST_VERSION, "assets": {}}
    if not isinstance(data, dict) or not isinstance(data.get("assets"), dict):
        return {"version": MANIFEST_VERSION, "assets": {}}
    return data


def write_entry(manifest_path: str, name: str, entry: dict[str, Any]) -> None:
    manifest = read_manifest(manifest_path)
    manifest["version"] = MANIFEST_VERSION
    manifest["assets"][name] = entry
    directory = os.path.dirname(manifest_path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)  # root's own folder (the role creates it 0700)
    tmp = f"{manifest_path}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, manifest_path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status(
    manifest: str,
    name: str,
    path: str,
    hash_small: int = 0,
    expect: str | None = None,
    source: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Read-only: `state` is `verified` (manifest entry ok for exactly this fingerprint, and the source's
    when `expect` is given), `missing` (nothing at `path`) or `stale` (anything else, with a `reason`; a
    link at, above or inside the asset is named there). `source`: a path on this server the asset is
    copied from (its fingerprint is then `expect`). ROOT: work_dir, below which no link is followed."""
    current, problems = scan(path, hash_small, root)
    result: dict[str, Any] = {"name": name, "path": path, "fingerprint": current}
    if source is not None and os.path.normpath(source) != os.path.normpath(path):
        source_fp = fingerprint(source, hash_small, root)
        result["source_fingerprint"] = source_fp
        if source_fp is None:
            return {**result, "state": "no-source", "reason": f"{source} does not exist on this server"}
        expect = source_fp["digest"]
    entry = read_manifest(manifest)["assets"].get(name)
    if problems:
        return {**result, "state": "stale", "reason": _not_verified(problems)}
    if current is None:
        return {**result, "state": "missing", "reason": f"{path} does not exist"}
    if expect is not None and current["digest"] != expect:
        return {**result, "state": "stale", "reason": "differs from the source"}
    if not isinstance(entry, dict):
        return {**result, "state": "stale", "reason": "not in the manifest"}
    if entry.get("path") != path or (entry.get("fingerprint") or {}).get("digest") != current["digest"]:
        return {**result, "state": "stale", "reason": "changed since it was verified"}
    if not entry.get("ok"):
        return {**result, "state": "stale", "reason": "its last verification failed"}
    return {**result, "state": "verified", "reason": f"verified {entry.get('verified_at')}"}


def verify(
    manifest: str,
    name: str,
    kind: str,
    path: str,
    image_root: str | None = None,
    sample: int | None = 256,
    hash_small: int = 0,
    source_digest: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Verify the asset with assets_verify and record the outcome (good or bad) in the manifest. An asset
    with a link at, above (below ROOT) or inside it is not read at all: it fails, the links named."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r} ({', '.join(KINDS)})")
    current, problems = scan(path, hash_small, root)
    if problems:
        result: dict[str, Any] = {"ok": False, "errors": list(problems), "details": {}}
    elif kind in ("llm", "vision_tower"):
        result = assets_verify.verify_weights(path, kind=kind, root=root).to_dict()
    elif kind == "pretrain_json":
        result = assets_verify.verify_pretrain_json(path, image_root, sample=sample, root=root).to_dict()
    else:
        result = _verify_image_folder(path, root)
    if source_digest is not None and current is not None and current["digest"] != source_digest:
        result["errors"].append(f"{path}: differs from its source after the transfer")
        result["ok"] = False
    entry = {
        "ok": bool(result["ok"]),
        "kind": kind,
        "path": path,
        "fingerprint": current,
        "source_digest": source_digest,
        "verified_at": _now(),
        "errors": result["errors"],
        "details": result.get("details", {}),
    }
    write_entry(manifest, name, entry)
    return {"name": name, **entry}


def _verify_image_folder(path: str, root: str | None = None) -> dict[str, Any]:
    """The images themselves are checked through the pretrain JSON's sample; here: a non-empty folder
    (every file counted, no link followed)."""
    errors: list[str] = []
    count = 0
    with assets_verify.Tree(path, root) as tree:
        try:
            top = tree.lstat(path)
        except assets_verify.Refused as exc:
            top, errors = None, [str(exc)]
        if top is None or not stat.S_ISDIR(top.st_mode):
            errors = errors or [f"{path}: image folder missing"]
        else:
            count = sum(1 for _entry in tree.walk(path, problems=errors))
            if count == 0 and not errors:
                errors.append(f"{path}: image folder is empty")
    return {"ok": not errors, "path": path, "kind": "images", "errors": errors, "details": {"files": count}}


def mark(manifest: str, name: str, path: str, error: str, root: str | None = None) -> dict[str, Any]:
    """Record that the asset is NOT verified (it could not be staged), so no reader trusts an old entry."""
    entry = {
        "ok": False,
        "path": path,
        "fingerprint": fingerprint(path, 0, root),
        "verified_at": _now(),
        "errors": [error],
        "details": {},
    }
    write_entry(manifest, name, entry)
    return {"name": name, **entry}


# --- free space -----------------------------------------------------------------------------------------


def space(
    path: str,
    need_bytes: int,
    present: int = 0,
    margin: int = 0,
    name: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Whether the file system that will hold `path` has room for `need_bytes` (less what is already
    there, plus `margin`). Checked at the nearest existing ancestor; below ROOT on a descriptor of that
    folder opened without following a link (fstatvfs: a link there is refused, a FIFO never opened)."""
    need = max(0, need_bytes - present) + margin
    result: dict[str, Any] = {"name": name, "path": path, "need": need}
    try:
        checked, free = _free_space(path, root)
    except assets_verify.Refused as exc:
        error = f"{exc} (the free space is not checked through it)"
        return {**result, "checked": None, "avail": 0, "ok": False, "errors": [error]}
    avail = free.f_bavail * free.f_frsize
    return {**result, "checked": checked, "avail": avail, "ok": avail >= need}


def _free_space(path: str, root: str | None) -> tuple[str, Any]:
    """(the nearest existing ancestor-or-self of PATH, its statvfs)."""
    with assets_verify.Tree(path, root) as tree:
        if not tree.trusted_path:
            checked = os.path.abspath(path)
            while checked != tree.root:
                info = tree.lstat(checked)
                if info is not None:
                    problem = assets_verify.entry_problem(checked, info)
                    if stat.S_ISDIR(info.st_mode):
                        return checked, _fstatvfs(tree.open_dir(checked))
                    if stat.S_ISLNK(info.st_mode) or checked != os.path.abspath(path):
                        raise assets_verify.Refused(problem or f"{checked} is not a directory: refused")
                    return checked, _fstatvfs(tree.open_dir(os.path.dirname(checked)))  # a file asset
                checked = os.path.dirname(checked)
            path = str(tree.root)  # the admin's: missing itself, its nearest existing parent counts
    checked = path
    while not os.path.exists(checked):
        parent = os.path.dirname(checked)
        if parent == checked:
            break
        checked = parent
    return checked, os.statvfs(checked)


def _fstatvfs(fd: int) -> Any:
    try:
        return os.fstatvfs(fd)
    finally:
        os.close(fd)


# --- Hugging Face downloads -----------------------------------------------------------------------------


def read_token(stream: Any) -> str | None:
    """The hub token from the first line of `stream` (the role's stdin); None when it is empty."""
    token = (stream.readline() or "").strip()
    return token or None


def hub_download(
    repo_id: str,
    revision: str,
    repo_type: str,
    dest: str,
    filename: str | None,
    token: str | None = None,
) -> dict[str, Any]:
    """Download with huggingface_hub, or without it with hub_fetch (HF_ENDPOINT and the proxy from the
    environment, `token` as given), into `dest` (a directory, or with `filename` the file `dest`)."""
    auth = {"token": token} if token else {}
    try:
        import huggingface_hub
    except ImportError:
        huggingface_hub = None
    try:
        if huggingface_hub is None:
            got = hub_fetch.download(repo_id, revision, repo_type, dest, filename, token)
            return {"ok": True, "code": 0, "path": dest, "client": "hub_fetch", **got}
        if filename:
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            got = huggingface_hub.hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                repo_type=repo_type,
                local_dir=os.path.dirname(dest) or ".",
                **auth,
            )
            if os.path.abspath(got) != os.path.abspath(dest):
                os.replace(got, dest)
        else:
            os.makedirs(dest, exist_ok=True)
            huggingface_hub.snapshot_download(
                repo_id=repo_id, revision=revision, repo_type=repo_type, local_dir=dest, **auth
            )
    except Exception as error:  # any hub/network error, reported with the repo and endpoint
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return {"ok": False, "code": 1, "error": f"{repo_type} {repo_id}@{revision} from {endpoint}: {error}"}
    return {"ok": True, "code": 0, "path": dest, "client": "huggingface_hub"}


def hub_download_as(owner: str, download: Any) -> dict[str, Any]:
    """Run `download()` as OWNER (UID:GID), the owner of the container's tree the files land in: root never
    writes there (a folder swapped for a link would lead it anywhere). huggingface_hub gets a private HOME
    and HF_HOME of the owner's for its cache and locks (root's home is closed to it), removed afterwards.
    The drop is for good: this process prints its result and ends."""
    try:
        uid, gid = as_owner.parse_owner(owner)
    except as_owner.Refused as error:
        return {"ok": False, "code": 2, "error": str(error)}
    home = tempfile.mkdtemp(prefix="llava-devserver-hub-")
    saved = {name: os.environ.get(name) for name in ("HOME", "HF_HOME")}
    try:
        os.chown(home, uid, gid)
        os.environ.update(HOME=home, HF_HOME=os.path.join(home, "huggingface"))
        with contextlib.suppress(ImportError):  # loaded while root: root's Python may be closed to the owner
            import huggingface_hub  # noqa: F401
        as_owner.drop_to(uid, gid)
        return dict(download())
    except (as_owner.Refused, OSError) as error:
        return {"ok": False, "code": 1, "error": f"cannot download as {owner}: {error}"}
    finally:
        shutil.rmtree(home, ignore_errors=True)
        for name, value in saved.items():  # (for callers in the same process, such as the tests)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- several operations in one process (one SSH round trip for all assets) -----------------------------

_OPERATIONS: dict[str, Any] = {}


def batch(operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `[{"op": "status"|"verify"|"mark"|"space", ...keyword arguments}]` in order; one result each
    (an operation that raises gives `{"ok": false, "errors": [...]}` and the others still run)."""
    results = []
    for operation in operations:
        kwargs = dict(operation)
        name = kwargs.pop("op")
        try:
            results.append(_OPERATIONS[name](**kwargs))
        except Exception as error:  # reported per operation, named
            problem = f"{name}: {error}"
            results.append({"name": kwargs.get("name"), "ok": False, "state": "error", "errors": [problem]})
    return results


_OPERATIONS.update(status=status, verify=verify, mark=mark, space=space)


# --- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assets_manifest.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--manifest", required=True)
        sub.add_argument("--name", required=True)
        sub.add_argument("--path", required=True)

    p_status = commands.add_parser("status")
    common(p_status)
    p_status.add_argument("--hash-small", type=int, default=0)
    p_status.add_argument("--expect")
    p_status.add_argument("--source")
    p_verify = commands.add_parser("verify")
    common(p_verify)
    p_verify.add_argument("--kind", choices=KINDS, required=True)
    p_verify.add_argument("--image-root")
    p_verify.add_argument("--sample", type=int, default=256, help="records whose image is checked; 0 = all")
    p_verify.add_argument("--hash-small", type=int, default=0)
    p_verify.add_argument("--source-digest")
    p_mark = commands.add_parser("mark")
    common(p_mark)
    p_mark.add_argument("--error", required=True)
    p_space = commands.add_parser("space")
    p_space.add_argument("--path", required=True)
    p_space.add_argument("--bytes", type=int, required=True)
    p_space.add_argument("--present", type=int, default=0)
    p_space.add_argument("--margin", type=int, default=0)
    p_hub = commands.add_parser("hub-download", help=_HUB_SCRIPT_DOC)
    p_hub.add_argument("--repo-id", required=True)
    p_hub.add_argument("--revision", default="main")
    p_hub.add_argument("--repo-type", choices=("model", "dataset"), default="model")
    p_hub.add_argument("--dest", required=True)
    p_hub.add_argument("--file")
    p_hub.add_argument("--token-stdin", action="store_true", help="read the hub token from stdin")
    p_hub.add_argument("--owner", required=True, help="UID:GID the download writes as (the tree's owner)")
    p_batch = commands.add_parser("batch", help="a JSON list of operations (status, verify, mark, space)")
    p_batch.add_argument("operations")
    p_fp = commands.add_parser("fingerprint")
    p_fp.add_argument("path")
    p_fp.add_argument("--hash-small", type=int, default=0)
    for sub in (p_status, p_verify, p_mark, p_space, p_fp):
        sub.add_argument("--root", help="the folder below which no link is followed (work_dir)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 2 if exit_.code else 0

    code = 0
    if args.command == "batch":
        print(json.dumps(batch(json.loads(args.operations)), sort_keys=True))
        return 0
    if args.command == "status":
        out = status(
            args.manifest, args.name, args.path, args.hash_small, args.expect, args.source, root=args.root
        )
    elif args.command == "verify":
        out = verify(
            args.manifest, args.name, args.kind, args.path, args.image_root,
            sample=args.sample or None, hash_small=args.hash_small, source_digest=args.source_digest,
            root=args.root,
        )  # fmt: skip
        code = 0 if out["ok"] else 1
    elif args.command == "mark":
        out = mark(args.manifest, args.name, args.path, args.error, root=args.root)
    elif args.command == "space":
        out = space(args.path, args.bytes, args.present, args.margin, root=args.root)
    elif args.command == "hub-download":
        token = read_token(sys.stdin) if args.token_stdin else None
        out = hub_download_as(
            args.owner,
            lambda: hub_download(args.repo_id, args.revision, args.repo_type, args.dest, args.file, token),
        )
        code = int(out["code"])
    else:
        out = {"path": args.path, "fingerprint": fingerprint(args.path, args.hash_small, args.root)}
    print(json.dumps(out, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
