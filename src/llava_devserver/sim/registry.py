"""A local registry standing in for SWR, so that the pull path of the container role runs for real.

Nothing can be pulled here, so the registry image is built locally: the sim base image (Debian bookworm)
plus Debian's `docker-registry` package (distribution v2) and `apache2-utils` (htpasswd), with basic auth
(bcrypt htpasswd) so that bad credentials are testable. The image `llava-devserver/sim-registry:<hash12>` is
cached by the hash of its recipe.

One registry per fleet network: the container `<network>-registry` (label `llava-devserver.sim.registry`)
is attached to the fleet's network, where the simulated servers reach it at `<ip>:5000` over plain HTTP
(give that address to the docker_engine role's `docker_engine_insecure_registries`); its port is also
published on 127.0.0.1 so that this machine's engine can push to it (Docker treats 127.0.0.0/8 as
insecure by default, so the host engine needs no configuration). Remove it with `remove_registry` before
the fleet's network goes (`sim down` cannot remove a network with a container attached).
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import docker
import docker.errors
from docker.models.containers import Container

from llava_devserver.sim import sidecar
from llava_devserver.sim.image import LABEL, ensure_base_image
from llava_devserver.sim.image_cache import ImageBuildError, ensure_image

REPOSITORY = "llava-devserver/sim-registry"
REGISTRY_LABEL = "llava-devserver.sim.registry"
PORT = 5000
USERNAME = "llava"
READY_TIMEOUT_S = 30

CONFIG = f"""\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :{PORT}
auth:
  htpasswd:
    realm: llava-sim-registry
    path: /etc/docker/registry/htpasswd
"""

# The password comes in the environment (a simulated registry; real credentials live in Ansible Vault).
ENTRYPOINT = """\
#!/bin/sh
set -eu
htpasswd -Bbn "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" > /etc/docker/registry/htpasswd
exec /usr/bin/docker-registry serve /etc/docker/registry/config.yml
"""


class RegistryError(RuntimeError):
    """The stand-in registry could not be built, started or filled."""


@dataclass(frozen=True)
class SimRegistry:
    """A running stand-in registry."""

    container: str
    address: str  # host:port on the fleet network (what the servers pull from)
    local: str  # 127.0.0.1:port on this machine (what this machine pushes to)
    username: str
    password: str

    def reference(self, repository_tag: str, *, local: bool = False) -> str:
        """`address/repository:tag` of an image in this registry (servers' view, or this machine's)."""
        return f"{self.local if local else self.address}/{repository_tag}"


def _dockerfile(base: str) -> str:
    return "\n".join(
        [
            f"FROM {base}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
            " --no-install-recommends docker-registry apache2-utils >/dev/null"
            " && apt-get clean && rm -rf /var/lib/apt/lists/*",
            "COPY config.yml /etc/docker/registry/config.yml",
            "COPY entrypoint /usr/local/sbin/sim-registry",
            "RUN chmod 0755 /usr/local/sbin/sim-registry && mkdir -p /var/lib/docker-registry",
            f"LABEL {LABEL}=registry",
            f"EXPOSE {PORT}",
            'ENTRYPOINT ["/usr/local/sbin/sim-registry"]',
        ]
    )


def ensure_registry_image(client: docker.DockerClient) -> str:
    """The registry image's tag, built once per recipe (apt install of docker-registry on the sim base)."""
    files = {"config.yml": CONFIG.encode(), "entrypoint": ENTRYPOINT.encode()}
    try:
        return ensure_image(client, REPOSITORY, _dockerfile(ensure_base_image(client)), files)
    except ImageBuildError as exc:
        raise RegistryError(str(exc)) from exc


def registry_name(network: str) -> str:
    return f"{network}-registry"


def _describe(container: Container, network: str) -> SimRegistry:
    address = sidecar.address(container, network)
    ports = container.attrs["NetworkSettings"]["Ports"].get(f"{PORT}/tcp") or []
    if not address or not ports:
        raise RegistryError(f"{container.name}: no address on {network} or no published port")
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"] if "=" in item)
    return SimRegistry(
        container=str(container.name),
        address=f"{address}:{PORT}",
        local=f"127.0.0.1:{ports[0]['HostPort']}",
        username=env["REGISTRY_USERNAME"],
        password=env["REGISTRY_PASSWORD"],
    )


def _wait_ready(registry: SimRegistry) -> None:
    """The v2 endpoint answers (401 without credentials is the sign it runs with auth)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{registry.local}/v2/", timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RegistryError(
        f"{registry.container} did not answer on {registry.local} within {READY_TIMEOUT_S} s: {last}"
    )


def ensure_registry(client: docker.DockerClient, network: str) -> SimRegistry:
    """Start (or reuse) the stand-in registry on `network`; return where servers and this machine reach it."""
    container = sidecar.find(client, REGISTRY_LABEL, network)
    if container is None:
        image = ensure_registry_image(client)
        container = client.containers.run(
            image,
            name=registry_name(network),
            detach=True,
            labels={REGISTRY_LABEL: network},
            environment={"REGISTRY_USERNAME": USERNAME, "REGISTRY_PASSWORD": secrets.token_urlsafe(16)},
            network=network,
            ports={f"{PORT}/tcp": ("127.0.0.1", None)},
        )
    elif container.status != "running":
        container.start()
    registry = _describe(container, network)
    _wait_ready(registry)
    return registry


def push_image(client: docker.DockerClient, registry: SimRegistry, image: str, repository_tag: str) -> str:
    """Push the local `image` as `repository_tag` into the registry; return the servers' reference to it."""
    local_ref = registry.reference(repository_tag, local=True)
    repository, _, tag = local_ref.rpartition(":")
    client.images.get(image).tag(repository, tag)
    try:
        auth = {"username": registry.username, "password": registry.password}
        for line in client.images.push(repository, tag, auth_config=auth, stream=True, decode=True):
            if "error" in line:
                raise RegistryError(f"pushing {image} to {registry.local}: {line['error']}")
    finally:
        client.images.remove(local_ref, noprune=True)
    return registry.reference(repository_tag)


def remove_registry(client: docker.DockerClient, network: str) -> list[str]:
    """Remove the registry of `network` (and its stored images); the names of what went."""
    return sidecar.remove(client, REGISTRY_LABEL, network)


def registry_settings(registry: SimRegistry, image_reference: str) -> dict[str, object]:
    """Inventory settings that make the container role pull `image_reference` from this registry.

    The password is written in clear into the simulated fleet's group_vars (a throwaway registry on a
    private network); for real servers keep container_registry_password in Ansible Vault.
    """
    return {
        "container_image": image_reference,
        "container_image_archive": None,
        "container_registry_username": registry.username,
        "container_registry_password": registry.password,
        "docker_engine_insecure_registries": [registry.address],
    }
