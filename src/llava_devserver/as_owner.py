"""Server-side: the writing side of an rsync into the container's tree runs as its owner, never as root.

Everything below work_dir belongs to the training container's user (uid 1000 in the guide's image), who
may swap any folder or file there for a link at any moment. Root that writes there could be led by such a
link anywhere on the server, so the assets are received as the owner: a planted link then leads the writes
only where that user could write anyway. This script is rsync's way to start its receiver:

    rsync -a --rsh "python3 as_owner.py UID:GID" SRC/ localhost:DEST/   # on the server (root sends)
    rsync -a --rsync-path "python3 as_owner.py UID:GID" SRC/ root@server:DEST/   # from another machine

It drops to UID:GID (no supplementary groups) and runs `rsync --server ...` without a shell, and nothing
else: no `--sender` (it only receives), no other program. `fanout_receive.py` (the fan-out key's forced
command) and `assets_manifest.py hub-download` use `drop_to` the same way. Standalone: Python 3.7+ standard
library only; the llava_assets role copies it into its root-owned helper folder.
"""

import os
import shutil
import sys

LOCAL_HOST = "localhost"  # the host rsync hands its remote shell for a same-server copy (localhost:DEST)


class Refused(Exception):
    pass


def parse_owner(text):
    """UID:GID, both numbers: (uid, gid)."""
    uid, sep, gid = str(text).partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise Refused(f"owner {text!a} is not UID:GID")
    return int(uid), int(gid)


def drop_to(uid, gid):
    """Become uid:gid with no supplementary groups (nothing to do when this process already is)."""
    if (os.getuid(), os.geteuid(), os.getgid()) == (uid, uid, gid):
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:  # setuid must not leave a way back
        raise Refused(f"could not become uid {uid}")


def program(name):
    """The full path of NAME, found while still root: after the drop nothing more is imported or searched
    (the Python running this may live where the owner cannot read)."""
    found = shutil.which(name)
    if not found:
        raise Refused(f"{name} not found on PATH")
    return found


def run_as(uid, gid, argv):
    """Run ARGV as uid:gid in place of this process (no return): the program is found while still root,
    then the privileges go."""
    path = program(argv[0])
    drop_to(uid, gid)
    os.umask(0o022)
    os.execv(path, argv)


def receiver_argv(args):
    """The rsync receiver to run for rsync's remote-shell arguments (`[localhost] rsync --server ...`, or
    `--server ...` as --rsync-path gives them); raises Refused for anything else."""
    argv = list(args)
    if argv[:1] == [LOCAL_HOST]:
        argv = argv[1:]
    if argv[:1] == ["--server"]:
        argv = ["rsync", *argv]
    if argv[:2] != ["rsync", "--server"]:
        raise Refused(f"only an rsync receiver runs as the owner, not {' '.join(args)[:80]!a}")
    if "--sender" in argv:
        raise Refused("this runs rsync's receiving side only, never a sender")
    return argv


def main(args=None):
    args = list(sys.argv[1:] if args is None else args)
    try:
        if not args:
            raise Refused("usage: as_owner.py UID:GID [localhost] rsync --server ...")
        uid, gid = parse_owner(args[0])
        run_as(uid, gid, receiver_argv(args[1:]))
    except (Refused, OSError) as error:
        sys.stderr.write(f"llava-devserver as_owner.py: refused: {error}\n")  # stdout is rsync's protocol
    return 1


if __name__ == "__main__":
    sys.exit(main())
