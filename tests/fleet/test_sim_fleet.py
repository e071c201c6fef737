"""The simulated fleet against the Docker engine: one 3-server fleet for the whole module.

devserver-1 is healthy, devserver-2 starts with `fewer-cards` and `card-critical=3`, devserver-3 with
`device-bound` (Docker preinstalled, another container holding /dev/davinci0).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from llava_devserver.cli import main
from llava_devserver.npu_smi import check_npu_smi, parse_npu_smi

pytestmark = pytest.mark.fleet

FAULTS = {"devserver-2": ["fewer-cards", "card-critical=3"], "devserver-3": ["device-bound"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    with harness.fleet_up("sim", 3, tmp_path_factory.mktemp("sim"), faults=FAULTS, job=False) as up:
        yield up


def test_ansible_pings_every_server_over_ssh(fleet: harness.Fleet) -> None:
    env = os.environ | fleet.ansible_env
    result = subprocess.run(
        [harness.tool("ansible"), "-i", str(fleet.inventory), "devservers", "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, timeout=300, check=False, cwd=harness.REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ("devserver-1", "devserver-2", "devserver-3"):
        assert f"{host} | SUCCESS" in result.stdout


def test_healthy_server_looks_like_a_fresh_devserver(fleet: harness.Fleet) -> None:
    info = fleet.sh("devserver-1", "npu-smi info")
    assert info.returncode == 0, info.stderr
    parsed = parse_npu_smi(info.stdout).to_dict()
    assert [card["npu"] for card in parsed["cards"]] == list(range(8))
    assert check_npu_smi(info.stdout, npu_count=8, driver_version="23.0.5") == []

    facts = fleet.sh(
        "devserver-1",
        "hostname; sysctl -n net.ipv4.ip_forward; stat -c '%F %t:%T' /dev/davinci0 /dev/davinci_manager"
        " /dev/devmm_svm /dev/hisi_hdc; grep ^Version= /usr/local/Ascend/driver/version.info;"
        " test -d /usr/local/dcmi && test -d /var/log/npu && echo dirs-ok;"
        " command -v docker || echo no-docker",
    )
    lines = facts.stdout.splitlines()
    assert lines[0] == "devserver-1"
    assert lines[1] == "0", "a fresh server does not forward IPv4; the role must turn it on"
    assert lines[2:6] == ["character special file 1:3"] * 4
    assert lines[6:] == ["Version=23.0.5", "dirs-ok", "no-docker"]

    # sysctl writes work as on a real server (the ip_forward role needs them).
    write = fleet.sh("devserver-1", "sysctl -w net.ipv4.ip_forward=1 && sysctl -n net.ipv4.ip_forward")
    assert write.stdout.strip().endswith("1"), write.stderr


def test_startup_faults_fewer_cards_and_critical_card(fleet: harness.Fleet) -> None:
    info = fleet.sh("devserver-2", "npu-smi info; ls /dev | grep -c '^davinci[0-9]'")
    problems = check_npu_smi(info.stdout.rsplit("\n", 2)[0], npu_count=8)
    assert any("expected 8 NPUs" in p and "reports 7" in p for p in problems), problems
    assert any("NPU 3" in p and "Critical" in p for p in problems), problems
    assert info.stdout.strip().splitlines()[-1] == "7"


def test_device_bound_server_runs_docker_with_another_users_container(fleet: harness.Fleet) -> None:
    result = fleet.sh(
        "devserver-3",
        "docker inspect other-user-job --format '{{.State.Running}} {{json .HostConfig.Devices}}';"
        " cat /etc/docker/daemon.json",
    )
    assert result.returncode == 0, result.stderr
    state_line, daemon_json = result.stdout.split("\n", 1)
    running, devices = state_line.split(" ", 1)
    assert running == "true"
    assert [d["PathOnHost"] for d in json.loads(devices)] == ["/dev/davinci0"]
    daemon = json.loads(daemon_json)
    assert daemon["default-runtime"] == "ascend"
    assert Path(daemon["runtimes"]["ascend"]["path"]).name == "ascend-docker-runtime"


def test_faults_applied_to_a_running_server(fleet: harness.Fleet) -> None:
    assert main(["sim", "fault", "--name", fleet.name, "2:driver-version=24.1.0", "2:ip-forward-0"]) == 0
    result = fleet.sh(
        "devserver-2",
        "grep ^Version= /usr/local/Ascend/driver/version.info; tail -n1 /etc/sysctl.conf",
    )
    assert result.stdout.splitlines() == ["Version=24.1.0", "net.ipv4.ip_forward=0"]

    assert main(["sim", "fault", "--name", fleet.name, "2:npu-smi-8005"]) == 0
    failed = fleet.sh("devserver-2", "npu-smi info")
    assert failed.returncode != 0
    assert "-8005" in failed.stdout + failed.stderr

    assert main(["sim", "fault", "--name", fleet.name, "2:driver-missing"]) == 0
    gone = fleet.sh("devserver-2", "ls /dev/davinci* /usr/local/Ascend/driver 2>&1; command -v npu-smi")
    assert "No such file" in gone.stdout
    assert "/usr/local/bin/npu-smi" not in gone.stdout


def test_sim_up_again_reuses_the_running_servers(
    fleet: harness.Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fleet.inventory.read_text()
    assert main(["sim", "up", "--hosts", "3", "--name", fleet.name, "-o", str(fleet.dir), "--no-job"]) == 0
    assert "0 started, 3 reused)" in capsys.readouterr().out
    assert fleet.inventory.read_text() == before
    assert main(["sim", "up", "--hosts", "2", "--name", fleet.name, "-o", str(fleet.dir), "--no-job"]) == 1
    assert "already has 3 servers" in capsys.readouterr().err


def test_sim_down_removes_containers_volumes_and_network(fleet: harness.Fleet) -> None:
    client = harness.docker_client()
    label = f"llava-devserver.sim.fleet={fleet.name}"
    assert len(client.containers.list(all=True, filters={"label": label})) == 3
    assert main(["sim", "down", "--name", fleet.name]) == 0
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []
    assert client.networks.list(filters={"label": label}) == []
