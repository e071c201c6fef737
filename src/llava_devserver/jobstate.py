"""The pretraining job on one DevServer: plan, start, probe and stop it, and keep its state file.

Standalone on purpose: Python 3 standard library only (3.7+), so the role llava_pretrain copies this file
to each server and runs it there as root with whatever `python3` the server has:

    python3 jobstate.py plan    WHERE --output-dir DIR --node-rank N [--restart] [--check] ...
    python3 jobstate.py start   WHERE --llava-dir L --script scripts/v1_5/pretrain_new.sh --node-rank N
                                      [--user U] [--owner UID:GID] [--check] ...
    python3 jobstate.py probe   WHERE [--no-write]
    python3 jobstate.py stop    WHERE [--grace 60] [--check]
    python3 jobstate.py status  WHERE [--lines 400]
    python3 jobstate.py log     WHERE [-n 100] [--follow]
    python3 jobstate.py fetch   WHERE
    python3 jobstate.py install WHERE --tree L --manifest FILE --owner UID:GID [--backup-suffix .orig]
                                      [--check]

WHERE is `--work-dir W --container-work-dir C --state-dir S --container NAME [--host-state-dir H]`
(S: llava.state_dir; H: llava.host_state_dir, by default /var/lib/llava-devserver/NAME).

Each but `log` prints ONE JSON object with `llava_progress` (Contract 6 of docs/architecture.md: the live
display reads it) and `job` (the state file as it now is), exits 0, or 1 with `{"error": "..."}` when it
cannot; `log` prints the log itself (exit 3: no job, 1: an error on stderr).

Two folders, because the training container is not trusted (its user can write all of work_dir):

- The state file `job.json` and its lock live in H (`/var/lib/llava-devserver/<container>/` on the host,
  llava.host_state_dir), a root-only (0700) folder outside every bind mount: the container can neither read
  nor replace them (the roles keep their markers and the assets manifest there too).
  It holds `state` (running, finished, failed, stopped), `pid` (inside the container, of a wrapper started
  with setsid, so it leads the job's process group), `log` (host path of this node's log), `node_rank`,
  `container`, `started_at`/`updated_at`/`finished_at`, `exit_code`, the last progress (`step`,
  `total_steps`, `loss`, `samples_per_s`) and `loss_lines` (whether this node's log prints the loss).
- The job's log, written by the container's user, lives in the state folder's `S/logs/` (S, llava.state_dir,
  lies under W, which is mounted at C in the training container). The host side never follows a link there:
  the log's name is derived (`train-<UTC>.log`, checked against a fixed pattern), every folder on the way
  from W is opened with O_NOFOLLOW relative to the one before, a file is opened only when lstat says it is a
  regular file with one link, and its real path must lie in the log folder. Anything else fails with
  "state folder ... was tampered with: ...", and nothing is read, written or chowned through it.

The LLaVA tree is the container's too: `install` writes the rendered launch script and DeepSpeed config
into it the same way (each folder opened with O_NOFOLLOW, a file replaced only when it is a regular file with
one link, written to an O_EXCL temporary file and renamed through the folder's descriptor, owner and mode set
on descriptors); the content comes from a manifest in the root-only folder.

The wrapper runs the launch script with its output appended to the log, forwards SIGTERM to it, and writes
the script's exit status to `<log stem>.exit` when it ends: that file, not the Ansible connection, says how
the job ended.

The controller side (the filter plugin of the role) imports the pure functions: `fleet_plan` decides, from
every server's plan, whether the job is running, done, or to be (re)started on all nodes together.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

UTC = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; servers run 3.7 and newer)
# The default of --host-state-dir's parent, and another root for tests on one machine: config.HOST_STATE_ROOT
# and config.HOST_STATE_ROOT_ENV (the roles pass llava.host_state_dir).
STATE_ROOT = "/var/lib/llava-devserver"  # root-only, on the host, outside every bind mount
STATE_ROOT_ENV = "LLAVA_DEVSERVER_STATE_ROOT"
STATE_NAME = "job.json"
LOCK_NAME = "job.lock"
LOG_DIR = "logs"
FETCH_NAME = "fetched-train.log"  # the copy of the loss log that the role fetches, in the root-only folder
LOG_NAME = re.compile(r"train-\d{8}T\d{6}Z\.log")
CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
JOB_PATTERN = "llava/train/train_mem.py"  # what every process of a LLaVA training job has in its command line
PROJECTOR = "mm_projector.bin"
STATES = ("running", "finished", "failed", "stopped")
TAIL_BYTES = 256 * 1024
WRAPPER_NAME = "llava-job"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# The launch: a wrapper, the leader of a new session and process group (setsid), runs the script with its
# output appended to the log, passes SIGTERM/SIGINT/SIGHUP on to it, and writes its exit status beside the
# log. It writes its own pid first (whether or not setsid had to fork). Arguments: log, exit file, pid file,
# script (relative to the working directory, the LLaVA tree).
WRAPPER = r"""
echo $$ >"$3"
echo "llava-devserver: $(date -u +%Y-%m-%dT%H:%M:%SZ) starting $4 (pid $$)" >>"$1"
bash "$4" >>"$1" 2>&1 </dev/null &
child=$!
trap "kill -TERM $child 2>/dev/null" TERM INT HUP
while :; do
  wait "$child"; rc=$?
  # Above 128: the wait was interrupted by a trapped signal, or the script died of a signal.
  [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null && continue
  break
done
echo "llava-devserver: $(date -u +%Y-%m-%dT%H:%M:%SZ) $4 exited with status $rc" >>"$1"
echo "$rc" >"$2.tmp" && mv -f "$2.tmp" "$2"
"""

LAUNCH = r"""
set -e
rm -f "$2" "$3"
setsid bash -c "$5" {name} "$1" "$2" "$3" "$4" >/dev/null 2>&1 </dev/null &
for _ in $(seq 100); do [ -s "$3" ] && break; sleep 0.1; done
cat "$3"
""".replace("{name}", WRAPPER_NAME)

# SIGTERM to the process group and to every descendant of the wrapper (torchrun starts its workers in
# sessions of their own, so the group alone does not reach them), SIGKILL to all of them after the grace
# period (the signals of playbooks/down.yml). A process counts as gone once its /proc entry has no command
# line (a zombie has none). Exit 0: nothing ran; 3: it stopped; 4: SIGKILL was needed.
STOP = r"""
pid=$1; grace=$2
alive() { [ -n "$(tr -d '\0' <"/proc/$1/cmdline" 2>/dev/null)" ]; }
parents() {
  for s in /proc/[0-9]*/stat; do
    read -r line <"$s" 2>/dev/null || continue
    rest=${line##*) }
    set -- $rest
    p=${s#/proc/}
    echo "${p%/stat} $2"
  done
}
family() {
  table=$(parents); found=" $1 "; grew=1
  while [ -n "$grew" ]; do
    grew=""
    while read -r child parent; do
      case "$found" in *" $parent "*) ;; *) continue ;; esac
      case "$found" in *" $child "*) ;; *) found="$found$child "; grew=1 ;; esac
    done <<<"$table"
  done
  echo $found
}
anyalive() { for p in $pids; do alive "$p" && return 0; done; return 1; }
alive "$pid" || exit 0
pids=$(family "$pid")
kill -TERM -- "-$pid" 2>/dev/null
for p in $pids; do kill -TERM "$p" 2>/dev/null; done
i=0
while [ "$i" -lt "$grace" ]; do anyalive || exit 3; sleep 1; i=$((i + 1)); done
kill -KILL -- "-$pid" 2>/dev/null
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
sleep 1
exit 4
"""

# Every process's pid and command line, one per line; the caller filters (so this text holds no pattern).
PROCESSES = r"""
for d in /proc/[0-9]*; do
  c=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
  [ -n "$c" ] && printf '%s\t%s\n' "${d#/proc/}" "$c"
