"""Jinja2 filters over `llava_devserver.job_guard` for docker_engine and accel_check (no logic here).

- `{{ registered | llava_job_probe }}`: the job's state from a `jobstate.py probe --no-write` result.
- `{{ probe | docker_engine_restart_decision(host, container, current, wanted, path) }}`: whether a
  daemon.json change (and the restart of dockerd) waits for the job, with the message.
- `{{ probe | accel_check_skip_decision(host, container, force, ansible_run_tags) }}`: whether the
  accelerator check is skipped; `{{ decision | accel_check_skipped_report(last) }}` its report fact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llava_devserver import job_guard
from llava_devserver.ansible_support import filter_guard as _guard

FILTERS: dict[str, Callable[..., Any]] = {
    "llava_job_probe": job_guard.probe_result,
    "docker_engine_restart_decision": job_guard.docker_restart_decision,
    "accel_check_skip_decision": job_guard.accel_skip_decision,
    "accel_check_skipped_report": job_guard.accel_skipped_report,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
