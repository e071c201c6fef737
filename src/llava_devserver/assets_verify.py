"""Verify LLaVA training assets where they land: model directories, the pretrain JSON and its images.

Standalone on purpose: Python 3 standard library only, so the assets role can copy this file to a server
(or into the container) and run it with whatever `python3` is there:

    python3 assets_verify.py weights DIR [--kind llm|vision_tower] [--deep] [--root WORK_DIR]
    python3 assets_verify.py pretrain-json FILE --image-root DIR [--sample N] [--expect-records N]
                                           [--root WORK_DIR]

Each prints one JSON object (`ok`, `path`, `kind`, `errors`, `details`) and exits 0 when the asset is
sound, 1 when it is not, 2 on a usage error. Every error names the file it is about.

What is checked:
- weights: config.json parses; the tokenizer (LLM) or preprocessor_config.json (vision tower) is there;
  every shard the index names exists and is whole (a safetensors file's size matches its header; a torch
  zip checkpoint's central directory is intact; `--deep` also checks every CRC); the index's tensors are
  all in their shards; `metadata.total_size` matches the safetensors headers.
- pretrain JSON: parses, is a list, record count; every record has `image` and two conversation turns, the
  first with `<image>`; the images of a sample of records exist and are not empty.

Run by root on files the training container's user owns, who may replace any of them (or a folder on the
way) with a symbolic link to a host file, or a FIFO, at any moment. Nothing is read by a path: every file
is opened through a `Tree`, which opens each component below ROOT (`--root`, work_dir: the trusted
bind-mount source) with O_NOFOLLOW relative to its parent (assets_archive.open_below / open_file_at), and
only regular files (O_NONBLOCK, so a FIFO cannot hang root). A link or a FIFO is an error naming its path;
nothing is read through it and its target's content never reaches a message. Without ROOT (or for a path
outside it) the asset's own path is the admin's and is followed, nothing inside the asset is.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import random
import stat
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

try:  # in the package
    from llava_devserver import assets_archive
except ImportError:  # copied to a server beside assets_archive.py
    import assets_archive  # type: ignore[no-redef]

Refused = assets_archive.ArchiveError  # a link, a FIFO or a device where a file or folder should be

IMAGE_TOKEN = "<image>"
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MAX_LISTED = 5  # problems listed one by one before summarising the rest as a count


@dataclass
class VerifyResult:
    """The outcome for one asset. `error` is the first problem, for one-line messages."""

    path: str
    kind: str
    errors: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str | None:
        return self.errors[0] if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# --- reading without following a link ---------------------------------------------------------------


class Tree:
    """Reads the asset at PATH without following a link: below ROOT (work_dir, the trusted path) every
    component is opened with O_NOFOLLOW relative to its parent; without ROOT, or for a PATH outside it,
    PATH itself is the admin's (resolved once) and nothing inside it is followed. Regular files only (a
    FIFO or a device is refused, never opened for reading). Messages name the path as given, never what a
    link points to. A context manager: it keeps the last directory it opened."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self.path = os.path.abspath(path)
        self.root = os.path.abspath(root) if root else None
        relative = os.path.relpath(self.path, self.root) if self.root else ".."
        self.trusted_path = relative == ".." or relative.startswith("../")
        if not self.trusted_path:  # below ROOT: ROOT is resolved, nothing below it
            self.top = os.path.realpath(str(self.root))
            self.inner = "" if relative == "." else relative
        else:
            real = os.path.realpath(self.path)
            if os.path.isdir(real):
                self.top, self.inner = real, ""
            else:
                self.top, self.inner = os.path.dirname(real), os.path.basename(real)
        self._dir: tuple[str | None, int] = (None, -1)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dir[1] >= 0:
            os.close(self._dir[1])
        self._dir = (None, -1)

    def relative(self, path: str) -> str:
        """PATH relative to the trusted top; Refused when it leaves the area this tree may read."""
        path = os.path.abspath(path)
        if self.trusted_path:
            inside = os.path.relpath(path, self.path)
            if inside == ".." or inside.startswith("../"):
                raise Refused(f"{path} is outside {self.path}: refused")
            relative = posixpath.normpath(posixpath.join(self.inner, inside))
        else:
            relative = os.path.relpath(path, str(self.root))
            if relative == ".." or relative.startswith("../"):
                raise Refused(f"{path} is outside {self.root}: refused")
        return "" if relative == "." else relative

    def _parent_fd(self, relative_dir: str) -> int:
        """The directory TOP/RELATIVE_DIR (cached: the last one), opened without following a link."""
        if self._dir[0] != relative_dir:
            fd = assets_archive.open_below(self.top, relative_dir)
            self.close()
            self._dir = (relative_dir, fd)
        return self._dir[1]

    def lstat(self, path: str) -> os.stat_result | None:
        """PATH's own status (a link is a link), None when it (or a folder on the way) does not exist;
        Refused when a folder on the way is a link or not a folder."""
        relative = self.relative(path)
        if not relative:
            return os.stat(self.top)
        parent, name = posixpath.split(relative)
        try:
            return os.stat(name, dir_fd=self._parent_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise Refused(f"{os.path.dirname(path)} is not a directory: refused") from None

    def open_dir(self, path: str) -> int:
        """A new descriptor of the folder PATH (the caller closes it)."""
        try:
            return assets_archive.open_below(self.top, self.relative(path))
        except NotADirectoryError:
            raise Refused(f"{path} is a link or not a directory: refused, not followed") from None

    def open_file(self, path: str) -> int:
        """A new read descriptor of the regular file PATH; FileNotFoundError when absent, Refused for a
        link, a FIFO or a device (or one on the way)."""
        parent, name = posixpath.split(self.relative(path))
        if not name:
            raise Refused(f"{path} is not a regular file: refused")
        try:
            return assets_archive.open_file_at(self._parent_fd(parent), name, path)
        except NotADirectoryError:
            raise Refused(f"{os.path.dirname(path)} is not a directory: refused") from None

    def read(self, path: str, binary: bool = False) -> Any:
        """PATH opened as a file object (text unless BINARY), through open_file."""
        fd = self.open_file(path)
        if binary:
            return os.fdopen(fd, "rb")
        return os.fdopen(fd, encoding="utf-8")

    def walk(
        self, path: str, skip: Any = (), problems: list[str] | None = None
    ) -> Iterator[tuple[str, int, str, os.stat_result]]:
        """(relative path, folder descriptor, name, own status) of everything but folders below the
        folder PATH, in os.walk's order with sorted names (a folder's entries, then its subfolders, each
        sorted); SKIP: top-level names left out. Links are listed, never followed; a folder that turns
        out to be a link while walked is added to PROBLEMS."""
        fd = self.open_dir(path)
        try:
            yield from _walk(fd, "", path, set(skip), problems)
        finally:
            os.close(fd)


def _walk(
    fd: int, prefix: str, shown: str, skip: set, problems: list[str] | None
) -> Iterator[tuple[str, int, str, os.stat_result]]:
    files: list[tuple[str, os.stat_result]] = []
    folders: list[tuple[str, os.stat_result]] = []
    for name in os.listdir(fd):
        if name in skip:
            continue
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:  # gone since the listing
            continue
        (folders if stat.S_ISDIR(info.st_mode) else files).append((name, info))
    for name, info in sorted(files, key=lambda item: item[0]):
        yield prefix + name, fd, name, info
    for name, _info in sorted(folders, key=lambda item: item[0]):
        try:
            child = os.open(name, assets_archive.DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError:  # swapped for a link or a file since the listing
            if problems is not None:
                problems.append(f"{os.path.join(shown, prefix + name)} is a link or not a directory: refused")
            continue
        try:
            yield from _walk(child, prefix + name + "/", shown, set(), problems)
        finally:
            os.close(child)


def entry_problem(shown: str, info: os.stat_result) -> str | None:
    """The refusal for an entry that is not a regular file (its own status INFO), None for a file."""
    if stat.S_ISLNK(info.st_mode):
        return f"{shown} is a symbolic link: refused, not followed (an asset holds no links)"
    if not stat.S_ISREG(info.st_mode):
        return f"{shown} is not a regular file (a FIFO, socket or device): refused, not read"
    return None


# --- model directories ----------------------------------------------------------------------------------


def verify_weights(
    model_dir: str, kind: str = "llm", deep: bool = False, root: str | None = None
) -> VerifyResult:
    """Check a Hugging Face model directory. `kind`: `llm` (needs a tokenizer) or `vision_tower` (needs
    preprocessor_config.json). ROOT: the folder below which no link is followed (see Tree)."""
    result = VerifyResult(path=str(model_dir), kind=kind)
    if kind not in ("llm", "vision_tower"):
        result.errors.append(f"{model_dir}: unknown asset kind {kind!r} (llm or vision_tower)")
        return result
    with Tree(model_dir, root) as tree:
        try:
            top = tree.lstat(model_dir)
        except Refused as exc:
            result.errors.append(str(exc))
            return result
        if top is not None and stat.S_ISLNK(top.st_mode):
            result.errors.append(f"{model_dir} is a symbolic link: refused, not followed")
            return result
        if top is None or not stat.S_ISDIR(top.st_mode):
            result.errors.append(f"{model_dir}: not a directory")
            return result
        _check_model(tree, model_dir, kind, deep, result)
    return result


def _check_model(tree: Tree, model_dir: str, kind: str, deep: bool, result: VerifyResult) -> None:
    config_path = os.path.join(model_dir, "config.json")
    config = _read_json(tree, config_path, result)
    if isinstance(config, dict):
        result.details["model_type"] = config.get("model_type")
        if not config.get("model_type") and not config.get("architectures"):
            result.errors.append(f"{config_path}: no model_type or architectures")
    elif config is not None:
        result.errors.append(f"{config_path}: not a JSON object")

    if kind == "llm":
        _check_tokenizer(tree, model_dir, result)
    else:
        _read_json(tree, os.path.join(model_dir, "preprocessor_config.json"), result)

    _check_weight_files(tree, model_dir, result, deep)


def _present(tree: Tree, path: str) -> bool:
    """Whether something (a file, or a link or FIFO that opening it will refuse by name) is at PATH."""
    try:
        info = tree.lstat(path)
    except Refused:
        return True
    return info is not None and not stat.S_ISDIR(info.st_mode)


def _check_tokenizer(tree: Tree, model_dir: str, result: VerifyResult) -> None:
    present = [name for name in TOKENIZER_FILES if _present(tree, os.path.join(model_dir, name))]
    if not present:
        result.errors.append(f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
        return
    result.details["tokenizer"] = present
    if "tokenizer.json" in present:
        _read_json(tree, os.path.join(model_dir, "tokenizer.json"), result)
    else:
        path = os.path.join(model_dir, "tokenizer.model")
        try:
            with tree.read(path, binary=True) as handle:
                empty = os.fstat(handle.fileno()).st_size == 0
        except (Refused, OSError) as exc:
            result.errors.append(_unreadable(path, exc))
        else:
            if empty:
                result.errors.append(f"{path}: empty file")
    config_path = os.path.join(model_dir, "tokenizer_config.json")
    if _present(tree, config_path):
        _read_json(tree, config_path, result)


def _check_weight_files(tree: Tree, model_dir: str, result: VerifyResult, deep: bool) -> None:
    index_path = next(
        (os.path.join(model_dir, n) for n in INDEX_FILES if _present(tree, os.path.join(model_dir, n))), None
    )
    if index_path is None:
        single = next((n for n in SINGLE_FILES if _present(tree, os.path.join(model_dir, n))), None)
        if single is None:
            result.errors.append(
                f"{model_dir}: no weights ({', '.join(INDEX_FILES)} or {', '.join(SINGLE_FILES)})"
            )
            return
        path = os.path.join(model_dir, single)
        size, names = _check_shard(tree, path, result, deep)
        result.details.update(shards=[single], bytes=size, tensors=len(names or ()))
        return

    index = _read_json(tree, index_path, result)
    if index is None:
        return
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        result.errors.append(f"{index_path}: no weight_map")
        return
    shards = sorted(set(str(v) for v in weight_map.values()))
    result.details.update(index=os.path.basename(index_path), shards=shards, tensors=len(weight_map))
    total_bytes, tensor_bytes, all_safetensors = 0, 0, True
    for shard in shards:
        path = os.path.join(model_dir, shard)
        if os.path.isabs(shard) or ".." in shard.split("/"):
            result.errors.append(f"{index_path}: shard name {shard!r} leaves the model folder: refused")
            all_safetensors = False
            continue
        if not _present(tree, path):
            result.errors.append(f"{path}: shard named by {os.path.basename(index_path)} is missing")
            all_safetensors = False
            continue
        size, found = _check_shard(tree, path, result, deep)
        total_bytes += size
        if found is None:
            all_safetensors = False
            continue
        expected = [name for name, file in weight_map.items() if file == shard]
        missing = [name for name in expected if name not in found]
        if missing:
            result.errors.append(
                f"{path}: {len(missing)} tensor(s) of the index not in the shard: {missing[:3]}"
            )
        if shard.endswith(".safetensors"):
            tensor_bytes += sum(found.values())
        else:
            all_safetensors = False
    result.details["bytes"] = total_bytes
    declared = (index.get("metadata") or {}).get("total_size")
    if all_safetensors and isinstance(declared, int) and declared != tensor_bytes:
        result.errors.append(
            f"{index_path}: metadata.total_size {declared}, but the shards hold {tensor_bytes} tensor bytes"
        )


def _check_shard(
    tree: Tree, path: str, result: VerifyResult, deep: bool
) -> tuple[int, dict[str, int] | None]:
    """(size, the tensors of one weight file: name -> bytes), the tensors None with an error recorded when
    it is damaged or cannot be opened safely. Read through one no-follow descriptor."""
    try:
        handle = tree.read(path, binary=True)
    except (Refused, OSError) as exc:
        result.errors.append(_unreadable(path, exc))
        return 0, None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if path.endswith(".safetensors"):
            return size, _check_safetensors(handle, size, path, result)
        return size, _check_torch_zip(handle, size, path, result, deep)


def _check_safetensors(handle: Any, size: int, path: str, result: VerifyResult) -> dict[str, int] | None:
    try:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ValueError(f"header of {header_len} bytes does not fit in {size} bytes")
        header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as error:
        result.errors.append(f"{path}: unreadable safetensors file: {error}")
        return None
    tensors, end = {}, 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, stop = spec["data_offsets"]
        tensors[name] = stop - begin
        end = max(end, stop)
    expected = 8 + header_len + end
    if size != expected:
        result.errors.append(
            f"{path}: {size} bytes but its header describes {expected}"
            + (" (truncated)" if size < expected else " (trailing data)")
        )
        return None
    return tensors


def _check_torch_zip(
    handle: Any, size: int, path: str, result: VerifyResult, deep: bool
) -> dict[str, int] | None:
    """torch.save's zip format: an intact central directory (a cut file loses it) whose members fit in
    the file; with `deep`, every member's CRC. Tensor names are in the pickle; only sizes are known here."""
    try:
        with zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
            for info in members:
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(f"member {info.filename} runs past the end of the file")
            if deep:
                bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"CRC mismatch in member {bad}")
    except (OSError, zipfile.BadZipFile) as error:
        result.errors.append(f"{path}: damaged torch checkpoint ({size} bytes): {error}")
        return None
    if not any(info.filename.endswith("data.pkl") for info in members):
        result.errors.append(f"{path}: zip without data.pkl, not a torch checkpoint")
        return None
    # Without unpickling, the index's tensor names cannot be matched; report storages, trust the names.
    return _AnyName({info.filename: info.file_size for info in members if "/data/" in info.filename})


class _AnyName(dict):  # plain dict: servers may run Python < 3.9, where dict[...] cannot be subclassed
    """Storage sizes of a torch zip, which answers `in` for every tensor name (names are in the pickle)."""

    def __contains__(self, key: object) -> bool:
        return True


# --- pretrain JSON and images ---------------------------------------------------------------------------


def verify_pretrain_json(
    path: str,
    image_root: str | None = None,
    sample: int | None = 256,
    expect_records: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> VerifyResult:
    """Check a `blip_laion_cc_sbu_558k.json`-format file and, when `image_root` is given, that the images of
    `sample` records (all with None) exist under it. ROOT: the folder below which no link is followed."""
    result = VerifyResult(path=str(path), kind="pretrain_json")
    with Tree(path, root) as tree:
        records = _read_json(tree, path, result)
    if records is None:
        return result
    if not isinstance(records, list):
        result.errors.append(f"{path}: expected a JSON list of records, found {type(records).__name__}")
        return result
    result.details["records"] = len(records)
    if expect_records is not None and len(records) != expect_records:
        result.errors.append(f"{path}: {len(records)} records, expected {expect_records}")
    if not records:
        result.errors.append(f"{path}: no records")
        return result

    bad: list[str] = []
    for position, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            label = record.get("id", position) if isinstance(record, dict) else position
            bad.append(f"record {position} (id {label}): {problem}")
    if bad:
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        result.errors.append(f"{path}: {len(bad)} malformed record(s): {'; '.join(bad[:MAX_LISTED])}{more}")
    result.details["malformed_records"] = len(bad)

    if image_root is not None:
        with Tree(image_root, root) as images:
            _check_images(images, path, records, image_root, sample, seed, result)
    return result


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not an object"
    image = record.get("image")
    if not isinstance(image, str) or not image:
        return "no image"
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "fewer than two conversation turns"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
        return "a conversation turn without a value"
    if IMAGE_TOKEN not in turns[0]["value"]:
        return f"the first turn has no {IMAGE_TOKEN}"
    return None


def _check_images(
    tree: Tree,
    path: str,
    records: list[Any],
    image_root: str,
    sample: int | None,
    seed: int,
    result: VerifyResult,
) -> None:
    try:
        top = tree.lstat(image_root)
    except Refused as exc:
        result.errors.append(f"{exc} (the image folder named for {path})")
        return
    if top is None or not stat.S_ISDIR(top.st_mode):
        if top is not None and stat.S_ISLNK(top.st_mode):
            result.errors.append(f"{image_root} is a symbolic link: refused, not followed (named for {path})")
        else:
            result.errors.append(f"{image_root}: image folder missing (named for {path})")
        return
    named = [r["image"] for r in records if isinstance(r, dict) and isinstance(r.get("image"), str)]
    chosen = named if sample is None or sample >= len(named) else random.Random(seed).sample(named, sample)
    missing, refused = [], []
    # checked folder by folder (Tree keeps the last folder open), reported in the sample's order
    state = {}
    for relative in sorted(set(chosen)):
        image_path = os.path.join(image_root, relative)
        if os.path.isabs(relative) or ".." in relative.split("/"):
            state[relative] = "refused"
            continue
        try:
            info = tree.lstat(image_path)
        except Refused:
            state[relative] = "refused"
            continue
        if info is not None and stat.S_ISLNK(info.st_mode):
            state[relative] = "refused"
        elif info is None or not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            state[relative] = "missing"
    for relative in chosen:
        image_path = os.path.join(image_root, relative)
        if state.get(relative) == "missing":
            missing.append(image_path)
        elif state.get(relative) == "refused":
            refused.append(image_path)
    result.details.update(images_checked=len(chosen), images_missing=len(missing) + len(refused))
    if missing:
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        result.errors.append(
            f"{path}: {len(missing)} of {len(chosen)} sampled images missing or empty under {image_root}: "
            f"{', '.join(missing[:MAX_LISTED])}{more}"
        )
    if refused:
        more = f" (and {len(refused) - MAX_LISTED} more)" if len(refused) > MAX_LISTED else ""
        result.errors.append(
            f"{path}: {len(refused)} of {len(chosen)} sampled images are symbolic links, below one, or "
            f"outside {image_root}: refused, not followed: {', '.join(refused[:MAX_LISTED])}{more}"
        )


# --- helpers and command line ---------------------------------------------------------------------------


def _unreadable(path: str, error: BaseException) -> str:
    """The error for a file that could not be opened: a refusal names the path itself."""
    if isinstance(error, Refused):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{path}: missing"
    return f"{path}: unreadable: {error.strerror or error}" if isinstance(error, OSError) else str(error)


def _read_json(tree: Tree, path: str, result: VerifyResult) -> Any:
    """The parsed file (opened through TREE: no link followed), or None with an error naming it recorded."""
    try:
        handle = tree.read(path)
    except (Refused, OSError) as exc:
        result.errors.append(_unreadable(path, exc))
        return None
    try:
        with handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        result.errors.append(f"{path}: not valid JSON: {error}")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assets_verify.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="a Hugging Face model directory")
    weights.add_argument("path")
    weights.add_argument("--kind", choices=("llm", "vision_tower"), default="llm")
    weights.add_argument("--deep", action="store_true", help="also check every CRC of torch zip shards")
    data = commands.add_parser("pretrain-json", help="the pretrain JSON and its images")
    data.add_argument("path")
    data.add_argument("--image-root")
    data.add_argument("--sample", type=int, default=256, help="records whose image is checked; 0 = all")
    data.add_argument("--expect-records", type=int)
    for sub in (weights, data):
        sub.add_argument("--root", help="the folder below which no link is followed (work_dir)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 2 if exit_.code else 0
    if args.command == "weights":
        result = verify_weights(args.path, kind=args.kind, deep=args.deep, root=args.root)
    else:
        result = verify_pretrain_json(
            args.path,
            args.image_root,
            sample=args.sample or None,
            expect_records=args.expect_records,
            root=args.root,
        )
    print(json.dumps(result.to_dict(), sort_keys=True))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
