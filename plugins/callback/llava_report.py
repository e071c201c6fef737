"""Ansible callback `llava_report`: writes the fleet report at the end of every playbook run.

A thin adapter: it collects per host the task counts, the task that stopped the host and the
`llava_report_*` facts roles publish, and hands them to `llava_devserver.report` (all logic lives there).
"""

from __future__ import annotations

DOCUMENTATION = """
name: llava_report
type: aggregate
short_description: Write the llava-devserver fleet report (runs/<timestamp>/report.{json,md}, loss.png)
description:
  - At playbook start, uses the directory in the environment variable C(LLAVA_RUN_DIR) or creates
    C(<playbook dir>/runs/<UTC timestamp>) (C(./runs/) of the current folder for the playbooks of the
    installed collection), and exports it as C(LLAVA_RUN_DIR) so that roles can fetch job
    logs into C($LLAVA_RUN_DIR/logs/<inventory_hostname>/train.log).
  - Records per host the ok/changed/failed/unreachable/skipped counts, the task that stopped the host and
    every fact whose name starts with C(llava_report_). Results of C(no_log) tasks are never recorded.
  - Also records each host's time per role and the run's context (check mode, command, limit, tags,
    versions, and world size, global batch and image from the validated C(llava) settings).
  - At the end writes report.json, report.md, report.html and loss.png, updates C(runs/latest) and prints
    the path.
requirements:
  - the llava_devserver package (importable, or this file inside its source tree)
"""

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

try:
    from llava_devserver import report
except ImportError:  # ansible from another Python: use the checkout this plugin lives in (plugins/callback/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from llava_devserver import report


GROUP = "devservers"
HIDDEN = "(output hidden: no_log)"


def _is_no_log(result: Any) -> bool:
    data = result._result
    no_log = getattr(result._task, "no_log", False)
    return bool(data.get("censored") or data.get("_ansible_no_log") or (isinstance(no_log, bool) and no_log))


def _role_name(task: Any) -> str | None:
    role = getattr(task, "_role", None)
    return str(role.get_name(include_role_fqcn=False)) if role is not None else None


def _task_name(task: Any) -> str:
    # Task.get_name() prefixes "role : "; the report keeps the role in its own field.
    return str(getattr(task, "name", None) or task.action)


def _message(data: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "module_stderr", "stdout", "reason"):
        value = data.get(key)
        if value:
            return str(value)
    return ""


def _failure_message(data: dict[str, Any]) -> str:
    message = _message(data)
    # A failed loop says "One or more items failed": the first failed item's message says why.
    for item in data.get("results") or []:
        if isinstance(item, dict) and item.get("failed") and not item.get("_ansible_no_log"):
            return _message(item) or message
    return message


def _context(llava: dict[str, Any] | None) -> dict[str, Any]:
    from ansible import context
    from ansible.release import __version__ as ansible_core

    from llava_devserver import __version__

    versions = {"llava-devserver": __version__, "ansible-core": ansible_core}
    return report.run_context(dict(context.CLIARGS), sys.argv, versions, llava)


