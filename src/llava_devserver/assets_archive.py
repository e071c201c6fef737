"""Server-side: unpack the image archives of the image folder (the hub's `images.zip`, tar archives).

Standalone (Python 3.7+ standard library only; the llava_assets role copies it beside assets_manifest.py):

    python3 assets_archive.py unpack --root WORK_DIR --folder IMAGE_FOLDER [--caption JSON] [--sample N]
                                     [--margin BYTES]

Every `*.zip`, `*.tar`, `*.tar.gz`/`*.tgz`, `*.tar.bz2`, `*.tar.xz` at the top of the image folder is
unpacked into that folder, once:

- **checked against the caption file** before anything is written: the image paths of (a sample of) the
  caption JSON's records must be members of the archive; an archive whose members sit under one extra top
  directory (`images/00000/...` for records naming `00000/...`) is unpacked without it;
- **free space** for the unpacked size (the sum of the members' sizes, less what the marker says is already
  there) plus a margin, on the folder's file system, before anything is written;
- **idempotent**: the marker `.llava-devserver-unpacked.json` in the folder records each archive's size
  and mtime and the top-level names it created; an archive whose marker entry matches (and whose names are
  all there) is not unpacked again. The fingerprint of the images asset (assets_manifest.py) leaves the
  marker and those names out, so the asset still has its source's fingerprint (the archive);
- **safe in a folder the container can write**: root never follows a link there, nor reads or writes
  anything by a path below ROOT. Every directory below ROOT is opened with O_NOFOLLOW relative to its parent
  (openat); the marker, each archive and the caption file are opened once that way (O_NOFOLLOW, O_NONBLOCK
  so that a FIFO planted under the name cannot hang root), checked with fstat to be the regular file that
  was listed, and read through that descriptor; an archive that is a link is refused, a marker that is one
  counts as missing (and is replaced by a real file). A link under a member's name is refused; a file
  there is unlinked and the member written as a fresh file (O_CREAT|O_EXCL|O_NOFOLLOW), so a hard link
  planted under the name is replaced, never written through. Members that are absolute, contain `..`, or
  are links or devices are refused.

Prints one JSON object `{"changed", "archives": [{name, state: unpacked|unchanged|failed, members,
bytes, strip, errors}], "errors"}`; exits 1 when an archive could not be unpacked, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

MARKER = ".llava-devserver-unpacked.json"
MARKER_VERSION = 1
SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK = 1 << 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ArchiveError(Exception):
    """The archive cannot be unpacked safely or does not match the caption file."""


# --- members -------------------------------------------------------------------------------------------


class Member:
    """One regular file or directory of an archive."""

    def __init__(self, name: str, size: int, is_dir: bool, mtime: float) -> None:
        self.name = name
        self.size = size
        self.is_dir = is_dir
        self.mtime = mtime


def is_archive(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(suffix) for suffix in SUFFIXES)


def _clean_name(raw: str) -> str:
    """The member's relative path; ArchiveError for absolute paths and `..`."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"member {raw!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {raw!r} leaves the folder (..)")
    return "/".join(parts)


def members(source: Any, name: str) -> list[Member]:
    """The members of the zip or tar archive open as SOURCE (a seekable binary file object; NAME tells the
    kind); ArchiveError for links, devices and unsafe names."""
    return [member for member, _ in _open_members(source, name, read=False)]


def _open_members(source: Any, name: str, read: bool = True) -> Iterator[tuple[Member, Any]]:
    """(member, readable file object, or None for a directory or when not READ), in archive order, each
    checked as members() checks them (the container may rewrite the archive between two passes)."""
    source.seek(0)
    if name.lower().endswith(".zip"):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                mode = (info.external_attr >> 16) & 0xFFFF
                if mode and stat.S_ISLNK(mode):
                    raise ArchiveError(f"member {info.filename!r} is a symbolic link")
                clean = _clean_name(info.filename)
                if not clean:
                    continue
                member = Member(
                    clean, info.file_size, info.is_dir(), time.mktime((*info.date_time, 0, 0, -1))
                )
                if member.is_dir or not read:
                    yield member, None
                else:
                    with archive.open(info) as handle:
                        yield member, handle
        return
    with tarfile.open(fileobj=source, mode="r:*") as tar:
        for tar_info in tar:
            if not (tar_info.isfile() or tar_info.isdir()):
                raise ArchiveError(f"member {tar_info.name!r} is a link or a device")
            clean = _clean_name(tar_info.name)
            if not clean:
                continue
            member = Member(clean, tar_info.size, tar_info.isdir(), float(tar_info.mtime))
            yield member, (None if member.is_dir or not read else tar.extractfile(tar_info))