done
exit 0
"""


class JobError(RuntimeError):
    """Something the job cannot do; the message says what and what to do."""


class TamperError(JobError):
    """Something in the container-writable state folder is not what the host side put there."""


# --- paths ----------------------------------------------------------------------------------------------


def host_path(work_dir: str, container_work_dir: str, container_path: str) -> str:
    """The host path of a container path under container_work_dir (work_dir is mounted there)."""
    base = container_work_dir.rstrip("/") or "/"
    path = os.path.normpath(container_path)
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise ValueError(
            f"{container_path} is not under container_work_dir {container_work_dir}, so it has no host path"
        )
    return os.path.join(work_dir.rstrip("/") or "/", os.path.relpath(path, base)).rstrip("/.") or "/"


def container_path(work_dir: str, container_work_dir: str, path_on_host: str) -> str:
    """The inverse of host_path."""
    base = work_dir.rstrip("/") or "/"
    path = os.path.normpath(path_on_host)
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"{path_on_host} is not under work_dir {work_dir}")
    rel = os.path.relpath(path, base)
    return container_work_dir.rstrip("/") if rel == "." else os.path.join(container_work_dir, rel)


def state_root() -> str:
    return os.environ.get(STATE_ROOT_ENV) or STATE_ROOT


def _outside(path: str, base: str) -> bool:
    """Neither is the other nor inside it (normalized absolute paths)."""
    return path != base and not path.startswith(base.rstrip("/") + "/") and not base.startswith(path + "/")


class Paths:
    """Where the job's files are: the root-only state on the host, the log in the container-writable
    state folder (host and container paths)."""

    def __init__(
        self,
        work_dir: str,
        container_work_dir: str,
        state_dir: str,
        container: str = "llava-pretrain",
        host_state_dir: str | None = None,
    ) -> None:
        if not CONTAINER_NAME.fullmatch(container):
            raise ValueError(f"container name {container!r}: expected letters, digits, '_', '.', '-'")
        self.work_dir = os.path.normpath(work_dir)
        self.container_work_dir = container_work_dir
        self.state_dir = os.path.normpath(state_dir)  # container-writable (llava.state_dir)
        self.in_container(self.state_dir)  # ValueError unless under work_dir: the container must see the logs
        self.log_dir = os.path.join(self.state_dir, LOG_DIR)  # container-writable
        # root-only (llava.host_state_dir): never under work_dir, which the container can write
        private = os.path.normpath(host_state_dir or os.path.join(state_root(), container))
        if not os.path.isabs(private) or private == os.sep or not _outside(private, self.work_dir):
            raise ValueError(
                f"host state folder {private}: expected an absolute folder outside work_dir {self.work_dir}"
            )
        self.private_dir = private
        self.private_root = os.path.dirname(private)
        self.state_file = os.path.join(self.private_dir, STATE_NAME)
        self.lock_file = os.path.join(self.private_dir, LOCK_NAME)
        self.fetch_file = os.path.join(self.private_dir, FETCH_NAME)

    def in_container(self, path_on_host: str) -> str:
        return container_path(self.work_dir, self.container_work_dir, path_on_host)

    def new_log(self, now: datetime) -> str:
        return os.path.join(self.log_dir, "train-" + now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + ".log")

    def log_name(self, job: Mapping[str, Any]) -> str | None:
        """The name of the job's log in the log folder, or None when the record names no log of ours
        (e.g. a record made for another work_dir)."""
        log = job.get("log")
        if not isinstance(log, str) or os.path.dirname(log) != self.log_dir:
            return None
        name = os.path.basename(log)
        return name if LOG_NAME.fullmatch(name) else None


def exit_file(log: str) -> str:
    return (log[:-4] if log.endswith(".log") else log) + ".exit"


def pid_file(log: str) -> str:
    return (log[:-4] if log.endswith(".log") else log) + ".pid"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- the container-writable state folder: never followed ------------------------------------------------


def _tampered(paths: Paths, rel: str, why: str) -> TamperError:
    return TamperError(
        f"state folder {paths.state_dir} was tampered with: {rel} {why}; nothing was read, written or "
        f"changed through it. Something in the training container replaced it: remove {paths.work_dir}/{rel} "
        "and run again"
    )


def _what(dir_fd: int, name: str) -> str:
    """What an entry is, without following it (for the tamper message)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return "is not what it was a moment ago"
    if stat.S_ISLNK(info.st_mode):
        try:
            return f"is a symbolic link (to {os.readlink(name, dir_fd=dir_fd)!r}, not followed)"
        except OSError:
            return "is a symbolic link (not followed)"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if stat.S_ISREG(info.st_mode):
        return f"is a regular file with {info.st_nlink} hard links" if info.st_nlink > 1 else "is a file"
    return "is a device, FIFO or socket, not a regular file"