def _base_dir(playbook: Any) -> Path:
    base = Path(getattr(playbook, "_basedir", None) or os.getcwd()).resolve()
    if "ansible_collections" in base.parts:  # llava.devserver.site: never write into the installed collection
        return Path.cwd()
    # playbooks/<x>.yml run alone write beside site.yml, like a run of site.yml does.
    if base.name == "playbooks" and (base.parent / "site.yml").exists():
        base = base.parent
    return base


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "llava_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_dir: Path | None = None
        self.playbook_name: str | None = None
        self.started = datetime.now(UTC)
        self.group_hosts: list[str] = []
        self.seen: list[str] = []
        self.failed: dict[str, report.FailedTask] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.llava: dict[str, Any] | None = None  # the first validated settings seen (the job's size, image)
        self.timings: dict[str, dict[str, float]] = {}  # host -> role -> seconds
        self._task_started = time.monotonic()

    # ---- run directory -----------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        if self.playbook_name is None:
            self.playbook_name = os.path.basename(getattr(playbook, "_file_name", "") or "") or None
        if self.run_dir is not None:  # several playbooks on one command line share one run
            return
        given = os.environ.get(report.RUN_DIR_ENV)
        try:
            if given:
                self.run_dir = Path(given).resolve()
                self.run_dir.mkdir(parents=True, exist_ok=True)
            else:
                self.run_dir = report.new_run_dir(_base_dir(playbook), self.started)
        except OSError as exc:
            self._display.warning(f"llava_report: cannot create the run directory: {exc}")
            return
        # Workers are forked from this process, so roles see it through lookup('ansible.builtin.env', ...).
        os.environ[report.RUN_DIR_ENV] = str(self.run_dir)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        if self.group_hosts:
            return
        inventory = getattr(play.get_variable_manager(), "_inventory", None)
        if inventory is not None:
            self.group_hosts = list(inventory.get_groups_dict().get(GROUP, []))

    # ---- per-task results ----------------------------------------------------------------------------------

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task_started = time.monotonic()

    def _time(self, result: Any) -> None:
        """A host's share of a task: from the task's start to its result (the linear strategy's view)."""
        role = _role_name(result._task) or "(play tasks)"
        host = self.timings.setdefault(str(result._host.get_name()), {})
        host[role] = host.get(role, 0.0) + max(0.0, time.monotonic() - self._task_started)

    def _host(self, result: Any) -> str:
        name = str(result._host.get_name())
        if name not in self.seen:
            self.seen.append(name)
        return name

    def v2_runner_on_ok(self, result: Any) -> None:
        host = self._host(result)
        self._time(result)
        if _is_no_log(result):
            return
        data = result._result
        sources = [data.get("ansible_facts")]
        sources += [item.get("ansible_facts") for item in data.get("results") or [] if isinstance(item, dict)]
        for facts in sources:
            if not isinstance(facts, dict):
                continue
            if self.llava is None and isinstance(facts.get("llava"), dict):
                self.llava = dict(facts["llava"])
            for name, value in facts.items():
                if str(name).startswith(report.FACT_PREFIX):
                    self.facts.setdefault(host, {})[str(name)[len(report.FACT_PREFIX) :]] = value

    def _record_failure(self, result: Any, message: str) -> None:
        # The last failure wins: a host stops at its first unrescued failure, and a rescued one is followed
        # by more tasks (and is dropped at the end when the host has no failures left).
        self.failed[self._host(result)] = report.FailedTask(
            task=_task_name(result._task),
            role=_role_name(result._task),
            message=HIDDEN if _is_no_log(result) else message,
            action=str(getattr(result._task, "action", "") or "") or None,
        )

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._time(result)
        if ignore_errors:
            self._host(result)
            return
        self._record_failure(result, _failure_message(result._result))

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._time(result)
        self._record_failure(result, _message(result._result))

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._host(result)
        self._time(result)

    # ---- the report ----------------------------------------------------------------------------------------

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if self.run_dir is None:
            return
        processed = list(stats.processed)
        summaries = {host: stats.summarize(host) for host in processed}
        stopped = [h for h, s in summaries.items() if s.get("failures") or s.get("unreachable")]
        hosts = report.order_hosts(self.group_hosts, self.seen + processed, stopped)
        outcomes = []
        for host in hosts:
            counts = summaries.get(host, {})
            failed = self.failed.get(host) if (counts.get("failures") or counts.get("unreachable")) else None
            outcomes.append(
                report.HostOutcome(
                    host=host,
                    counts=dict(counts),
                    failed_task=failed,
                    facts=self.facts.get(host, {}),
                    reached=host in summaries,
                )
            )
        try:
            paths = report.write_report(
                self.run_dir,
                outcomes,
                playbook=self.playbook_name,
                started=self.started,
                context=_context(self.llava),
                timings=self.timings,
            )
        except Exception as exc:  # a broken report must not hide the run's own result
            self._display.warning(f"llava_report: could not write the fleet report in {self.run_dir}: {exc}")
            return
        self._display.display(f"Fleet report: {paths.markdown}")
