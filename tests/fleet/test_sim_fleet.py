"""The simulated fleet against the Docker engine: one 3-server fleet for the whole module.

devserver-1 is healthy, devserver-2 starts with `fewer-cards` and `card-critical=3`, devserver-3 with
`device-bound` (Docker preinstalled, another container holding /dev/davinci0).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from llava_devserver.cli import main
from llava_devserver.npu_smi import check_npu_smi, parse_npu_smi
from llava_devserver.sim import link

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


LINK_MBPS = 80
PAYLOAD = 8_000_000  # bytes: 0.8 s at 80 Mbit/s; milliseconds on the bridge without a limit
PORT = 5201
# A receiver on a server: reads one connection to its end.
SINK = (
    "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    f"s.bind(('0.0.0.0', {PORT})); s.listen(1); c, _ = s.accept()\n"
    "while c.recv(1 << 16): pass\nc.close()"
)


def _send_to(fleet: harness.Fleet, host: str) -> float:
    """Seconds for PAYLOAD bytes from the control node (its link has no limit) to a server: its ingress."""
    fleet.sh(host, f"setsid python3 -c {shlex.quote(SINK)} >/dev/null 2>&1 </dev/null &", check=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = socket.create_connection((fleet.address(host), PORT), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, f"{host}: the receiver did not start"
            time.sleep(0.2)
    with conn:
        started = time.monotonic()
        conn.sendall(bytes(PAYLOAD))
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(60)
        assert conn.recv(1) == b""  # the receiver read everything and closed
        return time.monotonic() - started


def _receive_from(fleet: harness.Fleet, host: str) -> float:
    """Seconds for PAYLOAD bytes from a server to the control node: its egress."""
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        route = fleet.sh(host, "ip -o route show default", check=True).stdout.split()
        gateway = route[route.index("via") + 1]  # the control node on the fleet network
        send = f"head -c {PAYLOAD} /dev/zero > /dev/tcp/{gateway}/{port}"
        fleet.sh(host, f"setsid bash -c {shlex.quote(send)} >/dev/null 2>&1 </dev/null &", check=True)
        server.settimeout(30)
        conn, _ = server.accept()
        with conn:
            started, received = time.monotonic(), 0
            conn.settimeout(60)
            while chunk := conn.recv(1 << 16):
                received += len(chunk)
            assert received == PAYLOAD
            return time.monotonic() - started


def _roots(fleet: harness.Fleet, host: str) -> tuple[str, str]:
    """The root qdisc of the server's fleet link and of its ingress device ("" when there is none)."""
    out = fleet.sh(
        host, "tc qdisc show dev eth0 root; tc qdisc show dev ifb-link root 2>/dev/null || true", check=True
    )
    lines = out.stdout.splitlines()
    return lines[0], (lines[1] if len(lines) > 1 else "")


def _bucket(mbps: int) -> re.Pattern[str]:
    return re.compile(rf"^qdisc tbf 1b: root .*rate {mbps}Mbit ")


def test_link_mbps_limits_what_each_server_sends_and_receives(
    fleet: harness.Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sim up --link-mbps` on the running fleet: every server's link in and out at that speed (the control
    node's own link has none, so each direction is measured alone), kept across a reboot, restored when a
    slower accel-slow is cleared."""
    free_in, free_out = _send_to(fleet, "devserver-1"), _receive_from(fleet, "devserver-1")
    assert main(
        ["sim", "up", "--hosts", "3", "--name", fleet.name, "-o", str(fleet.dir), "--no-job",
         "--link-mbps", str(LINK_MBPS)]
    ) == 0  # fmt: skip
    floor = 0.75 * PAYLOAD * 8 / (LINK_MBPS * 1e6)  # the bucket's burst lets a little through at once
    shaped_in, shaped_out = _send_to(fleet, "devserver-1"), _receive_from(fleet, "devserver-1")
    assert shaped_in >= floor and shaped_out >= floor, (shaped_in, shaped_out, floor)
    assert free_in < shaped_in / 2 and free_out < shaped_out / 2, (free_in, free_out, shaped_in, shaped_out)
    capsys.readouterr()
    assert main(["sim", "status", "--name", fleet.name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["link"] for row in rows] == [f"{LINK_MBPS} Mbit/s"] * 3

    # accel-slow's slower bucket wins while it is there; clearing it gives the link its own speed back
    assert main(["sim", "fault", "--name", fleet.name, "1:accel-slow"]) == 0
    assert _roots(fleet, "devserver-1")[0].startswith("qdisc tbf 1a5: root ")
    assert main(["sim", "fault", "--name", fleet.name, "--clear", "1:accel-slow"]) == 0
    assert _bucket(LINK_MBPS).match(_roots(fleet, "devserver-1")[0])

    # a reboot keeps the port's speed (npu-sim-boot applies the server's link file)
    fleet.container("devserver-1").restart(timeout=10)
    deadline = time.monotonic() + 60
    while not _roots(fleet, "devserver-1")[1]:
        assert time.monotonic() < deadline, "no ingress bucket after the reboot"
        time.sleep(1)
    assert all(_bucket(LINK_MBPS).match(root) for root in _roots(fleet, "devserver-1"))
    assert fleet.read("devserver-1", link.LINK_MBPS_FILE).strip() == str(LINK_MBPS)
    assert _receive_from(fleet, "devserver-1") >= floor


def test_sim_up_again_reuses_the_running_servers(
    fleet: harness.Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fleet.inventory.read_text()
    assert main(["sim", "up", "--hosts", "3", "--name", fleet.name, "-o", str(fleet.dir), "--no-job"]) == 0
    assert "0 started, 3 reused)" in capsys.readouterr().out
    assert fleet.inventory.read_text() == before
    # no --link-mbps this time: the fleet is as declared, its links without a limit again
    assert _roots(fleet, "devserver-1") == ("qdisc noqueue 0: root refcnt 2 ", "")
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