def _open_dir(paths: Paths, parent_fd: int, name: str, rel: str, owner: tuple[int, int] | None) -> int:
    """Open (with owner: create, and chown through the descriptor) a sub-folder without following links."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        if owner is None:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        try:
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _tampered(paths, rel, _what(parent_fd, name)) from exc
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _tampered(paths, rel, _what(parent_fd, name)) from exc
        raise
    if owner is not None and os.geteuid() == 0:
        info = os.fstat(fd)
        if (info.st_uid, info.st_gid) != owner:
            os.fchown(fd, owner[0], owner[1])  # the descriptor: this very folder, never a link's target
    return fd


def _log_dir_parts(paths: Paths) -> list[str]:
    """The names from work_dir down to the log folder (the state folder's path, then logs)."""
    return os.path.relpath(paths.log_dir, paths.work_dir).split(os.sep)


@contextlib.contextmanager
def log_folder(paths: Paths, owner: tuple[int, int] | None = None) -> Iterator[int]:
    """A descriptor of S/logs (S: the state folder), reached from work_dir without following links (created
    with owner)."""
    # work_dir itself is the operator's path and the container's mount point (which it cannot replace);
    # below it everything is the container's.
    fds = [os.open(paths.work_dir, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)]
    try:
        rel = ""
        for name in _log_dir_parts(paths):
            rel = f"{rel}/{name}" if rel else name
            fds.append(_open_dir(paths, fds[-1], name, rel, owner))
        yield fds[-1]
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _open_log_file(paths: Paths, dir_fd: int, name: str) -> int | None:
    """A read descriptor of a regular, singly linked file in the log folder; None when it is absent."""
    rel = "/".join([*_log_dir_parts(paths), name])
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    # lstat first: opening a device node the container made (its root may mknod) must not happen at all.
    if not stat.S_ISREG(before.st_mode) or before.st_nlink != 1:
        raise _tampered(paths, rel, _what(dir_fd, name))
    real = os.path.realpath(os.path.join(paths.log_dir, name))
    if os.path.dirname(real) != os.path.realpath(paths.log_dir):
        raise _tampered(paths, rel, f"resolves to {real}, outside {paths.log_dir}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _tampered(paths, rel, _what(dir_fd, name)) from exc
        raise
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _tampered(paths, rel, "was replaced while it was opened")
    return fd


def _read_fd_tail(fd: int, size: int) -> bytes:
    length = os.fstat(fd).st_size
    os.lseek(fd, max(0, length - size), os.SEEK_SET)
    chunks = []
    remaining = min(size, length)
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_log_file(paths: Paths, name: str, size: int = TAIL_BYTES) -> str | None:
    """The end of a file of the log folder (the log, its exit file), read safely; None when absent."""
    try:
        with log_folder(paths) as dir_fd:
            fd = _open_log_file(paths, dir_fd, name)
            if fd is None:
                return None
            try:
                return _read_fd_tail(fd, size).decode("utf-8", errors="replace")
            finally:
                os.close(fd)
    except FileNotFoundError:
        return None


def read_tail(paths: Paths, job: Mapping[str, Any], size: int = TAIL_BYTES) -> str:
    name = paths.log_name(job)
    return (read_log_file(paths, name, size) or "") if name else ""


def read_exit_code(paths: Paths, job: Mapping[str, Any]) -> int | None:
    name = paths.log_name(job)
    text = read_log_file(paths, exit_file(name), 64) if name else None
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def projector_file(paths: Paths, output_dir: str | None) -> dict[str, Any] | None:
    """mm_projector.bin in output_dir (a container path): its paths and size, looked at without following
    links (output_dir is the container's too); None when it is not there as a regular file."""
    if not output_dir:
        return None
    try:
        path = host_path(paths.work_dir, paths.container_work_dir, os.path.join(output_dir, PROJECTOR))
    except ValueError:
        return None
    parts = os.path.relpath(path, paths.work_dir).split(os.sep)
    fds = [os.open(paths.work_dir, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC, dir_fd=fds[-1]))
        info = os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False)
    except OSError:
        return None
    finally:
        for fd in reversed(fds):
            os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    return {
        "path": os.path.join(output_dir, PROJECTOR),
        "host_path": path,
        "bytes": info.st_size,
        "mtime": iso(datetime.fromtimestamp(info.st_mtime, UTC)),
    }


# --- the LLaVA tree: the rendered files written without following links ----------------------------------


def _tree_refused(tree: str, rel: str, why: str) -> TamperError:
    return TamperError(
        f"the LLaVA tree {tree} was tampered with: {rel} {why}; nothing was read or written through it. "
        "Something in the training container replaced it: run playbooks/workspace.yml to rebuild the tree"
    )


def _walk_dirs(base: str, parts: Sequence[str], refused: Callable[[str, str], TamperError]) -> list[int]:
    """Descriptors of base and of each folder below it (the last is the innermost), no link followed."""
    fds = [os.open(base, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)]
    try:
        for index, part in enumerate(parts):
            try:
                fds.append(
                    os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC, dir_fd=fds[-1])
                )
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise refused("/".join(parts[: index + 1]), _what(fds[-1], part)) from exc
                raise
    except BaseException:
        for fd in reversed(fds):
            os.close(fd)
        raise
    return fds


