"""Deeper card health for npu_check: ECC counters, the PCI count of the cards, link flaps of their ports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import npu_network, npu_smi
from llava_devserver.sim import device_network, faults

FIXTURES = Path(__file__).parent.parent / "fixtures"
FILES = Path(npu_smi.__file__).parent / "sim" / "files"


def run(tmp_path: Path, state: dict[str, Any], name: str, *args: str) -> str:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    result = subprocess.run(
        [sys.executable, str(FILES / name), *args],
        env={"NPU_SIM_STATE": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


def state_with(*fault_texts: str, cards: int = 8) -> dict[str, Any]:
    state = npu_smi.default_sim_state(cards)
    state.update(device_network.initial_network(["devserver-1", "devserver-2"], 2, range(cards)))
    for text in fault_texts:
        state = faults.edit_state(state, faults.parse_fault(text))
    return state


def test_ecc_of_the_real_910b_format() -> None:
    ecc = npu_smi.parse_ecc((FIXTURES / "npu-smi" / "info-t-ecc_910B.txt").read_text())
    assert ecc["npu"] == 1 and ecc["supported"] is True
    assert len(ecc["counters"]) == 12 and set(ecc["counters"].values()) == {0}
    assert npu_smi.ecc_problems(1, ecc, 0) == []


def test_ecc_not_supported_and_unreadable() -> None:
    assert npu_smi.parse_ecc("This device does not support querying ecc.\n")["supported"] is False
    with pytest.raises(npu_smi.NpuSmiParseError, match=r"no `\.\.\. Error Count"):
        npu_smi.parse_ecc("something else\n")


def test_sim_ecc_fault_over_the_threshold(tmp_path: Path) -> None:
    state = state_with("card-ecc=3")
    text = "".join(
        f"### card {npu} ecc\n" + run(tmp_path, state, "npu-smi", "info", "-t", "ecc", "-i", str(npu))
        for npu in (2, 3)
    )
    problems = npu_smi.ecc_section_problems(text, 0)
    assert len(problems) == 1
    assert problems[0].startswith(
        "NPU 3: 2 uncorrectable ECC errors (HBM Double Bit Error Count 2, 2 HBM pages"
    )
    assert "exclude it from npu_devices" in problems[0]
    assert npu_smi.ecc_section_problems(text, 2) == []  # at the threshold: passes
    assert npu_smi.ecc_summary(text) == {2: 0, 3: 2}


def test_pci_count_of_real_lspci_skips_the_hosts_own_huawei_functions() -> None:
    assert npu_smi.count_ascend_pci((FIXTURES / "lspci" / "atlas800t-a2_named.txt").read_text()) == 8
    assert (
        npu_smi.count_ascend_pci("c1:00.0 1200: 19e5:d802 (rev 20)\n75:00.0 1200: 19e5:a250 (rev 21)\n") == 1
    )
    assert npu_smi.count_ascend_pci("") == 0


def test_sim_lspci_keeps_a_card_the_driver_lost(tmp_path: Path) -> None:
    state = state_with("card-lost=5")
    pci = npu_smi.count_ascend_pci(run(tmp_path, state, "lspci", "-n", "-d", "19e5:"))
    seen = len(npu_smi.parse_info(run(tmp_path, state, "npu-smi", "info")).cards)
    assert (pci, seen) == (8, 7)
    problems = npu_smi.pci_count_problems(pci, seen)
    assert len(problems) == 1 and "the driver lost 1 card(s)" in problems[0]
    assert npu_smi.pci_count_problems(8, 8) == [] and npu_smi.pci_count_problems(None, 8) == []
    assert "fell off the bus" in npu_smi.pci_count_problems(7, 8)[0]


def test_link_flaps_over_the_threshold(tmp_path: Path) -> None:
    state = state_with("hccn-link-flaps=1")
    text = "".join(
        f"### card {card} link_stat\n"
        + run(tmp_path, state, "hccn_tool", "-i", str(card), "-link_stat", "-g")
        for card in (0, 1)
    )
    assert npu_network.link_flaps(text) == {0: 0, 1: 5}
    problems = npu_network.link_flap_problems(text, 3)
    assert len(problems) == 1
    assert problems[0].startswith("NPU 1: its device port went down 5 times (last ")
    assert "npu_link_flaps_max 3" in problems[0]
    assert npu_network.link_flap_problems(text, 5) == []
    real = (FIXTURES / "hccn" / "link_stat_flaps.txt").read_text()
    assert npu_network.link_flap_problems(f"### card 0 link_stat\n{real}", 0)[0].startswith(
        "NPU 0: its device port went down 1 times (last Sun Oct 5 10:13:50 2025)"
    )
