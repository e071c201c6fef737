"""NPU ids: the one parser of id lists and ranges, and the one rule for an NPU held by another container.

- `parse_device_ids(value)`: `0-7`, `0,1,2,3`, `0-3,6`, `5` or a YAML list -> the ids, in the given order.
  Strict: a part that is not an id or a range, a backwards range, an id named twice or no id at all is a
  ValueError that names it. The inventory's `npu_devices` (llava_devserver.config) is read with it.
- `read_device_ids(value)`: the same grammar for a value someone else wrote (the `ASCEND_VISIBLE_DEVICES` of
  another container): the ids it names, parts that are not ids skipped (the Ascend runtime refuses them).
- `npus_held_elsewhere(inspect_output, npu_devices, own_container)`: which of a host's NPUs the other
  containers hold, from `docker inspect` of the containers; `held_npu_problem` says it in one sentence.
  A container holds NPU N when it runs (`State.Running` is true; a container that is not running, or
  whose state is unknown, holds no device) and was started with `--device=/dev/davinciN`
  (`HostConfig.Devices`) or, under the Ascend Docker runtime, with `ASCEND_VISIBLE_DEVICES` naming N.
  The host's own training container is left out: a rerun must not trip over the container it started.
  The roles npu_check (preflight) and training_container (before the start) both ask this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_DAVINCI = re.compile(r"^/dev/davinci(\d+)$")
_FORMS = "NPU ids such as 0-7, 0,1,2,3 or a list"


# --------------------------------------------------------------------------------------- the id parser


def _parts(value: Any) -> list[Any]:
    if isinstance(value, bool):
        raise ValueError(f"must be {_FORMS}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")] if value.strip() else []
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"must be {_FORMS}")


def _part_ids(item: Any) -> list[int]:
    """One element of a list: an id (`3`, 3) or a range (`0-7`)."""
    if isinstance(item, int) and not isinstance(item, bool):
        if item < 0:
            raise ValueError(f"{item} is not an NPU id")
        return [item]
    text = str(item).strip()
    match = _RANGE.fullmatch(text)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        if first > last:
            raise ValueError(f"range {text!r} runs backwards")
        return list(range(first, last + 1))
    if text.isdigit():
        return [int(text)]
    raise ValueError(f"{text!r} is not an NPU id or a range such as 0-7")


def parse_device_ids(value: Any) -> list[int]:
    """`0-7`, `0,1,2,3`, `0-3,6`, 5, or a list of ids and ranges -> the ids in the given order (strict)."""
    devices: list[int] = []
    for item in _parts(value):
        devices.extend(_part_ids(item))
    if not devices:
        raise ValueError("must name at least one NPU")
    duplicates = sorted({d for d in devices if devices.count(d) > 1})
    if duplicates:
        raise ValueError(f"lists NPU {', '.join(map(str, duplicates))} more than once")
    return devices


def read_device_ids(value: Any) -> list[int]:
    """The ids a value written by another tool names, sorted, once each; unreadable parts are skipped."""
    try:
        items = _parts(value)
    except ValueError:
        return []
    ids: set[int] = set()
    for item in items:
        try:
            ids.update(_part_ids(item))
        except ValueError:
            continue
    return sorted(ids)


# ------------------------------------------------------------------------------ NPUs held elsewhere


@dataclass(frozen=True)
class HeldNpu:
    """NPU `npu` is held by the running container `container`, as `how` shows."""

    npu: int
    container: str
    how: str  # `--device=/dev/davinciN` or `ASCEND_VISIBLE_DEVICES=...`


def inspect_entries(inspect_output: str | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The entries of `docker inspect` output: its JSON text (array or one object), a parsed list, or
    nothing (empty text or None: no container runs, or Docker is absent)."""
    if inspect_output is None:
        return []
    if isinstance(inspect_output, str):
        text = inspect_output.strip()
        if not text:
            return []
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"docker inspect output is not JSON: {exc}") from exc
        return list(parsed) if isinstance(parsed, list) else [parsed]
    return list(inspect_output)


def container_name(container: Mapping[str, Any]) -> str:
    return str(container.get("Name", "")).lstrip("/") or str(container.get("Id", ""))[:12]


def is_running(container: Mapping[str, Any]) -> bool:
    """Only a running container holds devices; no `State.Running` (an unknown state) is not running."""
    return (container.get("State") or {}).get("Running") is True


def held_npus(container: Mapping[str, Any]) -> dict[int, str]:
    """{NPU id: how} that one `docker inspect` entry was given (whether it runs or not)."""
    held: dict[int, str] = {}
    for device in (container.get("HostConfig") or {}).get("Devices") or []:
        match = _DAVINCI.match(str(device.get("PathOnHost", "")))
        if match:
            held[int(match.group(1))] = f"--device={device['PathOnHost']}"
    for entry in (container.get("Config") or {}).get("Env") or []:
        name, _, value = str(entry).partition("=")
        if name == "ASCEND_VISIBLE_DEVICES":
            for npu in read_device_ids(value):
                held.setdefault(npu, f"ASCEND_VISIBLE_DEVICES={value}")
    return held


def npus_held_elsewhere(
    inspect_output: str | Sequence[Mapping[str, Any]] | None,
    npu_devices: Iterable[Any],
    own_container: str | None = None,
) -> list[HeldNpu]:
    """Every (container, NPU) pair where a running container other than `own_container` holds one of
    `npu_devices`, in the order of the containers, then of the NPUs."""
    wanted = {int(npu) for npu in npu_devices}
    found: list[HeldNpu] = []
    for container in inspect_entries(inspect_output):
        name = container_name(container)
        if (own_container and name == own_container) or not is_running(container):
            continue
        found += [
            HeldNpu(npu, name, how) for npu, how in sorted(held_npus(container).items()) if npu in wanted
        ]
    return found


def held_npu_problem(held: HeldNpu) -> str:
    """The sentence a role fails with: which NPU, which container, how, and what to do."""
    return (
        f"NPU {held.npu} (/dev/davinci{held.npu}) is held by the running container {held.container!r} "
        f"({held.how}); one NPU cannot serve two containers: stop it (`docker stop {held.container}`) "
        f"or leave NPU {held.npu} out of npu_devices"
    )
