"""Roles ip_forward, docker_engine and metadata_guard (playbooks/host.yml) on one simulated fleet.

devserver-1 starts fresh (no Docker, ip_forward 0 also written in /etc/sysctl.conf); devserver-2 has Docker
preinstalled with an Ascend-runtime daemon.json. The module runs, in order: `--check --diff` (changes
reported, none made), the real run, a second run (changed=0), then checks real state on the servers,
including real connections from a container to the metadata address and to another server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llava_devserver.cli import main

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[1]
FLEET = f"hhost-{os.getpid()}"
METADATA = "169.254.169.254"
PROBE_IMAGE = "llava-host-probe:latest"
REGISTRY = "registry.sim.test:5000"

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


def server(host: str) -> str:
    return f"llava-sim-{FLEET}-{host}"


def on(host: str, command: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell command on a simulated server."""
    return subprocess.run(
        ["docker", "exec", server(host), "bash", "-c", command],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def connect_from_container(host: str, address: str, port: int) -> tuple[bool, str]:
    """A real TCP connection from a container on `host`'s engine (bridge network), 3 s timeout."""
    done = on(
        host,
        f"docker run --rm {PROBE_IMAGE} /usr/bin/timeout 3 /usr/bin/bash -c "
        f"'exec 3<>/dev/tcp/{address}/{port}' && echo CONNECTED",
    )
    return "CONNECTED" in done.stdout, done.stdout + done.stderr


def run_playbooks(fleet_dir: Path, *args: str) -> dict[str, Any]:
    """ansible-playbook validate.yml + args with the JSON callback; plays of all documents, last stats."""
    package = fleet_dir / "AscendCloud-6.3.906-20250101000000.zip"
    package.touch()
    # `--no-job` fleets lack the job settings that validation needs; these roles use none of them.
    extra = {
        "ascendcloud_package": str(package),
        "per_device_train_batch_size": 1,
        "global_batch_size": 4,
        "docker_engine_insecure_registries": [REGISTRY],
    }
    env = os.environ | {
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CALLBACKS_ENABLED": "llava_report",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(fleet_dir / "facts"),
        "LLAVA_RUN_DIR": str(fleet_dir / "run"),
    }
    command = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(fleet_dir / "devserver.ini"),
        "-e", json.dumps(extra), "playbooks/validate.yml", *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    decoder, text, docs = json.JSONDecoder(), done.stdout, []
    start = text.find("{\n")
    while start >= 0:
        doc, end = decoder.raw_decode(text, start)
        docs.append(doc)
        start = text.find("{\n", end)
    assert docs, f"no JSON from ansible-playbook:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return {"plays": [play for doc in docs for play in doc["plays"]], "stats": docs[-1]["stats"]}


def failures(result: dict[str, Any]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            for host, outcome in task["hosts"].items():
                if outcome.get("failed") and not outcome.get("ignore_errors"):
                    failed[host] = f"{task['task']['name']}: {outcome.get('msg', '')}"
    return failed


def changed_tasks(result: dict[str, Any], host: str) -> list[str]:
    return [
        task["task"]["name"]
        for play in result["plays"]
        for task in play["tasks"]
        if task["hosts"].get(host, {}).get("changed")
    ]


def last_fact(result: dict[str, Any], host: str, name: str) -> Any:
    found = [
        task["hosts"][host]["ansible_facts"][name]
        for play in result["plays"]
        for task in play["tasks"]
        if name in task["hosts"].get(host, {}).get("ansible_facts", {})
    ]
    assert found, f"{host} never set {name}"
    return found[-1]


def daemon_json(host: str) -> dict[str, Any]:
    done = on(host, "cat /etc/docker/daemon.json")
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("host-fleet")
    args = ["sim", "up", "--hosts", "2", "--name", FLEET, "-o", str(out), "--no-job"]
    args += ["--fault", "devserver-1:ip-forward-0", "--fault", "devserver-2:docker-preinstalled"]
    try:
        assert main(args) == 0, "sim up failed"
        yield out
    finally:
        main(["sim", "down", "--name", FLEET])


@pytest.fixture(scope="module")
def before(fleet_dir: Path) -> dict[str, str]:
    """State of the fresh servers, read before any run."""
    return {
        "daemon_json_2": on("devserver-2", "cat /etc/docker/daemon.json").stdout,
        "sysctl_conf_1": on("devserver-1", "cat /etc/sysctl.conf").stdout,
    }


@pytest.fixture(scope="module")
def check_run(fleet_dir: Path, before: dict[str, str]) -> dict[str, Any]:
    return run_playbooks(fleet_dir, "playbooks/host.yml", "--check", "--diff")


@pytest.fixture(scope="module")
def runs(fleet_dir: Path, check_run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The real run, then a second one."""
    first = run_playbooks(fleet_dir, "playbooks/host.yml")
    assert failures(first) == {}, failures(first)
    second = run_playbooks(fleet_dir, "playbooks/host.yml")
    return first, second


@pytest.fixture(scope="module")
def metadata_service(fleet_dir: Path, runs: Any) -> str:
    """A stand-in metadata service: 169.254.169.254:80 on devserver-2, routed to from devserver-1.

    On a real cloud the metadata address sits behind the server's gateway, so container traffic to it is
    forwarded (and passes DOCKER-USER). Putting it on another server reproduces that path.
    """
    address_2 = on("devserver-2", "hostname -i").stdout.split()[0]
    serve = (
        f"ip addr add {METADATA}/32 dev eth0 && "
        f"(setsid python3 -m http.server 80 --bind {METADATA} </dev/null >/tmp/metadata.log 2>&1 &) && "
        f"for i in $(seq 50); do (exec 3<>/dev/tcp/{METADATA}/80) 2>/dev/null && exit 0; sleep 0.1; done; "
        "exit 1"
    )
    assert on("devserver-2", serve).returncode == 0
    assert on("devserver-1", f"ip route replace {METADATA}/32 via {address_2}").returncode == 0
    made = on("devserver-1", MAKE_PROBE_IMAGE)
    assert made.returncode == 0, made.stderr
    return address_2


# ------------------------------------------------------------------------------------------------ tests


def test_check_mode_reports_changes_and_makes_none(check_run: dict[str, Any], before: dict[str, str]) -> None:
    assert failures(check_run) == {}
    for host in ("devserver-1", "devserver-2"):
        assert check_run["stats"][host]["changed"] > 0, host
    changed_1 = changed_tasks(check_run, "devserver-1")
    assert any("ip_forward" in name for name in changed_1), changed_1
    assert "docker_engine : Report the packages a real run installs" in changed_1
    assert "docker_engine : Write the merged daemon configuration" in changed_tasks(check_run, "devserver-2")
    # Nothing changed on the servers.
    assert on("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"
    assert on("devserver-1", "cat /etc/sysctl.conf").stdout == before["sysctl_conf_1"]
    assert on("devserver-1", "command -v dockerd").returncode != 0, "check mode installed Docker"
    assert on("devserver-1", "test -e /etc/docker/daemon.json").returncode != 0
    assert on("devserver-2", "cat /etc/docker/daemon.json").stdout == before["daemon_json_2"]
    assert METADATA not in on("devserver-2", "iptables -S DOCKER-USER").stdout


def test_second_run_changes_nothing(runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = runs
    assert first["stats"]["devserver-1"]["changed"] > 0
    assert failures(second) == {}
    for host in ("devserver-1", "devserver-2"):
        assert second["stats"][host]["changed"] == 0, changed_tasks(second, host)


def test_report_fact_of_the_first_run(runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, _ = runs
    fresh = last_fact(first, "devserver-1", "llava_report_host")
    preinstalled = last_fact(first, "devserver-2", "llava_report_host")
    assert fresh["docker_installed_this_run"] is True
    assert preinstalled["docker_installed_this_run"] is False
    for report in (fresh, preinstalled):
        assert report["docker_version"], report
        assert report["docker_daemon_mode"] == "detached"  # the simulated servers run tini, not systemd
        assert report["ip_forward"] == 1 and report["metadata_guard"] is True


def test_ip_forward_is_on_and_persisted(runs: Any, before: dict[str, str]) -> None:
    assert "net.ipv4.ip_forward=0" in before["sysctl_conf_1"]  # the fault, as the guide shows it
    assert on("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    active = [
        line.replace(" ", "")
        for line in on("devserver-1", "cat /etc/sysctl.conf").stdout.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [line for line in active if line.startswith("net.ipv4.ip_forward=")] == ["net.ipv4.ip_forward=1"]
    # devserver-2's sysctl.conf had the key only commented out: it is added.
    assert on("devserver-2", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    assert on("devserver-2", "grep -E '^net.ipv4.ip_forward ?= ?1$' /etc/sysctl.conf").returncode == 0


def test_docker_installed_from_nothing_and_running(runs: Any) -> None:
    assert on("devserver-1", "command -v dockerd && command -v docker").returncode == 0
    info = on("devserver-1", "docker info --format '{{json .ServerVersion}}'")
    assert info.returncode == 0 and info.stdout.strip().strip('"'), info.stderr
    # It outlived the SSH session that started it, in its own session (detached mode: no init system here).
    assert on("devserver-1", "test -x /usr/local/sbin/llava-dockerd && pidof dockerd").returncode == 0
    assert on("devserver-1", "python3 -c 'import docker'").returncode == 0  # the SDK for community.docker
    ours = daemon_json("devserver-1")
    assert ours["log-driver"] == "json-file" and ours["log-opts"]["max-size"] == "100m"
    assert ours["insecure-registries"] == [REGISTRY]
    # The running daemon uses the file it was started with.
    registries = on("devserver-1", "docker info --format '{{json .RegistryConfig.IndexConfigs}}'").stdout
    assert REGISTRY in registries


def test_preinstalled_daemon_json_keeps_the_ascend_runtime(runs: Any, before: dict[str, str]) -> None:
    original = json.loads(before["daemon_json_2"])
    assert original["default-runtime"] == "ascend"
    merged = daemon_json("devserver-2")
    assert merged["runtimes"] == original["runtimes"]
    assert merged["default-runtime"] == "ascend"
    assert merged["insecure-registries"][-1] == REGISTRY
    for key, value in original.items():
        if key not in ("log-opts", "insecure-registries"):
            assert merged[key] == value, key
    assert merged["log-opts"]["max-file"] == "5"
    # The daemon was restarted on the change and runs with the Ascend runtime as its default.
    assert on("devserver-2", "docker info --format '{{.DefaultRuntime}}'").stdout.strip() == "ascend"
    # The original is kept as a backup next to it.
    assert on("devserver-2", "ls /etc/docker/ | grep -c '^daemon.json\\..*~$'").stdout.strip() == "1"


def test_container_cannot_reach_the_metadata_address_but_other_traffic_works(metadata_service: str) -> None:
    # The stand-in answers the server itself (its traffic is not forwarded, so the guard does not apply).
    assert on("devserver-1", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{METADATA}/80'").returncode == 0
    reached, output = connect_from_container("devserver-1", METADATA, 80)
    assert not reached, output
    reached, output = connect_from_container("devserver-1", metadata_service, 22)
    assert reached, f"other traffic from the container is blocked too: {output}"


def test_guard_survives_a_docker_restart(metadata_service: str) -> None:
    restarted = on("devserver-1", "/usr/local/sbin/llava-dockerd restart", timeout=180)
    assert restarted.returncode == 0 and "started" in restarted.stdout, restarted.stdout + restarted.stderr
    assert METADATA in on("devserver-1", "iptables -S DOCKER-USER").stdout
    reached, output = connect_from_container("devserver-1", METADATA, 80)
    assert not reached, output


def test_guard_turned_off_removes_the_rule_and_the_container_reaches_it(
    fleet_dir: Path, metadata_service: str
) -> None:
    """metadata_guard: false removes the rule; also the control: the probe above can succeed."""
    result = run_playbooks(
        fleet_dir, "playbooks/host.yml", "-e", "metadata_guard=false",
        "--limit", "devserver-1", "--tags", "metadata_guard",
    )  # fmt: skip
    assert failures(result) == {}, failures(result)
    assert METADATA not in on("devserver-1", "iptables -S DOCKER-USER").stdout
    reached, output = connect_from_container("devserver-1", METADATA, 80)
    assert reached, output


def test_invalid_daemon_json_stops_the_role_and_is_kept(fleet_dir: Path, runs: Any) -> None:
    assert on("devserver-2", "printf '{\"runtimes\": ' > /etc/docker/daemon.json").returncode == 0
    result = run_playbooks(
        fleet_dir, "playbooks/host.yml", "--limit", "devserver-2", "--tags", "docker_engine"
    )
    message = failures(result).get("devserver-2", "")
    assert "/etc/docker/daemon.json on devserver-2 is not valid JSON" in message, message
    assert on("devserver-2", "cat /etc/docker/daemon.json").stdout == '{"runtimes": '


def test_after_a_reboot_ip_forward_is_on_and_a_rerun_restores_docker_and_the_guard(
    fleet_dir: Path, runs: Any
) -> None:
    """Last: reboots devserver-1 (the sim server's boot sets ip_forward=0, then applies /etc/sysctl.conf)."""
    subprocess.run(["docker", "restart", "-t", "5", server("devserver-1")], check=True, timeout=120)
    for _ in range(100):
        if on("devserver-1", "pidof sshd").returncode == 0:
            break
        time.sleep(0.2)
    assert on("devserver-1", "sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    # Nothing starts dockerd at boot without an init system, and its iptables rules are gone with it.
    assert on("devserver-1", "pidof dockerd").returncode != 0
    result = run_playbooks(fleet_dir, "playbooks/host.yml", "--limit", "devserver-1")
    assert failures(result) == {}, failures(result)
    assert on("devserver-1", "docker info --format '{{.ServerVersion}}'").returncode == 0
    assert METADATA in on("devserver-1", "iptables -S DOCKER-USER").stdout
