"""The role training_container on a 2-server simulated fleet, checked through each server's Docker API.

One fleet for the module (2 cores): devserver-1 starts with Docker preinstalled, devserver-2 with the
`device-bound` fault (another container holds /dev/davinci0). A closed network (`sim up --proxy`): the
servers' only way out is a forwarding proxy (sim/proxy.py), and a local registry (sim/registry.py) stands in
for SWR outside it. The tests run in file order, each building on the state the previous one left:

0. (fixture) validate + host, with the registry among Docker's insecure registries: both servers install the
   Docker SDK for Python from the Debian mirror through the proxy.
1. Neither the mirror nor the registry is reachable from a server but through the proxy; both dockerds run
   with the proxy's environment; the proxy's log shows the servers' apt downloads.
2. validate + container: devserver-1 gets its container from the image archive; devserver-2 is refused
   (NPU 0 held) and has no container.
3. NPU freed but /usr/local/dcmi removed on devserver-2: refused again, no container; devserver-1 changed=0.
4. devserver-2 pulls from the registry through the proxy (password from Ansible Vault): bad password,
   missing tag, check mode (changes nothing), then the right image; the password never appears in the output
   nor on any process command line of the server (sampled during the login and pull); the login's temporary
   DOCKER_CONFIG is gone afterwards (a stale one of an interrupted run too), /root/.docker/config.json never
   holds it; the proxy's log shows the pull; a rerun changes nothing.
5. devserver-1 with a training job running: a changed shm size fails without container_recreate, and
   recreates the container with it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import harness
from cmdline_sampler import CmdlineSampler
from llava_devserver.npu_smi import NpuSmiInfo, parse_npu_smi
from llava_devserver.sim import fleet as sim_fleet
from llava_devserver.sim import image as sim_image

pytestmark = pytest.mark.fleet

NAME = "llava-pretrain"
REGISTRY_REPOSITORY = "llava/ctrtest:1"


@dataclass
class Fleet:
    sim: harness.Fleet
    registry_address: str
    registry_password: str
    image: str  # the test image's local tag (also what the archive holds)
    vault_file: Path
    network: str  # the fleet network, whose proxy is the servers' way out

    def proxy_requests(self) -> list[str]:
        from llava_devserver.sim import proxy as sim_proxy

        return sim_proxy.requests(harness.docker_client(), self.network)

    def run(self, *plays: str, **options: Any) -> harness.PlayResult:
        return self.sim.run_play(*plays, vault_password_file=self.vault_file, **options)

    def sh(self, host: str, command: str) -> subprocess.CompletedProcess[str]:
        return self.sim.sh(host, command)


def _vault_string(vault_file: Path, name: str, value: str) -> dict[str, Any]:
    result = subprocess.run(
        [harness.tool("ansible-vault"), "encrypt_string", "--vault-password-file", str(vault_file),
         "--name", name, value],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(yaml.safe_load(result.stdout.replace("!vault", "")))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from llava_devserver.sim import proxy as sim_proxy
    from llava_devserver.sim import registry as sim_registry
    from llava_devserver.sim.faults import apply_fault, parse_fault

    client = harness.docker_client()
    out = tmp_path_factory.mktemp("ctr")
    faults = {"devserver-1": ["docker-preinstalled"], "devserver-2": ["device-bound=0"]}
    with harness.fleet_up("ctr", 2, out, faults=faults, job=False, proxy=True) as sim:
        network = sim_fleet.network_name(sim.name)
        outside = sim_proxy.outside_network_name(network)
        try:
            image = harness.use_small_training_image(sim)
            registry = sim_registry.ensure_registry(client, outside)
            sim_registry.push_image(client, registry, image, REGISTRY_REPOSITORY)
            package = out / "AscendCloud-6.3.906-test.zip"
            with zipfile.ZipFile(package, "w") as zf:
                zf.writestr("README", "stand-in")
            vault_file = out / "vault-password"
            vault_file.write_text("ctrtest-vault\n")
            sim.set_group_vars(
                ascendcloud_package=str(package), docker_engine_insecure_registries=[registry.address]
            )
            ready = Fleet(sim, registry.address, registry.password, image, vault_file, network)
            ready.run("validate", "host").assert_ok()
            # A restart of dockerd (insecure registry added) stops the other user's container: start it again.
            apply_fault(sim.container("devserver-2"), parse_fault("device-bound=0"))
            yield ready
        finally:
            sim_registry.remove_registry(client, outside)


def inspect(fleet: Fleet, host: str) -> dict[str, Any] | None:
    """The container as the server's Docker engine describes it (None when there is none)."""
    result = fleet.sh(host, f"docker inspect {NAME}")
    if result.returncode != 0:
        assert "No such object" in result.stderr or "no such" in result.stderr.lower(), result.stderr
        return None
    entry: dict[str, Any] = json.loads(result.stdout)[0]
    return entry


