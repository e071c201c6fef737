"""The simulated servers' hccn_tool and lspci, run as processes on a temp state, read back by our parsers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import hccn, npu_smi
from llava_devserver.sim import device_network, faults

FILES = Path(npu_smi.__file__).parent / "sim" / "files"
HOSTS = ["devserver-1", "devserver-2", "devserver-3"]


def fleet_states(cards: int = 2) -> dict[str, dict[str, Any]]:
    states = {}
    for index, host in enumerate(HOSTS, start=1):
        state = npu_smi.default_sim_state(cards)
        state.update(device_network.initial_network(HOSTS, index, range(cards)))
        states[host] = state
    return states


def tool(tmp_path: Path, state: dict[str, Any], name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    return subprocess.run(
        [sys.executable, str(FILES / name), *args],
        env={"NPU_SIM_STATE": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def hccn_tool(tmp_path: Path, state: dict[str, Any], *args: str) -> dict[str, Any]:
    result = tool(tmp_path, state, "hccn_tool", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return hccn.parse_hccn(result.stdout)


def fault(states: dict[str, dict[str, Any]], host: str, text: str) -> dict[str, dict[str, Any]]:
    """What `sim fault HOST:FAULT` does: edit the server's state, then publish to the fleet."""
    states = {**states, host: faults.edit_state(states[host], faults.parse_fault(text))}
    return device_network.publish(states)


@pytest.mark.parametrize("name", ["hccn_tool", "lspci"])
def test_scripts_are_executable_and_stdlib_only_for_python_37(name: str) -> None:
    path = FILES / name
    assert path.stat().st_mode & 0o111
    source = path.read_text()
    assert source.startswith("#!/usr/bin/env python3\n")
    tree = ast.parse(source, feature_version=(3, 7))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= set(sys.stdlib_module_names)
    assert not any(isinstance(node, ast.JoinedStr) for node in ast.walk(tree))  # no f-strings at all


def test_device_ips_are_unique_with_one_subnet_per_server() -> None:
    states = fleet_states(8)
    ips = [port["ip"] for s in states.values() for port in s["hccn"]["cards"].values()]
    assert len(ips) == len(set(ips)) == 24
    for index, state in enumerate(states.values(), start=1):
        assert {ip.rsplit(".", 1)[0] for ip in (p["ip"] for p in state["hccn"]["cards"].values())} == {
            f"10.90.{index}"
        }


def test_healthy_card_in_every_format(tmp_path: Path) -> None:
    state = fleet_states()["devserver-2"]
    assert hccn_tool(tmp_path, state, "-i", "1", "-ip", "-g") == {
        "kind": "ip",
        "ipaddr": "10.90.2.12",
        "netmask": "255.255.255.0",
    }
    assert hccn_tool(tmp_path, state, "-i", "1", "-link", "-g") == {"kind": "link", "status": "UP"}
    assert hccn_tool(tmp_path, state, "-i", "0", "-net_health", "-g")["status"] == "Success"
    assert hccn_tool(tmp_path, state, "-g", "-tls", "-i", "0") == {"kind": "tls", "switch": 0}
    stat = hccn_tool(tmp_path, state, "-i", "0", "-link_stat", "-g")
    assert (stat["up_count"], stat["down_count"]) == (1, 0)
    ping = hccn_tool(tmp_path, state, "-i", "0", "-ping", "-g", "address", "10.90.3.11")
    assert ping == {"kind": "ping", "transmitted": 3, "received": 3, "loss_pct": 0.0}


@pytest.mark.parametrize(
    ("fault_text", "args", "expected"),
    [
        ("hccn-link-down=1", ("-i", "1", "-link", "-g"), {"status": "DOWN"}),
        ("hccn-no-ip=1", ("-i", "1", "-ip", "-g"), {"ipaddr": None, "netmask": None}),
        ("hccn-tls-on=0", ("-i", "0", "-tls", "-g"), {"switch": 1}),
        ("hccn-dup-ip=1", ("-i", "1", "-ip", "-g"), {"ipaddr": "10.90.1.12"}),
        ("hccn-unhealthy=0", ("-i", "0", "-net_health", "-g"), {"status": "Fault"}),
    ],
)
def test_card_faults_show_in_the_tool(
    tmp_path: Path, fault_text: str, args: tuple[str, ...], expected: dict[str, Any]
) -> None:
    state = fault(fleet_states(), "devserver-2", fault_text)["devserver-2"]
    parsed = hccn_tool(tmp_path, state, *args)
    assert {key: parsed[key] for key in expected} == expected


def test_link_down_counts_a_flap_and_peers_cannot_reach_the_card(tmp_path: Path) -> None:
    states = fault(fleet_states(), "devserver-2", "hccn-link-down=1")
    stat = hccn_tool(tmp_path, states["devserver-2"], "-i", "1", "-link_stat", "-g")
    assert stat["down_count"] == 1 and stat["records"][0]["status"] == "DOWN"
    # Published: server 1's tool now fails to reach server 2's card 1, still reaches its card 0.
    lost = hccn_tool(tmp_path, states["devserver-1"], "-i", "1", "-ping", "-g", "address", "10.90.2.12")
    assert (lost["received"], lost["loss_pct"]) == (0, 100.0)
    fine = hccn_tool(tmp_path, states["devserver-1"], "-i", "0", "-ping", "-g", "address", "10.90.2.11")
    assert fine["received"] == 3


