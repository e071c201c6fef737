"""The fleet report: `runs/<timestamp>/report.json`, `report.md` (one table, a row per host) and `loss.png`.

Built from what the `llava_report` callback plugin collects per host (task counts, the failed task, the
`llava_report_*` facts roles publish) plus the job logs roles fetched into `<run dir>/logs/<host>/train.log`.
Nothing here imports Ansible: the callback is a thin adapter, and this module is unit-tested on plain data.
The schema is documented in docs/report.md.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llava_devserver import trainlog

SCHEMA_VERSION = 1
FACT_PREFIX = "llava_report_"
RUN_DIR_ENV = "LLAVA_RUN_DIR"
TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
LOG_NAME = "train.log"
STATUSES = ("ok", "changed", "failed", "unreachable", "skipped")
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class FailedTask:
    """The task that stopped a host (failed or unreachable); message is already censored by Ansible."""

    task: str
    role: str | None
    message: str
    action: str | None = None  # the module/action plugin, e.g. llava_validate

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "role": self.role, "action": self.action, "message": self.message}


@dataclass
class HostOutcome:
    """What the callback knows about one host at the end of a run."""

    host: str
    counts: dict[str, int] = field(default_factory=dict)  # ok, changed, failures, unreachable, skipped, ...
    failed_task: FailedTask | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # llava_report_<section> -> value, keyed by section
    reached: bool = True  # False: no task ran on it (the run stopped before, or --limit left it out)


@dataclass(frozen=True)
class Remedy:
    key: str
    pattern: re.Pattern[str]  # matched against "role task message" of the failure
    cause: str
    fix: str


def _remedy(key: str, pattern: str, cause: str, fix: str) -> Remedy:
    return Remedy(key, re.compile(pattern, re.IGNORECASE), cause, fix)


# Known failure causes, first match wins: validation (its messages name every setting) first, then the most
# specific. docs/report.md lists them (a test checks it does).
REMEDIES: tuple[Remedy, ...] = (
    _remedy(
        "validation",
        r"\bllava_validate\b|FleetValidationError|Invalid inventory",
        "the inventory or group_vars break a rule",
        "Fix the setting named in the message, then `llava-devserver validate -i INVENTORY`.",
    ),
    _remedy(
        "npu_smi_8005",
        r"-8005",
        "npu-smi cannot reach the NPU management service (dmp/dsmi)",
        "Reinstall/reload the NPU driver or reboot the server; if it persists, open a hardware ticket.",
    ),
    _remedy(
        "npu_card_unhealthy",
        r"\b(Warning|Alarm|Critical|UNKNOWN)\b.*\b(health|card|NPU)|\b(card|NPU)\b.*\bnot (OK|healthy)|"
        r"health[^\n]*\b(Warning|Alarm|Critical|UNKNOWN)\b",
        "an NPU card does not report health OK",
        "Check `npu-smi info -t health -i <card>`; exclude the card from npu_devices or request a repair.",
    ),
    _remedy(
        "npu_count",
        r"expected \d+ (NPU|card)|NPU count|npu_count",
        "the server reports fewer NPUs than npu_count",
        "Check `npu-smi info -l`; set npu_count/npu_devices to the cards present or request a repair.",
    ),
    _remedy(
        "driver_version",
        r"driver.*(version|mismatch)|npu_driver_version",
        "the NPU driver is not the expected version",
        "Install the driver the image needs, or set npu_driver_version to what the server runs.",
    ),
    _remedy(
        "mount_source",
        r"bind source path does not exist|invalid mount config|mount source|no such file or directory.*mount|"
        r"mount.*no such file",
        "a path the container mounts is missing on the host",
        "Create the host directory (work_dir, driver paths) or correct the setting that names it.",
    ),
    _remedy(
        "docker_daemon",
        r"Cannot connect to the Docker daemon|docker\.sock|docker daemon",
        "the Docker engine is not running",
        "`systemctl start docker` on the host (or re-run the host play), then re-run.",
    ),
    _remedy(
        "image_missing",
        r"No such image|pull access denied|manifest unknown|image.*not found",
        "the training image is not on the host",
        "Set container_image_archive to a `docker save` archive, or `docker load` the image on the host.",
    ),
    _remedy(
        "disk_full",
        r"No space left on device",
        "a disk is full",
        "Free space on the host (`docker system df`, old checkpoints) or move work_dir to a larger disk.",
    ),
    _remedy(
        "accel_check",
        r"accel",
        "the accelerator check in the container failed",
        "Run the accel check by hand in the container; torch_npu must match the CANN version of the image.",
    ),
    _remedy(
        "hccl",
        r"HCCL|connect timeout|Connection refused.*(master|port)|address already in use",
        "nodes cannot reach each other (HCCL / master port)",
        "Check master_addr/master_port, HCCL_IF_IP/HCCL_SOCKET_IFNAME and the security group.",
    ),
    _remedy(
        "out_of_memory",
        r"out of memory|OOM",
        "the job ran out of device memory",
        "Lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the global batch).",
    ),
    _remedy(
        "loss_nan",
        r"\bloss\b.*\b(nan|inf)\b",
        "the loss became NaN/inf",
        "Lower learning_rate or check the data; restart from the last checkpoint.",
    ),
)

UNREACHABLE_REMEDY = _remedy(
    "unreachable",
    r"$^",
    "Ansible could not connect to the host",
    "Check ansible_host, the SSH key/user and the security group; try `ssh root@HOST` by hand.",
)
NOT_REACHED_REMEDY = _remedy(
    "not_reached",
    r"$^",
    "the run stopped before this host ran a task (or --limit left it out)",
    "Fix the failure on the other host(s) and re-run.",
)
FALLBACK_REMEDY = _remedy(
    "unknown",
    r"$^",
    "an unrecognised failure",
    "Read the task output in the run log (re-run with -v for detail).",
)


def find_remedy(status: str, failed: FailedTask | None = None, extra_text: str = "") -> Remedy | None:
    """The remedy for a host's outcome; None for a healthy host."""
    if status == "unreachable":
        return UNREACHABLE_REMEDY
    parts = [failed.action, failed.role, failed.task, failed.message] if failed else []
    text = " ".join(filter(None, parts)) + " " + extra_text
    if status == "skipped" and not text.strip():
        return None
    if status not in ("failed", "skipped") and not extra_text:
        return None
    for remedy in REMEDIES:
        if remedy.pattern.search(text):
            return remedy
    if status == "failed":
        return FALLBACK_REMEDY
    return None


