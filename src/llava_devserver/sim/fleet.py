"""Start, list and remove simulated DevServer fleets (Docker containers on a private network).

Docker objects of fleet NAME (all labelled `llava-devserver.sim.fleet=NAME`):
- network `llava-sim-NAME` (bridge; internal with `--proxy`, and then also `llava-sim-NAME-outside`);
- containers `llava-sim-NAME-devserver-I` (hostname and network alias `devserver-I`);
- volumes `llava-sim-NAME-devserver-I-docker` at /var/lib/docker (the inner engine the roles install).

The options are the ones that let a server run its own Docker engine without `--privileged` (refused here):
SYS_ADMIN, NET_ADMIN, MKNOD and SYS_PTRACE, seccomp and AppArmor unconfined, the host's cgroup namespace with
/sys/fs/cgroup mounted rw, a volume at /var/lib/docker and a tmpfs at /run (and /run/lock for systemd).

Each server has an OS profile (image.PROFILES: `debian12`, `hce2`), the whole fleet's or its own
(`--os hce2`, `--os devserver-1:hce2`: a mixed fleet), recorded in the label `llava-devserver.sim.os`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from llava_devserver.sim import bastion as sim_bastion
from llava_devserver.sim import device_network
from llava_devserver.sim import hub as sim_hub
from llava_devserver.sim import image as sim_image
from llava_devserver.sim import link as sim_link
from llava_devserver.sim import proxy as sim_proxy
from llava_devserver.sim.faults import DOCKER_FAULTS, Fault, apply_fault, put_file
from llava_devserver.sim.inventory import SimHost, SimJob, sim_group_vars, write_inventory
from llava_devserver.sim.registry import ensure_registry, push_image, registry_settings, remove_registry

PREFIX = "llava-sim"
FLEET_LABEL = "llava-devserver.sim.fleet"
HOST_LABEL = "llava-devserver.sim.host"
INDEX_LABEL = "llava-devserver.sim.index"
FAULTS_LABEL = "llava-devserver.sim.faults"
OS_LABEL = "llava-devserver.sim.os"
DEFAULT_DRIVER = "23.0.5"
SSH_TIMEOUT_S = 60
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")

Log = Callable[[str], None]


class FleetError(RuntimeError):
    """A simulated fleet could not be started, found or removed."""


@dataclass
class FleetResult:
    name: str
    inventory: Path
    hosts: list[SimHost]
    timings: dict[str, float] = field(default_factory=dict)


def parse_os_choices(texts: list[str], hosts: list[str]) -> dict[str, str]:
    """`--os` values -> the profile of every host: `PROFILE` for the whole fleet, `HOST:PROFILE` for one
    server (HOST = devserver-N or N), later values winning; hosts not named get debian12."""
    chosen = dict.fromkeys(hosts, sim_image.DEFAULT_PROFILE)
    for text in texts:
        host, sep, profile = text.rpartition(":")
        if profile not in sim_image.PROFILES:
            known = ", ".join(sim_image.PROFILES)
            raise FleetError(f"--os {text!r}: unknown OS profile {profile!r} (known: {known})")
        if not sep:
            chosen = dict.fromkeys(hosts, profile)
            continue
        name = host_name(int(host)) if host.isdigit() else host
        if name not in chosen:
            raise FleetError(f"--os {text!r}: no host {host!r} in the fleet ({', '.join(hosts)})")
        chosen[name] = profile
    return chosen


def network_name(fleet: str) -> str:
    return f"{PREFIX}-{fleet}"


def host_name(index: int) -> str:
    return f"devserver-{index}"


def container_name(fleet: str, index: int) -> str:
    return f"{PREFIX}-{fleet}-{host_name(index)}"


def volume_name(fleet: str, index: int) -> str:
    return f"{container_name(fleet, index)}-docker"


def device_network_volume(fleet: str) -> str:
    """The volume all servers of a fleet share for their NPUs' ports (sim/device_network.py)."""
    return f"{PREFIX}-{fleet}-devnet"