def _regular_or_absent(dir_fd: int, name: str, rel: str, refused: Callable[[str, str], TamperError]) -> Any:
    """lstat of a file that we may replace: None when absent, a refusal unless a regular single-link file."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise refused(rel, _what(dir_fd, name))
    return info


def _read_at(
    dir_fd: int, name: str, before: Any, rel: str, refused: Callable[[str, str], TamperError]
) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise refused(rel, "was replaced while it was opened")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _write_at(dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Replace dir_fd/name atomically: an O_EXCL temporary file beside it, owner and mode set on its
    descriptor, renamed over the old name through the folder's descriptor (a link there is replaced, not
    followed)."""
    tmp = f".{name}.llava-devserver-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def install_files(
    paths: Paths,
    tree: str,
    files: Mapping[str, str],
    owner: tuple[int, int] | None,
    backup_suffix: str = ".orig",
    check: bool = False,
) -> dict[str, Any]:
    """Write `files` ({path under the tree: content}) into the LLaVA tree (a container path), keeping the
    original of each once as <path><backup_suffix>; mode 0755 for scripts, 0644 otherwise. Returns what
    changed (or would, with check)."""
    tree_host = host_path(paths.work_dir, paths.container_work_dir, tree)
    tree_parts = [p for p in os.path.relpath(tree_host, paths.work_dir).split(os.sep) if p not in ("", ".")]

    def refused(rel: str, why: str) -> TamperError:
        return _tree_refused(tree_host, os.path.join(paths.work_dir, rel), why)

    changed, backed_up = [], []
    for rel in sorted(files):
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or not backup_suffix.startswith("."):
            raise ValueError(f"{rel!r}: expected a relative path inside the LLaVA tree")
        data = files[rel].encode("utf-8")
        mode = 0o755 if rel.endswith(".sh") else 0o644
        fds = _walk_dirs(paths.work_dir, tree_parts + parts[:-1], refused)
        try:
            dir_fd, name = fds[-1], parts[-1]
            where = os.path.relpath(os.path.join(tree_host, rel), paths.work_dir)
            current = _regular_or_absent(dir_fd, name, where, refused)
            backup = _regular_or_absent(dir_fd, name + backup_suffix, where + backup_suffix, refused)
            old = _read_at(dir_fd, name, current, where, refused) if current is not None else None
            if old is not None and old != data and backup is None:
                backed_up.append(rel + backup_suffix)
                if not check:
                    _write_at(dir_fd, name + backup_suffix, old, stat.S_IMODE(current.st_mode), owner)
            if current is None:
                outdated = True
            else:
                wrong_owner = (
                    owner is not None and os.geteuid() == 0 and (current.st_uid, current.st_gid) != owner
                )
                outdated = old != data or stat.S_IMODE(current.st_mode) != mode or wrong_owner
            if outdated:
                changed.append(rel)
                if not check:
                    _write_at(dir_fd, name, data, mode, owner)
        finally:
            for fd in reversed(fds):
                os.close(fd)
    return {"changed": changed, "backed_up": backed_up, "check": check}


# --- the state file: root-only, outside the container's reach --------------------------------------------