def host_status(counts: Mapping[str, int], reached: bool = True) -> str:
    if counts.get("unreachable", 0):
        return "unreachable"
    if counts.get("failures", 0):
        return "failed"
    if not reached:
        return "skipped"
    if counts.get("changed", 0):
        return "changed"
    if counts.get("ok", 0):
        return "ok"
    return "skipped"


def new_run_dir(base: Path, now: datetime | None = None) -> Path:
    """Create `<base>/runs/<UTC timestamp>` (a suffix keeps two runs in one second apart)."""
    stamp = (now or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)
    runs = base / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    candidate, n = runs / stamp, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, n = runs / f"{stamp}-{n}", n + 1


def latest_run_dir(runs: Path) -> Path | None:
    """`runs/latest` if it points somewhere, else the newest directory holding a report."""
    link = runs / "latest"
    if link.is_dir() and (link / "report.md").exists():
        return link.resolve()
    candidates = sorted(p for p in runs.glob("*/report.md") if p.parent.name != "latest")
    return candidates[-1].parent if candidates else None


# ---- the per-host facts ------------------------------------------------------------------------------------


def _pick(section: Any, *keys: str) -> Any:
    """The first present key of a fact section (roles are free in naming; the docs say which we look for)."""
    if isinstance(section, Mapping):
        for key in keys:
            value = section.get(key)
            if value not in (None, ""):
                return value
    return None


