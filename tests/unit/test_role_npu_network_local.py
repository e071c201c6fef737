"""Role npu_network run by Ansible on three local "servers" (connection local), each with the simulated
hccn_tool on its own state file: faults on servers 2 and 3 fail exactly those hosts with the card named,
the healthy server passes, and on a one-server fleet the checks are skipped with one line. No Docker: the
simulated fleet's own run is in tests/fleet/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from llava_devserver import npu_smi
from llava_devserver.sim import device_network, faults

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "src" / "llava_devserver" / "sim" / "files" / "hccn_tool"
CARDS = [0, 1]
SKIP_LINE = "a one-server fleet has no other server to reach: the device network checks are skipped"


def write_fleet(
    tmp_path: Path, hosts: list[str], fault_texts: list[str], llava: dict[str, dict[str, Any]] | None = None
) -> Path:
    states: dict[str, dict[str, Any]] = {}
    for index, host in enumerate(hosts, start=1):
        state = npu_smi.default_sim_state(len(CARDS))
        state.update(device_network.initial_network(hosts, index, CARDS))
        states[host] = state
    for text in fault_texts:
        host, _, fault = text.partition(":")
        states[host] = faults.edit_state(states[host], faults.parse_fault(fault))
    states = device_network.publish(states)
    shared = tmp_path / "fleet"  # the fleet's shared view of the ports, as the simulated fleet's volume
    shared.mkdir()
    for host, state in states.items():
        view = device_network.fleet_view_entry(state["hccn"])
        (shared / f"{host}.json").write_text(json.dumps(view))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "host_vars").mkdir()
    for host, state in states.items():
        (tmp_path / f"{host}.json").write_text(json.dumps(state))
        wrapper = bin_dir / f"hccn_tool-{host}"
        wrapper.write_text(
            f"#!/bin/sh\nNPU_SIM_STATE={tmp_path / f'{host}.json'} NPU_SIM_FLEET_DIR={shared} "
            f'exec {sys.executable} {TOOL} "$@"\n'
        )
        wrapper.chmod(0o755)
        host_vars = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "npu_network_hccn_tool": str(wrapper),
            "npu_network_ping_timeout_s": 10,
            "llava": {
                "npu_devices": CARDS,
                "hccn_tool": "/nonexistent/hccn_tool",  # npu_network_hccn_tool above wins
                "nnodes": len(hosts),
                "hccl_if_ip": None,
                "hccl_socket_ifname": None,
                "device_ips": None,
                "device_detect_ip": None,
                **(llava or {}).get(host, {}),
            },
        }
        (tmp_path / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(host_vars))
    (tmp_path / "hosts.ini").write_text("[devservers]\n" + "\n".join(hosts) + "\n")
    (tmp_path / "play.yml").write_text("- hosts: devservers\n  gather_facts: false\n  roles: [npu_network]\n")
    return tmp_path


def run_play(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    return subprocess.run(
        ["ansible-playbook", "-i", str(where / "hosts.ini"), str(where / "play.yml"), *args],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in re.findall(r"^(\S+)\s*:\s+(ok=.*)$", output, re.MULTILINE)
    }


def test_faults_on_servers_2_and_3_fail_exactly_those_hosts(tmp_path: Path) -> None:
    hosts = ["devserver-1", "devserver-2", "devserver-3"]
    result = run_play(write_fleet(tmp_path, hosts, ["devserver-2:hccn-no-ip=1", "devserver-3:hccn-tls-on=0"]))
    out = result.stdout + result.stderr
    counts = recap(result.stdout)
    assert counts["devserver-1"]["failed"] == 0, out
    assert counts["devserver-2"]["failed"] == 1 and counts["devserver-3"]["failed"] == 1, out
    assert "devserver-2: the device network check found 1 problem(s)" in out
    assert "card 1: no device IP is set" in out and "hccn_tool -i 1 -ip -s address ADDRESS" in out
    assert "devserver-3: the device network check found 1 problem(s)" in out
    assert "card 0: TLS switch is 1" in out and "hccn_tool -i 0 -tls -s enable 0" in out
    assert SKIP_LINE not in out


def test_one_server_fleet_skips_with_one_line(tmp_path: Path) -> None:
    result = run_play(write_fleet(tmp_path, ["devserver-1"], []))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count(SKIP_LINE) == 1
    assert "Read the device ports" not in out


def test_declared_device_ips_are_set_idempotently_with_check_mode_and_diff(tmp_path: Path) -> None:
    hosts = ["devserver-1", "devserver-2"]
    wanted = [
        {"card": 0, "address": "10.90.2.51", "netmask": "255.255.255.0"},
        {"card": 1, "address": "10.90.2.52", "netmask": "255.255.255.0"},
    ]
    where = write_fleet(
        tmp_path, hosts, ["devserver-2:hccn-no-ip=1"], {"devserver-2": {"device_ips": wanted}}
    )
    checked = run_play(where, "--check", "--diff")
    out = checked.stdout + checked.stderr
    assert "-card 0: address 10.90.2.11 netmask 255.255.255.0" in out
    assert "+card 0: address 10.90.2.51 netmask 255.255.255.0" in out
    assert "-card 1: address none netmask none" in out
    assert (
        json.loads((where / "devserver-2.json").read_text())["hccn"]["cards"]["1"]["ip"] is None
    )  # unchanged
    assert recap(checked.stdout)["devserver-2"]["changed"] == 1  # the one loop task
    applied = run_play(where)
    out = applied.stdout + applied.stderr
    assert applied.returncode == 0, out  # card 1 has its IP now, and the peers reach the new addresses
    ports = json.loads((where / "devserver-2.json").read_text())["hccn"]["cards"]
    assert (ports["0"]["ip"], ports["1"]["ip"]) == ("10.90.2.51", "10.90.2.52")
    again = run_play(where)
    assert again.returncode == 0 and recap(again.stdout)["devserver-2"]["changed"] == 0