def common_top(names: list[str]) -> str | None:
    """The one top directory every member sits under, if there is one."""
    tops = set(n.split("/", 1)[0] for n in names)
    if len(tops) == 1 and all("/" in n for n in names if not n.endswith("/")):
        top = tops.pop()
        if any(n != top for n in names):
            return top
    return None


def caption_images(handle: Any, caption: str, sample: int) -> list[str]:
    """Image paths of the caption JSON's records read from HANDLE (CAPTION names it in messages), every
    `sample`-th record spread over the file (0: all)."""
    records = json.load(handle)
    if not isinstance(records, list):
        raise ArchiveError(f"{caption}: not a JSON list of records")
    images = [str(r["image"]) for r in records if isinstance(r, dict) and r.get("image")]
    if sample and len(images) > sample:
        step = len(images) / float(sample)
        images = [images[int(i * step)] for i in range(sample)]
    return [posixpath.normpath(i) for i in images]


def choose_strip(names: list[str], wanted: list[str]) -> tuple[str, list[str]]:
    """(prefix to strip, wanted images missing after stripping it): no prefix unless it makes them match."""
    files = set(names)
    missing = [w for w in wanted if w not in files]
    top = common_top(names)
    if missing and top is not None:
        stripped = set(n[len(top) + 1 :] for n in names if n.startswith(top + "/"))
        missing_stripped = [w for w in wanted if w not in stripped]
        if len(missing_stripped) < len(missing):
            return top, missing_stripped
    return "", missing


# --- safe writing --------------------------------------------------------------------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
# O_NONBLOCK: opening a FIFO the container planted under the name does not hang root (it is then refused)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
# always a fresh file: what was under the name is unlinked first, anything planted there since fails here
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW


def _parts(relative: str) -> list[str]:
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{relative} leaves the folder (..): refused")
    return parts


def open_below(root: str, relative: str, create: bool = False) -> int:
    """A descriptor of the directory ROOT/RELATIVE, never through a link below ROOT (ROOT itself is the
    admin's); ArchiveError naming the first component that is a link or not a directory."""
    fd = os.open(root, DIR_FLAGS)
    reached = root.rstrip("/") or "/"
    try:
        for part in _parts(relative):
            reached = posixpath.join(reached, part)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ArchiveError(f"{reached} is a link or not a directory: refused") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_at(dir_fd: int, name: str, shown: str) -> int:
    """A read descriptor of the regular file NAME in the directory DIR_FD, never through a link, nor of a
    FIFO or device swapped in after the check (SHOWN names it in messages); FileNotFoundError when absent."""
    listed = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(listed.st_mode):
        raise ArchiveError(f"{shown} is a symbolic link: refused, not followed")
    if not stat.S_ISREG(listed.st_mode):
        raise ArchiveError(f"{shown} is not a regular file: refused")
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArchiveError(f"{shown} is a symbolic link: refused, not followed") from None
        raise
    try:
        opened = os.fstat(fd)
        same = (opened.st_dev, opened.st_ino) == (listed.st_dev, listed.st_ino)
        if not (same and stat.S_ISREG(opened.st_mode)):
            raise ArchiveError(f"{shown} was replaced while it was opened: refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_below(root: str, relative: str) -> int:
    """A read descriptor of the regular file ROOT/RELATIVE, no component below ROOT followed as a link."""
    parent, name = posixpath.split(posixpath.normpath(relative))
    dir_fd = open_below(root, parent)
    try:
        return open_file_at(dir_fd, name, posixpath.join(root, relative))
    finally:
        os.close(dir_fd)


class _Writer:
    """Creates the members below one folder descriptor, caching the directory it wrote into last."""

    def __init__(self, folder_fd: int) -> None:
        self.folder_fd = folder_fd
        self._dir: tuple[str, int] = ("", os.dup(folder_fd))

    def close(self) -> None:
        os.close(self._dir[1])

    def directory(self, relative: str) -> int:
        if self._dir[0] != relative:
            fd = os.dup(self.folder_fd)
            try:
                for part in [p for p in relative.split("/") if p]:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ArchiveError(
                        f"{relative} is a link or not a directory in the image folder: refused"
                    ) from None
                raise
            os.close(self._dir[1])
            self._dir = (relative, fd)
        return self._dir[1]

    def write(self, relative: str, source: Any, mtime: float) -> None:
        parent, name = posixpath.split(relative)
        dir_fd = self.directory(parent)
        try:
            there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None:
            if stat.S_ISLNK(there.st_mode):
                raise ArchiveError(f"{relative} is a link in the image folder: refused")
            os.unlink(name, dir_fd=dir_fd)  # the name only: a hard link's other names keep their content
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EEXIST):  # planted between the unlink and the open
                raise ArchiveError(
                    f"{relative} was replaced in the image folder while written: refused"
                ) from None
            raise
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle, CHUNK)
            handle.flush()
            os.utime(handle.fileno(), (mtime, mtime))