def jsonable(value: Any) -> Any:
    """Facts as strict JSON: NaN/inf become None, unknown objects their text."""
    if isinstance(value, float):
        return trainlog.json_float(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _card_health(card: Any) -> str | None:
    return str(_pick(card, "health", "Health")) if isinstance(card, Mapping) else None


def npu_cell(npu: Any) -> str:
    """The NPU cell, e.g. `8× 910B3, 8 OK`, from npu_check's fact (a card list) or ready-made counts."""
    if not isinstance(npu, Mapping):
        return _text(npu)
    summary = _pick(npu, "summary")
    if summary:
        return _text(summary)
    cards = npu.get("cards")
    card_list = [c for c in cards if isinstance(c, Mapping)] if isinstance(cards, list) else []
    count = _pick(npu, "count", "npu_count_found", "npu_count", "total_count")
    if count is None and isinstance(cards, list):
        count = len(cards)
    chip = _pick(npu, "chip", "chip_name", "model") or next(
        (_pick(c, "chip", "name", "chip_name") for c in card_list if _pick(c, "chip", "name", "chip_name")),
        None,
    )
    healthy = _pick(npu, "healthy", "ok_count")
    unhealthy = _pick(npu, "unhealthy", "bad_cards")
    if card_list and healthy is None:
        healthy = sum(1 for c in card_list if _card_health(c) == "OK")
        bad = [f"NPU {_text(_pick(c, 'npu', 'id'))} {h}" for c in card_list if (h := _card_health(c)) != "OK"]
        unhealthy = unhealthy or bad
    parts = [
        f"{count}× {chip}" if count is not None and chip else _text(count if count is not None else chip)
    ]
    if healthy is not None:
        parts.append(f"{healthy} OK")
    if unhealthy:
        parts.append(f"not OK: {_text(unhealthy)}")
    health = _pick(npu, "health")
    if health is not None and healthy is None:
        parts.append(_text(health))
    problems = npu.get("problems")
    if isinstance(problems, list) and problems:
        parts.append(f"{len(problems)} problem(s)")
    return ", ".join(p for p in parts if p)


def docker_cell(host_facts: Any, docker: Any) -> str:
    version = _pick(host_facts, "docker_version", "docker") or _pick(docker, "version")
    if version is not None or not isinstance(host_facts, Mapping):
        return _text(version)
    # The docker_engine role records how it found the engine rather than a version.
    if "docker_installed_by_role" not in host_facts and "docker_daemon_mode" not in host_facts:
        return ""
    how = "installed" if host_facts.get("docker_installed_by_role") else "present"
    mode = host_facts.get("docker_daemon_mode")
    return f"{how} ({mode})" if mode else how


def container_cell(container: Any) -> str:
    if not isinstance(container, Mapping):
        return _text(container)
    name = _pick(container, "name", "container_name")
    state = _pick(container, "state", "status")
    return " ".join(_text(v) for v in (name, f"({state})" if state and name else state) if v)


def verdict_cell(accel: Any) -> str:
    if not isinstance(accel, Mapping):
        return _text(accel)
    verdict = _pick(accel, "verdict", "status", "result", "passed", "ok")
    detail = _pick(accel, "summary", "detail")
    if isinstance(detail, str):
        # accel_check's summary repeats the verdict and the host: `accel-check PASS devserver-1: cpu x2, ...`
        detail = re.sub(r"^accel-check \w+ \S+: ", "", detail)
    return " ".join(_text(v) for v in (verdict, f"({_text(detail)})" if detail else None) if v is not None)


@dataclass(frozen=True)
class HostLoss:
    log: str  # relative to the run directory
    log_error: str | None
    log_points: list[trainlog.LossPoint]
    summary: trainlog.LossSummary | None


def _host_loss(run_dir: Path, host: str) -> HostLoss | None:
    path = run_dir / "logs" / host / LOG_NAME
    if not path.is_file():
        return None
    rel = str(path.relative_to(run_dir))
    try:
        parsed = trainlog.parse_log(path)
    except trainlog.NoLossLinesError:
        # Expected on ranks that do not print the loss; not an error of the host.
        return HostLoss(rel, "no loss lines", [], None)
    except OSError as exc:
        return HostLoss(rel, f"cannot read: {exc.strerror}", [], None)
    return HostLoss(rel, None, parsed.points, parsed.summary)


def _throughput(job: Any, loss: HostLoss | None) -> dict[str, Any] | None:
    """Performance at the end of training from this host's fetched log, per NPU with the job's world size."""
    if loss is None or loss.summary is None or loss.summary.throughput is None:
        return None
    world = _pick(job, "world_size")
    try:
        world_size = int(world) if world is not None else None
    except (TypeError, ValueError):
        world_size = None
    return loss.summary.throughput.with_world_size(world_size).to_dict()


def _elapsed(job: Any) -> float | None:
    """Seconds from the job's start to its end (wall clock, start-up included), when it ended."""
    started, finished = _pick(job, "started_at"), _pick(job, "finished_at")
    if not isinstance(started, str) or not isinstance(finished, str):
        return None
    try:
        begin = datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = datetime.fromisoformat(finished.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (end - begin).total_seconds())


def training_summary(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The run's training figures: the log read for the loss (the host the role chose by loss_log_node, else
    the last host whose fetched log has loss lines), its throughput, the job's elapsed time, the projector."""
    with_loss = [e for e in entries if (e.get("loss") or {}).get("summary")]
    chosen = next((e for e in entries if e.get("loss_log") and (e.get("loss") or {}).get("summary")), None)
    chosen = chosen or (with_loss[-1] if with_loss else None)
    projector = next(
        ({"host": e["host"], **e["projector"]} for e in entries if isinstance(e.get("projector"), Mapping)),
        None,
    )
    if chosen is None and projector is None:
        return None
    summary = (chosen or {}).get("loss", {}).get("summary") or {}
    elapsed = [e["elapsed_seconds"] for e in entries if e.get("elapsed_seconds") is not None]
    return {
        "loss_log": None
        if chosen is None
        else {"host": chosen["host"], "node_rank": chosen.get("node_rank"), "log": chosen["loss"]["log"]},
        "last_loss": summary.get("last"),
        "last_step": summary.get("last_step"),
        "steps": summary.get("steps"),
        "throughput": (chosen or {}).get("throughput"),
        "elapsed_seconds": max(elapsed) if elapsed else None,
        "projector": jsonable(projector),
    }


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _figure(value: Any, unit: str) -> str | None:
    return f"{value:.2f} {unit}" if isinstance(value, int | float) else None


def training_lines(training: Mapping[str, Any] | None) -> list[str]:
    """The report's training section in markdown."""
    if not training:
        return []
    lines = ["", "## Training", ""]
    log = training.get("loss_log")
    if log:
        node = f" (node {log['node_rank']})" if log.get("node_rank") is not None else ""
        last = training.get("last_loss")
        lines.append(
            f"- Loss read from the log of **{log['host']}**{node}: `{log['log']}`; last loss "
            f"{_text(last) if last is not None else 'n/a'} at step {_text(training.get('last_step'))}."
        )
    throughput = training.get("throughput") or {}
    figures = [
        _figure(throughput.get("samples_per_second"), "samples/s"),
        _figure(throughput.get("samples_per_second_per_npu"), "samples/s per NPU"),
        _figure(throughput.get("tokens_per_second"), "tokens/s"),
        _figure(throughput.get("tokens_per_second_per_npu"), "tokens/s per NPU"),
    ]
    shown = [f for f in figures if f]
    if shown:
        npus = f" on {throughput['world_size']} NPUs" if throughput.get("world_size") else ""
        lines.append(f"- Throughput{npus}: {', '.join(shown)} (from the log: {throughput.get('source')}).")
    if throughput.get("train_seconds") is not None or training.get("elapsed_seconds") is not None:
        lines.append(
            f"- Training time {_duration(throughput.get('train_seconds'))} (the training loop); job elapsed "
            f"{_duration(training.get('elapsed_seconds'))} (start to end, start-up included)."
        )
    projector = training.get("projector")
    if projector:
        size = projector.get("bytes")
        size_text = f"{size / 2**20:.1f} MiB ({size} bytes)" if isinstance(size, int) else "size unknown"
        lines.append(f"- Projector: `{projector.get('path')}` on {projector.get('host')}, {size_text}.")
    return lines


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _host_entry(outcome: HostOutcome, loss: HostLoss | None) -> dict[str, Any]:
    facts = outcome.facts
    npu, host_facts, job = facts.get("npu"), facts.get("host"), facts.get("job")
    status = host_status(outcome.counts, outcome.reached)
    step = _pick(job, "step", "last_step")
    last_loss = _pick(job, "loss", "last_loss")
    if loss is not None and loss.summary is not None:
        step = step if step is not None else loss.summary.last_step
        last_loss = last_loss if last_loss is not None else trainlog.json_float(loss.summary.last)
    rate = _pick(job, "samples_per_s", "samples_per_second")
    if rate is None and loss is not None and loss.summary is not None:
        rate = loss.summary.samples_per_second
    job_state = _pick(job, "state", "status") if isinstance(job, Mapping) else job
    job_text = _text(_pick(job, "message", "error")) if isinstance(job, Mapping) else ""
    extra = ""
    if job_state in ("failed", "crashed"):
        extra = f"job failed {job_text}"
    # A passing NaN is common under loss scaling; a NaN as the last loss means the run diverged.
    if loss is not None and loss.summary is not None and not math.isfinite(loss.summary.last):
        extra += " loss nan"
    remedy = find_remedy(status, outcome.failed_task, extra)
    if status == "skipped" and not outcome.reached:
        remedy = NOT_REACHED_REMEDY
    return {
        "host": outcome.host,
        "status": status,
        "reached": outcome.reached,
        "counts": dict(outcome.counts),
        "npu": npu_cell(npu) or None,
        "driver": _text(_pick(npu, "driver_version", "driver") or _pick(host_facts, "driver_version"))
        or None,
        "docker": docker_cell(host_facts, facts.get("docker")) or None,
        "container": container_cell(facts.get("container")) or None,
        "accel": verdict_cell(facts.get("accel")) or None,
        "job": _text(job_state) or None,
        "step": jsonable(step),
        "total_steps": jsonable(_pick(job, "total_steps", "max_steps")),
        "samples_per_second": jsonable(rate),
        "throughput": _throughput(job, loss),
        "elapsed_seconds": _elapsed(job),
        "projector": jsonable(_pick(job, "projector")),
        "loss_log": bool(_pick(job, "loss_log")),
        "node_rank": jsonable(_pick(job, "node_rank")),
        "last_loss": jsonable(last_loss),
        "failed_task": outcome.failed_task.to_dict() if outcome.failed_task else None,
        "note": None,
        "remedy": {"key": remedy.key, "cause": remedy.cause, "fix": remedy.fix} if remedy else None,
        "loss": (
            None
            if loss is None
            else {
                "log": loss.log,
                "error": loss.log_error,
                "summary": loss.summary.to_dict() if loss.summary else None,
            }
        ),
        "facts": jsonable(facts),
    }


def _explain_not_reached(entries: list[dict[str, Any]]) -> None:
    """Tell a host that never ran a task where the run stopped, and quote what a failure said about it.

    Validation errors name their host (`HOST: SETTING: message`), even when another host (or the control
    node) ran the check.
    """
    stopped = [e for e in entries if e["status"] in ("failed", "unreachable") and e["failed_task"]]
    where = "; ".join(f"{e['host']} ({e['failed_task']['task']})" for e in stopped[:3])
    for entry in entries:
        if entry["reached"] or entry["failed_task"]:
            continue
        names_me = re.compile(rf"(?<![\w.-]){re.escape(entry['host'])}:\s")
        about: list[str] = []
        for e in stopped:
            lines = re.split(r"\n|;\s", e["failed_task"]["message"])
            mine = [line.strip() for line in lines if names_me.search(line)]
            if mine and e["remedy"] and not about:
                entry["remedy"] = e["remedy"]  # the failure is about this host: its remedy applies here
            about += mine
        if not stopped:  # nothing failed: --limit (or the plays' host patterns) left it out
            entry["note"], entry["remedy"] = "not in this run (--limit)", None
            continue
        entry["note"] = f"not reached: the run stopped at {where}"
        if about:
            entry["note"] += ". " + " ".join(about)


EXTRA_VARS_FLAGS = ("-e", "--extra-vars")


def censored_command(argv: Sequence[str]) -> str:
    """The command line for the header, extra vars left out (they may hold secrets; @file names stay)."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(arg if arg.startswith("@") else "…")
            hide_next = False
        elif arg in EXTRA_VARS_FLAGS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith("--extra-vars="):
            value = arg.split("=", 1)[1]
            shown.append(arg if value.startswith("@") else "--extra-vars=…")
        elif arg.startswith("-e") and not arg.startswith("--") and len(arg) > 2:
            shown.append(arg if arg[2:].startswith("@") else "-e…")
        else:
            shown.append(os.path.basename(arg) if not shown else arg)
    return " ".join(shown)


def run_context(
    cliargs: Mapping[str, Any],
    argv: Sequence[str],
    versions: Mapping[str, str],
    llava: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The header of a report: ansible-playbook's options, versions, and the job's size and image."""
    llava = llava or {}
    tags = [t for t in cliargs.get("tags") or () if t != "all"]
    return {
        "check_mode": bool(cliargs.get("check")),
        "diff": bool(cliargs.get("diff")),
        "command": censored_command(argv),
        "limit": cliargs.get("subset") or None,
        "tags": tags or None,
        "skip_tags": list(cliargs.get("skip_tags") or ()) or None,
        "tool_version": versions.get("llava-devserver"),
        "ansible_core": versions.get("ansible-core"),
        "world_size": llava.get("world_size"),
        "global_batch_size": llava.get("global_batch_size"),
        "container_image": llava.get("container_image"),
    }


def build_report(
    run_dir: Path,
    outcomes: Sequence[HostOutcome],
    *,
    playbook: str | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
    plot: bool = True,
    context: Mapping[str, Any] | None = None,
    timings: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict; parses fetched job logs and draws loss.png when any has a loss.

    context: the run's header (check mode, command, limit, tags, versions, world size, global batch,
    image); timings: host -> role -> seconds its tasks took."""
    entries, curves = [], {}
    for outcome in outcomes:
        loss = _host_loss(run_dir, outcome.host)
        entries.append(_host_entry(outcome, loss))
        seconds = (timings or {}).get(outcome.host) or {}
        entries[-1]["seconds_by_role"] = {role: round(float(t), 2) for role, t in seconds.items()}
        if loss is not None and loss.log_points:
            curves[outcome.host] = loss.log_points
    _explain_not_reached(entries)
    loss_png = None
    if curves and plot:
        trainlog.plot_loss(curves, run_dir / "loss.png", title=f"Training loss: {run_dir.name}")
        loss_png = "loss.png"
    totals = {status: sum(1 for e in entries if e["status"] == status) for status in STATUSES}
    healthy = totals["failed"] == 0 and totals["unreachable"] == 0
    return {
        "schema": SCHEMA_VERSION,
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "playbook": playbook,
        "started": started.isoformat(timespec="seconds") if started else None,
        "finished": (finished or datetime.now(UTC)).isoformat(timespec="seconds"),
        "result": "ok" if healthy else "failed",
        "context": jsonable(dict(context or {})),
        "totals": totals,
        "loss_png": loss_png,
        "training": training_summary(entries),
        "hosts": entries,
    }


# ---- markdown ----------------------------------------------------------------------------------------------

COLUMNS = (
    ("Host", "host"),
    ("Status", "status"),
    ("NPU", "npu"),
    ("Driver", "driver"),
    ("Docker", "docker"),
    ("Container", "container"),
    ("Accel check", "accel"),
    ("Job", "job"),
    ("Step", "step"),
    ("Last loss", "last_loss"),
    ("Failed task", None),
    ("Message", None),
    ("Remedy", None),
)


def _cell(value: Any, markdown: bool = True) -> str:
    text = _one_line(_text(value)) if value is not None else ""
    if markdown:
        text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text or "–"


def _row(entry: Mapping[str, Any], markdown: bool = True) -> list[str]:
    failed = entry.get("failed_task") or {}
    remedy = entry.get("remedy") or {}
    task = failed.get("task")
    if task and failed.get("role"):
        task = f"{failed['role']} : {task}"
    shown = dict(entry)
    if entry.get("step") is not None and entry.get("total_steps") is not None:
        shown["step"] = f"{entry['step']}/{entry['total_steps']}"
    if entry.get("job") and isinstance(entry.get("samples_per_second"), int | float):
        shown["job"] = f"{entry['job']}, {entry['samples_per_second']:.1f} samples/s"
    cells = [_cell(shown.get(key), markdown) for _, key in COLUMNS if key]
    cells += [
        _cell(value, markdown)
        for value in (task, failed.get("message") or entry.get("note"), remedy.get("fix"))
    ]
    return cells


def _header_lines(report: Mapping[str, Any]) -> list[str]:
    """The context a ticket needs, one line each (report_html.context_rows, without the result)."""
    from llava_devserver.report_html import context_rows

    return [f"- {label}: {value}" for label, value in context_rows(report)[3:]]  # after result and times


def _message_lines(report: Mapping[str, Any]) -> list[str]:
    """Every failure message whole (the table cuts them)."""
    lines: list[str] = []
    for entry in report["hosts"]:
        failed = entry.get("failed_task") or {}
        if not failed.get("message"):
            continue
        task = f"{failed['role']} : {failed['task']}" if failed.get("role") else failed.get("task")
        lines += ["", f"### {entry['host']}: {task}", "", "```", str(failed["message"]).rstrip(), "```"]
    return ["", "## Messages", *lines] if lines else []


def device_network_section(hosts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The NPUs' own network per host (npu_network's `llava_report_device_network`): device IPs, links,
    TLS switches, the worst ping loss. Nothing when no host has it (one server, or not run)."""
    rows = []
    for entry in hosts:
        network = (entry.get("facts") or {}).get("device_network")
        if not isinstance(network, Mapping):
            continue
        cards = [card for card in network.get("cards") or [] if isinstance(card, Mapping)]
        ips = ", ".join(f"{c.get('card')}: {c.get('ipaddr') or 'none'}" for c in cards)
        links = " ".join(str(c.get("link") or "?") for c in cards)
        tls = " ".join(str(c.get("tls") if c.get("tls") is not None else "?") for c in cards)
        worst = network.get("worst_ping_loss_pct")
        ping = "–" if worst is None else f"{float(worst):g}% ({network.get('worst_ping')})"
        problems = network.get("problems") or []
        rows.append(
            [entry["host"], ips, links, tls, ping, f"{len(problems)}: {problems[0]}" if problems else ""]
        )
    if not rows:
        return []
    return [
        "",
        "## Device network (NPU RoCE ports)",
        "",
        "| Host | Device IPs (card: IP) | Links | TLS | Worst ping loss | Problems |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows),
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    totals = report["totals"]
    counts = ", ".join(f"{n} {status}" for status, n in totals.items() if n)
    lines = [
        f"# Fleet report {report['run']}",
        "",
        f"Result: **{report['result']}**. {len(report['hosts'])} host(s): {counts or 'none'}."
        + (f" Playbook `{report['playbook']}`." if report.get("playbook") else "")
        + (f" Started {report['started']}," if report.get("started") else "")
        + f" finished {report['finished']}.",
        "",
        *_header_lines(report),
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_row(entry)) + " |" for entry in report["hosts"]]
    lines += _message_lines(report)
    lines += device_network_section(report["hosts"])
    lines += training_lines(report.get("training"))
    if report.get("loss_png"):
        # The relative link works beside the file; pasted elsewhere, the path and report.html still do.
        path = Path(str(report.get("run_dir") or ".")) / str(report["loss_png"])
        lines += [
            "",
            f"![Training loss]({report['loss_png']})",
            "",
            f"Loss curve: `{path}` (embedded in report.html)",
        ]
    return "\n".join(lines) + "\n"


# ---- writing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportPaths:
    run_dir: Path
    json: Path
    markdown: Path
    loss_png: Path | None
    html: Path | None = None


def _update_latest(run_dir: Path) -> None:
    # Only inside a `runs/` directory of ours: a user-chosen LLAVA_RUN_DIR elsewhere gets no stray link.
    if run_dir.parent.name != "runs":
        return
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)  # atomic: a reader never sees no link


