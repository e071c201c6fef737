"""What the llava_assets role does for one host, computed on the control node from the llava dict.

The role stays thin: these functions (exposed as filters by plugins/filter/assets.py) turn the
validated settings into a plan per asset, pick the fan-out seed, build the commands it runs (hub download,
server-to-server rsync) and turn results into failure messages and the report fact. The server-side half
(fingerprints, the manifest, verification) is assets_manifest.py, which runs with the server's python3.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from llava_devserver import as_owner, assets_manifest

# Verification order: the pretrain JSON's check reads the image folder, so images come first.
ORDER = ("images", "llm", "vision_tower", "pretrain_json")
# Files up to this size are hashed into the fingerprint (configs, tokenizers, shard indexes); the shards,
# the caption JSON and the images are compared by size and mtime only.
HASH_SMALL = {"llm": 1 << 20, "vision_tower": 1 << 20, "pretrain_json": 0, "images": 0}
# In the root-only llava.host_state_dir on the server (root's record: never where the container can write).
MANIFEST = "assets-manifest.json"
# The server-side helpers run as root: they live in a root-owned directory outside work_dir, never where the
# training container can write (under work_dir they would be scripts the container user edits and root runs).
HELPER_DIR = "/usr/local/lib/llava-devserver"
# The forced command of the fan-out key (stdlib Python 3.7+, in HELPER_DIR): rsync receiving into assets only.
FANOUT_RECEIVER = "fanout_receive.py"
OWNER_RECEIVER = "as_owner.py"  # rsync's receiver as the owner of the container's tree
# Every fan-out key this tool authorizes carries this comment (a run id after it): each run removes them all.
FANOUT_KEY_COMMENT = "llava-devserver-fanout"
# expiry-time in authorized_keys needs OpenSSH 8.2+ on the receiver (older sshd refuse the whole line).
EXPIRY_MIN_OPENSSH = (8, 2)


def host_path(container_path: str, container_work_dir: str, work_dir: str) -> str | None:
    """The server path of a container path under the work-dir mount, None when it is outside it."""
    base = posixpath.normpath(container_work_dir)
    path = posixpath.normpath(container_path)
    if path == base:
        return posixpath.normpath(work_dir)
    if not path.startswith(base + "/"):
        return None
    return posixpath.join(posixpath.normpath(work_dir), path[len(base) + 1 :])


def plan(llava: Mapping[str, Any], control_fingerprints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`{"assets": [...], "errors": [...], "manifest", "helper_dir", "work_dir"}` for one host.

    Each asset: `name`, `kind`, `source`, `path` (the source path), `dest` (container), `host_dest`,
    `is_dir`, `hash_small`, `image_root` (pretrain_json), hub fields, and for source control the source's
    `source_fingerprint` when `control_fingerprints` (path -> fingerprint) holds it.
    """
    host = llava.get("host", "?")
    work_dir = str(llava["work_dir"])
    container_work_dir = str(llava["container_work_dir"])
    assets = llava.get("assets") or {}
    images_dest = (assets.get("images") or {}).get("dest")
    image_root = host_path(images_dest, container_work_dir, work_dir) if images_dest else None
    control_fingerprints = control_fingerprints or {}
    planned: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in ORDER:
        spec = assets.get(name) or {}
        source = spec.get("source", "none")
        if source == "none":
            continue
        dest = str(spec["dest"])
        target = host_path(dest, container_work_dir, work_dir)
        if target is None:
            errors.append(
                f"{host}: assets.{name}: its container path {dest} is outside container_work_dir "
                f"{container_work_dir}, the only server directory the container sees (work_dir {work_dir}); "
                f"give the setting a path under {container_work_dir} (or a relative one)"
            )
            continue
        is_dir = name != "pretrain_json"
        entry: dict[str, Any] = {
            "name": name,
            "kind": name,
            "source": source,
            "path": spec.get("path"),
            "dest": dest,
            "host_dest": target,
            "is_dir": is_dir,
            "hash_small": HASH_SMALL[name],
            "image_root": image_root if name == "pretrain_json" else None,
            "repo_id": spec.get("repo_id"),
            "revision": spec.get("revision") or "main",
            "repo_type": spec.get("repo_type") or "model",
            "source_fingerprint": None,
        }
        if source == "control":
            fp = control_fingerprints.get(_fp_key(spec["path"], HASH_SMALL[name]))
            entry["source_fingerprint"] = fp
            entry["is_dir"] = bool(fp and fp.get("is_dir", is_dir))
        planned.append(entry)
    return {
        "assets": planned,
        "errors": errors,
        "manifest": posixpath.join(str(llava["host_state_dir"]), MANIFEST),
        "helper_dir": HELPER_DIR,
        # the server-side helpers' `root`: below it everything is the container user's, no link followed
        "work_dir": posixpath.normpath(work_dir),
    }


