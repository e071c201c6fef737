#!/usr/bin/env python3
"""Forced command of the llava-devserver fan-out key: rsync may only RECEIVE, only into the asset folders.

The llava_assets role authorizes its per-run fan-out key on each receiver as

    command="/usr/bin/python3 /usr/local/lib/llava-devserver/fanout_receive.py --owner UID:GID DEST...",
            from=SEED,restrict

so whoever holds the key (the seed, for the minutes of the copy) gets no shell: sshd runs this script, which
reads the command the client asked for (SSH_ORIGINAL_COMMAND), lets through only what `rsync -a --delete`
sends to a receiver (`rsync --server <flags> . DEST`, no `--sender`, options from a short list) with DEST one
of the folders named on its own command line, and then runs that rsync without a shell, as UID:GID, the owner
of the container's tree (as_owner.py: root never writes where the container can plant links). Anything else
is refused with a message on stderr (the seed's rsync shows it) and exit status 1.

Like rrsync in spirit, but self-contained (rrsync is not on every DevServer OS) and narrower: a fixed list of
destinations instead of a directory tree. Standalone: Python 3.7+ standard library only, runs as root.
"""

import os
import posixpath
import re
import shlex
import sys

try:  # in the package
    from llava_devserver import as_owner
except ImportError:  # in the helper folder on a server, beside as_owner.py
    import as_owner  # type: ignore[no-redef]

# The receiver's short options that `rsync -a --delete [--stats]` sends (`-logDtpre.iLsfxCIvu`), plus the
# harmless ones of the same family; `e` starts the protocol capability string, which runs to the end.
# Not allowed: anything naming another path (-T, -K, --backup-dir, --link-dest, ...) or reading files.
_SHORT = re.compile(r"-[logDtprvuzcHAXSWxIn]*(e[.A-Za-z0-9]*)?")
_LONG = frozenset(
    (
        "--delete",
        "--delete-before",
        "--delete-during",
        "--delete-delay",
        "--delete-after",
        "--stats",
        "--numeric-ids",
        "--partial",
        "--inplace",
        "--no-inc-recursive",
    )
)


class Refused(Exception):
    pass


def _clean(path):
    return posixpath.normpath(path) if path not in ("", "/") else path


def decide(command, allowed):
    """The argv to run for the SSH command `command`, given the allowed destinations; raises Refused."""
    if not command:
        raise Refused("this key only runs rsync into the asset folders; no shell")
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise Refused(f"unreadable command: {error}") from None
    if argv[:2] != ["rsync", "--server"]:
        raise Refused("only `rsync --server` may run with this key")
    if "--sender" in argv:
        raise Refused("this key may only receive files, never send them")
    try:
        dot = argv.index(".", 2)
    except ValueError:
        raise Refused("no `.` before the destination") from None
    for option in argv[2:dot]:
        if option in _LONG or _SHORT.fullmatch(option):
            continue
        raise Refused(f"option {option!r} is not allowed with this key")
    operands = argv[dot + 1 :]
    if len(operands) != 1:
        raise Refused(f"exactly one destination expected, got {len(operands)}")
    dest = operands[0]
    if not dest.startswith("/") or "\x00" in dest or "\n" in dest:
        raise Refused("the destination must be an absolute path")
    wanted = _clean(dest.rstrip("/") or "/")
    if ".." in dest.split("/") or wanted not in {_clean(a.rstrip("/") or "/") for a in allowed}:
        raise Refused(f"{dest} is not one of the asset folders this key may write")
    # No symlink on the way: root must not be steered into another tree by a link in a parent.
    if os.path.realpath(wanted) != wanted:
        raise Refused(f"{dest} passes through a symbolic link ({os.path.realpath(wanted)}); refusing")
    return argv


def main(args=None):
    allowed = list(sys.argv[1:] if args is None else args)
    try:
        if allowed[:1] != ["--owner"] or len(allowed) < 3:
            raise Refused("the key's command names no --owner UID:GID and destination")
        uid, gid = as_owner.parse_owner(allowed[1])
        as_owner.run_as(uid, gid, decide(os.environ.get("SSH_ORIGINAL_COMMAND", ""), allowed[2:]))
    except (Refused, as_owner.Refused, OSError) as error:
        sys.stderr.write(f"llava-devserver fan-out key: refused: {error}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
