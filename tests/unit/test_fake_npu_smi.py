"""The simulated fleet's fake npu-smi: run as a process, its output read back by the project's parser."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import npu_smi

FAKE = npu_smi.FAKE_NPU_SMI
FIXTURES = Path(__file__).parents[1] / "fixtures" / "npu-smi"


def run_fake(tmp_path: Path, state: dict[str, Any] | None, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "state.json"
    if state is not None:
        path.write_text(json.dumps(state))
    return subprocess.run(
        [sys.executable, str(FAKE), *args],
        env={"NPU_SIM_STATE": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def parse(result: subprocess.CompletedProcess[str]) -> npu_smi.NpuSmiOutput:
    return npu_smi.parse_npu_smi(result.stdout + result.stderr)


def test_script_is_executable_and_stdlib_only() -> None:
    assert FAKE.stat().st_mode & 0o111
    assert FAKE.read_text().startswith("#!/usr/bin/env python3\n")
    source = FAKE.read_text()
    import ast

    tree = ast.parse(source, feature_version=(3, 9))  # runs on the servers' Python 3.9+
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names)


def test_reproduces_the_real_910b_table_byte_for_byte(tmp_path: Path) -> None:
    """Fed the real server's numbers, the fake prints exactly the real server's `npu-smi info`."""
    real = (FIXTURES / "info_910B3x8_23.0.7.txt").read_text()
    parsed = npu_smi.parse_info(real)
    state = {
        "driver_version": "23.0.7",
        "chip_name": "910B3",
        "error": None,
        "cards": [
            {
                "npu": card.npu,
                "health": card.health,
                "bus_id": card.bus_id,
                "power_w": card.power_w,
                "temp_c": card.temp_c,
                "hbm_used_mb": card.hbm_used_mb,
                "hbm_total_mb": card.hbm_total_mb,
            }
            for card in parsed.cards
        ],
    }
    result = run_fake(tmp_path, state, "info")
    assert result.returncode == 0, result.stderr
    assert result.stdout == real
    listed = run_fake(tmp_path, state, "info", "-l")
    assert listed.stdout.expandtabs() == (FIXTURES / "info-l_910Bx8.txt").read_text()
    assert listed.stdout.startswith("\tTotal Count")


def test_default_state_round_trips(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(8, driver_version="23.0.5")
    info = parse(run_fake(tmp_path, state, "info"))
    assert isinstance(info, npu_smi.NpuSmiInfo)
    assert info.npu_ids == list(range(8))
    assert {card.health for card in info.cards} == {"OK"}
    assert info.driver_version == "23.0.5" and info.version == "23.0.5"
    for card, wanted in zip(info.cards, state["cards"], strict=True):
        assert (card.bus_id, card.power_w, card.temp_c) == (
            wanted["bus_id"],
            wanted["power_w"],
            wanted["temp_c"],
        )
        assert (card.hbm_used_mb, card.hbm_total_mb) == (wanted["hbm_used_mb"], wanted["hbm_total_mb"])
    assert npu_smi.check_npu_smi(info, npu_count=8, npu_devices=range(8), driver_version="23.0.5") == []

    listed = parse(run_fake(tmp_path, state, "info", "-l"))
    assert isinstance(listed, npu_smi.NpuSmiList)
    assert listed.total_count == 8 and listed.npu_ids == list(range(8))

    for npu in (0, 7):
        board = parse(run_fake(tmp_path, state, "info", "-t", "board", "-i", str(npu)))
        assert isinstance(board, npu_smi.NpuSmiBoard)
        assert board.npu == npu and board.driver_version == "23.0.5"
        assert board.bus_id == state["cards"][npu]["bus_id"]
    # Options in the other order, as people type them.
    board = parse(run_fake(tmp_path, state, "info", "-i", "3", "-t", "board"))
    assert isinstance(board, npu_smi.NpuSmiBoard) and board.npu == 3


def test_critical_card(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state()
    state["cards"][5]["health"] = "Critical"
    text = run_fake(tmp_path, state, "info").stdout
    info = npu_smi.parse_info(text)
    assert [card.health for card in info.cards].count("Critical") == 1 and info.cards[5].health == "Critical"
    problems = npu_smi.check_npu_smi(text, npu_count=8, npu_devices=range(8))
    assert problems == ["NPU 5 chip 0, 0000:02:00.0 health is 'Critical', expected 'OK'"]
    assert npu_smi.check_npu_smi(text, npu_count=8, npu_devices=[0, 1, 2, 3]) == []


def test_seven_of_eight_cards(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state()
    del state["cards"][3]
    info_text = run_fake(tmp_path, state, "info").stdout
    list_text = run_fake(tmp_path, state, "info", "-l").stdout
    assert npu_smi.parse_info(info_text).npu_ids == [0, 1, 2, 4, 5, 6, 7]
    assert npu_smi.parse_list(list_text).total_count == 7
    problems = npu_smi.check_npu_smi(info_text, npu_count=8, npu_devices=range(8))
    assert problems == [
        "expected 8 NPUs (npu_count) but npu-smi info reports 7: 0,1,2,4,5,6,7",
        "NPU 3 of npu_devices 0,1,2,3,4,5,6,7 not reported by npu-smi info (it reports 0,1,2,4,5,6,7)",
    ]
    assert npu_smi.check_npu_smi(list_text, npu_count=8)[0].startswith(
        "expected 8 NPUs (npu_count) but npu-smi info -l"
    )
    # Asking for the missing card's board fails like the real tool: no board to parse.
    missing = run_fake(tmp_path, state, "info", "-t", "board", "-i", "3")
    assert missing.returncode == 1 and "invalid" in missing.stdout


def test_wrong_driver_version(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(driver_version="24.1.rc2")
    info_problems = npu_smi.check_npu_smi(run_fake(tmp_path, state, "info").stdout, driver_version="23.0.5")
    board_text = run_fake(tmp_path, state, "info", "-t", "board", "-i", "0").stdout
    board_problems = npu_smi.check_npu_smi(board_text, driver_version="23.0.5")
    assert (
        info_problems
        == board_problems
        == ["driver version is 24.1.rc2, expected 23.0.5 (npu_driver_version)"]
    )


@pytest.mark.parametrize("code", ["-8005", "-8020", "-8001"])
def test_dcmi_error_state(tmp_path: Path, code: str) -> None:
    state = npu_smi.default_sim_state()
    state["error"] = code
    for args in (["info"], ["info", "-l"], ["info", "-t", "board", "-i", "0"], ["-v"]):
        result = run_fake(tmp_path, state, *args)
        assert result.returncode != 0
        assert f"ret is {code}" in result.stdout
        with pytest.raises(npu_smi.NpuSmiToolError) as caught:
            parse(result)
        assert caught.value.code == int(code)
    problems = npu_smi.check_npu_smi(run_fake(tmp_path, state, "info").stdout, npu_count=8)
    assert len(problems) == 1 and f"DCMI error {code}" in problems[0]


def test_driver_libraries_missing_state(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state()
    state["error"] = "no-driver"
    result = run_fake(tmp_path, state, "info")
    assert result.returncode == 127
    with pytest.raises(npu_smi.NpuSmiToolError, match="driver"):
        parse(result)


def test_warning_line_and_processes(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(2)
    state["warning"] = True
    state["cards"][1]["processes"] = [{"pid": 4242, "name": "python3", "memory_mb": 61000}]
    state["cards"][1]["hbm_used_mb"] = 64338
    info = npu_smi.parse_info(run_fake(tmp_path, state, "info").stdout)
    assert info.warnings == [
        "[WARNING]The driver package may not be completely installed, which may cause function abnormal. "
        "Please reinstall it."
    ]
    assert [(p.npu, p.pid, p.name, p.memory_mb) for p in info.processes] == [(1, 4242, "python3", 61000)]
    assert info.cards[1].hbm_used_mb == 64338


def test_non_contiguous_ids_and_power_unknown(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(8)
    state["cards"] = [copy.deepcopy(state["cards"][i]) | {"npu": npu} for i, npu in enumerate([1, 4, 6])]
    state["cards"][0]["power_w"] = None
    state["cards"].reverse()  # printed by NPU id all the same
    info = npu_smi.parse_info(run_fake(tmp_path, state, "info").stdout)
    assert info.npu_ids == [1, 4, 6] and info.cards[0].power_w is None
    listed = npu_smi.parse_list(run_fake(tmp_path, state, "info", "-l").stdout)
    assert listed.npu_ids == [1, 4, 6]


def test_version_usage_and_unknown_arguments(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(driver_version="23.0.6")
    version = run_fake(tmp_path, state, "-v")
    assert version.returncode == 0 and "23.0.6" in version.stdout
    assert run_fake(tmp_path, state, "-h").returncode == 0
    assert run_fake(tmp_path, state).returncode == 1
    for args in (
        ["frobnicate"],
        ["info", "-x"],
        ["info", "-t", "board"],
        ["info", "-t", "memory", "-i", "0"],
    ):
        result = run_fake(tmp_path, state, *args)
        assert result.returncode == 1 and "Command error" in result.stdout, args
    bad_id = run_fake(tmp_path, state, "info", "-t", "board", "-i", "x")
    assert bad_id.returncode == 1 and "Invalid NPU ID" in bad_id.stdout


def test_missing_or_broken_state_file(tmp_path: Path) -> None:
    missing = run_fake(tmp_path, None, "info")
    assert missing.returncode == 2 and "cannot read state file" in missing.stderr
    (tmp_path / "state.json").write_text("[1, 2]")
    broken = subprocess.run(
        [sys.executable, str(FAKE), "info"],
        env={"NPU_SIM_STATE": str(tmp_path / "state.json")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 2 and "expected an object with a 'cards' list" in broken.stderr


def test_inside_a_training_container_only_its_devices_show(tmp_path: Path) -> None:
    """The container sees the driver directory's copy of the state and only the davinci nodes it was given."""
    state = npu_smi.default_sim_state(8)
    container_state = tmp_path / "driver" / "npu-sim-state.json"
    container_state.parent.mkdir()
    container_state.write_text(json.dumps(state))
    dev = tmp_path / "dev"
    dev.mkdir()
    for npu in (1, 3):
        (dev / f"davinci{npu}").touch()
    env = {
        "NPU_SIM_HOST_STATE": str(tmp_path / "absent.json"),
        "NPU_SIM_CONTAINER_STATE": str(container_state),
        "NPU_SIM_DEV_DIR": str(dev),
    }
    result = subprocess.run(
        [sys.executable, str(FAKE), "info"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert npu_smi.parse_info(result.stdout).npu_ids == [1, 3]
    # On the server itself (its own state file) every card shows.
    env["NPU_SIM_HOST_STATE"] = str(container_state)
    on_host = subprocess.run(
        [sys.executable, str(FAKE), "info"], env=env, capture_output=True, text=True, check=False
    )
    assert npu_smi.parse_info(on_host.stdout).npu_ids == list(range(8))
