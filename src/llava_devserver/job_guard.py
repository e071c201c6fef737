"""A rerun never disturbs a running job: the decisions of the roles that could (control node, pure functions).

The roles look at the job with `jobstate.py probe --no-write` (the same probe the llava_pretrain role uses,
through its `probe` entry point) and pass the registered result here:

- docker_engine: a changed daemon.json needs a restart of dockerd, which stops every container (the training
  job with it). While a job runs (or its state cannot be read) the change waits: daemon.json is left as it
  is, and the message names the host, the keys that wait and the job. The next run after the job applies it.
- accel_check: the readiness check starts processes on the job's accelerators (on real cards it competes for
  their memory and HCCL ports). It is skipped while a job runs and after it finished, and the report keeps the
  last result; `accel_check_force: true` or `--tags accel_check` runs it anyway, never under a running job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

TAGS_FORCING_ACCEL = ("accel_check",)


def probe_result(registered: Mapping[str, Any]) -> dict[str, Any]:
    """`{"ok", "state", "running", "finished", "pid", "step", "total_steps", "error"}` from the registered
    result of a `jobstate.py probe` task (a script task; skipped counts as no job)."""
    if registered.get("skipped"):
        return {"ok": True, "state": None, "running": False, "finished": False, "error": None}
    try:
        out = json.loads(registered.get("stdout") or "")
    except ValueError:
        out = None
    if registered.get("rc", 1) != 0 or not isinstance(out, dict) or "error" in out:
        detail = (
            (out or {}).get("error")
            if isinstance(out, dict)
            else (registered.get("stderr") or registered.get("msg") or "no output")
        )
        return {
            "ok": False,
            "state": None,
            "running": False,
            "finished": False,
            "error": str(detail).strip()[-400:],
        }
    job = out.get("job") or {}
    state = job.get("state")
    return {
        "ok": True,
        "state": state,
        "running": state == "running",
        "finished": state == "finished",
        "pid": job.get("pid"),
        "step": job.get("step"),
        "total_steps": job.get("total_steps"),
        "container": job.get("container"),
        "error": None,
    }


def _job_words(probe: Mapping[str, Any], container: str) -> str:
    step = probe.get("step")
    total = probe.get("total_steps")
    at = f", step {step}/{total}" if step is not None and total else (f", step {step}" if step else "")
    pid = f" (pid {probe['pid']}{at})" if probe.get("pid") else ""
    return f"the training job in {container}{pid}"


def changed_keys(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Top-level daemon.json keys whose value the merge would change (sorted)."""
    return sorted(k for k in set(current) | set(wanted) if current.get(k) != wanted.get(k))


def docker_restart_decision(
    probe: Mapping[str, Any],
    host: str,
    container: str,
    current: Mapping[str, Any],
    wanted: Mapping[str, Any],
    daemon_json: str = "/etc/docker/daemon.json",
    other_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Whether the daemon.json change (and the restart of dockerd) waits: `{"wait", "keys", "message"}`.

    other_files: further files of dockerd's that this run would change (its proxy environment), which wait
    with daemon.json."""
    keys = changed_keys(current, wanted)
    files = ([f"{daemon_json} ({', '.join(keys)})"] if keys else []) + list(other_files)
    if not files:
        return {"wait": False, "keys": [], "message": None}
    what = f"the change of {' and of '.join(files)} and the restart of dockerd it needs"
    left = " and ".join(([daemon_json] if keys else []) + list(other_files))
    verb = "are left as they are" if len(files) > 1 else "is left as it is"
    if not probe.get("ok"):
        return {
            "wait": True,
            "keys": keys,
            "message": (
                f"{host}: {what} wait: the state of the training job in {container} cannot be read "
                f"({probe.get('error')}), and a restart of dockerd would stop it if it runs. "
                f"{left} {verb}; fix that, then run playbooks/host.yml again"
            ),
        }
    if probe.get("running"):
        return {
            "wait": True,
            "keys": keys,
            "message": (
                f"{host}: {what} wait while {_job_words(probe, container)} runs: a restart of dockerd "
                f"would stop it. {left} {verb}; run playbooks/host.yml again when the job "
                "has ended (or stop it first: playbooks/train_stop.yml; it resumes from its last checkpoint)"
            ),
        }
    return {"wait": False, "keys": keys, "message": None}


def accel_skip_decision(
    probe: Mapping[str, Any],
    host: str,
    container: str,
    force: bool = False,
    run_tags: Sequence[str] = (),
) -> dict[str, Any]:
    """Whether the accelerator check is skipped on this host: `{"skip", "reason", "message"}`."""
    forced = bool(force) or any(tag in TAGS_FORCING_ACCEL for tag in run_tags or ())
    how = "accel_check_force: true" if force else "--tags accel_check"
    if not probe.get("ok"):
        reason = f"the state of the training job cannot be read ({probe.get('error')})"
        return {
            "skip": True,
            "reason": reason,
            "message": f"{host}: the accelerator check is skipped: {reason}; it could compete with a job",
        }
    if probe.get("running"):
        reason = f"{_job_words(probe, container)} runs on these accelerators"
        extra = f" ({how} does not override that)" if forced else ""
        return {
            "skip": True,
            "reason": reason,
            "message": (
                f"{host}: the accelerator check is skipped: {reason}{extra}; the report keeps its last result"
            ),
        }
    if probe.get("finished") and not forced:
        reason = f"{_job_words(probe, container)} has finished"
        return {
            "skip": True,
            "reason": reason,
            "message": (
                f"{host}: the accelerator check is skipped: {reason}; the report keeps its last result "
                "(accel_check_force: true or --tags accel_check runs it again)"
            ),
        }
    return {"skip": False, "reason": None, "message": None}


def accel_skipped_report(decision: Mapping[str, Any], last: Mapping[str, Any] | None) -> dict[str, Any]:
    """`llava_report_accel` for a skipped check: the verdict says so, the last result is kept beside it."""
    last = dict(last or {})
    previous = last.get("report") if isinstance(last.get("report"), Mapping) else None
    when = last.get("checked_at")
    if previous:
        verdict = previous.get("summary") or previous.get("verdict")
        summary = f"skipped: {decision['reason']}; last result ({when}): {verdict}"
    else:
        summary = f"skipped: {decision['reason']}; no earlier result on this server"
    return {
        "verdict": "skipped",
        "summary": summary,
        "skipped": True,
        "skip_reason": decision["reason"],
        "last": previous,
        "last_checked_at": when,
    }
