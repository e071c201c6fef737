"""Live progress of a fleet run: one line per host, an overall line, and a summary table at the end.

Three layers, so each is testable alone:
- `FleetState` / `apply_event`: a reducer from ansible-runner events to per-host state (pure data);
- `render_live`, `render_summary`, `plain_line`: pure functions of that state (rich renderables or text);
- `LiveDisplay`: wires them to a terminal (rich Live on a TTY, one plain line per host change elsewhere).

Training progress (step, loss, samples/s) comes from task results that carry `llava_progress` or set the
fact `llava_report_job` (docs/architecture.md, Contract 6).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llava_devserver.runner import Event, result_message

PROGRESS_KEY = "llava_progress"
JOB_FACT = "llava_report_job"
PROGRESS_FIELDS = ("step", "total_steps", "loss", "samples_per_s", "state")

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold magenta",
    "not run": "dim",
    "stopped": "yellow",
}


@dataclass
class HostState:
    name: str
    status: str = "pending"  # pending, running, failed, unreachable; at the end ok/changed/not run/stopped
    play: str = ""
    role: str = ""
    task: str = ""
    ok: int = 0  # as in Ansible's recap: includes changed
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str = ""  # why it failed
    changed_tasks: list[str] = field(default_factory=list)
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    job_state: str | None = None

    @property
    def results(self) -> int:
        return self.ok + self.failed + self.unreachable + self.skipped


@dataclass
class FleetState:
    hosts: dict[str, HostState] = field(default_factory=dict)
    playbook: str = ""
    play: str = ""
    plays_started: int = 0
    task: str = ""
    tasks_started: int = 0
    finished: bool = False
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None

    @classmethod
    def for_hosts(cls, names: Iterable[str]) -> FleetState:
        return cls(hosts={name: HostState(name) for name in names})

    def host(self, name: str) -> HostState:
        if name not in self.hosts:
            self.hosts[name] = HostState(name)
        return self.hosts[name]

    @property
    def results(self) -> int:
        return sum(h.results for h in self.hosts.values())

    def elapsed(self, now: float | None = None) -> float:
        end = self.ended_at if self.ended_at is not None else (now if now is not None else time.monotonic())
        return max(0.0, end - self.started_at)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return None if value is None else kind(value)
    except (TypeError, ValueError):
        return None


def progress_from_result(res: Mapping[str, Any]) -> dict[str, Any] | None:
    """Training progress in a task result (Contract 6), or None."""
    candidates: list[Any] = [res.get(PROGRESS_KEY)]
    facts = res.get("ansible_facts")
    if isinstance(facts, Mapping):
        candidates += [facts.get(PROGRESS_KEY), facts.get(JOB_FACT)]
    stdout = res.get("stdout")
    if isinstance(stdout, str) and PROGRESS_KEY in stdout and stdout.lstrip().startswith("{"):
        try:
            parsed = json.loads(stdout)
        except ValueError:
            parsed = None
        if isinstance(parsed, Mapping):
            candidates.append(parsed.get(PROGRESS_KEY))
    for candidate in candidates:
        if isinstance(candidate, Mapping) and any(candidate.get(k) is not None for k in PROGRESS_FIELDS):
            return dict(candidate)
    return None


def _take_progress(host: HostState, progress: Mapping[str, Any]) -> None:
    step = _number(progress.get("step"), int)
    if step is not None:
        host.step = step
    total = _number(progress.get("total_steps"), int)
    if total is not None:
        host.total_steps = total
    loss = _number(progress.get("loss"), float)
    if loss is not None:
        host.loss = loss
    rate = _number(progress.get("samples_per_s"), float)
    if rate is not None:
        host.samples_per_s = rate
    state = progress.get("state")
    if isinstance(state, str) and state:
        host.job_state = state


def apply_event(state: FleetState, event: Event) -> list[str]:
    """Fold one ansible-runner event into STATE; returns the names of hosts whose state changed."""
    kind = event.get("event", "")
    data = event.get("event_data") or {}
    if kind == "playbook_on_start":
        state.playbook = str(data.get("playbook", ""))
        return []
    if kind == "playbook_on_play_start":
        state.play = str(data.get("name") or data.get("play") or "")
        state.plays_started += 1
        return []
    if kind == "playbook_on_task_start":
        state.task = str(data.get("task") or data.get("name") or "")
        state.tasks_started += 1
        return []
    if kind == "playbook_on_stats":
        return _finish(state, data)
    name = data.get("host")
    if not name or not kind.startswith("runner_"):
        return []
    host = state.host(str(name))
    res = data.get("res") or {}
    if kind == "runner_on_start":
        host.play = str(data.get("play") or state.play)
        host.role = str(data.get("role") or "")
        host.task = str(data.get("task") or "")
        if host.status == "pending":
            host.status = "running"
        return [host.name]
    progress = progress_from_result(res) if isinstance(res, Mapping) else None
    if progress:
        _take_progress(host, progress)
    if kind == "runner_on_ok":
        host.ok += 1
        if res.get("changed"):
            host.changed += 1
            host.changed_tasks.append(str(data.get("task") or "?"))
    elif kind == "runner_on_failed":
        if data.get("ignore_errors"):
            host.ok += 1
        else:
            host.failed += 1
            host.status = "failed"
            host.message = f"{data.get('task') or '?'}: {result_message(res)}"
    elif kind == "runner_on_unreachable":
        host.unreachable += 1
        host.status = "unreachable"
        host.message = f"{data.get('task') or '?'}: {result_message(res)}"
    elif kind == "runner_on_skipped":
        host.skipped += 1
    elif kind == "runner_retry" and not progress:
        return []
    return [host.name]


def _finish(state: FleetState, data: Mapping[str, Any]) -> list[str]:
    state.finished = True
    state.ended_at = time.monotonic()
    recap = {column: data.get(column) or {} for column in ("ok", "changed", "failures", "dark", "skipped")}
    for host in state.hosts.values():
        if host.name in recap["ok"] or any(host.name in v for v in recap.values()):
            host.ok = int(recap["ok"].get(host.name, host.ok))
            host.changed = int(recap["changed"].get(host.name, host.changed))
            host.failed = int(recap["failures"].get(host.name, host.failed))
            host.unreachable = int(recap["dark"].get(host.name, host.unreachable))
            host.skipped = int(recap["skipped"].get(host.name, host.skipped))
        host.status = final_status(host)
        host.role = host.task = ""  # the line then names the last play the host was in
    return list(state.hosts)


def final_status(host: HostState) -> str:
    if host.unreachable:
        return "unreachable"
    if host.failed:
        return "failed"
    if host.results == 0:
        return "not run"
    return "changed" if host.changed else "ok"


# ------------------------------------------------------------------------------------------ rendering


def _where(host: HostState) -> str:
    parts = [p for p in (host.role, host.task) if p]
    return " / ".join(parts) if parts else host.play


def _job_text(host: HostState) -> str:
    if host.step is None and host.loss is None and host.job_state is None:
        return ""
    parts = []
    if host.job_state:
        parts.append(host.job_state)
    if host.step is not None:
        parts.append(f"step {host.step}" + (f"/{host.total_steps}" if host.total_steps else ""))
    if host.loss is not None:
        parts.append(f"loss {host.loss:.4f}")
    if host.samples_per_s is not None:
        parts.append(f"{host.samples_per_s:.1f} samples/s")
    return " ".join(parts)


def _counts(host: HostState, compact: bool = False) -> str:
    if compact:  # the summary table: only what is not zero, ok first
        counts = {"ok": host.ok, "changed": host.changed, "failed": host.failed}
        counts |= {"unreachable": host.unreachable, "skipped": host.skipped}
        return " ".join(f"{name}={n}" for name, n in counts.items() if n or name == "ok")
    text = f"ok={host.ok} changed={host.changed} failed={host.failed}"
    if host.unreachable:
        text += f" unreachable={host.unreachable}"
    return text


def overall_line(state: FleetState, now: float | None = None) -> str:
    hosts = list(state.hosts.values())
    bad = sum(1 for h in hosts if h.status in ("failed", "unreachable"))
    done = "finished" if state.finished else f"play {state.plays_started}: {state.play or '-'}"
    minutes, seconds = divmod(int(state.elapsed(now)), 60)
    return (
        f"{done} | {state.results} task results on {len(hosts)} hosts | "
        f"{bad} failed/unreachable | {minutes:02d}:{seconds:02d}"
    )


def _longest(names: Iterable[str]) -> int:
    return max((len(name) for name in names), default=4)


def render_live(state: FleetState, now: float | None = None) -> RenderableType:
    """The live screen: one row per host, then the overall line."""
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=False)
    # Host and status are never cut; the current task and the job line give way on a narrow terminal.
    table.add_column("host", no_wrap=True, min_width=_longest(state.hosts))
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("ok/chg/fail", justify="right", no_wrap=True, min_width=11)
    table.add_column("now", overflow="ellipsis", no_wrap=True, max_width=60, ratio=3)
    table.add_column("job", overflow="ellipsis", no_wrap=True, ratio=2)
    for host in state.hosts.values():
        style = STATUS_STYLE.get(host.status, "")
        now_text = host.message if host.status in ("failed", "unreachable") else _where(host)
        table.add_row(
            host.name,
            Text(host.status, style=style),
            Text(f"{host.ok}/{host.changed}/{host.failed}", style="red" if host.failed else ""),
            now_text,
            _job_text(host),
        )
    return Group(table, Text(overall_line(state, now), style="bold"))


def render_summary(state: FleetState) -> Table:
    """The table printed when the run ends: a row per host with its outcome and why it failed."""
    table = Table(title="Fleet summary", show_lines=False)
    table.add_column("host", no_wrap=True, min_width=_longest(state.hosts))
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("tasks", min_width=10)
    table.add_column("job", min_width=12, ratio=1)
    table.add_column("why", min_width=16, ratio=2)
    for host in state.hosts.values():
        table.add_row(
            host.name,
            Text(host.status, style=STATUS_STYLE.get(host.status, "")),
            _counts(host, compact=True),
            _job_text(host),
            host.message,
        )
    return table


def plain_line(host: HostState) -> str:
    """One CI-friendly line for a host: `HOST STATUS [role / task] ok=.. changed=.. failed=.. [job] [why]`."""
    parts = [host.name, host.status]
    if host.status in ("failed", "unreachable"):
        parts.append(host.message)
    elif _where(host):
        parts.append(f"[{_where(host)}]")
    parts.append(_counts(host))
    job = _job_text(host)
    if job:
        parts.append(f"job: {job}")
    return " ".join(parts)


def _plain_signature(host: HostState) -> tuple[Any, ...]:
    """What must change for a plain line to be printed: play, role, status or training progress."""
    if host.status in ("failed", "unreachable"):  # said once; later moves of the host add nothing
        return (host.status, host.message)
    return (host.play, host.role, host.status, host.step, host.job_state)


# ------------------------------------------------------------------------------------------- display


class LiveDisplay:
    """Feed it events (`display.on_event`); `with LiveDisplay(...)` runs the live screen on a TTY."""

    def __init__(
        self,
        hosts: Iterable[str] = (),
        *,
        console: Console | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: IO[str] | None = None,
    ) -> None:
        self.console = console or Console(file=stream)
        self.state = FleetState.for_hosts(hosts)
        self.live_mode = self.console.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._printed: dict[str, tuple[Any, ...]] = {}
        self._clock = clock

    def __enter__(self) -> LiveDisplay:
        if self.live_mode:
            self._live = Live(
                get_renderable=self._renderable,
                console=self.console,
                refresh_per_second=4,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def _renderable(self) -> RenderableType:
        with self._lock:
            return render_live(self.state, self._clock())

    def on_event(self, event: Event) -> None:
        with self._lock:
            changed = apply_event(self.state, event)
            lines = [] if self.live_mode else self._plain_updates(changed)
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _plain_updates(self, names: list[str]) -> list[str]:
        lines = []
        for name in names:
            host = self.state.hosts[name]
            signature = _plain_signature(host)
            if self._printed.get(name) != signature:
                self._printed[name] = signature
                lines.append(plain_line(host))
        return lines

    def print_summary(self) -> None:
        """The table on a terminal; on a log, one plain line per host (readable at any width)."""
        with self._lock:
            if not self.state.finished:  # ansible-playbook stopped early (a syntax error, Ctrl-C): no recap
                for host in self.state.hosts.values():
                    if host.status in ("pending", "running"):
                        host.status = "not run" if host.results == 0 else "stopped"
            summary: RenderableType = render_summary(self.state)
            lines = [plain_line(host) for host in self.state.hosts.values()]
            overall = overall_line(self.state, self._clock())
        if self.live_mode:
            self.console.print(summary)
        else:
            self.console.print("SUMMARY", markup=False, highlight=False)
            for line in lines:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.console.print(overall, markup=False, highlight=False)