def write_report(
    run_dir: Path,
    outcomes: Sequence[HostOutcome],
    *,
    playbook: str | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
    context: Mapping[str, Any] | None = None,
    timings: Mapping[str, Mapping[str, float]] | None = None,
) -> ReportPaths:
    from llava_devserver.report_html import render_html

    run_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(
        run_dir,
        outcomes,
        playbook=playbook,
        started=started,
        finished=finished,
        context=context,
        timings=timings,
    )
    json_path, md_path, html_path = run_dir / "report.json", run_dir / "report.md", run_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    columns = [title for title, _ in COLUMNS]
    rows = [_row(entry, markdown=False) for entry in report["hosts"]]
    html_path.write_text(render_html(report, run_dir, columns, rows), encoding="utf-8")
    _update_latest(run_dir)
    loss = run_dir / "loss.png" if report["loss_png"] else None
    return ReportPaths(run_dir, json_path, md_path, loss, html_path)


def order_hosts(
    group_hosts: Iterable[str], seen: Iterable[str], failed_elsewhere: Iterable[str]
) -> list[str]:
    """Rows: the group's hosts in inventory order, then hosts outside it that failed (e.g. localhost)."""
    ordered = list(dict.fromkeys(group_hosts))
    members = set(ordered)
    extra = [
        h for h in dict.fromkeys(seen) if h not in members and (not ordered or h in set(failed_elsewhere))
    ]
    return ordered + extra
