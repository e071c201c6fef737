"""Filter `npu_check_bound_problems`: NPUs of this host that another running container already holds.

Input: what the role's `docker inspect --format` prints, one JSON object per running container with only the
fields this check reads (`name`, `running`, `devices`: the PathOnHost of each --device, `visible`: the
`ASCEND_VISIBLE_DEVICES=...` entry of its environment or null). The reduction happens on the server, so the
rest of other tenants' containers (their environment, with whatever secrets it holds) never reaches the
control node or the run's events. A JSON array of full `docker inspect` entries is read too (reduced first).
Empty text: no container runs or Docker is absent.

A container holds NPU N when it was started with `--device=/dev/davinciN` or, under the Ascend Docker
runtime, with `ASCEND_VISIBLE_DEVICES` naming N (`0-3,5` style). The host's own training container
(`own_container`) is left out: rerunning the play must not trip over the container it started before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

_DAVINCI = re.compile(r"^/dev/davinci(\d+)$")


def _visible_devices(value: str) -> set[int]:
    """`0-3,5` -> {0, 1, 2, 3, 5}; unreadable parts are ignored (the runtime rejects them anyway)."""
    ids: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            ids.add(int(part))
        elif re.fullmatch(r"\d+\s*-\s*\d+", part):
            low, high = (int(bound) for bound in part.split("-"))
            ids.update(range(low, high + 1))
    return ids


def reduce_inspect(container: Mapping[str, Any]) -> dict[str, Any]:
    """The fields this check reads, from one full `docker inspect` entry (the shape of the role's format)."""
    visible = None
    for entry in (container.get("Config") or {}).get("Env") or []:
        if str(entry).partition("=")[0] == "ASCEND_VISIBLE_DEVICES":
            visible = str(entry)
    return {
        "name": str(container.get("Name", "")).lstrip("/") or str(container.get("Id", ""))[:12],
        "running": (container.get("State") or {}).get("Running", True),
        "devices": [
            str(d.get("PathOnHost", "")) for d in (container.get("HostConfig") or {}).get("Devices") or []
        ],
        "visible": visible,
    }


def held_npus(container: Mapping[str, Any]) -> dict[int, str]:
    """{NPU id: how the container holds it} for one reduced entry."""
    held: dict[int, str] = {}
    for device in container.get("devices") or []:
        match = _DAVINCI.match(str(device))
        if match:
            held[int(match.group(1))] = f"--device={device}"
    visible = container.get("visible")
    if visible:
        value = str(visible).partition("=")[2]
        for npu in _visible_devices(value):
            held.setdefault(npu, f"ASCEND_VISIBLE_DEVICES={value}")
    return held


def parse_containers(text: str) -> list[dict[str, Any]]:
    """Reduced entries from the role's output, one object a line (or a JSON array of full inspect entries)."""
    if text.startswith("["):
        return [reduce_inspect(entry) for entry in json.loads(text)]
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError(f"not an object: {line[:80]}")
            entries.append(entry)
    return entries


def npu_check_bound_problems(
    inspect_output: str | None, npu_devices: Iterable[Any], own_container: str | None = None
) -> list[str]:
    """One sentence per (container, NPU) pair that blocks this host's container from getting the NPU."""
    text = (inspect_output or "").strip()
    if not text:
        return []
    try:
        containers = parse_containers(text)
    except ValueError as exc:
        raise AnsibleFilterError(
            f"npu_check_bound_problems: docker inspect output is not JSON: {exc}"
        ) from exc
    wanted = {int(npu) for npu in npu_devices}
    problems: list[str] = []
    for container in containers:
        name = str(container.get("name") or "").lstrip("/")
        if own_container and name == own_container:
            continue
        if not container.get("running", True):
            continue
        for npu, how in sorted(held_npus(container).items()):
            if npu in wanted:
                problems.append(
                    f"NPU {npu} (/dev/davinci{npu}) is held by the running container {name!r} ({how}); "
                    f"one NPU cannot serve two containers: stop it (`docker stop {name}`) or leave NPU {npu} "
                    "out of npu_devices"
                )
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"npu_check_bound_problems": npu_check_bound_problems}
