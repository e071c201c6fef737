"""Containers beside a simulated fleet (the bastion, the registry, the proxy, the hub): each carries a label
whose value is the fleet network it serves, by which it is found again and removed with the fleet."""

from __future__ import annotations

from collections.abc import Callable

import docker
from docker.models.containers import Container


def find(client: docker.DockerClient, label: str, network: str) -> Container | None:
    """The container labelled `label=network` (running or not), None when there is none."""
    found = client.containers.list(all=True, filters={"label": f"{label}={network}"})
    return found[0] if found else None


def ensure(
    client: docker.DockerClient, label: str, network: str, create: Callable[[], Container]
) -> Container:
    """The running container labelled `label=network`: the one there (started if it stopped), else the one
    `create()` makes (created, set up, not yet started)."""
    container = find(client, label, network) or create()
    if container.status != "running":
        container.start()
        container.reload()
    return container


def remove(client: docker.DockerClient, label: str, network: str) -> list[str]:
    """Remove every container labelled `label=network` with its volumes; their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{label}={network}"}):
        container.remove(force=True, v=True)
        removed.append(str(container.name))
    return removed


def address(container: Container, network: str) -> str:
    """The container's IPv4 address on `network` ("" when it is not attached)."""
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"].get(network, {}).get("IPAddress", ""))