def _private_dir(paths: Paths) -> None:
    """Create the root-only folders of the state (0700) and make sure they are what they must be."""
    for path in (paths.private_root, paths.private_dir):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise JobError(
                f"{path}: expected a directory owned by uid {os.geteuid()} (it holds the job state, which "
                "no other user may write); remove it or fix its owner, then run again"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(path, 0o700)


def read_job(path: str) -> dict[str, Any]:
    """The state file, `{}` when there is none. A damaged file is an error naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, encoding="utf-8") as handle:
        text = handle.read()
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise JobError(f"{path}: not JSON ({exc}); remove it if no job runs, then run again") from exc
    if not isinstance(job, dict):
        raise JobError(f"{path}: expected a JSON object; remove it if no job runs, then run again")
    return job


def _write_private(paths: Paths, path: str, data: bytes) -> None:
    """Write a file of the root-only folder atomically (a fresh O_EXCL temporary file, then rename)."""
    _private_dir(paths)
    tmp = f"{path}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_job(paths: Paths, job: Mapping[str, Any]) -> None:
    text = json.dumps(dict(job), indent=2, sort_keys=True) + "\n"
    _write_private(paths, paths.state_file, text.encode("utf-8"))


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """One plan/start/stop at a time on a server (two Ansible runs at once must not start two jobs)."""
    import fcntl

    _private_dir(paths)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- progress from the end of the log -------------------------------------------------------------------

_FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
_HF_LOSS = re.compile(r"\{'loss':\s*(" + _FLOAT + r")", re.IGNORECASE)
_HF_RATE = re.compile(r"'train_samples_per_second':\s*(" + _FLOAT + ")")
_TOTAL = re.compile(r"Total optimization steps = ([\d,]+)")
_BAR = re.compile(r"\|\s*(\d+)/(\d+)\s*\[[^\]]*?(?:,\s*(" + _FLOAT + r")\s*(it/s|s/it))?\s*\]")
_MEGATRON = re.compile(r"\biteration\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_LM_LOSS = re.compile(r"\blm[ _]loss\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_BARE_LOSS = re.compile(r"\|\s*loss\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_SAMPLES = re.compile(r"samples per second\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_ELAPSED_MS = re.compile(r"elapsed time per iteration \(ms\)\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_GLOBAL_BATCH = re.compile(r"global batch size\s*:\s*(\d+)", re.IGNORECASE)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_progress(text: str, global_batch: int | None = None) -> dict[str, Any]:
    """Step, total steps, last loss and samples/s from the end of a training log (HF Trainer or Megatron).

    Keys are present only when the text says them; a NaN loss is None (JSON has no NaN).
    """
    progress: dict[str, Any] = {}
    rate: float | None = None
    for segment in re.split(r"[\r\n]", text):
        match = _HF_LOSS.search(segment)
        if match:
            progress["loss"] = _number(match.group(1))
        match = _TOTAL.search(segment)
        if match:
            progress["total_steps"] = int(match.group(1).replace(",", ""))
        match = _BAR.search(segment)
        if match:
            progress["step"], progress["total_steps"] = int(match.group(1)), int(match.group(2))
            speed = _number(match.group(3)) if match.group(3) else None
            if speed and global_batch:
                rate = speed * global_batch if match.group(4) == "it/s" else global_batch / speed
        match = _HF_RATE.search(segment)
        if match:
            final = _number(match.group(1))
            if final is not None:
                progress["samples_per_s"] = final
                rate = None
        match = _MEGATRON.search(segment)
        if match:
            loss = _LM_LOSS.search(segment) or _BARE_LOSS.search(segment)
            if loss:
                progress["step"], progress["total_steps"] = int(match.group(1)), int(match.group(2))
                progress["loss"] = _number(loss.group(1))
            samples = _SAMPLES.search(segment)
            elapsed, batch = _ELAPSED_MS.search(segment), _GLOBAL_BATCH.search(segment)
            if samples:
                rate = _number(samples.group(1))
            elif elapsed and batch and (_number(elapsed.group(1)) or 0) > 0:
                rate = int(batch.group(1)) / (float(elapsed.group(1)) / 1000.0)
    if rate is not None and "samples_per_s" not in progress:
        progress["samples_per_s"] = round(rate, 3)
    return progress


PROGRESS_KEYS = ("step", "total_steps", "loss", "samples_per_s", "state")


def progress_view(job: Mapping[str, Any]) -> dict[str, Any]:
    """The Contract 6 progress object of a job (only the keys it has)."""
    return {key: job[key] for key in PROGRESS_KEYS if job.get(key) is not None}


# --- pure state logic -----------------------------------------------------------------------------------


def reconcile(
    job: Mapping[str, Any], alive: bool, exit_code: int | None, progress: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The state file after a look at the job: a running job whose wrapper is gone has ended.

    It finished when the launch script exited 0, failed otherwise (also when no exit status was written:
    the container stopped or the wrapper was killed). Ended jobs keep their state (stopped stays stopped).
    """
    new = dict(job)
    if not job:
        return new
    for key, value in progress.items():
        if value is not None or key == "loss":
            new[key] = value
    if job.get("state") == "running":
        if not alive:
            new["exit_code"] = exit_code
            new["state"] = "finished" if exit_code == 0 else "failed"
            new["finished_at"] = iso(now)
            if exit_code is None:
                new["message"] = "the launcher is gone without an exit status (container stopped or killed?)"
            elif exit_code != 0:
                new["message"] = f"the launch script exited with status {exit_code}"
        new["updated_at"] = iso(now)
    return new


def host_action(
    state: str | None, projector: bool, checkpoints: Sequence[int], foreign: Sequence[str], restart: bool
) -> str:
    """What one server alone would do: running, refuse, done, resume or start.

    done: the last job finished (or there is no record) and output_dir holds mm_projector.bin, unless
    restart. A stopped or failed job is started again and resumes from its newest checkpoint.
    """
    if state == "running":
        return "running"
    if foreign:
        return "refuse"
    if projector and state in (None, "finished") and not restart:
        return "done"
    return "resume" if checkpoints else "start"


def fleet_plan(
    plans: Mapping[str, Mapping[str, Any]], expected_hosts: Sequence[str], restart: bool = False
) -> dict[str, dict[str, str]]:
    """Decide for the whole job at once: `{host: {"action": ..., "message": ...}}`.

    A multi-node job runs on every server of the group or on none: all running -> running (report it);
    some running -> refuse everywhere (stop it first); node 0 done and no node running -> done; otherwise
    start (or resume) on every node, which needs every server of the group in this run.
    """
    out: dict[str, dict[str, str]] = {}
    hosts = [h for h in expected_hosts if h in plans]
    missing = [h for h in expected_hosts if h not in plans]
    extra = sorted(set(plans) - set(expected_hosts))
    if extra:
        raise ValueError(f"plans for hosts outside the job: {', '.join(extra)}")
    states = {h: plans[h].get("state") for h in hosts}
    running = [h for h in hosts if states[h] == "running"]
    idle = [h for h in hosts if states[h] != "running"]
    refusing = [h for h in hosts if states[h] != "running" and plans[h].get("foreign")]

    if running and (idle or missing) and len(expected_hosts) > 1:
        gone = idle + missing
        message = (
            f"the job runs on {', '.join(running)} but not on {', '.join(gone)}; a multi-node job cannot "
            "be completed by starting some nodes again: stop it with playbooks/train_stop.yml, then run "
            "train.yml again (it resumes from the last checkpoint)"
        )
        return {h: {"action": "refuse", "message": message} for h in hosts}
    if running and not idle:
        return {h: {"action": "running", "message": ""} for h in hosts}
    if refusing:
        for h in hosts:
            if h in refusing:
                pids = "; ".join(str(p) for p in plans[h]["foreign"])
                out[h] = {
                    "action": "refuse",
                    "message": (
                        f"a training process that llava-devserver did not start (or that outlived its job) "
                        f"runs in the container: {pids}. Stop it (docker exec CONTAINER kill PID) or let it "
                        "finish, then run train.yml again"
                    ),
                }
            else:
                out[h] = {"action": "refuse", "message": f"not started: {', '.join(refusing)} cannot start"}
        return out

    rank0 = next((h for h in hosts if plans[h].get("node_rank") == 0), None)
    done = (
        not restart
        and rank0 is not None
        and bool(plans[rank0].get("projector"))
        and all(states[h] in (None, "finished") for h in hosts)
    )
    if done:
        return {h: {"action": "done", "message": ""} for h in hosts}
    if missing:
        message = (
            f"the job spans {len(expected_hosts)} servers ({', '.join(expected_hosts)}); "
            f"{', '.join(missing)} not in this run (--limit, or failed earlier): all nodes start together"
        )
        return {h: {"action": "refuse", "message": message} for h in hosts}
    return {h: {"action": "resume" if plans[h].get("checkpoints") else "start", "message": ""} for h in hosts}


# --- the container --------------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


_GONE = re.compile(r"No such container|is not running|is paused|is restarting", re.IGNORECASE)


class Container:
    """`docker exec` into the training container (the runner is replaceable for tests)."""

    def __init__(
        self, name: str, docker: str = "docker", runner: Callable[[Sequence[str]], Any] = _run
    ) -> None:
        self.name = name
        self.docker = docker
        self.runner = runner

    def exec(self, script: str, *args: str, user: str | None = None, workdir: str | None = None) -> Any:
        argv = [self.docker, "exec"]
        if user:
            argv += ["-u", user]
        if workdir:
            argv += ["-w", workdir]
        return self.runner([*argv, self.name, "bash", "-c", script, "llava-devserver", *args])

    def cmdline(self, pid: int) -> str | None:
        """The command line of a process in the container; "" when it is gone, None when no container runs."""
        result = self.exec('tr "\\0" " " <"/proc/$1/cmdline" 2>/dev/null || true', str(pid))
        if result.returncode != 0:
            if _GONE.search(result.stderr or ""):
                return None
            raise JobError(f"docker exec {self.name}: {(result.stderr or '').strip() or result.returncode}")
        return str(result.stdout).strip()

    def processes(self) -> list[str]:
        result = self.exec(PROCESSES)
        if result.returncode != 0:
            if _GONE.search(result.stderr or ""):
                return []
            raise JobError(f"docker exec {self.name}: {(result.stderr or '').strip() or result.returncode}")
        return [line for line in str(result.stdout).splitlines() if line.strip()]

    def listing(self, directory: str) -> list[str] | None:
        result = self.exec('ls -1A -- "$1" 2>/dev/null || true', directory)
        if result.returncode != 0:
            if _GONE.search(result.stderr or ""):
                return None
            raise JobError(f"docker exec {self.name}: {(result.stderr or '').strip() or result.returncode}")
        return [line for line in str(result.stdout).splitlines() if line]


def is_alive(container: Container, job: Mapping[str, Any], paths: Paths) -> bool:
    pid, name = job.get("pid"), paths.log_name(job)
    if not isinstance(pid, int) or pid <= 0 or not name:
        return False
    command = container.cmdline(pid)
    # The wrapper's command line names its log: a pid reused by another process does not count.
    log = paths.in_container(os.path.join(paths.log_dir, name))
    return bool(command) and WRAPPER_NAME in str(command) and log in str(command)


def foreign_processes(lines: Sequence[str], own_pid: int | None = None) -> list[str]:
    """Training processes (`pid command`) from `pid<TAB>cmdline` lines, without our scanner."""
    found = []
    for line in lines:
        pid, _, command = line.partition("\t")
        if JOB_PATTERN not in command or "/proc/[0-9]" in command:
            continue
        if own_pid is not None and pid.strip() == str(own_pid):
            continue
        found.append(f"{pid.strip()} {command.strip()[:200]}")
    return found


def output_state(names: Sequence[str] | None) -> dict[str, Any]:
    names = names or []
    checkpoints = sorted(
        int(m.group(1)) for m in (re.fullmatch(r"checkpoint-(\d+)", n) for n in names) if m is not None
    )
    return {"projector": PROJECTOR in names, "checkpoints": checkpoints}


# --- commands -------------------------------------------------------------------------------------------


def probe(
    paths: Paths,
    container: Container,
    now: datetime,
    write: bool = True,
    global_batch: int | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Look at the job, bring the state file up to date (unless write is False) and return it."""
    job = read_job(paths.state_file)
    if not job:
        return {"job": {}, "llava_progress": {}}
    has_log = paths.log_name(job) is not None
    alive = job.get("state") == "running" and is_alive(container, job, paths)
    code = read_exit_code(paths, job) if has_log else None
    batch = global_batch or job.get("global_batch_size")
    text = read_tail(paths, job) if has_log else ""
    progress = parse_progress(text, int(batch) if batch else None) if text else {}
    new = reconcile(job, alive, code, progress, now)
    if "loss" in progress:
        new["loss_lines"] = True  # this node's log prints the loss (loss_log_node: auto)
    if write and new != job:
        write_job(paths, new)
    out: dict[str, Any] = {"job": new, "llava_progress": progress_view(new)}
    if new.get("state") == "failed" and text:
        out["log_tail"] = last_lines(text[-64 * 1024 :], 20)
    if output_dir:
        out["projector"] = projector_file(paths, output_dir)
    return out


def status(paths: Paths, lines: int = 400, output_dir: str | None = None) -> dict[str, Any]:
    """Read-only: the recorded job with the progress of its log, the log's last lines and the projector."""
    job = read_job(paths.state_file)
    out: dict[str, Any] = {"job": job, "llava_progress": progress_view(job), "log_tail": ""}
    if job:
        text = read_tail(paths, job)
        progress = parse_progress(text, job.get("global_batch_size")) if text else {}
        merged = dict(job)
        merged.update({k: v for k, v in progress.items() if v is not None or k == "loss"})
        if "loss" in progress:
            merged["loss_lines"] = True
        out.update(
            job=merged,
            llava_progress=progress_view(merged),
            log_tail="\n".join(last_lines(text, lines)),
        )
    out["projector"] = projector_file(paths, output_dir)
    return out


def last_lines(text: str, count: int) -> list[str]:
    """The last lines of a log, each progress-bar rewrite (carriage return) reduced to its final state."""
    if count <= 0:
        return []
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in lines if line.strip()][-count:]


def plan(
    paths: Paths,
    container: Container,
    output_dir: str,
    node_rank: int,
    now: datetime,
    write: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """probe + what output_dir holds + stray training processes + this server's action alone."""
    result = probe(paths, container, now, write=write)
    job = result["job"]
    state = job.get("state")
    own = job.get("pid") if state == "running" else None
    names = container.listing(output_dir)
    if names is None:
        raise JobError(
            f"the training container {container.name} is not running; start it with playbooks/container.yml"
        )
    foreign = [] if state == "running" else foreign_processes(container.processes(), own)
    outputs = output_state(names)
    action = host_action(state, outputs["projector"], outputs["checkpoints"], foreign, restart)
    return {
        **result,
        "plan": {"state": state, "node_rank": node_rank, "foreign": foreign, "action": action, **outputs},
    }


def start(
    paths: Paths,
    container: Container,
    llava_dir: str,
    script: str,
    node_rank: int,
    now: datetime,
    user: str | None = None,
    action: str = "start",
    extra: Mapping[str, Any] | None = None,
    check: bool = False,
    owner: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Start the job unless one runs; record it. Returns {"started": bool, "job": ..., "llava_progress"}.

    The log folder is created (or checked) without following links and given `owner` (the container
    user's ids) through its descriptor, so that the job can write its log there.
    """
    current = probe(paths, container, now, write=not check)
    job = current["job"]
    if job.get("state") == "running":
        return {**current, "started": False, "reason": "running"}
    foreign = foreign_processes(container.processes())
    if foreign:
        raise JobError(
            "a training process is already running in the container and is not the recorded job: "
            + "; ".join(foreign)
            + ". Stop it, then run again"
        )
    log = paths.new_log(now)
    if check:
        return {**current, "started": True, "check": True, "log": log}
    with log_folder(paths, owner=owner or (os.geteuid(), os.getegid())):
        pass
    log_c = paths.in_container(log)
    result = container.exec(
        LAUNCH, log_c, exit_file(log_c), pid_file(log_c), script, WRAPPER, user=user, workdir=llava_dir
    )
    pid_text = str(result.stdout).strip().splitlines()[-1:] if result.returncode == 0 else []
    if not pid_text or not pid_text[0].isdigit():
        raise JobError(
            f"could not start {script} in {container.name} as {user or 'the image user'}: "
            f"{(result.stderr or '').strip() or result.stdout.strip() or 'no pid'}; the log: {log}"
        )
    previous_launches = int(job.get("launches") or 0)
    new = {
        "state": "running",
        "pid": int(pid_text[0]),
        "log": log,
        "exit_file": exit_file(log),
        "node_rank": node_rank,
        "container": container.name,
        "started_at": iso(now),
        "updated_at": iso(now),
        "finished_at": None,
        "exit_code": None,
        "step": None,
        "total_steps": None,
        "loss": None,
        "samples_per_s": None,
        "loss_lines": False,
        "action": action,
        "launches": previous_launches + 1,
        "previous_log": job.get("log"),
        **dict(extra or {}),
    }
    write_job(paths, new)
    return {"job": new, "llava_progress": progress_view(new), "started": True}


def stop(
    paths: Paths, container: Container, now: datetime, grace: int = 60, check: bool = False
) -> dict[str, Any]:
    """Stop a running job (SIGTERM to its group, SIGKILL after grace) and mark it stopped."""
    current = probe(paths, container, now, write=not check)
    job = current["job"]
    if job.get("state") != "running":
        return {**current, "stopped": False}
    if check:
        return {**current, "stopped": True, "check": True}
    result = container.exec(STOP, str(job["pid"]), str(int(grace)), user="0")
    if result.returncode not in (0, 3, 4) and not _GONE.search(result.stderr or ""):
        raise JobError(f"could not signal pid {job['pid']} in {container.name}: {result.stderr.strip()}")
    code = None
    for _ in range(50):  # the wrapper writes the exit status right after the script ended
        code = read_exit_code(paths, job)
        if code is not None or result.returncode == 4:
            break
        time.sleep(0.1)
    new = dict(job)
    new.update(parse_progress(read_tail(paths, job)))
    new.update(
        {
            "state": "stopped",
            "exit_code": code,
            "finished_at": iso(now),
            "updated_at": iso(now),
            "message": "stopped by train_stop"
            + (" (SIGKILL after the grace period)" if result.returncode == 4 else ""),
        }
    )
    write_job(paths, new)
    return {"job": new, "llava_progress": progress_view(new), "stopped": True}


def fetch_copy(paths: Paths) -> dict[str, Any]:
    """Copy the job's log, read safely, into the root-only folder: the role fetches that copy, so Ansible
    never opens a path in the container-writable folder."""
    job = read_job(paths.state_file)
    name = paths.log_name(job) if job else None
    if not name:
        return {"job": job, "llava_progress": progress_view(job), "fetch": None}
    _private_dir(paths)
    tmp = f"{paths.fetch_file}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        with log_folder(paths) as dir_fd:
            src = _open_log_file(paths, dir_fd, name)
    except FileNotFoundError:
        src = None
    if src is None:
        return {"job": job, "llava_progress": progress_view(job), "fetch": None}
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600)
        try:
            while True:
                chunk = os.read(src, 1 << 20)
                if not chunk:
                    break
                os.write(dst, chunk)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    os.replace(tmp, paths.fetch_file)
    return {"job": job, "llava_progress": progress_view(job), "fetch": paths.fetch_file}


def _stdout_closed() -> bool:
    """True once the reader of our stdout went away (ssh ended): a follower must not outlive it."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stream_log(
    paths: Paths, lines: int, follow: bool, out: Any = None, interval: float = 0.5, polls: int = -1
) -> int:
    """`llava-devserver logs`: the last lines of the job's log, then (follow) what is appended, moving on to
    the log of a newer launch. Exit 0, or 3 when no job is recorded on this server."""
    out = out if out is not None else sys.stdout.buffer
    job = read_job(paths.state_file)
    name = paths.log_name(job) if job else None
    if not name:
        sys.stderr.write(f"no job on this server: {paths.state_file} names no log\n")
        return 3
    while True:
        try:
            with log_folder(paths) as dir_fd:
                fd = _open_log_file(paths, dir_fd, name)
        except FileNotFoundError:
            fd = None
        if fd is None:
            sys.stderr.write(f"the log {os.path.join(paths.log_dir, name)} is missing\n")
            return 3
        try:
            text = _read_fd_tail(fd, TAIL_BYTES).decode("utf-8", errors="replace")
            tail = last_lines(text, lines) if lines > 0 else []
            out.write("".join(line + "\n" for line in tail).encode("utf-8"))
            out.flush()
            if not follow:
                return 0
            # Follow from the end of what was read, not the size now: a line appended while the tail was
            # being written out would be skipped otherwise.
            position = os.lseek(fd, 0, os.SEEK_CUR)
            while polls != 0:
                polls -= 1
                os.lseek(fd, position, os.SEEK_SET)
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    position += len(chunk)
                    out.write(chunk)
                    out.flush()
                    continue
                if _stdout_closed():
                    return 0
                newer = paths.log_name(read_job(paths.state_file))
                if newer and newer != name:
                    name, lines = newer, 0
                    break
                time.sleep(interval)
            else:
                return 0
        finally:
            os.close(fd)


# --- command line ---------------------------------------------------------------------------------------


def _owner(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected UID:GID, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobstate.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    for name in ("plan", "start", "probe", "stop", "status", "log", "fetch", "install"):
        p = sub.add_parser(name)
        p.add_argument("--work-dir", required=True)
        p.add_argument("--container-work-dir", required=True)
        p.add_argument("--state-dir", required=True, help="our state folder under work_dir (llava.state_dir)")
        p.add_argument("--container", required=True)
        p.add_argument(
            "--host-state-dir", default=None, help="root-only folder of the job record (llava.host_state_dir)"
        )
        p.add_argument("--docker", default="docker")
        p.add_argument("--check", action="store_true", help="say what would be done, change nothing")
        if name == "plan":
            p.add_argument("--output-dir", required=True)
            p.add_argument("--node-rank", type=int, required=True)
            p.add_argument("--restart", action="store_true")
        if name == "start":
            p.add_argument("--llava-dir", required=True)
            p.add_argument("--script", required=True)
            p.add_argument("--node-rank", type=int, required=True)
            p.add_argument("--user", default=None)
            p.add_argument("--owner", type=_owner, default=None, help="UID:GID of the log folder")
            p.add_argument("--action", default="start")
            p.add_argument("--extra", default="{}", help="JSON object of extra keys for the state file")
        if name == "probe":
            p.add_argument("--no-write", action="store_true")
            p.add_argument("--global-batch", type=int, default=None)
            p.add_argument("--output-dir", default=None, help="look for mm_projector.bin there")
        if name == "status":
            p.add_argument("--lines", type=int, default=400)
            p.add_argument("--output-dir", default=None, help="look for mm_projector.bin there")
        if name == "log":
            p.add_argument("-n", "--lines", type=int, default=100)
            p.add_argument("-f", "--follow", action="store_true")
        if name == "stop":
            p.add_argument("--grace", type=int, default=60)
        if name == "install":
            p.add_argument("--tree", required=True, help="the LLaVA tree (container path)")
            p.add_argument("--manifest", required=True, help="JSON {path under the tree: content}")
            p.add_argument("--owner", type=_owner, default=None, help="UID:GID of the files")
            p.add_argument("--backup-suffix", default=".orig")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    now = datetime.now(UTC)
    try:
        paths = Paths(
            args.work_dir, args.container_work_dir, args.state_dir, args.container, args.host_state_dir
        )
        container = Container(args.container, args.docker)
        if args.command == "log":
            try:
                return stream_log(paths, args.lines, args.follow)
            except (BrokenPipeError, KeyboardInterrupt):
                return 0
        if args.command == "status":
            out = status(paths, args.lines, args.output_dir)
        elif args.command == "fetch":
            out = fetch_copy(paths)
        elif args.command == "install":
            with open(args.manifest, encoding="utf-8") as handle:
                files = json.load(handle)
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                raise ValueError(f"{args.manifest}: expected a JSON object of path: content")
            out = install_files(paths, args.tree, files, args.owner, args.backup_suffix, args.check)
        elif args.command == "probe":
            out = probe(
                paths,
                container,
                now,
                write=not (args.no_write or args.check),
                global_batch=args.global_batch,
                output_dir=args.output_dir,
            )
        else:
            with locked(paths) if not args.check else contextlib.nullcontext():
                if args.command == "plan":
                    out = plan(
                        paths, container, args.output_dir, args.node_rank, now, not args.check, args.restart
                    )
                elif args.command == "start":
                    out = start(
                        paths,
                        container,
                        args.llava_dir,
                        args.script,
                        args.node_rank,
                        now,
                        user=args.user,
                        action=args.action,
                        extra=json.loads(args.extra),
                        check=args.check,
                        owner=args.owner,
                    )
                else:
                    out = stop(paths, container, now, grace=args.grace, check=args.check)
    except (JobError, OSError, ValueError) as exc:
        if args.command == "log":
            sys.stderr.write(f"{exc}\n")
            return 1
        out = {"error": str(exc)}
        if isinstance(exc, TamperError):
            out["tampered"] = True
        print(json.dumps(out))
        return 1
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
