"""Rolling batches: the `serial` and `max_fail_percentage` of the plays that restart Docker or recreate
containers (playbooks/host.yml, container.yml), from the validated settings (`rolling_batch`,
`max_fail_percentage` in the `llava` variable).

A play's header is templated before it runs, without a host; it reads `llava` of the first server of the
group that has it (the validate play gave it to every server of the run; the settings are job-wide, so
every server has the same values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ALL_AT_ONCE = 0  # Ansible's serial 0: every server in one batch
NEVER_STOP = 100  # more than 100% of a batch never fails


def play_batch_setting(hosts: Sequence[str], hostvars: Mapping[str, Any], name: str) -> Any:
    """`serial` or `max_fail_percentage` of a play over HOSTS (see play_batches)."""
    return play_batches(hosts, hostvars)[name]


def play_batches(hosts: Sequence[str], hostvars: Mapping[str, Any]) -> dict[str, Any]:
    """`{"serial", "max_fail_percentage"}` for a play over HOSTS (Ansible's values meaning "unset"; also
    when the header is templated without hosts, as `--syntax-check` does)."""
    for host in hosts:
        try:
            llava = hostvars[host].get("llava")
        except (KeyError, AttributeError):
            continue
        if isinstance(llava, Mapping):
            batch = llava.get("rolling_batch")
            fail = llava.get("max_fail_percentage")
            return {
                "serial": ALL_AT_ONCE if batch is None else batch,
                "max_fail_percentage": NEVER_STOP if fail is None else int(fail),
            }
    return {"serial": ALL_AT_ONCE, "max_fail_percentage": NEVER_STOP}