# --- the marker ----------------------------------------------------------------------------------------


def read_marker(folder_fd: int) -> dict[str, Any]:
    """The marker in the open folder FOLDER_FD ({} when missing, unreadable, not a regular file or a link:
    root never reads through a link, and a missing marker only means the archives are unpacked again)."""
    try:
        fd = open_file_at(folder_fd, MARKER, MARKER)
        with os.fdopen(fd, encoding="utf-8") as handle:
            data = json.load(handle)
    except (ArchiveError, OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != MARKER_VERSION:
        return {}
    return data


def unpacked_entries(folder_fd: int) -> list[str]:
    """Top-level names of the open folder FOLDER_FD that its archives created, and the marker: what
    fingerprints leave out."""
    marker = read_marker(folder_fd)
    if not marker:
        return []
    names = [MARKER]
    for entry in (marker.get("archives") or {}).values():
        if isinstance(entry, dict):
            names += [str(n) for n in entry.get("top") or []]
    return names


def _write_marker(folder_fd: int, marker: dict[str, Any]) -> None:
    temporary = MARKER + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=folder_fd)
    fd = os.open(temporary, _NEW_FILE_FLAGS, 0o644, dir_fd=folder_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)
    os.rename(temporary, MARKER, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


# --- unpack --------------------------------------------------------------------------------------------


def _archive_id(fd: int) -> dict[str, Any]:
    info = os.fstat(fd)
    return {"size": info.st_size, "mtime": int(info.st_mtime)}


def _is_dir_at(dir_fd: int, name: str) -> bool:
    """Whether NAME in DIR_FD is a directory itself (not a link to one): anything else named like an
    archive is listed, so that a link or a FIFO there is refused by name rather than silently skipped."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return True  # gone since the listing: nothing to unpack


def _read_caption(root: str, caption: str, sample: int) -> list[str] | None:
    """caption_images of CAPTION, opened below ROOT without following a link; None when it does not exist."""
    relative = os.path.relpath(os.path.abspath(caption), root)
    if relative == ".." or relative.startswith("../"):
        raise ArchiveError(f"the caption file {caption} is not below {root}: refused")
    try:
        fd = open_file_below(root, relative)
    except FileNotFoundError:
        return None
    except ArchiveError as exc:
        raise ArchiveError(f"the caption file {caption} cannot be read safely: {exc}") from None
    with os.fdopen(fd, encoding="utf-8") as handle:
        return caption_images(handle, caption, sample)


def unpack(
    root: str,
    folder: str,
    caption: str | None = None,
    sample: int = 256,
    margin: int = 64 << 20,
) -> dict[str, Any]:
    """Unpack every archive at the top of FOLDER (below ROOT) into FOLDER; see the module doc."""
    root = os.path.abspath(root)
    folder = os.path.abspath(folder)
    result: dict[str, Any] = {"folder": folder, "changed": False, "archives": [], "errors": []}
    relative = os.path.relpath(folder, root)
    if relative == ".." or relative.startswith("../"):
        result["errors"].append(f"{folder} is not below {root}")
        return result
    try:
        folder_fd = open_below(root, "" if relative == "." else relative)
    except FileNotFoundError:
        return result  # nothing staged there (yet): nothing to unpack
    except (ArchiveError, OSError) as exc:
        result["errors"].append(str(exc))
        return result
    try:
        marker = read_marker(folder_fd) or {"version": MARKER_VERSION, "archives": {}}
        present = set(os.listdir(folder_fd))
        archives = sorted(n for n in present if is_archive(n) and not _is_dir_at(folder_fd, n))
        wanted: list[str] | None = None
        for name in archives:
            entry = _unpack_one(
                root, folder, folder_fd, name, marker, present, caption, sample, margin, wanted
            )
            wanted = entry.pop("_wanted", wanted)
            result["archives"].append(entry)
            if entry["state"] == "unpacked":
                result["changed"] = True
                present = set(os.listdir(folder_fd))
            result["errors"] += [f"{folder}/{name}: {e}" for e in entry["errors"]]
        if result["changed"]:
            try:
                _write_marker(folder_fd, marker)
            except OSError as exc:  # e.g. a folder planted under the marker's (temporary) name
                result["errors"].append(f"{folder}/{MARKER}: cannot write the marker: {exc}")
    finally:
        os.close(folder_fd)
    return result


def _unpack_one(
    root: str,
    folder: str,
    folder_fd: int,
    name: str,
    marker: dict[str, Any],
    present: set,
    caption: str | None,
    sample: int,
    margin: int,
    wanted: list[str] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "state": "unchanged",
        "members": 0,
        "bytes": 0,
        "strip": "",
        "errors": [],
    }
    try:  # opened once, never through a link: every read below is of this descriptor
        fd = open_file_at(folder_fd, name, "the archive")
    except (ArchiveError, OSError) as exc:
        entry.update(state="failed", errors=[str(exc)])
        return entry
    with os.fdopen(fd, "rb") as source:
        ident = _archive_id(source.fileno())
        done = (marker.get("archives") or {}).get(name)
        if (
            isinstance(done, dict)
            and all(done.get(k) == ident[k] for k in ident)
            and all(t in present for t in done.get("top") or [])
        ):
            entry.update(
                members=done.get("members", 0), bytes=done.get("bytes", 0), strip=done.get("strip", "")
            )
            return entry
        entry["state"] = "failed"
        try:
            listed = members(source, name)
            files = [m.name for m in listed if not m.is_dir]
            if wanted is None and caption:
                wanted = _read_caption(root, caption, sample)
            entry["_wanted"] = wanted
            strip, missing = choose_strip(files, wanted or [])
            entry["strip"] = strip
            images = [m for m in files if m.lower().endswith(IMAGE_SUFFIXES)]
            if wanted and missing and len(missing) == len(wanted):
                raise ArchiveError(
                    f"none of the {len(wanted)} sampled images of {caption} is in it (e.g. {wanted[0]}; "
                    f"it holds e.g. {(images or files or ['nothing'])[0]})"
                )
            if missing:
                raise ArchiveError(
                    f"{len(missing)} of {len(wanted or [])} sampled images of {caption} are not in it "
                    f"(e.g. {missing[0]})"
                )
            size = sum(m.size for m in listed if not m.is_dir)
            free = os.fstatvfs(folder_fd)
            available = free.f_bavail * free.f_frsize
            if available < size + margin:
                raise ArchiveError(
                    f"not enough free space to unpack it: {_human(available)} available on the file system "
                    f"of {folder}, {_human(size + margin)} needed"
                )
            writer = _Writer(folder_fd)
            tops = set()
            count = 0
            try:
                for member, handle in _open_members(source, name):
                    relative = member.name
                    if strip:
                        if relative == strip:
                            continue
                        relative = relative[len(strip) + 1 :]
                    tops.add(relative.split("/", 1)[0])
                    if handle is None:
                        writer.directory(relative)
                    else:
                        writer.write(relative, handle, member.mtime)
                        count += 1
            finally:
                writer.close()
            tops.discard(name)
            entry.update(state="unpacked", members=count, bytes=size)
            marker.setdefault("archives", {})[name] = dict(
                ident, top=sorted(tops), members=count, bytes=size, strip=strip
            )
        except ArchiveError as exc:
            entry["errors"].append(str(exc))
        except (OSError, zipfile.BadZipFile, tarfile.TarError, ValueError, EOFError) as exc:
            entry["errors"].append(f"cannot unpack: {exc}")
        return entry


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assets_archive.py", description="Unpack the image archives.")
    actions = parser.add_subparsers(dest="action")
    sub = actions.add_parser("unpack")
    sub.add_argument("--root", required=True, help="directory no link below which is followed (work_dir)")
    sub.add_argument("--folder", required=True, help="the image folder")
    sub.add_argument("--caption", help="the caption JSON its images are checked against")
    sub.add_argument("--sample", type=int, default=256, help="caption records checked (0: all)")
    sub.add_argument("--margin", type=int, default=64 << 20, help="bytes kept free on top")
    args = parser.parse_args(argv)
    if args.action != "unpack":
        parser.print_usage(sys.stderr)
        return 2
    result = unpack(args.root, args.folder, args.caption, args.sample, args.margin)
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
