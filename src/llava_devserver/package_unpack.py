"""What of the AscendCloud package goes where in work_dir: the member names judged, the sync made safe.

Standalone on purpose: Python 3 standard library only (3.7+), so the role llava_workspace copies this file
to each server (ansible.builtin.script) and runs it there as root with the server's `python3`:

    python3 package_unpack.py plan --zip Z --label NAME [--inner-pattern RE] [--state-dir-name NAME]
                                   [--reserve NAME ...] [--protect JSON] [--keep PATTERN ...]
    python3 package_unpack.py sync --staging S --work-dir W --owner UID:GID [--state-dir-name NAME]
                                   [--keep PATTERN ...] DIR [DIR ...]

`plan` reads the zip's member names (nothing is extracted) and prints ONE JSON object: `directories` (the
top-level directories, the only things that are synced), `files` (top-level files: left in staging),
`inner` (with --inner-pattern: the member that is the inner zip, or null), or exits 1 with
`{"error": "..."}` naming the zip. A member is normalized (`./a//b` is `a/b`); an absolute member, one with
a `..` component, one that is the zip's root itself (`./`, `.`) or has a control character is refused, as is
a top-level directory that is reserved (our state folder, --state-dir-name; the package's own names) or
whose sync would delete a protected path (output_dir, an asset) that no --keep pattern covers.

`sync` runs `rsync -a --delete` from STAGING/DIR/ to WORK_DIR/DIR/ for each DIR: a DIR is one plain name,
so the `--delete` never reaches work_dir itself; a DIR whose source or destination is a symlink is refused.
STAGING is root's (never below work_dir). Everything below work_dir belongs to the training container's user,
who may swap any of it for a link at any moment, so the side of rsync that writes there does not run as root:
rsync's receiver is started through this script's `receive-as UID:GID` (as rsync's remote shell, the way
`--rsync-path="sudo rsync"` is used the other way round), which drops to the workspace owner before it runs
`rsync --server`. A link the container planted then leads the writes only where that user could write anyway,
and what is synced belongs to that user as the guide's `chown -R` wants.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import unicodedata
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class UnpackError(Exception):
    """A package that cannot be unpacked safely; the message names the zip and the member."""


def _control_problem(name: str) -> str | None:
    for char in name:
        if char == "\0":
            return "a NUL character"
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            return f"the control character {char!a}"
    return None


def normalize_member(label: str, name: str) -> str:
    """A member name as a relative path without `.` or empty parts (`./a//b/` -> `a/b`), or UnpackError."""
    problem = _control_problem(name)
    if problem:
        raise UnpackError(f"{label}: the member {name!a} has {problem} in its name")
    if "\\" in name:
        raise UnpackError(f"{label}: the member {name!a} has a backslash in its name")
    if name.startswith("/"):
        raise UnpackError(f"{label}: the member {name!r} is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise UnpackError(f"{label}: the member {name!r} has a '..' component (it would leave the folder)")
    kept = [part for part in parts if part not in ("", ".")]
    if not kept:
        raise UnpackError(
            f"{label}: the member {name!r} is the zip's root itself (it normalizes to '.'); unpacking it "
            "would sync over the whole work_dir"
        )
    return "/".join(kept)


def read_members(path: str, label: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise UnpackError(f"{label}: cannot read the zip: {exc}") from exc


def _kept(parts: Sequence[str], keep: Sequence[str]) -> bool:
    """rsync's anchored exclude patterns (`/LLAVA/llava-train/*/LLaVA/`, relative to a top-level
    directory) cover the path `parts` (also relative to it): the transfer leaves it alone."""
    for pattern in keep:
        pieces = [piece for piece in pattern.strip("/").split("/") if piece]
        # by index, not zip(): ruff wants its strict argument, which Python 3.7 lacks
        if (
            pieces
            and len(parts) >= len(pieces)
            and all(fnmatch.fnmatchcase(parts[i], piece) for i, piece in enumerate(pieces))
        ):
            return True
    return False


def plan(
    label: str,
    names: Sequence[str],
    inner_pattern: str | None = None,
    reserved: Sequence[str] = (),
    protected: Mapping[str, str] | None = None,
    keep: Sequence[str] = (),
    state_dir_name: str | None = None,
) -> dict[str, Any]:
    """The top-level directories to sync (and files not synced), or UnpackError.

    `reserved`: top-level names that must not come from the package (besides `state_dir_name`, our
    state folder in work_dir);
    `protected`: what -> path relative to work_dir that a sync must not delete; `keep`: rsync exclude
    patterns relative to a top-level directory (what the sync leaves alone).
    """
    if not names:
        raise UnpackError(f"{label}: the zip is empty")
    directories: set[str] = set()
    files: set[str] = set()
    members = []
    for name in names:
        member = normalize_member(label, name)
        members.append(member)
        top = member.split("/")[0]
        if "/" in member or name.endswith("/"):
            directories.add(top)
        else:
            files.add(top)
    both = sorted(directories & files)
    if both:
        raise UnpackError(f"{label}: {both[0]!r} is both a file and a directory in the zip")
    for name in sorted(directories):
        if name == state_dir_name or name in reserved:
            what = (
                "llava-devserver's state folder" if name == state_dir_name else "a name of the package itself"
            )
            raise UnpackError(
                f"{label}: its top-level directory {name!r} would replace work_dir/{name} ({what}); this is "
                "not an AscendCloud-AIGC package"
            )
    for what, path in sorted((protected or {}).items()):
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if parts and parts[0] in directories and not _kept(parts[1:], keep):
            top, where = parts[0], "/".join(parts)
            raise UnpackError(
                f"{label}: its top-level directory {top!r} replaces work_dir/{top} with rsync --delete, "
                f"which would delete {what} (work_dir/{where}); move {what} out of work_dir/{top} or "
                "inside the LLaVA tree"
            )
    inner = None
    if inner_pattern is not None:
        regex = re.compile(inner_pattern)
        inner = next((m for m in members if "/" not in m and regex.fullmatch(m)), None)
    return {"directories": sorted(directories), "files": sorted(files), "inner": inner}


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and not _control_problem(name)


def _owner(text: str) -> tuple[int, int]:
    """UID:GID, both numbers."""
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise UnpackError(f"owner {text!a} is not UID:GID")
    return int(uid), int(gid)


def sync_argv(
    staging: str,
    work_dir: str,
    name: str,
    owner: str,
    keep: Sequence[str] = (),
    state_dir_name: str | None = None,
) -> list[str]:
    """`rsync -a --delete STAGING/NAME/ WORK_DIR/NAME/`, the receiver as OWNER: NAME one plain name, so never
    work_dir itself (nor our state folder)."""
    if not _plain_name(name) or name == state_dir_name:
        raise UnpackError(f"refusing to sync {name!a}: not one plain directory name")
    uid, gid = _owner(owner)
    excludes = ["--exclude=" + pattern for pattern in keep]
    source = os.path.join(staging, name) + "/"
    dest = os.path.join(work_dir, name) + "/"
    # -e: the receiver's "remote shell" is this script dropping to OWNER; -s: the paths travel inside rsync's
    # protocol, not on the receiver's command line (no shell quoting of either side in between)
    receiver = f"{sys.executable} {os.path.abspath(__file__)} receive-as {uid}:{gid}"
    return [
        "rsync", "-a", "--no-owner", "--no-group", "--delete", "--protect-args", *excludes,
        "--rsh", receiver, "--", source, f"{RECEIVER_HOST}:{dest}",
    ]  # fmt: skip


RECEIVER_HOST = "localhost"  # what rsync hands its remote shell as the host; receive-as checks it


def receive_as(owner: str, argv: Sequence[str], execv: Callable[..., Any] = os.execv) -> None:
    """rsync's remote shell for `sync`: become OWNER (no supplementary groups), then run the receiver.

    rsync calls it as `receive-as UID:GID localhost rsync --server ...`; anything else is refused.
    """
    uid, gid = _owner(owner)
    command = list(argv)
    if command[:1] != [RECEIVER_HOST] or command[1:3] != ["rsync", "--server"]:
        raise UnpackError(f"receive-as runs only an rsync receiver, not {' '.join(command)[:80]!a}")
    rsync = shutil.which("rsync")  # found as root: after the drop nothing more is searched or imported
    if not rsync:
        raise UnpackError("rsync not found on PATH")
    if (os.getuid(), os.getgid()) != (uid, gid):
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    execv(rsync, command[1:])


def _root_only(staging: str, work_dir: str) -> None:
    """The staging folder is root's: no link on its way, owned by root, outside work_dir."""
    real_work = os.path.realpath(work_dir)
    real_staging = os.path.realpath(staging)
    if real_staging != os.path.abspath(staging):
        raise UnpackError(f"refusing to sync from {staging}: a link on its way leads to {real_staging}")
    if real_staging == real_work or real_staging.startswith(real_work + "/"):
        raise UnpackError(f"refusing to sync from {staging}: it is in work_dir, where the container writes")
    if os.lstat(staging).st_uid != os.getuid():
        raise UnpackError(f"refusing to sync from {staging}: it is not owned by uid {os.getuid()}")