def assert_guide_container(fleet: Fleet, host: str, image: str, shm: int = 32 << 30) -> dict[str, Any]:
    info = inspect(fleet, host)
    assert info is not None, f"{host}: no container {NAME}"
    assert info["State"]["Running"]
    assert info["Config"]["Image"] == image
    assert info["Config"]["User"] == "ma-user"  # the image's default user, not overridden
    assert info["Config"]["Tty"] and info["Config"]["OpenStdin"] and info["Config"]["Cmd"] == ["/bin/bash"]
    host_config = info["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["ShmSize"] == shm
    assert sorted(d["PathOnHost"] for d in host_config["Devices"]) == [
        "/dev/davinci0", "/dev/davinci1", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc",
    ]  # fmt: skip
    mounts = {m["Destination"]: (m["Source"], m["Type"]) for m in info["Mounts"]}
    assert mounts == {
        "/usr/local/dcmi": ("/usr/local/dcmi", "bind"),
        "/usr/local/Ascend/driver": ("/usr/local/Ascend/driver", "bind"),
        "/usr/slog": ("/var/log/npu", "bind"),
        "/usr/local/bin/npu-smi": ("/usr/local/bin/npu-smi", "bind"),
        "/home/ma-user/ws": ("/data/llava-devserver", "bind"),
    }
    # npu-smi inside the container, parsed by the project's parser: exactly the two assigned NPUs
    smi = fleet.sh(host, f"docker exec {NAME} npu-smi info")
    assert smi.returncode == 0, smi.stderr
    parsed = parse_npu_smi(smi.stdout)
    assert isinstance(parsed, NpuSmiInfo)
    assert sorted(card.npu for card in parsed.cards) == [0, 1]
    owner = fleet.sh(host, f"docker exec {NAME} stat -c %U:%G /home/ma-user/ws")
    assert owner.stdout.strip() == "ma-user:ma-group"
    return info


def _host_vars(fleet: Fleet, host: str, values: dict[str, Any] | None) -> None:
    """host_vars with vault-encrypted strings written as `!vault |` blocks."""
    path = fleet.sim.dir / "host_vars" / f"{host}.yml"
    path.parent.mkdir(exist_ok=True)
    if values is None:
        path.unlink(missing_ok=True)
        return
    text = yaml.safe_dump(
        {k: v for k, v in values.items() if not isinstance(v, str) or "$ANSIBLE_VAULT" not in v}
    )
    for key, value in values.items():
        if isinstance(value, str) and "$ANSIBLE_VAULT" in value:
            text += f"{key}: !vault |\n" + "".join(f"  {line}\n" for line in value.strip().splitlines())
    path.write_text(text)


def _reach(fleet: Fleet, host: str, address: str, port: int) -> str:
    """CONNECTED or the error of a direct TCP connection from the server (no proxy)."""
    code = (
        "import socket\n"
        f"try:\n    socket.create_connection(({address!r}, {port}), 3)\n    print('CONNECTED')\n"
        "except OSError as e:\n    print(type(e).__name__, e)\n"
    )
    done = fleet.sh(host, f"python3 -c {shlex.quote(code)}")
    return (done.stdout + done.stderr).strip()


def test_the_servers_go_out_only_through_the_proxy(fleet: Fleet) -> None:
    proxy_url = fleet.sim.group_vars()["https_proxy"]
    registry_host, registry_port = fleet.registry_address.rsplit(":", 1)
    for host in ("devserver-1", "devserver-2"):
        assert _reach(fleet, host, registry_host, int(registry_port)) != "CONNECTED", host
        assert _reach(fleet, host, urlsplit(sim_image.MIRROR).hostname or "", 80) != "CONNECTED", host
        # dockerd runs with the proxy (the preinstalled one of devserver-1 was restarted with it)
        info = fleet.sh(host, "docker info --format '{{.HTTPProxy}} {{.HTTPSProxy}} {{.NoProxy}}'")
        assert info.stdout.split() == [proxy_url, proxy_url, "localhost,127.0.0.1"], (host, info)
    # both installed the Docker SDK for Python from the Debian mirror (their engines came with the image),
    # which they reached only through the proxy
    requests = fleet.proxy_requests()
    mirrors = tuple(f"GET {url}/pool/" for url in (sim_image.MIRROR, sim_image.SECURITY_MIRROR))
    sdk = [r for r in requests if r.startswith(mirrors) and "/python3-docker_" in r]
    assert len(sdk) == 2, "\n".join(requests)


def test_archive_path_and_npu_held_by_another_container(fleet: Fleet) -> None:
    run = fleet.run("validate", "container")
    assert run.recap["devserver-1"]["failed"] == 0, run.output[-4000:]
    assert run.recap["devserver-2"]["failed"] == 1, run.output[-4000:]
    assert (
        "devserver-2: NPU 0 (/dev/davinci0) is held by the running container 'other-user-job'"
        in run.messages["devserver-2"]
    )
    assert_guide_container(fleet, "devserver-1", fleet.image)
    assert inspect(fleet, "devserver-2") is None


def test_missing_mount_source_and_idempotence(fleet: Fleet) -> None:
    assert fleet.sh("devserver-2", "docker rm -f other-user-job && rm -rf /usr/local/dcmi").returncode == 0
    try:
        run = fleet.run("validate", "container")
        assert run.recap["devserver-2"]["failed"] == 1, run.output[-4000:]
        assert (
            "devserver-2: mount source /usr/local/dcmi (the DCMI library of the NPU driver) does not exist"
            in run.messages["devserver-2"]
        )
        assert inspect(fleet, "devserver-2") is None
        assert fleet.sh("devserver-2", "test -e /usr/local/dcmi").returncode != 0  # Docker made no dir
        # devserver-1 already has its container: the second run changes nothing
        assert run.recap["devserver-1"]["failed"] == 0 and run.recap["devserver-1"]["changed"] == 0, (
            run.output
        )
    finally:
        fleet.sh("devserver-2", "/usr/local/sbin/npu-sim-sync")


def test_pull_from_registry_with_vault_credentials(fleet: Fleet) -> None:
    image = f"{fleet.registry_address}/{REGISTRY_REPOSITORY}"
    missing = f"{fleet.registry_address}/llava/ctrtest:does-not-exist"
    wrong = "wrong-Pa55word"
    vault = fleet.vault_file
    good = _vault_string(vault, "container_registry_password", fleet.registry_password)
    bad = _vault_string(vault, "container_registry_password", wrong)
    base = {"container_image_archive": None, "container_registry_username": "llava"}
    limit: dict[str, Any] = {"limit": "devserver-2"}
    try:
        _host_vars(fleet, "devserver-2", {**base, "container_image": image, **bad})
        run = fleet.run("validate", "container", **limit)
        assert run.recap["devserver-2"]["failed"] == 1, run.output[-4000:]
        message = run.messages["devserver-2"]
        assert f"devserver-2: login to the registry {fleet.registry_address} as 'llava' failed" in message
        assert wrong not in run.output and fleet.registry_password not in run.output
        assert inspect(fleet, "devserver-2") is None

        _host_vars(fleet, "devserver-2", {**base, "container_image": missing, **good})
        run = fleet.run("validate", "container", **limit)
        assert run.recap["devserver-2"]["failed"] == 1, run.output[-4000:]
        message = run.messages["devserver-2"]
        assert f"devserver-2: container_image {missing} was not found in the registry" in message
        assert fleet.registry_password not in run.output
        assert inspect(fleet, "devserver-2") is None

        _host_vars(fleet, "devserver-2", {**base, "container_image": image, **good})
        # check mode first: says what it would do, pulls and creates nothing
        check = fleet.run("validate", "container", limit="devserver-2", check=True)
        assert check.recap["devserver-2"]["failed"] == 0, check.output[-4000:]
        assert check.recap["devserver-2"]["changed"] > 0
        assert inspect(fleet, "devserver-2") is None
        assert fleet.sh("devserver-2", f"docker image inspect {image}").returncode != 0

        # what an interrupted run between login and cleanup would have left: removed before the login
        stale = "/run/llava-devserver/docker-config.stale"
        fleet.sh(
            "devserver-2", f"mkdir -p -m 0700 {stale} && echo '{{\"auths\": {{}}}}' >{stale}/config.json"
        )
        # every process command line on the server, sampled while it logs in and pulls
        with CmdlineSampler(fleet.sim, ["devserver-2"], fleet.sim.dir / "cmdlines-pull") as sampler:
            run = fleet.run("validate", "container", **limit)
        assert run.recap["devserver-2"]["failed"] == 0, run.output[-4000:]
        assert fleet.registry_password not in run.output
        seen = sampler.text("devserver-2")
        assert sampler.samples("devserver-2") > 10
        assert fleet.registry_password not in seen
        # the sampler saw the pull, which ran with the login's temporary configuration
        assert "DOCKER_CONFIG=/run/llava-devserver/docker-config." in seen, sorted(
            sampler.lines("devserver-2")
        )[:50]
        leftovers = fleet.sh("devserver-2", "ls -A /run/llava-devserver")
        assert leftovers.returncode == 0 and leftovers.stdout.strip() == "", leftovers.stdout
        assert fleet.sh("devserver-2", "stat -c %a /run/llava-devserver").stdout.strip() == "700"
        info = assert_guide_container(fleet, "devserver-2", image)
        digests = fleet.sh(
            "devserver-2", f"docker image inspect -f '{{{{json .RepoDigests}}}}' {info['Image']}"
        )
        assert json.loads(digests.stdout)[0].startswith(f"{fleet.registry_address}/llava/ctrtest@sha256:")
        # no credentials left on the server: the default client configuration was never written
        config = fleet.sh("devserver-2", "cat /root/.docker/config.json 2>/dev/null || true").stdout
        assert fleet.registry_address not in config and '"auth"' not in config, config

        # the registry is outside: the login and the pull went through the proxy
        through = [r for r in fleet.proxy_requests() if f"http://{fleet.registry_address}/v2/" in r]
        assert any("/manifests/" in r for r in through) and any("/blobs/sha256:" in r for r in through), (
            through
        )

        again = fleet.run("validate", "container", **limit)
        assert again.recap["devserver-2"]["changed"] == 0, again.output[-4000:]
    finally:
        _host_vars(fleet, "devserver-2", None)


def test_changed_setting_with_a_running_job(fleet: Fleet) -> None:
    before = inspect(fleet, "devserver-1")
    assert before is not None
    job = fleet.sh(
        "devserver-1",
        f"docker exec -d {NAME} bash -c 'exec -a \"python llava/train/train_mem.py\" sleep 600'",
    )
    assert job.returncode == 0, job.stderr
    shm = {"container_shm_size": "1g"}
    limit: dict[str, Any] = {"limit": "devserver-1", "extravars": shm}
    run = fleet.run("validate", "container", **limit)
    assert run.recap["devserver-1"]["failed"] == 1, run.output[-4000:]
    assert "recreating it would kill the training job running in it" in run.messages["devserver-1"]
    assert "container_recreate: true" in run.messages["devserver-1"]
    kept = inspect(fleet, "devserver-1")
    assert kept is not None and kept["Id"] == before["Id"] and kept["HostConfig"]["ShmSize"] == 32 << 30

    run = fleet.run(
        "validate", "container", limit="devserver-1", extravars=shm | {"container_recreate": True}
    )
    assert run.recap["devserver-1"]["failed"] == 0, run.output[-4000:]
    after = assert_guide_container(fleet, "devserver-1", fleet.image, shm=1 << 30)
    assert after["Id"] != before["Id"]
