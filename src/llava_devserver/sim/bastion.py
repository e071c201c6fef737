"""A jump host in front of a simulated fleet (`sim up --bastion`).

Real DevServers often sit in a VPC that the control node reaches only through a bastion. With `--bastion` the
fleet gets one: a container of the server image that runs only sshd, on the fleet network, taking the fleet's
key. Every server refuses new connections from the control node itself (files/npu-sim-front: an iptables rule
for the control node's address on the fleet network, applied at every boot), so Ansible, `status` and `logs`
reach the servers only through the bastion, with the SSH option that real inventories use: a ProxyCommand in
`ansible_ssh_common_args` (proxy_option).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import docker
from docker.models.containers import Container

from llava_devserver.sim import image as sim_image
from llava_devserver.sim import sidecar
from llava_devserver.sim.faults import put_file
from llava_devserver.sim.server_setting import apply_setting

BASTION_LABEL = "llava-devserver.sim.bastion"
REFUSE_FILE = "/etc/npu-sim/refuse-from"
FRONT_SCRIPT = sim_image.SERVER_FILES["npu-sim-front"]
# Only sshd: none of the fake hardware of a server (npu-sim-boot is not run).
_SSHD_ONLY = "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"


class BastionError(RuntimeError):
    """The bastion did not start, or a server could not be put behind it."""


@dataclass(frozen=True)
class SimBastion:
    name: str
    address: str  # on the fleet network, where the control node reaches it


def bastion_name(network: str) -> str:
    return f"{network}-bastion"


def ensure_bastion(client: docker.DockerClient, network: str, image: str, public_key: bytes) -> SimBastion:
    """Start (or reuse) the bastion of the fleet network `network`, taking `public_key` for root."""
    container: Container = sidecar.find(client, BASTION_LABEL, network) or (
        client.containers.create(
            image,
            name=bastion_name(network),
            hostname="bastion",
            labels={BASTION_LABEL: network},
            detach=True,
            entrypoint=["/usr/bin/tini", "-g", "--", "bash", "-c", _SSHD_ONLY],
            tmpfs={"/run": "rw,exec,nosuid,nodev,mode=755"},
            network=network,
        )
    )
    put_file(container, "/root/.ssh/authorized_keys", public_key, mode=0o600)
    if container.status != "running":
        container.start()
    address = sidecar.address(container, network)
    if not address:
        raise BastionError(f"{container.name}: no address on network {network}")
    return SimBastion(str(container.name), address)


def remove_bastion(client: docker.DockerClient, network: str) -> list[str]:
    """Remove the bastion of `network`; the names of what went."""
    return sidecar.remove(client, BASTION_LABEL, network)


def put_behind(container: Container, control_address: str | None) -> None:
    """Make the running server refuse new connections from `control_address` (None: refuse none), now and
    at its next boots."""
    failed = apply_setting(container, REFUSE_FILE, control_address, FRONT_SCRIPT)
    if failed is not None:
        raise BastionError(f"{container.name}: putting the server behind the bastion failed: {failed}")


def proxy_option(bastion: SimBastion, key_path: Path) -> str:
    """The ssh option (for `-o`) that reaches a server through the bastion, as a real inventory gives it in
    ansible_ssh_common_args. OpenSSH applies command-line options to the destination only, not to a ProxyJump
    host, so the jump is a ProxyCommand that names the key itself."""
    return (
        f"ProxyCommand=ssh -i {key_path} -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -W %h:%p root@{bastion.address}"
    )