def test_ping_loss_is_on_this_servers_pings_to_others_only(tmp_path: Path) -> None:
    states = fault(fleet_states(), "devserver-3", "hccn-ping-loss=50")
    lossy = hccn_tool(tmp_path, states["devserver-3"], "-i", "0", "-ping", "-g", "address", "10.90.1.11")
    assert (lossy["transmitted"], lossy["received"], lossy["loss_pct"]) == (3, 1, 66.67)
    local = hccn_tool(tmp_path, states["devserver-3"], "-i", "0", "-ping", "-g", "address", "10.90.3.12")
    assert local["received"] == 3
    other = hccn_tool(tmp_path, states["devserver-1"], "-i", "0", "-ping", "-g", "address", "10.90.3.11")
    assert other["received"] == 3


def test_a_card_without_ip_cannot_ping(tmp_path: Path) -> None:
    states = fault(fleet_states(), "devserver-2", "hccn-no-ip=0")
    ping = hccn_tool(tmp_path, states["devserver-2"], "-i", "0", "-ping", "-g", "address", "10.90.1.11")
    assert ping["received"] == 0


def test_set_commands_change_the_state(tmp_path: Path) -> None:
    state = fault(fleet_states(), "devserver-2", "hccn-tls-on=0")["devserver-2"]
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    env = {"NPU_SIM_STATE": str(path), "PATH": "/usr/bin:/bin"}
    for args in (
        ("-i", "0", "-tls", "-s", "enable", "0"),
        ("-i", "1", "-ip", "-s", "address", "10.9.9.9", "netmask", "255.255.0.0"),
    ):
        subprocess.run([sys.executable, str(FILES / "hccn_tool"), *args], env=env, check=True, timeout=30)
    saved = json.loads(path.read_text())
    assert saved["hccn"]["cards"]["0"]["tls"] == 0
    assert saved["hccn"]["cards"]["1"]["ip"] == "10.9.9.9"


def test_unknown_card_and_bad_arguments_fail(tmp_path: Path) -> None:
    state = fleet_states()["devserver-1"]
    missing = tool(tmp_path, state, "hccn_tool", "-i", "7", "-ip", "-g")
    assert missing.returncode == 1
    with pytest.raises(hccn.HccnParseError, match="no such NPU"):
        hccn.parse_hccn(missing.stdout, kind="ip")
    assert tool(tmp_path, state, "hccn_tool", "-i", "0", "-bogus").returncode == 1


@pytest.mark.parametrize(
    "text",
    ["hccn-dup-ip", "hccn-ping-loss=101"],
)
def test_faults_that_cannot_apply_say_why(text: str) -> None:
    with pytest.raises(faults.FaultError):
        faults.edit_state(fleet_states()["devserver-1"], faults.parse_fault(text))


def test_ping_loss_needs_a_value() -> None:
    with pytest.raises(faults.FaultError, match="needs a value"):
        faults.parse_fault("hccn-ping-loss")


def test_fake_lspci_lists_the_cards_among_other_huawei_functions(tmp_path: Path) -> None:
    state = npu_smi.default_sim_state(8)
    state["pci_only_bus_ids"] = ["0000:C3:00.0"]
    numeric = tool(tmp_path, state, "lspci", "-n", "-d", "19e5:").stdout.splitlines()
    assert len(numeric) == 9 + 3  # 9 NPUs, a root port, the ZIP engine, a NIC (not the Intel USB)
    assert sum(": 19e5:d802 " in line for line in numeric) == 9
    assert "c1:00.0 1200: 19e5:d802 (rev 20)" in numeric
    named = tool(tmp_path, state, "lspci").stdout
    assert "c1:00.0 Processing accelerators: Huawei Technologies Co., Ltd. Device d802 (rev 20)" in named
    assert "HiSilicon ZIP Engine" in named


def test_the_fleets_shared_directory_wins_and_set_commands_publish_to_it(tmp_path: Path) -> None:
    """On a running fleet each server publishes its ports to a shared volume (NPU_SIM_FLEET_DIR here)."""
    shared = tmp_path / "fleet"
    shared.mkdir()
    states = fleet_states()
    # devserver-3's card 0 went down after `sim up`: its published entry says so, hccn_fleet does not.
    (shared / "devserver-3.json").write_text(json.dumps({"0": {"ip": "10.90.3.11", "up": False}}))
    path = tmp_path / "state.json"
    path.write_text(json.dumps(states["devserver-1"]))
    env = {"NPU_SIM_STATE": str(path), "NPU_SIM_FLEET_DIR": str(shared), "PATH": "/usr/bin:/bin"}

    def call(*args: str) -> str:
        return subprocess.run(
            [sys.executable, str(FILES / "hccn_tool"), *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert hccn.parse_hccn(call("-i", "0", "-ping", "-g", "address", "10.90.3.11"))["received"] == 0
    assert hccn.parse_hccn(call("-i", "0", "-ping", "-g", "address", "10.90.2.11"))["received"] == 3
    call("-i", "1", "-ip", "-s", "address", "10.90.1.99", "netmask", "255.255.255.0")
    assert json.loads((shared / "devserver-1.json").read_text())["1"] == {"ip": "10.90.1.99", "up": True}
