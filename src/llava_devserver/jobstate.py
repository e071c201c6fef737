"""The pretraining job on one DevServer: plan, start, probe and stop it, and keep its state file.

Standalone on purpose: Python 3 standard library only (3.7+), so the role llava_pretrain copies this file
to each server and runs it there as root with whatever `python3` the server has:

    python3 jobstate.py plan  WHERE --output-dir DIR --node-rank N [--restart] [--check]
    python3 jobstate.py start WHERE --llava-dir L --script scripts/v1_5/pretrain_new.sh --node-rank N
                                    [--user U] [--check] ...
    python3 jobstate.py probe WHERE [--no-write]
    python3 jobstate.py stop  WHERE [--grace 60] [--check]

WHERE is `--work-dir W --container-work-dir C --state-dir S --container NAME` (S: llava.state_dir).

Each prints ONE JSON object with `llava_progress` (Contract 6 of docs/architecture.md: the live display
reads it) and `job` (the state file as it now is), exits 0, or 1 with `{"error": "..."}` when it cannot.

The state file `S/job.json` (host path; S lies under W, which is mounted at C in the container) holds
`state` (running, finished, failed, stopped), `pid` (inside the container, of a wrapper started with setsid,
so it leads the job's process group), `log` (host path of this node's log), `node_rank`, `container`,
`started_at`/`updated_at`/`finished_at`, `exit_code` and the last progress (`step`, `total_steps`, `loss`,
`samples_per_s`). The wrapper runs the launch script with its output appended to the log, forwards SIGTERM
to it, and writes the script's exit status to `<log stem>.exit` when it ends: that file, not the Ansible
connection, says how the job ended.

The controller side (the filter plugin of the role) imports the pure functions: `fleet_plan` decides, from
every server's plan, whether the job is running, done, or to be (re)started on all nodes together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

UTC = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; servers run Python 3.7 and newer)

STATE_NAME = "job.json"
LOCK_NAME = "job.lock"
LOG_DIR = "logs"
JOB_PATTERN = "llava/train/train_mem.py"  # what every process of a LLaVA training job has in its command line
PROJECTOR = "mm_projector.bin"
STATES = ("running", "finished", "failed", "stopped")
TAIL_BYTES = 256 * 1024
WRAPPER_NAME = "llava-job"

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


class Paths:
    """Where the job's files are, on the host and in the container."""

    def __init__(self, work_dir: str, container_work_dir: str, state_dir: str) -> None:
        self.work_dir = work_dir
        self.container_work_dir = container_work_dir
        self.state_dir = state_dir
        self.in_container(state_dir)  # ValueError unless under work_dir: the container must see the logs
        self.state_file = os.path.join(self.state_dir, STATE_NAME)
        self.lock_file = os.path.join(self.state_dir, LOCK_NAME)
        self.log_dir = os.path.join(self.state_dir, LOG_DIR)

    def in_container(self, path_on_host: str) -> str:
        return container_path(self.work_dir, self.container_work_dir, path_on_host)

    def new_log(self, now: datetime) -> str:
        return os.path.join(self.log_dir, "train-" + now.strftime("%Y%m%dT%H%M%SZ") + ".log")


def exit_file(log: str) -> str:
    return (log[:-4] if log.endswith(".log") else log) + ".exit"


def pid_file(log: str) -> str:
    return (log[:-4] if log.endswith(".log") else log) + ".pid"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- the state file -------------------------------------------------------------------------------------


