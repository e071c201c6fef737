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

from collections.abc import Iterable
from typing import Any

from ansible.errors import AnsibleFilterError

from llava_devserver.container_spec import held_npus, holders

# One parser for both holder checks (this role's and training_container's): llava_devserver.container_spec.
__all__ = ["held_npus", "holders", "npu_check_bound_problems"]


def npu_check_bound_problems(
    inspect_output: str | None, npu_devices: Iterable[Any], own_container: str | None = None
) -> list[str]:
    """One sentence per (container, NPU) pair that blocks this host's container from getting the NPU."""
    text = (inspect_output or "").strip()
    if not text:
        return []
    try:
        containers = holders(text)
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
