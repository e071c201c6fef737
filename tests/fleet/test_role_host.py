"""Roles ip_forward, docker_engine and metadata_guard (playbooks/host.yml) on one simulated fleet.

devserver-1 starts fresh (no Docker, ip_forward 0 also written in /etc/sysctl.conf); devserver-2 has Docker
preinstalled with an Ascend-runtime daemon.json; devserver-3 is of the hce2 profile (Huawei Cloud EulerOS
2.0 as real DevServers run: Python 3.9, systemd, dnf, no apt), fresh, with ip_forward 0 persisted too. The
module runs, in order: `--check --diff` (changes reported, none made), the real run, a second run
(changed=0), then checks real state on the servers, including real connections from a container to the
metadata address and to another server, and last a reboot of devserver-1 and devserver-3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import harness

pytestmark = pytest.mark.fleet

METADATA = "169.254.169.254"
PROBE_IMAGE = "llava-host-probe:latest"
REGISTRY = "registry.sim.test:5000"
HCE = "devserver-3"  # the hce2 server
DEBIAN = ("devserver-1", "devserver-2")

# A tiny image for the inner engine (nothing can be pulled): bash, timeout and their libraries.
MAKE_PROBE_IMAGE = f"""set -e
docker image inspect {PROBE_IMAGE} >/dev/null 2>&1 && exit 0
d=$(mktemp -d)
for b in /usr/bin/bash /usr/bin/timeout; do
  for f in $b $(ldd $b | grep -o '/[^ ]*'); do mkdir -p "$d$(dirname "$f")"; cp -L "$f" "$d$f"; done
done
tar -C "$d" -c . | docker import - {PROBE_IMAGE} >/dev/null
rm -rf "$d"
"""


def connect_from_container(fleet: harness.Fleet, host: str, address: str, port: int) -> tuple[bool, str]:
    """A real TCP connection from a container on `host`'s engine (bridge network), 3 s timeout."""
    done = fleet.sh(
        host,
        f"docker run --rm {PROBE_IMAGE} /usr/bin/timeout 3 /usr/bin/bash -c "
        f"'exec 3<>/dev/tcp/{address}/{port}' && echo CONNECTED",
    )
    return "CONNECTED" in done.stdout, done.stdout + done.stderr


def daemon_json(fleet: harness.Fleet, host: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fleet.read(host, "/etc/docker/daemon.json"))
    return loaded


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    faults = {"devserver-1": ["ip-forward-0"], "devserver-2": ["docker-preinstalled"], HCE: ["ip-forward-0"]}
    out = tmp_path_factory.mktemp("host")
    with harness.fleet_up("host", 3, out, faults=faults, job=False, host_profiles={HCE: "hce2"}) as up:
        up.set_group_vars(docker_engine_insecure_registries=[REGISTRY])
        yield up


@pytest.fixture(scope="module")
def before(fleet: harness.Fleet) -> dict[str, str]:
    """State of the fresh servers, read before any run."""
    return {
        "daemon_json_2": fleet.sh("devserver-2", "cat /etc/docker/daemon.json").stdout,
        "sysctl_conf_1": fleet.sh("devserver-1", "cat /etc/sysctl.conf").stdout,
        "sysctl_conf_3": fleet.sh(HCE, "cat /etc/sysctl.conf").stdout,
    }


@pytest.fixture(scope="module")
def check_run(fleet: harness.Fleet, before: dict[str, str]) -> harness.PlayResult:
    return fleet.run_play("validate", "host", check=True, diff=True)


@pytest.fixture(scope="module")
def runs(
    fleet: harness.Fleet, check_run: harness.PlayResult
) -> tuple[harness.PlayResult, harness.PlayResult]:
    """The real run, then a second one."""
    first = fleet.run_play("validate", "host")
    first.assert_ok()
    second = fleet.run_play("validate", "host")
    return first, second


@pytest.fixture(scope="module")
def metadata_service(fleet: harness.Fleet, runs: Any) -> str:
    """A stand-in metadata service: 169.254.169.254:80 on devserver-2, routed to from devserver-1.

    On a real cloud the metadata address sits behind the server's gateway, so container traffic to it is
    forwarded (and passes DOCKER-USER). Putting it on another server reproduces that path.
    """
    address_2 = fleet.address("devserver-2")
    serve = (
        f"ip addr add {METADATA}/32 dev eth0 && "
        f"(setsid python3 -m http.server 80 --bind {METADATA} </dev/null >/tmp/metadata.log 2>&1 &) && "
        f"for i in $(seq 50); do (exec 3<>/dev/tcp/{METADATA}/80) 2>/dev/null && exit 0; sleep 0.1; done; "
        "exit 1"
    )
    fleet.sh("devserver-2", serve, check=True)
    fleet.sh("devserver-1", f"ip route replace {METADATA}/32 via {address_2}", check=True)
    fleet.sh("devserver-1", MAKE_PROBE_IMAGE, check=True)
    return address_2