def _reachable_by(path: str, uid: int, gid: int) -> None:
    """The owner the receiver runs as can walk to PATH (each folder above it lets uid:gid through)."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        info = os.stat(folder)
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed and uid != 0:
            raise UnpackError(
                f"the workspace owner {uid}:{gid} cannot reach {path}: {folder} is mode "
                f"{stat.S_IMODE(info.st_mode):04o}, owned by {info.st_uid}:{info.st_gid}; let it through "
                "(e.g. chmod o+x) or choose another work_dir"
            )
        if folder == "/":
            return
        folder = os.path.dirname(folder)


def sync(
    staging: str,
    work_dir: str,
    names: Sequence[str],
    owner: str,
    keep: Sequence[str] = (),
    run: Callable[..., Any] = subprocess.run,
    state_dir_name: str | None = None,
) -> list[str]:
    """Sync each top-level directory from staging into work_dir; the names synced, or UnpackError."""
    argvs = []
    _root_only(staging, work_dir)
    _reachable_by(work_dir, *_owner(owner))
    for name in names:
        argv = sync_argv(staging, work_dir, name, owner, keep, state_dir_name)
        source = os.lstat(os.path.join(staging, name))
        if not stat.S_ISDIR(source.st_mode):
            raise UnpackError(f"refusing to sync {name!r}: the package's {name!r} is not a directory")
        dest = os.path.join(work_dir, name)
        try:
            found = os.lstat(dest)
        except FileNotFoundError:
            found = None
        if found is not None and not stat.S_ISDIR(found.st_mode):
            kind = "a symlink" if stat.S_ISLNK(found.st_mode) else "not a directory"
            raise UnpackError(f"refusing to sync into {dest}: it is {kind}; remove it and run again")
        argvs.append(argv)
    for argv in argvs:  # every check first: nothing is changed when one fails
        result = run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if result.returncode != 0:
            command = " ".join(argv)
            raise UnpackError(f"{command} failed (exit {result.returncode}): {result.stderr.strip()}")
    return list(names)


def protected_paths(llava: Mapping[str, Any]) -> dict[str, str]:
    """What a package sync must never delete, from the llava dict: setting -> path relative to work_dir.

    output_dir and the destinations of fetched assets, where they lie in container_work_dir.
    """
    base = os.path.normpath(str(llava["container_work_dir"]))
    places = {"output_dir": str(llava["output_dir"])}
    for name, spec in sorted((llava.get("assets") or {}).items()):
        if spec.get("source", "none") != "none":
            places["assets." + name] = str(spec["dest"])
    relative = {}
    for what, path in places.items():
        normal = os.path.normpath(path)
        if normal.startswith(base + "/"):
            relative[what] = normal[len(base) + 1 :]
    return relative


def helper_error(result: Mapping[str, Any]) -> str:
    """Why a run of this helper failed (its JSON `error`, else stderr or Ansible's message), one line."""
    try:
        error = json.loads(str(result.get("stdout") or "")).get("error")
    except (ValueError, AttributeError):
        error = None
    text = error or str(result.get("stderr") or "").strip() or str(result.get("msg") or "")
    return " ".join(text.split()) or f"package_unpack.py exited {result.get('rc')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="package_unpack.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    plan_p = sub.add_parser("plan")
    plan_p.add_argument("--zip", required=True)
    plan_p.add_argument("--label", required=True)
    plan_p.add_argument("--inner-pattern")
    plan_p.add_argument("--state-dir-name")
    plan_p.add_argument("--reserve", action="append", default=[])
    plan_p.add_argument("--protect", default="{}")
    plan_p.add_argument("--keep", action="append", default=[])
    sync_p = sub.add_parser("sync")
    sync_p.add_argument("--staging", required=True)
    sync_p.add_argument("--work-dir", required=True)
    sync_p.add_argument("--owner", required=True, help="UID:GID the writing side of rsync runs as")
    sync_p.add_argument("--state-dir-name")
    sync_p.add_argument("--keep", action="append", default=[])
    sync_p.add_argument("names", nargs="+")
    receive_p = sub.add_parser("receive-as")
    receive_p.add_argument("owner")
    receive_p.add_argument("rsync_argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "receive-as":  # stdout is rsync's protocol: errors go to stderr, which rsync shows
        try:
            receive_as(args.owner, args.rsync_argv)  # replaces this process with the receiver
        except (UnpackError, OSError) as exc:
            print(f"package_unpack.py receive-as: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "plan":
            names = read_members(args.zip, args.label)
            protected = json.loads(args.protect)
            result = plan(
                args.label, names, args.inner_pattern, args.reserve, protected, args.keep, args.state_dir_name
            )
        elif args.command == "sync":
            synced = sync(
                args.staging,
                args.work_dir,
                args.names,
                args.owner,
                args.keep,
                state_dir_name=args.state_dir_name,
            )
            result = {"synced": synced}
        else:
            _parser().print_usage(sys.stderr)
            return 2
    except (UnpackError, OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
