"""Filter `npu_check_bound_problems`: NPUs of this host that another running container already holds.

Input: what the role's `docker inspect --format` prints (llava_devserver.npu_devices.HOLDERS_FORMAT: one JSON
object per running container with only the fields the rule reads, reduced on the server so that other
tenants' environments never reach the control node), or full `docker inspect` JSON; empty text when no
container runs or Docker is absent. The rule (what "held" means, which containers count) is
`llava_devserver.npu_devices.npus_held_elsewhere`, the one the training_container role applies too; the
host's own training container (`own_container`) is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llava_devserver.ansible_support import filter_guard
from llava_devserver.npu_devices import held_npu_problem, npus_held_elsewhere


@filter_guard
def npu_check_bound_problems(
    inspect_output: str | None, npu_devices: Iterable[Any], own_container: str | None = None
) -> list[str]:
    """One sentence per (container, NPU) pair that blocks this host's container from getting the NPU."""
    return [
        held_npu_problem(held) for held in npus_held_elsewhere(inspect_output, npu_devices, own_container)
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"npu_check_bound_problems": npu_check_bound_problems}