def check_fleet_name(fleet: str) -> str:
    if not _NAME.fullmatch(fleet):
        raise FleetError(f"fleet name {fleet!r}: use 1-31 lowercase letters, digits and dashes")
    return fleet


def default_state(npus: int) -> dict[str, Any]:
    from llava_devserver.npu_smi import default_sim_state

    state = default_sim_state(npus, DEFAULT_DRIVER)
    state["driver_installed"] = True
    return state


def docker_client() -> docker.DockerClient:
    """The local Docker engine, answering, or FleetError saying how to start it."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        raise FleetError(
            f"no Docker engine answers ({exc}); run scripts/ensure-docker.sh (as root) and retry"
        ) from exc
    return client


def _order_key(container: Container) -> tuple[str, int]:
    return container.labels.get(FLEET_LABEL, ""), int(container.labels.get(INDEX_LABEL, 0))


def _fleet_containers(client: docker.DockerClient, fleet: str | None) -> list[Container]:
    label = f"{FLEET_LABEL}={fleet}" if fleet else FLEET_LABEL
    containers: list[Container] = client.containers.list(all=True, filters={"label": label})
    return sorted(containers, key=_order_key)


def _ensure_network(client: docker.DockerClient, fleet: str, internal: bool = False) -> Any:
    """The fleet network; `internal`: without a way out (Docker gives it no route beyond its subnet, the
    control node still reaches the servers on it)."""
    name = network_name(fleet)
    for network in client.networks.list(names=[name]):
        if network.name == name:
            if bool(network.attrs.get("Internal")) != internal:
                raise FleetError(
                    f"fleet {fleet!r} was started {'without' if internal else 'with'} --proxy; "
                    f"run `llava-devserver sim down --name {fleet}` first"
                )
            return network
    try:
        labels = {FLEET_LABEL: fleet}
        return client.networks.create(
            name, driver="bridge", labels=labels, check_duplicate=True, internal=internal
        )
    except docker.errors.APIError as exc:
        hint = ""
        if "address pool" in str(exc):  # Docker's default pools give about 30 bridge networks
            hint = "; every fleet takes one: list them with `llava-devserver sim status`, remove old ones"
        raise FleetError(f"could not create network {name}: {exc.explanation or exc}{hint}") from exc


def _gateway(network: Any) -> str:
    """The control node's address on the fleet network (its bridge's gateway)."""
    network.reload()
    configs = network.attrs.get("IPAM", {}).get("Config") or [{}]
    gateway = configs[0].get("Gateway", "")
    if not gateway:
        raise FleetError(f"network {network.name}: no gateway address (the control node's) to refuse")
    return str(gateway)


def _address(container: Container, fleet: str) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    address = networks.get(network_name(fleet), {}).get("IPAddress", "")
    if not address:
        raise FleetError(f"{container.name}: no address on network {network_name(fleet)}")
    return str(address)


def _create_server(
    client: docker.DockerClient,
    fleet: str,
    index: int,
    image: str,
    npus: int,
    faults: list[Fault],
    n_hosts: int,
    profile: str = sim_image.DEFAULT_PROFILE,
) -> Container:
    name = host_name(index)
    labels = {
        FLEET_LABEL: fleet,
        HOST_LABEL: name,
        INDEX_LABEL: str(index),
        FAULTS_LABEL: ",".join(str(f) for f in faults),
        OS_LABEL: profile,
    }
    tmpfs = {"/run": "rw,exec,nosuid,nodev,mode=755"}
    if sim_image.get_profile(profile).init == "systemd":
        tmpfs["/run/lock"] = "rw,noexec,nosuid,nodev,size=5m"
    volume = volume_name(fleet, index)
    for volume_of_server in (volume, device_network_volume(fleet)):
        try:
            client.volumes.get(volume_of_server)
        except docker.errors.NotFound:
            client.volumes.create(volume_of_server, labels={FLEET_LABEL: fleet})
    container: Container = client.containers.create(
        image,
        name=container_name(fleet, index),
        hostname=name,
        labels=labels,
        detach=True,
        # SYS_PTRACE: `docker exec` into an inner container whose process runs as a non-root user (the
        # training image's ma-user) must open that process's namespaces (runc's setns fails without it).
        cap_add=["SYS_ADMIN", "NET_ADMIN", "MKNOD", "SYS_PTRACE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            volume: {"bind": "/var/lib/docker", "mode": "rw"},
            device_network_volume(fleet): {"bind": device_network.FLEET_DIR, "mode": "rw"},
        },
        tmpfs=tmpfs,
        network=network_name(fleet),
        # Servers find each other by inventory name, as on a real cluster with DNS or /etc/hosts.
        networking_config={
            network_name(fleet): client.api.create_endpoint_config(aliases=[name]),
        },
    )
    # The state is there before boot so that npu-sim-init creates the hardware it describes.
    state = default_state(npus)
    state.update(
        device_network.initial_network([host_name(i) for i in range(1, n_hosts + 1)], index, range(npus))
    )
    put_file(container, "/etc/npu-sim/state.json", (json.dumps(state, indent=2) + "\n").encode())
    return container


def _authorize_key(container: Container, public_key: bytes) -> None:
    put_file(container, "/root/.ssh/authorized_keys", public_key, mode=0o600)


def _wait_for_ssh(host: str, address: str, key: Path, deadline: float, via: str | None = None) -> None:
    """Wait until sshd on the server accepts our key (bounded by the deadline); via: the ssh option that
    reaches it through a bastion (the control node cannot open a connection to it itself)."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            if via is None:
                with socket.create_connection((address, 22), timeout=2) as sock:
                    banner = sock.recv(64)
                if not banner.startswith(b"SSH-"):
                    last = f"unexpected banner {banner[:20]!r}"
                    raise OSError(last)
            result = subprocess.run(
                [
                    "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                    *(["-o", via] if via else []), f"root@{address}", "true",
                ],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            if result.returncode == 0:
                return
            last = result.stderr.strip() or f"ssh exit {result.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.3)
    raise FleetError(f"{host} ({address}): SSH did not accept the fleet key within {SSH_TIMEOUT_S} s: {last}")


def ensure_ssh_key(out_dir: Path, fleet: str) -> Path:
    key = out_dir / "ssh" / "id_ed25519"
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"llava-sim-{fleet}", "-f", str(key)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise FleetError(f"ssh-keygen could not write {key}: {result.stderr.strip()}")
    return key


def _prepare_job(client: docker.DockerClient, out_dir: Path, log: Log) -> SimJob:
    """Build or reuse the stand-in package, assets and training image (the other half of the sim)."""
    from llava_devserver.sim.assets import generate_assets
    from llava_devserver.sim.standin import build_package
    from llava_devserver.sim.training_image import ensure_training_image

    started = time.monotonic()
    package = build_package(out_dir / "package")
    assets = generate_assets(out_dir / "assets")
    training = ensure_training_image(client)
    log(f"sim: job stand-ins ready in {time.monotonic() - started:.1f} s (image {training.tag})")
    return SimJob(
        package=package, assets=assets, image_tag=training.tag, image_archive=Path(training.archive)
    )


def fleet_up(
    fleet: str,
    n_hosts: int,
    out_dir: Path,
    faults: dict[str, list[Fault]] | None = None,
    npus: int = 8,
    devices_per_host: int = 2,
    job: bool = True,
    log: Log = print,
    registry: bool = False,
    profile: str = sim_image.DEFAULT_PROFILE,
    host_profiles: dict[str, str] | None = None,
    log_style: str = "hf",
    link_mbps: int | None = None,
    bastion: bool = False,
    proxy: bool = False,
    hub: bool = False,
) -> FleetResult:
    """Start (or reuse) fleet `fleet` with n_hosts servers and write its inventory to out_dir.

    profile: the OS profile of every server (image.PROFILES); host_profiles: the profile of single servers
    (a mixed fleet), overriding it.

    log_style: how the stand-in trainer logs (hf: the HF Trainer's dicts on global rank 0; megatron: the
    guide's Megatron/MindSpeed iteration lines on the last global rank).

    link_mbps: every server sends and receives at most this many Mbit/s on the fleet network (sim/link.py);
    None: no limit. Applied to reused servers too, so that the fleet has the speed of its last `sim up`.

    registry: with the job, also start a local registry standing in for SWR on the fleet network, push the
    training image to it and write an inventory that pulls the image from there (instead of loading the
    archive), with the registry's credentials and its address among Docker's insecure registries.

    proxy: the servers' only way out is a forwarding proxy (sim/proxy.py): the fleet network is internal,
    the proxy joins it and an outside network (where the registry then runs), and the inventory sets
    http_proxy/https_proxy. A fleet keeps what it was started with (`sim down` to change it).

    hub: with the job, also start a stand-in Hugging Face hub (sim/hub.py; outside, with the proxy) and
    write an inventory that downloads the vision tower from it (`hf_endpoint`, source `hub`).

    bastion: the servers refuse new connections from the control node and are reached through a jump host
    on the fleet network (sim/bastion.py), as in a VPC; the inventory says how. Without it a reused fleet's
    bastion is removed and its servers take connections from the control node again.
    """
    check_fleet_name(fleet)
    try:
        sim_link.check_mbps(link_mbps)
    except sim_link.LinkError as exc:
        raise FleetError(str(exc)) from None
    if n_hosts < 1:
        raise FleetError(f"--hosts must be >= 1, got {n_hosts}")
    if not 1 <= npus <= 16:
        raise FleetError(f"--npus must be 1..16, got {npus}")
    if not 1 <= devices_per_host <= npus:
        raise FleetError(f"--devices-per-host must be 1..{npus}, got {devices_per_host}")
    faults = faults or {}
    hosts = [host_name(i) for i in range(1, n_hosts + 1)]
    unknown = sorted(set(faults) - set(hosts))
    if unknown:
        raise FleetError(f"faults for hosts not in the fleet: {', '.join(unknown)}")
    profiles = dict.fromkeys(hosts, profile) | (host_profiles or {})
    unknown = sorted(set(profiles) - set(hosts))
    if unknown:
        raise FleetError(f"OS profiles for hosts not in the fleet: {', '.join(unknown)}")
    for name in sorted(set(profiles.values())):
        if name not in sim_image.PROFILES:
            raise FleetError(f"unknown OS profile {name!r} (known: {', '.join(sim_image.PROFILES)})")
    out_dir = out_dir.resolve()
    timings: dict[str, float] = {}
    started = time.monotonic()
    client = docker_client()

    existing = _fleet_containers(client, fleet)
    if existing and len(existing) != n_hosts:
        raise FleetError(
            f"fleet {fleet!r} already has {len(existing)} servers, not {n_hosts}; "
            f"run `llava-devserver sim down --name {fleet}` first"
        )

    mark = time.monotonic()
    server_images = {
        name: sim_image.ensure_server_image(client, name) for name in sorted(set(profiles.values()))
    }
    docker_images: dict[str, str] = {}
    if not existing:
        for name, host_faults in faults.items():
            if any(f.kind in DOCKER_FAULTS for f in host_faults) and profiles[name] not in docker_images:
                docker_images[profiles[name]] = sim_image.ensure_docker_server_image(client, profiles[name])
    timings["images"] = time.monotonic() - mark

    job_stand_ins = _prepare_job(client, out_dir, log) if job else None
    key = ensure_ssh_key(out_dir, fleet)
    public_key = key.with_suffix(".pub").read_bytes()
    network = _ensure_network(client, fleet, internal=proxy)
    outside, sim_proxy_up = network_name(fleet), None  # where the outside world's stand-ins run
    if proxy:
        try:
            outside = sim_proxy.ensure_outside_network(client, network_name(fleet), {FLEET_LABEL: fleet})
            sim_proxy_up = sim_proxy.ensure_proxy(client, network_name(fleet))
        except (sim_proxy.ProxyError, docker.errors.APIError) as exc:
            raise FleetError(f"the proxy of fleet {fleet!r} did not start: {exc}") from None
    jump, via, control_address = None, None, None
    if bastion:
        jump = sim_bastion.ensure_bastion(
            client,
            network_name(fleet),
            sim_image.ensure_server_image(client, sim_image.DEFAULT_PROFILE),
            public_key,
        )
        via = sim_bastion.proxy_option(jump, key)
        _wait_for_ssh(jump.name, jump.address, key, time.monotonic() + SSH_TIMEOUT_S)
        control_address = _gateway(network)

    mark = time.monotonic()
    by_name = {c.labels.get(HOST_LABEL): c for c in existing}

    def start(index: int) -> tuple[SimHost, bool]:
        name = host_name(index)
        container = by_name.get(name)
        created = container is None
        server_image = server_images[profiles[name]]
        if container is None:
            host_faults = faults.get(name, [])
            wants_docker = any(f.kind in DOCKER_FAULTS for f in host_faults)
            image = docker_images.get(profiles[name], server_image) if wants_docker else server_image
            container = _create_server(
                client, fleet, index, image, npus, host_faults, n_hosts, profiles[name]
            )
        else:
            running = container.labels.get(OS_LABEL, sim_image.DEFAULT_PROFILE)
            if running != profiles[name]:
                raise FleetError(
                    f"{name} of fleet {fleet!r} runs the {running} profile, not {profiles[name]}; "
                    f"run `llava-devserver sim down --name {fleet}` first"
                )
            if faults.get(name):
                log(f"sim: {name} already exists; faults apply to the running server")
            used = str(container.attrs.get("Config", {}).get("Image", ""))
            if used.startswith(sim_image.server_repository(running) + ":") and used != server_image:
                log(f"sim: {name} runs an older server image ({used}); `sim down --name {fleet}` to refresh")
        if container.status != "running":
            container.start()
        _authorize_key(container, public_key)
        address = _address(container, fleet)
        try:  # before the wait: a reused server opens its door again when no bastion is asked for
            sim_bastion.put_behind(container, control_address)
        except sim_bastion.BastionError as exc:
            raise FleetError(str(exc)) from None
        _wait_for_ssh(name, address, key, time.monotonic() + SSH_TIMEOUT_S, via)
        # The link first: a fault that slows it (accel-slow) then wins over its speed.
        try:
            sim_link.set_link(container, link_mbps)
        except sim_link.LinkError as exc:
            raise FleetError(str(exc)) from None
        for fault in faults.get(name, []):
            apply_fault(container, fault)
        return SimHost(name, address), created

    with ThreadPoolExecutor(max_workers=min(n_hosts, 8)) as pool:
        results = list(pool.map(start, range(1, n_hosts + 1)))
    timings["servers"] = time.monotonic() - mark
    sim_hosts = [host for host, _ in results]
    created = sum(1 for _, was_created in results if was_created)
    if not bastion:
        sim_bastion.remove_bastion(client, network_name(fleet))

    settings = sim_group_vars(n_hosts, npus, devices_per_host, job_stand_ins, DEFAULT_DRIVER, log_style)
    if sim_proxy_up is not None:
        settings |= sim_proxy.proxy_settings(sim_proxy_up)
    if hub and job_stand_ins is not None:
        try:
            served = sim_hub.ensure_hub(
                client,
                network_name(fleet),
                outside,
                {sim_hub.VISION_REPO: job_stand_ins.assets["vision_tower"]},
            )
        except (sim_hub.HubError, docker.errors.APIError) as exc:
            raise FleetError(f"the hub of fleet {fleet!r} did not start: {exc}") from None
        settings |= sim_hub.hub_settings(served, settings["assets"])
        log(f"sim: hub {served.url} serves {sim_hub.VISION_REPO} (the vision tower's source)")
    if registry and job_stand_ins is not None:
        mark = time.monotonic()
        stand_in = ensure_registry(client, outside)
        reference = push_image(client, stand_in, job_stand_ins.image_tag, job_stand_ins.image_tag)
        settings |= registry_settings(stand_in, reference)
        timings["registry"] = time.monotonic() - mark
        log(f"sim: registry {stand_in.address} serves {reference} ({timings['registry']:.1f} s)")
    inventory = write_inventory(out_dir, sim_hosts, key, fleet, settings, job=job, via=via)
    timings["total"] = time.monotonic() - started
    counts = {name: list(profiles.values()).count(name) for name in sorted(set(profiles.values()))}
    log(
        f"sim: fleet {fleet!r}: {n_hosts} servers ("
        + ", ".join(f"{count} {name}" for name, count in counts.items())
        + f"; {created} started, {n_hosts - created} reused) "
        f"ready over SSH{f', links at {link_mbps} Mbit/s' if link_mbps else ''}; "
        f"images {timings['images']:.1f} s, servers {timings['servers']:.1f} s, "
        f"total {timings['total']:.1f} s"
    )
    if sim_proxy_up is not None:
        log(f"sim: proxy {sim_proxy_up.url}: the servers' only way out (the fleet network is internal)")
    if jump is not None:
        log(
            f"sim: bastion {jump.name} at {jump.address}: the servers refuse the control node, "
            "SSH goes through it"
        )
    log(f"sim: inventory {inventory}")
    return FleetResult(fleet, inventory, sim_hosts, timings)


def fleet_containers(fleet: str | None = None) -> list[Container]:
    """The servers of one fleet (or of all fleets), in fleet and index order."""
    return _fleet_containers(docker_client(), fleet)


def server(fleet: str, host: str) -> Container:
    """The container of one simulated server, e.g. server('demo', 'devserver-2')."""
    for container in _fleet_containers(docker_client(), fleet):
        if container.labels.get(HOST_LABEL) == host:
            return container
    raise FleetError(f"fleet {fleet!r} has no server {host!r}")


def fleet_status(fleet: str | None = None) -> list[dict[str, str]]:
    rows = []
    for container in _fleet_containers(docker_client(), fleet):
        name = container.labels.get(FLEET_LABEL, "")
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        rows.append(
            {
                "fleet": name,
                "host": container.labels.get(HOST_LABEL, ""),
                "container": container.name or "",
                "status": container.status,
                "address": networks.get(network_name(name), {}).get("IPAddress", ""),
                "faults": container.labels.get(FAULTS_LABEL, ""),
                "os": container.labels.get(OS_LABEL, sim_image.DEFAULT_PROFILE),
                "image": (container.image.tags or [container.image.id])[0] if container.image else "",
                "link": _link_text(container),
            }
        )
    return rows


def _link_text(container: Container) -> str:
    """The server's link speed for `sim status` ("" when unlimited or the server is stopped)."""
    mbps = sim_link.link_mbps(container) if container.status == "running" else None
    return f"{mbps} Mbit/s" if mbps else ""


def fleet_down(fleet: str | None = None, log: Log = print) -> list[str]:
    """Remove the containers, volumes and network of one fleet (None: of every fleet). Returns their names."""
    client = docker_client()
    label = f"{FLEET_LABEL}={fleet}" if fleet else FLEET_LABEL
    removed: list[str] = []
    containers = _fleet_containers(client, fleet)

    def remove(container: Container) -> str:
        container.remove(force=True, v=True)
        return str(container.name)

    with ThreadPoolExecutor(max_workers=max(1, min(len(containers), 8))) as pool:
        removed += list(pool.map(remove, containers))
    for volume in client.volumes.list(filters={"label": label}):
        volume.remove(force=True)
        removed.append(volume.name)
    networks = client.networks.list(filters={"label": label})
    for network in networks:  # first what is attached: a network with a container attached stays
        removed += (
            remove_registry(client, network.name)
            + sim_bastion.remove_bastion(client, network.name)
            + sim_proxy.remove_proxy(client, network.name)
            + sim_hub.remove_hub(client, network.name)
        )
    for network in networks:
        network.remove()
        removed.append(network.name)
    log(f"sim: removed {len(removed)} objects" + (f" of fleet {fleet!r}" if fleet else " of every fleet"))
    return removed