def read_job(path: str) -> dict[str, Any]:
    """The state file, `{}` when there is none. A damaged file is an error naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise JobError(f"{path}: not JSON ({exc}); remove it if no job runs, then run again") from exc
    if not isinstance(job, dict):
        raise JobError(f"{path}: expected a JSON object; remove it if no job runs, then run again")
    return job


def own_like_parent(path: str) -> None:
    """Give a file we write as root the owner of its directory (the image user's, as the guide's chown -R
    wants for the whole work_dir), so that the next run finds nothing to chown."""
    if os.geteuid() != 0:
        return
    parent = os.stat(os.path.dirname(path) or ".")
    mine = os.stat(path)
    if (mine.st_uid, mine.st_gid) != (parent.st_uid, parent.st_gid):
        os.chown(path, parent.st_uid, parent.st_gid)


def write_job(path: str, job: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(job), indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    own_like_parent(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """One plan/start/stop at a time on a server (two Ansible runs at once must not start two jobs)."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        own_like_parent(path)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_exit_code(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def read_tail(path: str, size: int = TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            length = handle.tell()
            handle.seek(max(0, length - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- progress from the end of the log -------------------------------------------------------------------

_FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
_HF_LOSS = re.compile(r"\{'loss':\s*(" + _FLOAT + r")", re.IGNORECASE)
_HF_RATE = re.compile(r"'train_samples_per_second':\s*(" + _FLOAT + ")")
_TOTAL = re.compile(r"Total optimization steps = ([\d,]+)")
_BAR = re.compile(r"\|\s*(\d+)/(\d+)\s*\[[^\]]*?(?:,\s*(" + _FLOAT + r")\s*(it/s|s/it))?\s*\]")
_MEGATRON = re.compile(r"\biteration\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
_LM_LOSS = re.compile(r"\blm[ _]loss\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_SAMPLES = re.compile(r"samples per second\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)


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
            loss = _LM_LOSS.search(segment)
            if loss:
                progress["step"], progress["total_steps"] = int(match.group(1)), int(match.group(2))
                progress["loss"] = _number(loss.group(1))
            samples = _SAMPLES.search(segment)
            if samples:
                rate = _number(samples.group(1))
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
    pid, log = job.get("pid"), job.get("log")
    if not isinstance(pid, int) or pid <= 0 or not log:
        return False
    command = container.cmdline(pid)
    # The wrapper's command line names its log: a pid reused by another process does not count.
    return bool(command) and WRAPPER_NAME in str(command) and paths.in_container(str(log)) in str(command)


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
    paths: Paths, container: Container, now: datetime, write: bool = True, global_batch: int | None = None
) -> dict[str, Any]:
    """Look at the job, bring the state file up to date (unless write is False) and return it."""
    job = read_job(paths.state_file)
    if not job:
        return {"job": {}, "llava_progress": {}}
    log = str(job.get("log") or "")
    alive = job.get("state") == "running" and is_alive(container, job, paths)
    code = read_exit_code(exit_file(log)) if log else None
    batch = global_batch or job.get("global_batch_size")
    progress = parse_progress(read_tail(log), int(batch) if batch else None) if log else {}
    new = reconcile(job, alive, code, progress, now)
    if write and new != job:
        write_job(paths.state_file, new)
    out: dict[str, Any] = {"job": new, "llava_progress": progress_view(new)}
    if new.get("state") == "failed" and log:
        out["log_tail"] = last_lines(read_tail(log, 64 * 1024), 20)
    return out


def last_lines(text: str, count: int) -> list[str]:
    """The last lines of a log, each progress-bar rewrite (carriage return) reduced to its final state."""
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
) -> dict[str, Any]:
    """Start the job unless one runs; record it. Returns {"started": bool, "job": ..., "llava_progress"}."""
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
        "action": action,
        "launches": previous_launches + 1,
        "previous_log": job.get("log"),
        **dict(extra or {}),
    }
    write_job(paths.state_file, new)
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
    log = str(job.get("log") or "")
    code = None
    for _ in range(50):  # the wrapper writes the exit status right after the script ended
        code = read_exit_code(exit_file(log))
        if code is not None or result.returncode == 4:
            break
        time.sleep(0.1)
    new = dict(job)
    new.update(parse_progress(read_tail(log)) if log else {})
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
    write_job(paths.state_file, new)
    return {"job": new, "llava_progress": progress_view(new), "stopped": True}


# --- command line ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobstate.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    for name in ("plan", "start", "probe", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--work-dir", required=True)
        p.add_argument("--container-work-dir", required=True)
        p.add_argument("--state-dir", required=True, help="our state folder under work_dir (llava.state_dir)")
        p.add_argument("--container", required=True)
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
            p.add_argument("--action", default="start")
            p.add_argument("--extra", default="{}", help="JSON object of extra keys for the state file")
        if name == "probe":
            p.add_argument("--no-write", action="store_true")
            p.add_argument("--global-batch", type=int, default=None)
        if name == "stop":
            p.add_argument("--grace", type=int, default=60)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    paths = Paths(args.work_dir, args.container_work_dir, args.state_dir)
    container = Container(args.container, args.docker)
    now = datetime.now(UTC)
    try:
        if args.command == "probe":
            out = probe(
                paths, container, now, write=not (args.no_write or args.check), global_batch=args.global_batch
            )
        else:
            with locked(paths.lock_file) if not args.check else contextlib.nullcontext():
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
                    )
                else:
                    out = stop(paths, container, now, grace=args.grace, check=args.check)
    except (JobError, OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
