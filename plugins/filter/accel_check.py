"""Jinja2 filters over `llava_devserver.accel_launch` for the role accel_check (no logic here).

- `{{ 'payloads.accel_check' | llava.devserver.llava_module_path }}`: the file of the package module
  `llava_devserver.<name>` (the role copies `accel_check.py` from the installed package into the container).
- `{{ llava | accel_check_plan(peers, accel_check_options) }}`: the `docker exec` argv and the bounds of the
  launch (`accel_launch.check_plan`; the options are the role's knobs, see `launch_options`).
- `{{ launched | accel_check_result(host, plan) }}`: `{failed, cause, message, report}` from the launch
  task's registered result (`accel_launch.check_result`).
- The rerun by pairs of servers (`llava_devserver.accel_pairs`): `accel_check_pair_plan` (this server's pair
  and its launch in a round), `accel_check_pair_record` (what the pair measured), `accel_check_pairwise` (the
  outcome once the pairs ran).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llava_devserver import accel_launch, accel_pairs
from llava_devserver.ansible_support import filter_guard as _guard


def llava_module_path(name: str) -> str:
    spec = importlib.util.find_spec(f"llava_devserver.{name}")
    if spec is None or not spec.origin:
        raise ValueError(f"llava_devserver.{name} is not installed")
    return spec.origin


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    return None if value in (None, "") else kind(value)


def launch_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The role's knobs (`accel_check_options`, as Ansible templated them) as `accel_launch.check_plan`'s
    keyword arguments: numbers from strings, empty meaning the default."""
    known: dict[str, Callable[[Any], Any]] = {
        "expect_devices": lambda v: _number(v, int),
        "timeout_s": int,
        "rdzv_timeout_s": int,
        "collective_timeout_s": lambda v: int(v or 0),
        "master_port": lambda v: _number(v, int),
        "matmul_size": lambda v: int(v or 0),
        "matmul_seconds": float,
        "outlier_ratio": float,
        "allreduce_mb": float,
        "allreduce_iters": int,
        "min_tflops": lambda v: float(v or 0),
        "min_busbw_gbs": lambda v: float(v or 0),
        "script": str,
        "json_out": str,
        "expect_accelerator": str,
        "fault": lambda v: str(v or ""),
    }
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"accel_check options: unknown {', '.join(unknown)}")
    return {name: known[name](value) for name, value in options.items()}


def accel_check_plan(
    llava: Mapping[str, Any], peers: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
) -> dict[str, Any]:
    return accel_launch.check_plan(llava, list(peers), **launch_options(options))


def accel_check_pair_plan(
    llava: Mapping[str, Any],
    round_no: Any,
    nodes: Sequence[str],
    peers: Sequence[Mapping[str, Any]],
    outcomes: Sequence[Any],
    records_by_host: Sequence[Any],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    return accel_pairs.pair_plan(
        llava, int(round_no), list(nodes), list(peers), list(outcomes), list(records_by_host),
        launch_options(options),
    )  # fmt: skip


def accel_check_pair_record(outcome: Mapping[str, Any], pair: Mapping[str, Any]) -> dict[str, Any]:
    return accel_pairs.pair_record(outcome, pair)


def accel_check_pairwise(
    outcome: Mapping[str, Any],
    host: str,
    nodes: Sequence[str],
    outcomes: Sequence[Any],
    records_by_host: Sequence[Any],
    max_rounds: Any,
) -> dict[str, Any]:
    return accel_pairs.pairwise_outcome(
        outcome, str(host), list(nodes), list(outcomes), list(records_by_host), int(max_rounds)
    )


def accel_check_result(launched: Mapping[str, Any], host: str, plan: Mapping[str, Any]) -> dict[str, Any]:
    seconds = launched.get("delta")
    if isinstance(seconds, str):  # command's delta: `0:01:02.345678`
        h, m, s = seconds.split(":")
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
    rc = launched.get("rc")
    return accel_launch.check_result(
        str(host),
        str(launched.get("stdout") or ""),
        str(launched.get("stderr") or launched.get("msg") or ""),
        None if rc is None else int(rc),
        plan,
        seconds,
    )


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llava_module_path": _guard(llava_module_path),
            "accel_check_plan": _guard(accel_check_plan),
            "accel_check_result": _guard(accel_check_result),
            "accel_check_pair_plan": _guard(accel_check_pair_plan),
            "accel_check_pair_record": _guard(accel_check_pair_record),
            "accel_check_pairwise": _guard(accel_check_pairwise),
        }
