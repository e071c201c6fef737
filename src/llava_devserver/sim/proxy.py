"""A forwarding proxy in front of a simulated fleet (`sim up --proxy`): the servers' only way out.

Many DevServer networks have no route to the internet; the package mirrors, SWR and the Hugging Face hub
are reached through an HTTP proxy. With `--proxy` the fleet network is an internal Docker network (no
gateway out: the servers reach nothing but each other and the control node, which reaches them over SSH as
before), and a proxy container sits on it and on a second, outside network `<fleet network>-outside`, where
the stand-ins of the outside world live (the registry of `--registry`, a hub).

The proxy is Debian's tinyproxy (a real forwarding proxy: absolute-URI requests and CONNECT), built on the
sim base image and cached by recipe. It logs every request, so a test can read what went through it
(`requests`). The inventory gets `http_proxy`/`https_proxy` pointing at it (`proxy_settings`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import docker
import docker.errors
from docker.models.containers import Container

from llava_devserver.sim import sidecar
from llava_devserver.sim.image import LABEL, ensure_base_image
from llava_devserver.sim.image_cache import ImageBuildError, ensure_image

REPOSITORY = "llava-devserver/sim-proxy"
PROXY_LABEL = "llava-devserver.sim.proxy"
PORT = 3128
LOG = "/var/log/tinyproxy/sim.log"

# LogLevel Info: every request line ("Request (file descriptor N): GET http://... HTTP/1.1") and CONNECT.
# No Allow lines: every client on the two networks may use it; no ConnectPort lines: CONNECT to any port.
CONFIG = f"""\
User tinyproxy
Group tinyproxy
Port {PORT}
Timeout 600
LogFile "{LOG}"
LogLevel Info
MaxClients 100
DisableViaHeader Yes
"""

_REQUEST = re.compile(
    r"Request \(file descriptor \d+\): (?P<request>(?:GET|HEAD|POST|PUT|PATCH|DELETE|CONNECT) \S+)"
)


class ProxyError(RuntimeError):
    """The proxy did not start or is not attached where it must be."""


@dataclass(frozen=True)
class SimProxy:
    container: str
    address: str  # on the fleet network, where the servers reach it

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PORT}"


def outside_network_name(network: str) -> str:
    """The network of the outside world's stand-ins, beside fleet network `network`."""
    return f"{network}-outside"


def proxy_name(network: str) -> str:
    return f"{network}-proxy"


def _dockerfile(base: str) -> str:
    return "\n".join(
        [
            f"FROM {base}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
            " --no-install-recommends tinyproxy >/dev/null"
            " && apt-get clean && rm -rf /var/lib/apt/lists/*",
            "COPY tinyproxy.conf /etc/tinyproxy/sim.conf",
            # tinyproxy opens its log after dropping to its user
            f"RUN install -d -o tinyproxy -g tinyproxy {posixpath.dirname(LOG)}",
            f"LABEL {LABEL}=proxy",
            f"EXPOSE {PORT}",
            # -d: in the foreground, as the container's process
            'ENTRYPOINT ["/usr/bin/tinyproxy", "-d", "-c", "/etc/tinyproxy/sim.conf"]',
        ]
    )


def ensure_proxy_image(client: docker.DockerClient) -> str:
    """The proxy image's tag, built once per recipe (apt install of tinyproxy on the sim base)."""
    try:
        return ensure_image(
            client, REPOSITORY, _dockerfile(ensure_base_image(client)), {"tinyproxy.conf": CONFIG.encode()}
        )
    except ImageBuildError as exc:
        raise ProxyError(str(exc)) from exc


def ensure_outside_network(client: docker.DockerClient, network: str, labels: dict[str, str]) -> str:
    """Create (or find) the outside network beside `network`; its name."""
    name = outside_network_name(network)
    if not any(found.name == name for found in client.networks.list(names=[name])):  # names: a substring
        client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
    return name


def ensure_proxy(client: docker.DockerClient, network: str) -> SimProxy:
    """Start (or reuse) the proxy between fleet network `network` and its outside network."""
    outside = outside_network_name(network)

    def create() -> Container:
        made = client.containers.create(
            ensure_proxy_image(client),
            name=proxy_name(network),
            hostname="proxy",
            labels={PROXY_LABEL: network},
            detach=True,
            network=outside,  # the way out: a plain bridge with the host's route
        )
        client.networks.get(network).connect(made)
        return made

    container = sidecar.ensure(client, PROXY_LABEL, network, create)
    address = sidecar.address(container, network)
    if not address or not sidecar.address(container, outside):
        raise ProxyError(f"{container.name}: not attached to both {network} and {outside}")
    return SimProxy(str(container.name), address)


def requests(client: docker.DockerClient, network: str) -> list[str]:
    """The requests the proxy of `network` forwarded, in order (`GET http://...`, `CONNECT host:443`)."""
    container = sidecar.find(client, PROXY_LABEL, network)
    if container is None:
        raise ProxyError(f"no proxy serves {network}")
    code, output = container.exec_run(["cat", LOG])
    if code != 0:
        raise ProxyError(f"{container.name}: cannot read {LOG}: {output.decode(errors='replace').strip()}")
    return [m.group("request") for m in _REQUEST.finditer(output.decode(errors="replace"))]


def remove_proxy(client: docker.DockerClient, network: str) -> list[str]:
    """Remove the proxy of `network`; the names of what went."""
    return sidecar.remove(client, PROXY_LABEL, network)


def proxy_settings(proxy: SimProxy) -> dict[str, str]:
    """Inventory settings that send the servers' outbound traffic through `proxy`."""
    return {"http_proxy": proxy.url, "https_proxy": proxy.url, "no_proxy": "localhost,127.0.0.1"}
