"""The speed of a simulated server's link to the fleet network (`sim up --link-mbps M`).

The simulated servers share one machine's disk and cores, so bandwidth never limits them by itself; real
DevServers are limited by their ports. With a speed set, every server sends and receives at most M Mbit/s
(files/npu-sim-link: a token bucket on the link, and the same on an ifb device that its ingress is redirected
to), so that distribution to many servers is bound by the link as on a real fleet. The speed is a file of the
server (LINK_MBPS_FILE), applied at every boot as a port keeps its speed across a reboot.
"""

from __future__ import annotations

from docker.models.containers import Container

from llava_devserver.sim import image as sim_image
from llava_devserver.sim.server_setting import apply_setting

LINK_MBPS_FILE = "/etc/npu-sim/link-mbps"
SCRIPT = sim_image.SERVER_FILES["npu-sim-link"]
MAX_MBPS = 100_000  # 100 GbE, the fastest port a DevServer has


class LinkError(ValueError):
    """A link speed out of range, or one a server could not apply."""


def check_mbps(mbps: int | None) -> int | None:
    if mbps is not None and not 1 <= mbps <= MAX_MBPS:
        raise LinkError(f"--link-mbps must be 1..{MAX_MBPS} (Mbit/s), got {mbps}")
    return mbps


def set_link(container: Container, mbps: int | None) -> None:
    """Give the running server this link speed (None: no limit), now and at its next boots."""
    check_mbps(mbps)
    failed = apply_setting(container, LINK_MBPS_FILE, str(mbps) if mbps else None, SCRIPT)
    if failed is not None:
        raise LinkError(f"{container.name}: setting the fleet link to {mbps} Mbit/s failed: {failed}")


def link_mbps(container: Container) -> int | None:
    """The link speed the server has now (None: no limit)."""
    code, output = container.exec_run(["cat", LINK_MBPS_FILE], user="root")
    text = output.decode(errors="replace").strip() if isinstance(output, bytes) else ""
    return int(text) if code == 0 and text.isdigit() else None
