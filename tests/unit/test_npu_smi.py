"""The npu-smi parser, its checks, the CLI and the Ansible filter, on real and hand-written outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ansible_collections.llava.devserver.plugins.filter import npu_smi as npu_smi_filter

from llava_devserver import npu_smi
from llava_devserver.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "npu-smi"
REAL_INFO = FIXTURES / "info_910B3x8_23.0.7.txt"  # from a real 8x910B3 server
REAL_LIST = FIXTURES / "info-l_910Bx8.txt"
REAL_BOARD = FIXTURES / "info-t-board_910B.txt"
CARD_KEYS = {"npu", "chip", "name", "health", "power_w", "temp_c", "hbm_used_mb", "hbm_total_mb", "bus_id"}


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------------------------------------- info


def test_real_910b_info_every_card() -> None:
    info = npu_smi.parse_npu_smi(REAL_INFO.read_text())
    assert isinstance(info, npu_smi.NpuSmiInfo)
    assert (info.version, info.driver_version) == ("23.0.7", "23.0.7")
    assert info.npu_ids == list(range(8))
    assert [card.chip for card in info.cards] == [0] * 8
    assert {card.health for card in info.cards} == {"OK"}
    assert {card.name for card in info.cards} == {"910B3"}
    assert [card.power_w for card in info.cards] == [102.8, 97.6, 96.5, 108.7, 103.9, 99.3, 107.7, 105.1]
    assert [card.temp_c for card in info.cards] == [55, 54, 56, 57, 58, 56, 58, 59]
    assert [card.hbm_used_mb for card in info.cards] == [3338, 3337, 3334, 3334, 3334, 3334, 3334, 3338]
    assert {card.hbm_total_mb for card in info.cards} == {65536}
    assert [card.bus_id for card in info.cards][:3] == ["0000:C1:00.0", "0000:C2:00.0", "0000:81:00.0"]
    assert info.cards[7].bus_id == "0000:42:00.0"
    assert all(card.phy_id is None and card.device_id == card.npu for card in info.cards)
    assert info.processes == [] and info.warnings == []


def test_a3_two_dies_per_npu_with_phy_id_and_dash_power() -> None:
    info = npu_smi.parse_info(read("info_A3_910C_2die_24.1.rc3.3.txt"))
    assert info.driver_version == "24.1.rc3.3"
    assert info.npu_ids == [0, 1, 2, 3]
    assert len(info.cards) == 8
    assert [(card.npu, card.chip, card.phy_id) for card in info.cards[:4]] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 3),
    ]
    assert [card.device_id for card in info.cards] == list(range(8))
    # The second die prints `-` as its power.
    assert [card.power_w for card in info.cards[:2]] == [171.4, None]
    assert info.cards[4].hbm_used_mb == 41233 and info.cards[4].hbm_total_mb == 65536
    assert info.cards[7].health == "Warning" and info.cards[6].health == "OK"
    assert [(p.npu, p.chip, p.pid, p.name, p.memory_mb) for p in info.processes] == [
        (2, 0, 218734, "python3.10", 38016)
    ]


def test_25x_hbm_without_space_before_slash() -> None:
    info = npu_smi.parse_info(read("info_910B4x4_25.0_hbm-no-space.txt"))
    assert info.version == "25.0.rc1.1"
    assert [(card.hbm_used_mb, card.hbm_total_mb) for card in info.cards] == [
        (28220, 32768),
        (28215, 32768),
        (2911, 32768),
        (28218, 32768),
    ]
    assert [card.aicore_pct for card in info.cards] == [87, 87, 0, 87]
    assert info.cards[2].health == "Alarm"
    assert sorted(p.npu for p in info.processes) == [0, 1, 3]


def test_non_contiguous_npu_ids_in_a_vm() -> None:
    info = npu_smi.parse_info(read("info_910B3_vm_npu2_npu5.txt"))
    assert info.npu_ids == [2, 5]
    assert [card.bus_id for card in info.cards] == ["0000:00:0D.0", "0000:00:0E.0"]


def test_driver_warning_after_the_table_is_kept_not_fatal() -> None:
    info = npu_smi.parse_info(read("info_910B3x8_driver-warning.txt"))
    assert len(info.cards) == 8
    assert info.driver_version == "23.0.5"
    assert len(info.warnings) == 1
    assert info.warnings[0].startswith("[WARNING]The driver package may not be completely installed")


def test_310p_chip_device_layout_without_hbm_column() -> None:
    # Other column widths and another second header (`Chip Device`, no HBM-Usage): mapped by name.
    info = npu_smi.parse_info(read("info_310P3_chip-device_24.1.txt"))
    assert [(card.npu, card.chip, card.phy_id) for card in info.cards] == [(1, 0, 0), (1, 1, 1)]
    assert [card.power_w for card in info.cards] == [None, None]  # `NA`
    assert [(card.memory_used_mb, card.memory_total_mb) for card in info.cards] == [
        (16302, 44280),
        (15543, 43693),
    ]
    assert info.cards[0].hbm_total_mb is None
    assert (info.cards[0].hugepages_used, info.cards[0].hugepages_total) == (7210, 7210)


def test_layout_noise_does_not_matter() -> None:
    # CRLF, trailing blanks after the bars, a stray log line first, and wider spacing inside cells.
    text = "DrvMngGetConsoleLogLevel failed. (g_conLogLevel=3)\r\n" + "".join(
        line.replace("102.8       55", "102.8    55").rstrip("\n") + "   \r\n"
        for line in REAL_INFO.read_text().splitlines(keepends=True)
    )
    info = npu_smi.parse_info(text)
    assert len(info.cards) == 8
    assert (info.cards[0].power_w, info.cards[0].temp_c) == (102.8, 55)


def test_an_extra_unknown_column_lands_in_extra() -> None:
    text = REAL_INFO.read_text().replace("| Health        |", "| Health  Mode  |")
    text = text.replace("| OK            |", "| OK      AMP   |")
    info = npu_smi.parse_info(text)
    assert info.cards[0].health == "OK" and info.cards[0].extra == {"Mode": "AMP"}


def test_health_values_are_normalised() -> None:
    text = REAL_INFO.read_text()
    for raw, expected in [
        ("Critical", "Critical"),
        ("UNKNOWN", "UNKNOWN"),
        ("alarm", "Alarm"),
        ("warning", "Warning"),
    ]:
        changed = text.replace("| OK            |", f"| {raw:<14}|", 1)
        assert npu_smi.parse_info(changed).cards[0].health == expected


def test_truncated_info_names_the_npu() -> None:
    text = "\n".join(REAL_INFO.read_text().splitlines()[:7])
    with pytest.raises(npu_smi.NpuSmiParseError, match="NPU 0 has its name row but no chip row"):
        npu_smi.parse_info(text)


def test_row_with_too_many_values_names_the_line() -> None:
    text = REAL_INFO.read_text().replace("| 0     910B3               |", "| 0     910B3   extra       |", 1)
    with pytest.raises(npu_smi.NpuSmiParseError, match=r"line 7 has 3 values under 'NPU Name'"):
        npu_smi.parse_info(text)


def test_header_without_chip_row_is_rejected() -> None:
    lines = [line for line in REAL_INFO.read_text().splitlines() if not line.startswith("| Chip")]
    with pytest.raises(
        npu_smi.NpuSmiParseError, match=re.escape("not followed by a `| Chip ...` header row")
    ):
        npu_smi.parse_info("\n".join(lines))


# ---------------------------------------------------------------------------------------------- -l / board


def test_real_list() -> None:
    listed = npu_smi.parse_npu_smi(REAL_LIST.read_text())
    assert isinstance(listed, npu_smi.NpuSmiList)
    assert listed.total_count == 8
    assert listed.npu_ids == list(range(8))
    assert {entry.chip_count for entry in listed.cards} == {1}


def test_list_variants_card_count_and_a3_chips() -> None:
    old = npu_smi.parse_list(read("info-l_card-count_310P.txt"))
    assert old.total_count == 1 and old.npu_ids == [8]
    assert old.cards[0].chip_count == 4
    assert old.cards[0].fields["Serial Number"] == "033EFS10M8000087"
    a3 = npu_smi.parse_list(read("info-l_A3x8.txt"))
    assert a3.total_count == 8 and {entry.chip_count for entry in a3.cards} == {2}
    assert read("info-l_A3x8.txt").startswith("\tTotal Count")  # real ones indent with a tab


def test_real_board() -> None:
    board = npu_smi.parse_npu_smi(REAL_BOARD.read_text())
    assert isinstance(board, npu_smi.NpuSmiBoard)
    assert board.npu == 0
    assert board.driver_version == "25.5.1"
    assert board.firmware_version == "7.8.0.6.201"
    assert board.bus_id == "0000:C1:00.0"
    assert board.chip_count == 1
    assert board.fields["PCI Device ID"] == "0xD802"
    assert len(board.fields) == 19


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "code", "hint"),
    [
        ("error_dcmi_-8005.txt", -8005, "held by another container"),
        ("error_dcmi_-8020.txt", -8020, "another container or process is using the NPU"),
        ("error_dcmi_-8001.txt", -8001, "driver and firmware do not match"),
    ],
)
def test_dcmi_errors_are_typed_and_actionable(name: str, code: int, hint: str) -> None:
    with pytest.raises(npu_smi.NpuSmiToolError) as caught:
        npu_smi.parse_npu_smi(read(name))
    assert caught.value.code == code
    assert hint in caught.value.message
    assert f"ret is {code}" in caught.value.evidence
    # Every entry point refuses it the same way, not only the auto-detecting one.
    for parse in (npu_smi.parse_info, npu_smi.parse_list, npu_smi.parse_board):
        with pytest.raises(npu_smi.NpuSmiToolError):
            parse(read(name))


def test_unlisted_dcmi_code_still_a_tool_error() -> None:
    with pytest.raises(npu_smi.NpuSmiToolError, match="DCMI error -8255") as caught:
        npu_smi.parse_npu_smi("dcmi module initialize failed. ret is -8255\n")
    assert caught.value.code == -8255


def test_missing_driver_libraries() -> None:
    with pytest.raises(npu_smi.NpuSmiToolError, match="install the Ascend NPU driver") as caught:
        npu_smi.parse_npu_smi(read("error_no-driver.txt"))
    assert caught.value.code is None


@pytest.mark.parametrize("text", ["", "   \n", "hello world\n", "+-----+\n| a | b |\n"])
def test_unknown_text_names_what_was_expected(text: str) -> None:
    with pytest.raises(npu_smi.NpuSmiParseError, match=r"npu-smi info.*-l.*-t board"):
        npu_smi.parse_npu_smi(text)


def test_list_without_total_and_board_without_keys() -> None:
    with pytest.raises(npu_smi.NpuSmiParseError, match="no `Total Count`"):
        npu_smi.parse_list("\tNPU ID : 0\n\tChip Count : 1\n")
    with pytest.raises(npu_smi.NpuSmiParseError, match="Software Version"):
        npu_smi.parse_board("\tColour : blue\n")


# ---------------------------------------------------------------------------------------------- JSON contract


def test_json_contract_info() -> None:
    data = npu_smi.npu_smi_to_dict(REAL_INFO.read_text())
    json.dumps(data)  # serialisable as is
    assert data["kind"] == "info" and data["total_count"] is None and data["npu_count"] == 8
    assert len(data["cards"]) == 8
    for card in data["cards"]:
        assert set(card) >= CARD_KEYS
    assert {k: data["cards"][0][k] for k in CARD_KEYS} == {
        "npu": 0,
        "chip": 0,
        "name": "910B3",
        "health": "OK",
        "power_w": 102.8,
        "temp_c": 55,
        "hbm_used_mb": 3338,
        "hbm_total_mb": 65536,
        "bus_id": "0000:C1:00.0",
    }


def test_json_contract_list_and_board() -> None:
    listed = npu_smi.npu_smi_to_dict(REAL_LIST.read_text())
    assert listed["kind"] == "list" and listed["total_count"] == 8
    assert [card["npu"] for card in listed["cards"]] == list(range(8))
    assert listed["cards"][0]["chip_count"] == 1
    board = npu_smi.npu_smi_to_dict(REAL_BOARD.read_text())
    assert board["kind"] == "board" and board["driver_version"] == "25.5.1"
    assert board["board"]["Serial Number"] == "1025C9048791"
    assert board["cards"] == [{"npu": 0, "bus_id": "0000:C1:00.0", "chip_count": 1}]


# ---------------------------------------------------------------------------------------------- checks


def test_check_healthy_server_has_no_problems() -> None:
    text = REAL_INFO.read_text()
    assert npu_smi.check_npu_smi(text, npu_count=8, npu_devices=range(8), driver_version="23.0.7") == []
    parsed = npu_smi.npu_smi_to_dict(text)
    assert npu_smi.check_npu_smi(parsed, npu_count=8, npu_devices=[0, 1], driver_version="23.0.7") == []
    assert npu_smi.check_npu_smi(REAL_LIST.read_text(), npu_count=8, npu_devices=[7]) == []
    assert npu_smi.check_npu_smi(REAL_BOARD.read_text(), driver_version="25.5.1") == []


def test_check_count_mismatch() -> None:
    problems = npu_smi.check_npu_smi(read("info_910B3_vm_npu2_npu5.txt"), npu_count=8)
    assert problems == ["expected 8 NPUs (npu_count) but npu-smi info reports 2: 2,5"]
    problems = npu_smi.check_npu_smi(read("info-l_card-count_310P.txt"), npu_count=8)
    assert problems == ["expected 8 NPUs (npu_count) but npu-smi info -l reports Total Count 1: 8"]


def test_check_missing_devices() -> None:
    problems = npu_smi.check_npu_smi(read("info_910B3_vm_npu2_npu5.txt"), npu_devices=[0, 2, 5, 7])
    assert len(problems) == 1
    assert problems[0].startswith("NPU 0,7 of npu_devices 0,2,5,7 not reported by npu-smi info")
    problems = npu_smi.check_npu_smi(REAL_LIST.read_text(), npu_devices=[8])
    assert problems == ["NPU 8 of npu_devices 8 not listed by npu-smi info -l"]


def test_check_unhealthy_card_in_use_only() -> None:
    text = read("info_910B4x4_25.0_hbm-no-space.txt")  # NPU 2 is Alarm
    assert npu_smi.check_npu_smi(text, npu_devices=[0, 1, 3]) == []
    problems = npu_smi.check_npu_smi(text, npu_devices=[2, 3])
    assert problems == ["NPU 2 chip 0, 0000:81:00.0 health is 'Alarm', expected 'OK'"]
    # Without npu_devices every card is in use.
    assert len(npu_smi.check_npu_smi(text)) == 1


def test_check_a3_uses_phy_ids_for_devices() -> None:
    text = read("info_A3_910C_2die_24.1.rc3.3.txt")  # NPU 3's second die (Phy-ID 7) is Warning
    assert npu_smi.check_npu_smi(text, npu_count=4, npu_devices=range(7)) == []
    problems = npu_smi.check_npu_smi(text, npu_count=4, npu_devices=[6, 7])
    assert problems == ["NPU 3 chip 1, 0000:93:00.0 health is 'Warning', expected 'OK'"]


def test_check_driver_version() -> None:
    problems = npu_smi.check_npu_smi(REAL_INFO.read_text(), driver_version="23.0.5")
    assert problems == ["driver version is 23.0.7, expected 23.0.5 (npu_driver_version)"]
    problems = npu_smi.check_npu_smi(REAL_BOARD.read_text(), driver_version="23.0.5")
    assert problems == ["driver version is 25.5.1, expected 23.0.5 (npu_driver_version)"]
    assert npu_smi.check_npu_smi(REAL_INFO.read_text(), driver_version=None) == []


def test_check_every_problem_at_once() -> None:
    text = read("info_910B4x4_25.0_hbm-no-space.txt")
    problems = npu_smi.check_npu_smi(text, npu_count=8, npu_devices=[0, 2, 9], driver_version="23.0.5")
    assert len(problems) == 4
    assert problems[0].startswith("expected 8 NPUs")
    assert problems[1].startswith("NPU 9 of npu_devices")
    assert problems[2].startswith("NPU 2 chip 0")
    assert problems[3].startswith("driver version is 25.0.rc1.1")


def test_check_tool_error_is_the_one_problem() -> None:
    problems = npu_smi.check_npu_smi(read("error_dcmi_-8005.txt"), npu_count=8)
    assert len(problems) == 1 and "DCMI error -8005" in problems[0]
    assert npu_smi.check_npu_smi("garbage", npu_count=8)[0].startswith("not an npu-smi output")


# ---------------------------------------------------------------------------------------------- filter plugin


def test_filter_plugin_is_a_thin_adapter() -> None:
    filters = npu_smi_filter.FilterModule().filters()
    assert set(filters) == {
        "npu_smi_info",
        "npu_smi_check",
        "npu_smi_pci_count",
        "npu_smi_pci_problems",
        "npu_smi_ecc_problems",
        "npu_smi_ecc_summary",
    }
    parsed = filters["npu_smi_info"](REAL_INFO.read_text())
    assert parsed == npu_smi.npu_smi_to_dict(REAL_INFO.read_text())
    assert (
        filters["npu_smi_check"](parsed, npu_count="8", npu_devices=["0", "1"], driver_version="23.0.7") == []
    )
    assert filters["npu_smi_check"](REAL_INFO.read_text(), npu_count=7) == [
        "expected 7 NPUs (npu_count) but npu-smi info reports 8: 0,1,2,3,4,5,6,7"
    ]


def test_filter_plugin_failure_is_an_ansible_error() -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="-8005"):
        npu_smi_filter.npu_smi_info(read("error_dcmi_-8005.txt"))


def test_filter_plugin_through_jinja() -> None:
    """The filter as a role uses it, rendered by Ansible's templar."""
    from ansible.plugins.loader import filter_loader
    from ansible.template import Templar, trust_as_template

    # The directory ansible.cfg's filter_plugins names.
    filter_loader.add_directory(str(Path(npu_smi_filter.__file__).parent))
    templar = Templar(loader=None, variables={"out": {"stdout": read("info_910B3_vm_npu2_npu5.txt")}})
    check = "{{ out.stdout | npu_smi_check(npu_count=%d, npu_devices=[2, 5], driver_version='23.0.5') }}"
    assert templar.template(trust_as_template(check % 2)) == []
    assert templar.template(trust_as_template(check % 8)) == [
        "expected 8 NPUs (npu_count) but npu-smi info reports 2: 2,5"
    ]
    assert templar.template(trust_as_template("{{ (out.stdout | npu_smi_info).npu_ids }}")) == [2, 5]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_parse_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["npu-smi", "parse", str(REAL_LIST), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_count"] == 8 and len(data["cards"]) == 8


def test_cli_parse_stdin_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(read("info_A3_910C_2die_24.1.rc3.3.txt")))
    assert main(["npu-smi", "parse", "-"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "npu-smi 24.1.rc3.3, driver 24.1.rc3.3: 4 NPUs, 8 chips, 7 OK"
    assert "Warning" in out and "0000:93:00.0" in out


def test_cli_error_output_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["npu-smi", "parse", str(FIXTURES / "error_dcmi_-8020.txt"), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == -8020
    assert "error_dcmi_-8020.txt: npu-smi failed with DCMI error -8020" in captured.err


def test_cli_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["npu-smi", "parse", str(tmp_path / "absent.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["npu-smi", "parse", str(tmp_path)]) == 2  # a directory


# ---------------------------------------------------------------------------------------------- sim state


def test_default_sim_state() -> None:
    state = npu_smi.default_sim_state()
    assert state["driver_version"] == "23.0.5" and state["error"] is None
    assert [card["npu"] for card in state["cards"]] == list(range(8))
    assert {card["health"] for card in state["cards"]} == {"OK"}
    assert len({card["bus_id"] for card in state["cards"]}) == 8
    big = npu_smi.default_sim_state(16, driver_version="24.1.0")
    assert len(big["cards"]) == 16 and len({card["bus_id"] for card in big["cards"]}) == 16
    assert big["driver_version"] == "24.1.0"
    json.dumps(big)
    with pytest.raises(ValueError, match="n_cards"):
        npu_smi.default_sim_state(-1)
