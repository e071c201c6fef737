"""A stand-in Hugging Face hub beside a simulated fleet (`sim up --hub`).

No hub is reachable here. With `--hub` the fleet gets one: a container of the sim base image running
hub_server.py (the hub's HTTP interface over a folder) with the synthetic vision tower as
`openai/clip-vit-large-patch14-336`, and an inventory whose `vision_tower` asset has source `hub` and whose
`hf_endpoint` points there, as the guide fetches the CLIP tower from the hub. With `--proxy` it runs on the
outside network, so that the download goes through the proxy like the mirror's and the registry's.

The container is labelled with the fleet network it serves (`llava-devserver.sim.hub`); `requests` reads
what it served (hub_server.py logs `METHOD PATH STATUS` a line).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.models.containers import Container

from llava_devserver.sim import hub_server, sidecar
from llava_devserver.sim.image import ensure_base_image

HUB_LABEL = "llava-devserver.sim.hub"
ROOT = "/srv/hub"
SCRIPT = "/usr/local/lib/sim-hub/hub_server.py"
VISION_REPO = "openai/clip-vit-large-patch14-336"


class HubError(RuntimeError):
    """The stand-in hub did not start."""


@dataclass(frozen=True)
class SimHub:
    container: str
    address: str  # on the network the servers (or their proxy) reach it on

    @property
    def url(self) -> str:
        return f"http://{self.address}:{hub_server.PORT}"


def hub_name(network: str) -> str:
    return f"{network}-hub"


def _archive(repos: dict[str, Path]) -> bytes:
    """A tar of hub_server.py and every repository folder under ROOT."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(hub_server.__file__, arcname=SCRIPT.lstrip("/"))
        for repo_id, folder in sorted(repos.items()):
            tar.add(str(folder), arcname=f"{ROOT.lstrip('/')}/{repo_id}")
    return buffer.getvalue()


def ensure_hub(client: docker.DockerClient, network: str, serve_on: str, repos: dict[str, Path]) -> SimHub:
    """Start (or reuse) the hub of fleet network `network` on network `serve_on`, serving `repos`
    (repo id -> folder)."""

    def create() -> Container:
        made = client.containers.create(
            ensure_base_image(client),
            name=hub_name(network),
            hostname="hub",
            labels={HUB_LABEL: network},
            detach=True,
            entrypoint=["python3", SCRIPT, "--root", ROOT],
            network=serve_on,
        )
        if not made.put_archive("/", _archive(repos)):
            raise HubError(f"{made.name}: the repositories could not be copied in")
        return made

    container = sidecar.ensure(client, HUB_LABEL, network, create)
    address = sidecar.address(container, serve_on)
    if not address:
        raise HubError(f"{container.name}: no address on {serve_on}")
    return SimHub(str(container.name), address)


def requests(client: docker.DockerClient, network: str) -> list[str]:
    """What the hub of `network` served, in order (`GET /api/models/... 200`)."""
    container = sidecar.find(client, HUB_LABEL, network)
    if container is None:
        raise HubError(f"no hub serves {network}")
    lines = container.logs(stdout=False, stderr=True).decode(errors="replace").splitlines()
    return [line for line in lines if line.split(" ", 1)[0] in ("GET", "HEAD")]


def remove_hub(client: docker.DockerClient, network: str) -> list[str]:
    return sidecar.remove(client, HUB_LABEL, network)


def hub_settings(hub: SimHub, assets: dict[str, object]) -> dict[str, object]:
    """Inventory settings that download the vision tower from `hub` (`assets`: the fleet's assets setting)."""
    return {
        "hf_endpoint": hub.url,
        "assets": {**assets, "vision_tower": {"source": "hub", "repo_id": VISION_REPO}},
    }