# ------------------------------------------------------------------------------------------------ tests


def test_check_mode_reports_changes_and_makes_none(
    fleet: harness.Fleet, check_run: harness.PlayResult, before: dict[str, str]
) -> None:
    check_run.assert_ok()
    for host in (*DEBIAN, HCE):
        assert check_run.changed_count(host) > 0, host
    for host in ("devserver-1", HCE):
        changed = check_run.changed[host]
        assert any("ip_forward" in name for name in changed), changed
        assert any(name.endswith("Report the packages a real run installs") for name in changed), changed
    changed_2 = check_run.changed["devserver-2"]
    assert any(name.endswith("Write the merged daemon configuration") for name in changed_2), changed_2
    # Nothing changed on the servers.
    assert fleet.sh("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"
    assert fleet.sh("devserver-1", "cat /etc/sysctl.conf").stdout == before["sysctl_conf_1"]
    assert fleet.sh("devserver-1", "command -v dockerd").returncode != 0, "check mode installed Docker"
    assert fleet.sh("devserver-1", "test -e /etc/docker/daemon.json").returncode != 0
    assert fleet.sh("devserver-2", "cat /etc/docker/daemon.json").stdout == before["daemon_json_2"]
    assert METADATA not in fleet.sh("devserver-2", "iptables -S DOCKER-USER").stdout
    assert fleet.sh(HCE, "sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"
    assert fleet.sh(HCE, "cat /etc/sysctl.conf").stdout == before["sysctl_conf_3"]
    assert fleet.sh(HCE, "rpm -q docker-engine").returncode != 0, "check mode installed docker-engine"


def test_second_run_changes_nothing(runs: tuple[harness.PlayResult, harness.PlayResult]) -> None:
    first, second = runs
    assert first.changed_count("devserver-1") > 0
    second.assert_ok()
    for host in (*DEBIAN, HCE):
        assert second.changed_count(host) == 0, second.changed.get(host)


def test_report_fact_of_the_first_run(runs: tuple[harness.PlayResult, harness.PlayResult]) -> None:
    first, _ = runs
    fresh = first.fact("devserver-1", "llava_report_host")
    preinstalled = first.fact("devserver-2", "llava_report_host")
    assert fresh["docker_installed_this_run"] is True
    assert preinstalled["docker_installed_this_run"] is False
    hce = first.fact(HCE, "llava_report_host")
    assert hce["docker_installed_this_run"] is True
    for report in (fresh, preinstalled, hce):
        assert report["docker_version"], report
        assert report["ip_forward"] == 1 and report["metadata_guard"] is True
    # The debian12 servers run tini, not systemd; the hce2 server boots systemd.
    assert fresh["docker_daemon_mode"] == preinstalled["docker_daemon_mode"] == "detached"
    assert hce["docker_daemon_mode"] == "systemd"


def test_hce2_facts_as_on_a_real_hce_server(check_run: harness.PlayResult) -> None:
    """What Ansible gathers on the hce2 profile (docs/os-profiles.md): not the RedHat family by itself."""
    # Gathered by the check run, the fleet's first play (its own fact cache starts empty; later runs read it).
    facts = check_run.facts[HCE]
    assert facts["ansible_distribution"] == "Huawei Cloud EulerOS"
    assert facts["ansible_os_family"] == "Huawei Cloud EulerOS"
    assert facts["ansible_distribution_version"] == "2.0"
    assert facts["ansible_pkg_mgr"] == "dnf"
    assert facts["ansible_service_mgr"] == "systemd"
    assert facts["discovered_interpreter_python"] == "/usr/bin/python3.9"


def test_hce2_docker_from_the_guides_rpms_under_systemd(fleet: harness.Fleet, runs: Any) -> None:
    rpms = fleet.sh(HCE, "rpm -q docker-engine docker-engine-selinux docker-runc python3-docker")
    assert rpms.returncode == 0, rpms.stdout + rpms.stderr
    assert fleet.sh(HCE, "systemctl is-active docker").stdout.strip() == "active"
    assert fleet.sh(HCE, "systemctl is-enabled docker").stdout.strip() == "enabled"
    assert fleet.sh(HCE, "python3 --version").stdout.startswith("Python 3.9.")
    assert fleet.sh(HCE, "python3 -c 'import docker'").returncode == 0
    assert fleet.sh(HCE, "command -v apt-get || command -v apt || command -v dpkg").returncode != 0
    assert fleet.sh(HCE, "test -e /usr/local/sbin/llava-dockerd").returncode != 0  # no detached script
    assert "net.ipv4.ip_forward" in fleet.sh(HCE, "systemd-analyze cat-config sysctl.d").stdout
    assert REGISTRY in daemon_json(fleet, HCE)["insecure-registries"]


def test_preflight_stops_on_a_python_this_ansible_core_cannot_manage(fleet: harness.Fleet, runs: Any) -> None:
    """EulerOS 2.x ships Python 3.7; ansible-core 2.18+ needs 3.8: one message, no module traceback."""
    fake = "/usr/local/bin/python3.7"
    fleet.sh(HCE, f"printf '#!/bin/sh\\necho 3.7.9\\n' > {fake} && chmod 0755 {fake}", check=True)
    try:
        result = fleet.run_play(
            "validate", "preflight", limit=HCE, extravars={"ansible_python_interpreter": fake}
        )
    finally:
        fleet.sh(HCE, f"rm -f {fake}")
    assert result.rc != 0
    message = result.messages.get(HCE, "")
    assert f"Python 3.7.9 ({fake}) is too old for ansible-core" in message, message
    assert "3.8 or newer" in message
    assert "ansible_python_interpreter" in message
    assert "Traceback" not in result.output and "SyntaxError" not in result.output
    # It stopped before any module ran there: the NPU checks never started on that server.
    assert [task.label for task in result.results.get(HCE, []) if task.role == "npu_check"] == []


def test_ip_forward_is_on_and_persisted(fleet: harness.Fleet, runs: Any, before: dict[str, str]) -> None:
    assert "net.ipv4.ip_forward=0" in before["sysctl_conf_1"]  # the fault, as the guide shows it
    assert fleet.sh("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    active = [
        line.replace(" ", "")
        for line in fleet.sh("devserver-1", "cat /etc/sysctl.conf").stdout.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [line for line in active if line.startswith("net.ipv4.ip_forward=")] == ["net.ipv4.ip_forward=1"]
    # devserver-2's sysctl.conf had the key only commented out: it is added.
    assert fleet.sh("devserver-2", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    assert fleet.sh("devserver-2", "grep -E '^net.ipv4.ip_forward ?= ?1$' /etc/sysctl.conf").returncode == 0


def test_docker_installed_from_nothing_and_running(fleet: harness.Fleet, runs: Any) -> None:
    assert fleet.sh("devserver-1", "command -v dockerd && command -v docker").returncode == 0
    info = fleet.sh("devserver-1", "docker info --format '{{json .ServerVersion}}'")
    assert info.returncode == 0 and info.stdout.strip().strip('"'), info.stderr
    # It outlived the SSH session that started it, in its own session (detached mode: no init system here).
    assert fleet.sh("devserver-1", "test -x /usr/local/sbin/llava-dockerd && pidof dockerd").returncode == 0
    assert (
        fleet.sh("devserver-1", "python3 -c 'import docker'").returncode == 0
    )  # the SDK for community.docker
    ours = daemon_json(fleet, "devserver-1")
    assert ours["log-driver"] == "json-file" and ours["log-opts"]["max-size"] == "100m"
    assert ours["insecure-registries"] == [REGISTRY]
    # The running daemon uses the file it was started with.
    registries = fleet.sh(
        "devserver-1", "docker info --format '{{json .RegistryConfig.IndexConfigs}}'"
    ).stdout
    assert REGISTRY in registries


def test_preinstalled_daemon_json_keeps_the_ascend_runtime(
    fleet: harness.Fleet, runs: Any, before: dict[str, str]
) -> None:
    original = json.loads(before["daemon_json_2"])
    assert original["default-runtime"] == "ascend"
    merged = daemon_json(fleet, "devserver-2")
    assert merged["runtimes"] == original["runtimes"]
    assert merged["default-runtime"] == "ascend"
    assert merged["insecure-registries"][-1] == REGISTRY
    for key, value in original.items():
        if key not in ("log-opts", "insecure-registries"):
            assert merged[key] == value, key
    assert merged["log-opts"]["max-file"] == "5"
    # The daemon was restarted on the change and runs with the Ascend runtime as its default.
    assert fleet.sh("devserver-2", "docker info --format '{{.DefaultRuntime}}'").stdout.strip() == "ascend"
    # The original is kept as a backup next to it.
    assert fleet.sh("devserver-2", "ls /etc/docker/ | grep -c '^daemon.json\\..*~$'").stdout.strip() == "1"


def test_container_cannot_reach_the_metadata_address_but_other_traffic_works(
    fleet: harness.Fleet, metadata_service: str
) -> None:
    # The stand-in answers the server itself (its traffic is not forwarded, so the guard does not apply).
    assert fleet.sh("devserver-1", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{METADATA}/80'").returncode == 0
    reached, output = connect_from_container(fleet, "devserver-1", METADATA, 80)
    assert not reached, output
    reached, output = connect_from_container(fleet, "devserver-1", metadata_service, 22)
    assert reached, f"other traffic from the container is blocked too: {output}"


def test_guard_survives_a_docker_restart(fleet: harness.Fleet, metadata_service: str) -> None:
    restarted = fleet.sh("devserver-1", "/usr/local/sbin/llava-dockerd restart", timeout=180)
    assert restarted.returncode == 0 and "started" in restarted.stdout, restarted.stdout + restarted.stderr
    assert METADATA in fleet.sh("devserver-1", "iptables -S DOCKER-USER").stdout
    reached, output = connect_from_container(fleet, "devserver-1", METADATA, 80)
    assert not reached, output


def test_guard_turned_off_removes_the_rule_and_the_container_reaches_it(
    fleet: harness.Fleet, metadata_service: str
) -> None:
    """metadata_guard: false removes the rule; also the control: the probe above can succeed."""
    result = fleet.run_play(
        "validate", "host", extravars={"metadata_guard": False}, limit="devserver-1", tags="metadata_guard"
    )
    result.assert_ok()
    assert METADATA not in fleet.sh("devserver-1", "iptables -S DOCKER-USER").stdout
    reached, output = connect_from_container(fleet, "devserver-1", METADATA, 80)
    assert reached, output


def test_invalid_daemon_json_stops_the_role_and_is_kept(fleet: harness.Fleet, runs: Any) -> None:
    assert fleet.sh("devserver-2", "printf '{\"runtimes\": ' > /etc/docker/daemon.json").returncode == 0
    result = fleet.run_play("validate", "host", limit="devserver-2", tags="docker_engine")
    message = result.messages.get("devserver-2", "")
    assert "/etc/docker/daemon.json on devserver-2 is not valid JSON" in message, message
    assert fleet.sh("devserver-2", "cat /etc/docker/daemon.json").stdout == '{"runtimes": '


def test_after_a_reboot_ip_forward_is_on_and_a_rerun_restores_docker_and_the_guard(
    fleet: harness.Fleet, runs: Any
) -> None:
    """Last: reboots devserver-1 and the hce2 server (a simulated server's boot sets ip_forward=0, then
    applies the persisted net.* settings: /etc/sysctl.conf without an init system, systemd-sysctl's files on
    hce2)."""
    for host in ("devserver-1", HCE):
        fleet.container(host).restart(timeout=10)
    harness.wait_for(
        lambda: fleet.sh("devserver-1", "pidof sshd").returncode == 0, "sshd after the reboot", 30
    )
    harness.wait_for(
        lambda: fleet.sh(HCE, "systemctl is-active ssh docker").stdout.split() == ["active", "active"],
        "sshd and docker.service after the reboot of the hce2 server",
        90,
    )
    assert fleet.sh("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    # Nothing starts dockerd at boot without an init system, and its iptables rules are gone with it.
    assert fleet.sh("devserver-1", "pidof dockerd").returncode != 0
    # systemd started Docker again (enabled at boot); ip_forward came back from the persisted file, before
    # Docker (which would set it too) started.
    assert fleet.sh(HCE, "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    boot = fleet.sh(HCE, "journalctl -b -u npu-sim-boot --no-pager -o cat").stdout
    assert "applied net.ipv4.ip_forward=1 from /etc/sysctl.d/99-sysctl.conf" in boot, boot
    assert fleet.sh(HCE, "docker info --format '{{.ServerVersion}}'").returncode == 0
    rerun = fleet.run_play("validate", "host", limit=f"devserver-1,{HCE}")
    rerun.assert_ok()
    assert fleet.sh("devserver-1", "docker info --format '{{.ServerVersion}}'").returncode == 0
    for host in ("devserver-1", HCE):
        assert METADATA in fleet.sh(host, "iptables -S DOCKER-USER").stdout
    # On hce2 the rerun changes nothing but the guard's iptables rule, which no boot restores (iptables
    # rules are not persisted by metadata_guard).
    assert rerun.changed.get(HCE), "the guard's rules are gone after a reboot and must be added again"
    assert all(name.startswith("metadata_guard : Reject ") for name in rerun.changed[HCE]), rerun.changed[HCE]
