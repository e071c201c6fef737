"""Jinja2 filters for the role llava_pretrain, over `llava_devserver.render`, `.jobstate` and `.trainlog`.

No logic here:
- `{{ llava | llava_pretrain_render }}`: `{path under llava_dir: content}`, exactly what
  `llava-devserver render` writes (`render.render_job`, Contract 2).
- `{{ container_path | llava_pretrain_host_path(llava) }}`: the host path of a path under container_work_dir.
- `{{ 'jobstate' | llava_pretrain_helper_path }}`: the control-node file of the standalone helper.
- `{{ hostvars | llava_pretrain_fleet_plan(play_hosts, group_hosts, restart, key) }}`: the action of every
  node, decided for the whole job (`jobstate.fleet_plan`) from each host's registered `plan` result.
- `{{ hostvars | llava_pretrain_loss_node(play_hosts, group_hosts, rule) }}`: the host whose log holds the
  loss (`trainlog.pick_loss_node`, setting loss_log_node), from each host's `llava_pretrain_job.loss_lines`.
- `{{ path | llava_pretrain_loss_summary }}`: the loss summary of a fetched log (`trainlog`), or None.
- `{{ job | llava_pretrain_report(action, loss_summary, loss_log, projector) }}`: the fact
  `llava_report_job` (Contract 5).
- `{{ llava | llava_pretrain_state_file }}`: the server's root-only job state file (`jobstate.Paths`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava_devserver import jobstate, render, trainlog
from llava_devserver.ansible_support import filter_guard as _guard


def llava_pretrain_render(llava: Mapping[str, Any]) -> dict[str, str]:
    return render.render_job(_plain(llava))


def llava_pretrain_host_path(path: str, llava: Mapping[str, Any]) -> str:
    return jobstate.host_path(str(llava["work_dir"]), str(llava["container_work_dir"]), str(path))


def llava_pretrain_helper_path(name: str) -> str:
    spec = importlib.util.find_spec(f"llava_devserver.{name}")
    if spec is None or not spec.origin:
        raise ValueError(f"llava_devserver.{name} is not installed")
    return spec.origin


def llava_pretrain_fleet_plan(
    hostvars: Mapping[str, Any],
    play_hosts: Sequence[str],
    group_hosts: Sequence[str],
    restart: bool = False,
    key: str = "llava_pretrain_planned",
) -> dict[str, dict[str, str]]:
    plans: dict[str, Mapping[str, Any]] = {}
    for host in play_hosts:
        registered = hostvars[host].get(key) if host in hostvars else None
        if not isinstance(registered, Mapping) or registered.get("rc") != 0:
            continue  # that host could not look at its job: it counts as missing
        plans[host] = json.loads(registered["stdout"])["plan"]
    return jobstate.fleet_plan(plans, [str(h) for h in group_hosts], bool(restart))


def llava_pretrain_loss_node(
    hostvars: Mapping[str, Any],
    play_hosts: Sequence[str],
    group_hosts: Sequence[str],
    rule: str = "auto",
    key: str = "llava_pretrain_job",
) -> str | None:
    ranked = [str(h) for h in group_hosts if h in play_hosts]  # the group's order is the node_rank order
    has_loss = {}
    for host in ranked:
        job = hostvars[host].get(key) if host in hostvars else None
        has_loss[host] = bool(job.get("loss_lines")) if isinstance(job, Mapping) else False
    return trainlog.pick_loss_node(ranked, has_loss, rule)  # type: ignore[arg-type]


def llava_pretrain_state_file(llava: Mapping[str, Any]) -> str:
    return jobstate.Paths(
        str(llava["work_dir"]),
        str(llava["container_work_dir"]),
        str(llava["state_dir"]),
        str(llava["container_name"]),
        str(llava["host_state_dir"]),
    ).state_file


def llava_pretrain_loss_summary(path: str) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        return trainlog.parse_log(path).summary.to_dict()
    except (trainlog.NoLossLinesError, OSError):
        return None


def llava_pretrain_report(
    job: Mapping[str, Any],
    action: str,
    loss_summary: Mapping[str, Any] | None = None,
    loss_log: bool | None = None,
    projector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    keys = ("state", "step", "total_steps", "loss", "samples_per_s", "pid", "log", "node_rank", "world_size")
    report: dict[str, Any] = {key: job.get(key) for key in keys}
    report |= {
        "exit_code": job.get("exit_code"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "action": action,
        "message": job.get("message"),
        "loss_log": loss_log,  # this node's log is the one read for the loss (loss_log_node)
        "projector": dict(projector) if projector else None,
    }
    if loss_summary:
        report["loss_summary"] = dict(loss_summary)
        if report["step"] is None:
            report["step"] = loss_summary.get("last_step")
        if report["loss"] is None:
            report["loss"] = loss_summary.get("last")
    return report


def _plain(value: Any) -> Any:
    """Ansible's lazy/tagged containers as plain dicts and lists (the renderer checks exact types)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            f.__name__: _guard(f)
            for f in (
                llava_pretrain_render,
                llava_pretrain_host_path,
                llava_pretrain_helper_path,
                llava_pretrain_fleet_plan,
                llava_pretrain_loss_node,
                llava_pretrain_state_file,
                llava_pretrain_loss_summary,
                llava_pretrain_report,
            )
        }