def parent_dirs(plan_: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Container paths of the folders the assets NAMES are staged into (a directory asset's own folder, a
    file's parent), each once, in plan order: made inside the container as its user, in one exec. Root on
    the host never makes them: below work_dir every folder is the container user's, who may have replaced
    it with a link to a host folder."""
    found: list[str] = []
    for asset in plan_["assets"]:
        if asset["name"] not in names:
            continue
        dest = posixpath.normpath(str(asset["dest"]))
        folder = dest if asset["is_dir"] else posixpath.dirname(dest)
        if folder not in found:
            found.append(folder)
    return found


def _fp_key(path: str, hash_small: int) -> str:
    return f"{hash_small}:{path}"


def control_fingerprints(llava_dicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fingerprints of every control-node source the hosts name (each path once), computed here."""
    import os

    result: dict[str, Any] = {}
    for llava in llava_dicts:
        for name, spec in (llava.get("assets") or {}).items():
            if spec.get("source") != "control" or not spec.get("path"):
                continue
            key = _fp_key(spec["path"], HASH_SMALL.get(name, 0))
            if key in result:
                continue
            path = os.path.expanduser(spec["path"])
            fp = assets_manifest.fingerprint(path, HASH_SMALL.get(name, 0))
            result[key] = None if fp is None else {**fp, "is_dir": os.path.isdir(path)}
    return result


def seeds(
    host: str,
    plans: Mapping[str, Mapping[str, Any]],
    play_hosts: Sequence[str],
    blocked: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """For each control-source asset of `host`: the first play host with the same source that can hold it
    (not in `blocked`, host -> asset names that failed their space check). The seed alone receives the
    asset from the control node; the other servers copy it from the seed."""
    blocked = blocked or {}
    own = {a["name"]: a for a in plans[host]["assets"] if a["source"] == "control"}
    result = {}
    for name, asset in own.items():
        for candidate in play_hosts:
            if name in (blocked.get(candidate) or ()):
                continue
            other = next(
                (a for a in (plans.get(candidate) or {}).get("assets", ()) if a["name"] == name), None
            )
            if other and other["source"] == "control" and other["path"] == asset["path"]:
                result[name] = candidate
                break
    return result


def _helper(plan_: Mapping[str, Any], python: str) -> list[str]:
    return [python, posixpath.join(plan_["helper_dir"], "assets_manifest.py")]


def batch_command(
    operations: Sequence[Mapping[str, Any]], plan_: Mapping[str, Any], python: str = "python3"
) -> list[str]:
    """One run of the server-side helper for several operations (one SSH round trip)."""
    import json

    return [*_helper(plan_, python), "batch", json.dumps(list(operations), sort_keys=True)]


def status_ops(plan_: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Read-only checks of every asset against the manifest (and its source's fingerprint)."""
    ops = []
    for asset in plan_["assets"]:
        op: dict[str, Any] = {
            "op": "status", "manifest": plan_["manifest"], "name": asset["name"], "path": asset["host_dest"],
            "hash_small": asset["hash_small"], "root": plan_["work_dir"],
        }  # fmt: skip
        if asset["source"] == "control" and asset.get("source_fingerprint"):
            op["expect"] = asset["source_fingerprint"]["digest"]
        elif asset["source"] == "server" and asset.get("path"):
            op["source"] = asset["path"]
        ops.append(op)
    return ops


def space_ops(
    plan_: Mapping[str, Any], todo: Sequence[str], statuses: Mapping[str, Any], margin: int = 0
) -> list[dict[str, Any]]:
    """Free-space checks before staging: each asset's size (its source's) less what is already there.
    Hub assets are left out (their size is not known before the download)."""
    ops = []
    for asset in plan_["assets"]:
        status_ = statuses.get(asset["name"]) or {}
        if asset["name"] not in todo or asset["source"] not in ("control", "server"):
            continue
        if status_.get("state") == "no-source":
            continue
        source_fp = asset.get("source_fingerprint") or status_.get("source_fingerprint") or {}
        ops.append({
            "op": "space", "name": asset["name"], "path": asset["host_dest"],
            "need_bytes": int(source_fp.get("bytes") or 0),
            "present": int((status_.get("fingerprint") or {}).get("bytes") or 0), "margin": int(margin),
            "root": plan_["work_dir"],
        })  # fmt: skip
    return ops


def verify_ops(plan_: Mapping[str, Any], names: Sequence[str], sample: int = 256) -> list[dict[str, Any]]:
    """Verification where the container reads each asset; outcomes go into the manifest. In ORDER (the
    pretrain JSON after the images it names)."""
    ops = []
    for asset in plan_["assets"]:
        if asset["name"] not in names:
            continue
        op: dict[str, Any] = {
            "op": "verify", "manifest": plan_["manifest"], "name": asset["name"], "kind": asset["kind"],
            "path": asset["host_dest"], "hash_small": asset["hash_small"], "root": plan_["work_dir"],
        }  # fmt: skip
        if asset["kind"] == "pretrain_json":
            op["image_root"] = asset.get("image_root")
            op["sample"] = sample or None
        if asset["source"] == "control" and asset.get("source_fingerprint"):
            op["source_digest"] = asset["source_fingerprint"]["digest"]
        ops.append(op)
    return ops


def mark_ops(plan_: Mapping[str, Any], reasons: Mapping[str, str]) -> list[dict[str, Any]]:
    """Record in the manifest that these assets are not verified (they could not be staged), and why."""
    return [
        {
            "op": "mark",
            "manifest": plan_["manifest"],
            "name": a["name"],
            "path": a["host_dest"],
            "error": reasons[a["name"]],
            "root": plan_["work_dir"],
        }
        for a in plan_["assets"]
        if a["name"] in reasons
    ]


def batch_results(
    result: Mapping[str, Any], operations: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """name -> result of a `batch` command's registered result; when the helper itself failed, every
    operation gets a failure naming the helper's error."""
    parsed: Any = None
    if not result.get("skipped"):
        import json

        try:
            parsed = json.loads(result.get("stdout") or "")
        except ValueError:
            parsed = None
    if not isinstance(parsed, list) or len(parsed) != len(operations):
        if result.get("skipped") or not operations:
            return {}
        detail = str(result.get("stderr") or result.get("msg") or "no output").strip()[-400:]
        error = f"the server-side helper failed: {detail}"
        return {
            str(op["name"]): {
                "name": op["name"],
                "ok": False,
                "state": "error",
                "errors": [error],
                "error": error,
            }
            for op in operations
        }
    return {str(op["name"]): dict(out) for op, out in zip(operations, parsed, strict=True)}


def _slash(path: str, is_dir: bool) -> str:
    return path.rstrip("/") + "/" if is_dir else path


def fanout_command(
    asset: Mapping[str, Any], key_file: str, user: str, address: str, extra_opts: Sequence[str] = ()
) -> list[str]:
    """The rsync the SEED runs to push an asset to a receiver over SSH with the temporary fan-out key."""
    ssh = " ".join(
        shlex.quote(part)
        for part in (
            "ssh", "-i", key_file, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        )
    )  # fmt: skip
    return [
        "rsync", "-a", "--delete", "--stats", *extra_opts, "-e", ssh,
        _slash(asset["host_dest"], asset["is_dir"]),
        f"{user}@{address}:{_slash(asset['host_dest'], asset['is_dir'])}",
    ]  # fmt: skip


def needs_copy(assets: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Source-server assets whose path is not already where the container reads them."""
    return [a for a in assets if posixpath.normpath(str(a["path"])) != posixpath.normpath(a["host_dest"])]


def _check_owner(owner: str, context: str = "") -> None:
    """OWNER is UID:GID, by the servers' own rule (as_owner.parse_owner): a ValueError otherwise."""
    try:
        as_owner.parse_owner(owner)
    except as_owner.Refused as error:
        raise ValueError(f"{context}{error}") from None


def owner_receiver(owner: str, helper_dir: str = HELPER_DIR, python: str = "python3") -> str:
    """The command that starts rsync's receiver as OWNER (UID:GID) on a server (as_owner.py): rsync's
    `--rsh` for a copy on the server, `--rsync-path` for one from elsewhere. Root never writes into the
    container's tree itself."""
    _check_owner(owner)
    return f"{python} {posixpath.join(helper_dir, OWNER_RECEIVER)} {owner}"


def local_copy_command(asset: Mapping[str, Any], owner: str, helper_dir: str = HELPER_DIR) -> list[str]:
    """Source server with a path other than the container path's: copy it into place on the server, root
    reading the server's storage, the owner writing (--protect-args: the paths travel inside rsync's
    protocol, with no shell between the two sides to re-read them)."""
    return [
        "rsync", "-a", "--delete", "--protect-args", "--rsh", owner_receiver(owner, helper_dir), "--",
        _slash(asset["path"], asset["is_dir"]),
        f"{as_owner.LOCAL_HOST}:{_slash(asset['host_dest'], asset['is_dir'])}",
    ]  # fmt: skip


def hub_command(
    asset: Mapping[str, Any], helper_dir: str, owner: str, token_set: bool = False, python: str = "python3"
) -> list[str]:
    """The download on the server (huggingface_hub; HF_ENDPOINT from the environment). With `token_set` the
    helper reads the token from its standard input (`--token-stdin`): never an argument or an environment
    prefix, which every user of the server could read in `ps` for the whole download."""
    argv = [
        python, posixpath.join(helper_dir, "assets_manifest.py"), "hub-download",
        "--repo-id", str(asset["repo_id"]), "--revision", str(asset.get("revision") or "main"),
        "--repo-type", str(asset.get("repo_type") or "model"), "--dest", str(asset["host_dest"]),
        "--owner", str(owner),  # the download writes as the owner of the container's tree
    ]  # fmt: skip
    if not asset["is_dir"]:
        argv += ["--file", posixpath.basename(str(asset["host_dest"]))]
    if token_set:
        argv.append("--token-stdin")
    return argv


def hub_environment(hf_endpoint: str | None) -> dict[str, str]:
    """The environment of the download task: no secret in it (the token goes through stdin)."""
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if hf_endpoint:
        env["HF_ENDPOINT"] = str(hf_endpoint)
    return env


def openssh_version(text: str | None) -> tuple[int, int] | None:
    """(major, minor) from `ssh -V` / `sshd -V` output (`OpenSSH_9.2p1 Debian-2`), None when unreadable."""
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def fanout_key_options(
    seed_addresses: Sequence[str],
    destinations: Sequence[str],
    expiry: str | None,
    ssh_version_text: str | None,
    owner: str,
    python: str = "/usr/bin/python3",
    helper_dir: str = HELPER_DIR,
) -> str:
    """authorized_keys options of the fan-out key on one receiver: a forced command that only lets rsync
    receive into this receiver's asset folders, only from its seeds' addresses, nothing else (`restrict`:
    no pty, no forwarding), and, where sshd knows it (OpenSSH 8.2+), an expiry time (`YYYYMMDDHHMMSS`, the
    receiver's local time) so that a key an interrupted run left behind stops working by itself."""
    if not seed_addresses:
        raise ValueError("fanout_key_options: no seed address")
    if not destinations:
        raise ValueError("fanout_key_options: no destination")
    # authorized_keys has no escape inside a quoted option, and the receiver splits its arguments on spaces
    for value, bad in [(a, r'[\s"\\,]') for a in seed_addresses] + [(d, r'[\s"\\]') for d in destinations]:
        if not str(value) or re.search(bad, str(value)):
            raise ValueError(f"fanout_key_options: unusable value {value!r} for an authorized_keys option")
    _check_owner(owner, "fanout_key_options: ")
    receiver = " ".join(
        [python, posixpath.join(helper_dir, FANOUT_RECEIVER), "--owner", str(owner)]
        + [str(d) for d in destinations]
    )
    options = [f'command="{receiver}"', f'from="{",".join(str(a) for a in seed_addresses)}"', "restrict"]
    version = openssh_version(ssh_version_text)
    if expiry and version is not None and version >= EXPIRY_MIN_OPENSSH:
        if not re.fullmatch(r"\d{12}(\d{2})?", str(expiry)):
            raise ValueError(f"fanout_key_options: expiry {expiry!r} is not YYYYMMDDHHMM[SS]")
        options.append(f'expiry-time="{expiry}"')
    return ",".join(options)


def fanout_key_comment(run_id: str) -> str:
    """The comment of this run's fan-out key: the common prefix every run removes, then the run's id."""
    return f"{FANOUT_KEY_COMMENT}-{run_id}"


def fanout_key_line_pattern() -> str:
    """Regular expression (Python `re`, for lineinfile) of every authorized_keys line this tool ever added."""
    return r"\s" + FANOUT_KEY_COMMENT + r"(-\S*)?\s*$"


def parse_rsync_bytes(stdout: str) -> int | None:
    """`Total bytes sent` of an rsync --stats output (the sender's side: what crossed the network)."""
    for line in (stdout or "").splitlines():
        if line.startswith("Total bytes sent:"):
            return int(line.split(":", 1)[1].strip().replace(",", "").replace(".", "") or 0)
    return None


def _json(text: Any) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text or "")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def space_problems(spaces: Mapping[str, Mapping[str, Any]], host: str) -> list[str]:
    """Messages for the free-space checks that failed (name -> `space` result)."""
    problems = []
    for name, out in spaces.items():
        if out.get("ok"):
            continue
        if out.get("errors"):
            problems.append(f"{host}: assets.{name}: the free-space check failed: {out['errors'][0]}")
            continue
        problems.append(
            f"{host}: assets.{name}: not enough free space for {out['path']}: "
            f"{_human(out['avail'])} available on the file system of {out['checked']}, "
            f"{_human(out['need'])} needed; free space there (or point the asset's setting elsewhere) "
            "and run again"
        )
    return problems


def verify_problems(
    verified: Mapping[str, Mapping[str, Any]], plan_: Mapping[str, Any], host: str
) -> list[str]:
    """One message per asset that failed verification, naming its source and the first errors."""
    assets = {a["name"]: a for a in plan_.get("assets", ())}
    problems = []
    for name, out in verified.items():
        if out.get("ok"):
            continue
        asset = assets.get(name, {})
        errors = list(out.get("errors") or ["verification failed"])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        origin = asset.get("path") or asset.get("repo_id")
        problems.append(
            f"{host}: assets.{name} ({asset.get('source')} {origin}) failed verification: "
            f"{'; '.join(errors[:3])}{more}; fix the source and run again"
        )
    return problems


def transfers(
    results: Sequence[Mapping[str, Any]], via: str, seeds_: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Looped transfer results (synchronize or rsync commands) as name -> `{"via", "bytes", "ok", "error"}`.
    `via`: `control`, `server`, `hub` or `seed` (then `seed:<host>` from `seeds_`)."""
    out: dict[str, dict[str, Any]] = {}
    for item in results:
        if item.get("skipped") or "item" not in item:
            continue
        name = item["item"]["name"]
        text = item.get("stdout") or item.get("msg") or ""
        if isinstance(text, list):
            text = "\n".join(map(str, text))
        if not text and item.get("stdout_lines"):
            text = "\n".join(map(str, item["stdout_lines"]))
        ok = not item.get("failed") and item.get("rc", 0) == 0
        error = None
        if not ok:
            detail = str(item.get("stderr") or item.get("msg") or text or "").strip().splitlines()
            error = " | ".join(detail[-5:]) or f"exit {item.get('rc')}"
        where = f"seed:{(seeds_ or {}).get(name, '?')}" if via == "seed" else via
        # rsync's statistics; a hub download's helper says what it wrote (hub_fetch; huggingface_hub: None)
        moved = _json(text).get("bytes") if via == "hub" else parse_rsync_bytes(str(text))
        out[name] = {"via": where, "bytes": moved, "ok": ok, "error": error}
    return out


def transfer_problems(host: str, moved: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [
        f"{host}: assets.{name}: the copy ({m['via']}) failed: {m['error']}; check the disk and the network, "
        "then run again"
        for name, m in moved.items()
        if not m.get("ok")
    ]


def hub_problems(results: Sequence[Mapping[str, Any]], host: str, endpoint: str | None) -> list[str]:
    """Messages for failed hub downloads (the task is no_log: only the helper's own JSON is quoted, which
    never holds the token)."""
    problems = []
    for item in results:
        if item.get("skipped") or "item" not in item or item.get("rc", 0) == 0:
            continue
        asset = item["item"]
        out = _json(item.get("stdout"))
        where = endpoint or "https://huggingface.co"
        reason = out.get("error") or f"exit {item.get('rc')}"
        problems.append(
            f"{host}: assets.{asset['name']}: hub download of {asset.get('repo_id')}@{asset.get('revision')} "
            f"({where}) failed: {reason}; check hf_endpoint, hf_token and the proxy settings, "
            "or use source control/server"
        )
    return problems


def unstaged_reasons(
    spaces: Mapping[str, Mapping[str, Any]],
    no_source: Sequence[str],
    moved: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """name -> why the asset was not staged, for the manifest (`mark`): no room, no source, failed copy."""
    reasons: dict[str, str] = {}
    for name, out in spaces.items():
        if out.get("ok"):
            continue
        if out.get("errors"):
            reasons[name] = f"not staged: the free-space check failed: {out['errors'][0]}"
        else:
            reasons[name] = (
                f"not staged: {_human(out.get('avail', 0))} free at {out.get('checked')}, "
                f"{_human(out.get('need', 0))} needed"
            )
    for name in no_source:
        reasons[name] = "not staged: its source path is missing on the server"
    for name, m in moved.items():
        if not m.get("ok"):
            reasons[name] = f"not staged: the copy ({m.get('via')}) failed: {m.get('error')}"
    return reasons


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def report(
    planned: Mapping[str, Any],
    statuses: Mapping[str, Any],
    staged: Mapping[str, Any],
    verified: Mapping[str, Any],
) -> dict[str, Any]:
    """`llava_report_assets`: per asset its source, where it is, what happened this run and the bytes moved.

    `statuses`: name -> status output; `staged`: name -> {"via": "control|seed:<host>|server|hub",
    "bytes": int|None}; `verified`: name -> verify output.
    """
    assets = {}
    for asset in planned.get("assets", ()):
        name = asset["name"]
        status = statuses.get(name) or {}
        check = verified.get(name)
        move = staged.get(name) or {}
        if check is not None:
            state = "verified" if check.get("ok") else "failed"
        elif status.get("state") == "verified":
            state = "unchanged"
        else:
            state = "not staged"
        fp = (check or {}).get("fingerprint") or status.get("fingerprint") or {}
        assets[name] = {
            "source": asset["source"],
            "from": asset.get("path") or asset.get("repo_id"),
            "dest": asset["dest"],
            "state": state,
            "files": fp.get("files"),
            "bytes": fp.get("bytes"),
            "via": move.get("via"),
            "bytes_transferred": move.get("bytes"),
            "errors": (check or {}).get("errors") or [],
        }
    moved = [a["bytes_transferred"] for a in assets.values() if a["bytes_transferred"]]
    from_control = sum(
        a["bytes_transferred"] or 0
        for a in assets.values()
        if a["via"] == "control" and a["bytes_transferred"]
    )
    return {
        "manifest": planned.get("manifest"),
        "assets": assets,
        "bytes_transferred": sum(moved),
        "bytes_from_control": from_control,
    }
