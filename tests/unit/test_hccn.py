"""The hccn_tool parser on real outputs of every kind, and the `hccn parse --json` contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava_devserver import hccn
from llava_devserver.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hccn"

EXPECTED = {
    "ip_two-line.txt": {"kind": "ip", "ipaddr": "10.20.11.13", "netmask": "255.255.255.0"},
    "ip_one-line.txt": {"kind": "ip", "ipaddr": "10.0.0.11", "netmask": "255.255.255.0"},
    "ip_crlf.txt": {"kind": "ip", "ipaddr": "29.1.137.205", "netmask": "255.255.0.0"},
    "ip_none.txt": {"kind": "ip", "ipaddr": None, "netmask": None},
    "link_up.txt": {"kind": "link", "status": "UP"},
    "link_down_lower_crlf.txt": {"kind": "link", "status": "DOWN"},
    "net_health_success.txt": {"kind": "net_health", "status": "Success"},
    "net_health_init.txt": {"kind": "net_health", "status": "Init"},
    "net_health_fault_lower.txt": {"kind": "net_health", "status": "Fault"},
    "tls_disabled.txt": {"kind": "tls", "switch": 0},
    "tls_enabled_grep.txt": {"kind": "tls", "switch": 1},
    "ping_ok.txt": {"kind": "ping", "transmitted": 3, "received": 3, "loss_pct": 0.0},
    "ping_loss.txt": {"kind": "ping", "transmitted": 3, "received": 2, "loss_pct": 33.33},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parses_every_kind(name: str) -> None:
    assert hccn.parse_hccn((FIXTURES / name).read_bytes().decode()) == EXPECTED[name]


def test_crlf_fixtures_really_have_crlf() -> None:
    assert b"\r\n" in (FIXTURES / "ip_crlf.txt").read_bytes()
    assert b"\r\n" in (FIXTURES / "link_down_lower_crlf.txt").read_bytes()


def test_link_stat_with_and_without_down_count() -> None:
    newer = hccn.parse_hccn((FIXTURES / "link_stat_flaps.txt").read_text())
    assert newer["kind"] == "link_stat"
    assert (newer["up_count"], newer["down_count"]) == (2, 1)
    assert newer["records"][1] == {"time": "Sun Oct 5 10:13:50 2025", "status": "DOWN"}
    older = hccn.parse_hccn((FIXTURES / "link_stat_no-down-count.txt").read_text())
    assert (older["up_count"], older["down_count"], len(older["records"])) == (2, 1, 3)


def test_netdetect_address_and_unset() -> None:
    assert hccn.parse_hccn("netdetect address: 10.90.2.1\n") == {"kind": "netdetect", "address": "10.90.2.1"}
    assert hccn.parse_hccn("netdetect address: 0.0.0.0\n")["address"] is None


def test_ip_on_one_line_without_separator_and_in_upper_case() -> None:
    assert hccn.parse_hccn("IPADDR:192.168.1.7 NETMASK:255.255.0.0") == {
        "kind": "ip",
        "ipaddr": "192.168.1.7",
        "netmask": "255.255.0.0",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty hccn_tool output"),
        ("something else entirely\n", "not an hccn_tool output"),
        ("hccn_tool is busy, please try again\n", "busy"),
        ("ipaddr:10.0.0.300\nnetmask:255.255.255.0\n", "not an IP address"),
        ("ipaddr:10.0.0.1\nipaddr:10.0.0.2\n", "several cards"),
        ("dev_id:0, tls switch[0](...)\ndev_id:1, tls switch[1](...)\n", "one card at a time"),
    ],
)
def test_unreadable_output_raises_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(hccn.HccnParseError, match=message):
        hccn.parse_hccn(text)


def test_a_tool_error_is_named_when_the_kind_is_given() -> None:
    with pytest.raises(hccn.HccnParseError, match="busy"):
        hccn.parse_hccn("hccn_tool is busy, please try again", kind="ip")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_json_contract(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hccn", "parse", str(FIXTURES / name), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED[name]


def test_cli_reads_stdin_and_fails_with_a_message_on_garbage() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "llava_devserver.cli", "hccn", "parse", "-", "--json"],
        input="link status: UP\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"kind": "link", "status": "UP"}
    bad = subprocess.run(
        [sys.executable, "-m", "llava_devserver.cli", "hccn", "parse", "-", "--json"],
        input="no idea\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert "stdin: not an hccn_tool output" in bad.stderr


def test_cli_without_json_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hccn", "parse", str(FIXTURES / "ping_loss.txt")]) == 0
    assert capsys.readouterr().out.strip() == "ping: 2/3 received, 33.33% packet loss"


def test_cli_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hccn", "parse", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
