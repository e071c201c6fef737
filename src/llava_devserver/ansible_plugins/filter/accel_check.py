"""Jinja2 filters over `llava_devserver.accel_launch` for the role accel_check (no logic here).

- `{{ 'accel_check' | llava_module_path }}`: the file of the package module `llava_devserver.<name>`
  (the role copies `accel_check.py` from the installed package into the container).
- `{{ llava | accel_check_plan(peers, script=..., json_out=..., expect_accelerator=..., ...) }}`: the
  `docker exec` argv and the bounds of the launch (`accel_launch.check_plan`).
- `{{ launched | accel_check_result(host, plan) }}`: `{failed, cause, message, report}` from the launch
  task's registered result (`accel_launch.check_result`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llava_devserver import accel_launch
from llava_devserver.ansible_support import filter_guard as _guard


def llava_module_path(name: str) -> str:
    spec = importlib.util.find_spec(f"llava_devserver.{name}")
    if spec is None or not spec.origin:
        raise ValueError(f"llava_devserver.{name} is not installed")
    return spec.origin


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    return None if value in (None, "") else kind(value)


def accel_check_plan(
    llava: Mapping[str, Any],
    peers: Sequence[Mapping[str, Any]],
    script: str,
    json_out: str,
    expect_accelerator: str,
    expect_devices: Any = None,
    timeout_s: Any = 300,
    rdzv_timeout_s: Any = 120,
    collective_timeout_s: Any = 0,
    master_port: Any = None,
    matmul_size: Any = 0,
    matmul_seconds: Any = 0.2,
    outlier_ratio: Any = 0.5,
    allreduce_mb: Any = 64,
    allreduce_iters: Any = 5,
    fault: Any = "",
) -> dict[str, Any]:
    return accel_launch.check_plan(
        llava,
        list(peers),
        script=str(script),
        json_out=str(json_out),
        expect_accelerator=str(expect_accelerator),
        expect_devices=_number(expect_devices, int),
        timeout_s=int(timeout_s),
        rdzv_timeout_s=int(rdzv_timeout_s),
        collective_timeout_s=int(collective_timeout_s or 0),
        master_port=_number(master_port, int),
        matmul_size=int(matmul_size or 0),
        matmul_seconds=float(matmul_seconds),
        outlier_ratio=float(outlier_ratio),
        allreduce_mb=float(allreduce_mb),
        allreduce_iters=int(allreduce_iters),
        fault=str(fault or ""),
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
        }
