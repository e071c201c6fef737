"""Jinja2 filters over `llava_devserver.npu_smi` (the one npu-smi parser; no logic lives here).

- `{{ out.stdout | npu_smi_info }}`: the parsed output as a dict (`kind`, `cards`, `total_count`, ...).
  An npu-smi failure or unknown text fails the task with the parser's message.
- `{{ out.stdout | npu_smi_check(npu_count=8, npu_devices=[0, 1], driver_version='23.0.5') }}`: a list of
  problems (empty when all is well), each naming the card or the cause; an npu-smi failure such as
  DCMI -8005 is returned as the one problem, so a role can `fail` with it. Accepts the text or the dict
  of `npu_smi_info`.
- `{{ lspci.stdout | npu_smi_pci_count }}`: Ascend NPUs listed by `lspci -n -d 19e5:`;
  `{{ pci_count | npu_smi_pci_problems(chips_seen_by_npu_smi) }}`: the two counts disagree.
- `{{ out.stdout | npu_smi_ecc_problems(max_errors) }}` over `### card N ecc` sections of
  `npu-smi info -t ecc -i N` calls; `{{ out.stdout | npu_smi_ecc_summary }}`: uncorrectable counts per card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

from llava_devserver import npu_smi


def npu_smi_info(text: str) -> dict[str, Any]:
    try:
        return npu_smi.npu_smi_to_dict(str(text))
    except npu_smi.NpuSmiError as exc:
        raise AnsibleFilterError(exc.message) from exc


def npu_smi_check(
    output: str | Mapping[str, Any],
    npu_count: int | None = None,
    npu_devices: Sequence[int] | None = None,
    driver_version: str | None = None,
) -> list[str]:
    return npu_smi.check_npu_smi(
        output if isinstance(output, Mapping) else str(output),
        npu_count=None if npu_count is None else int(npu_count),
        npu_devices=None if npu_devices is None else [int(device) for device in npu_devices],
        driver_version=None if driver_version is None else str(driver_version),
    )


def npu_smi_pci_count(text: str) -> int:
    return npu_smi.count_ascend_pci(str(text))


def npu_smi_pci_problems(pci_count: Any, npu_smi_count: Any) -> list[str]:
    return npu_smi.pci_count_problems(
        None if pci_count in (None, "") else int(pci_count),
        None if npu_smi_count in (None, "") else int(npu_smi_count),
    )


def npu_smi_ecc_problems(text: str, max_errors: Any = 0) -> list[str]:
    return npu_smi.ecc_section_problems(str(text), int(max_errors))


def npu_smi_ecc_summary(text: str) -> dict[int, int | None]:
    return npu_smi.ecc_summary(str(text))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "npu_smi_info": npu_smi_info,
            "npu_smi_check": npu_smi_check,
            "npu_smi_pci_count": npu_smi_pci_count,
            "npu_smi_pci_problems": npu_smi_pci_problems,
            "npu_smi_ecc_problems": npu_smi_ecc_problems,
            "npu_smi_ecc_summary": npu_smi_ecc_summary,
        }
