"""The outbound HTTP proxy of a fleet (`http_proxy`, `https_proxy`, `no_proxy`): its rules, its environment.

Servers in a closed network reach the outside (package mirrors, SWR, the Hugging Face hub) only through a
forwarding proxy. Every part that goes out gets the same environment (`proxy_environment`): the package
manager (apt and dnf read `http_proxy`), dockerd for registry logins and pulls (an environment file that the
systemd drop-in or the detached start script reads), the hub downloads, `build.sh` in the container and the
training job. Both spellings are set: curl and apt read the lower-case names, Go programs such as dockerd the
upper-case ones.

The values end up in files that both systemd (`EnvironmentFile=`) and `sh` read, unquoted, so they are kept
to characters that mean the same to both. A proxy URL with credentials is refused: the environment file and
the drop-in are readable by every user of the server, and `docker info` prints the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The names as the settings spell them, in the order the environment file lists them.
SETTINGS = ("http_proxy", "https_proxy", "no_proxy")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_PROXY_URL = re.compile(rf"(?P<scheme>https?)://(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?/?")
# One no_proxy entry: a host or domain (.example.com, *.example.com), an address, a CIDR, each with a port.
_NO_PROXY_ITEM = re.compile(r"\*|(?:\*?\.)?[A-Za-z0-9.:\[\]-]+(?:/[0-9]{1,3})?(?::[0-9]{1,5})?")


def check_proxy_url(value: str) -> str:
    """`http://HOST:PORT` (or https), nothing else; the reason it is not, as a ValueError."""
    if "@" in value:
        raise ValueError(
            "a proxy URL with credentials (user:password@) is not supported: the proxy settings are written "
            "to files every user of the server can read; allow the servers' addresses at the proxy instead"
        )
    match = _PROXY_URL.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a proxy URL such as http://proxy.example.com:3128")
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is outside 1-65535")
    return value


def check_no_proxy(value: str) -> str:
    """A comma-separated list of hosts, domains, addresses or CIDRs (spaces after commas allowed)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ValueError("is empty: leave no_proxy unset, or list hosts, domains, addresses or CIDRs")
    bad = [item for item in items if not _NO_PROXY_ITEM.fullmatch(item)]
    if bad:
        shown = ", ".join(repr(item) for item in bad)
        raise ValueError(f"{shown}: not a host, domain, address or CIDR (no_proxy is a comma-separated list)")
    return ",".join(items)


def proxy_environment(settings: Mapping[str, str | None]) -> dict[str, str]:
    """The environment of every outbound part: each set setting under its lower- and upper-case name."""
    env: dict[str, str] = {}
    for name in SETTINGS:
        value = settings.get(name)
        if value:
            env[name] = str(value)
            env[name.upper()] = str(value)
    return env


def environment_file(env: Mapping[str, str]) -> str:
    """The text of the environment file dockerd reads (systemd's EnvironmentFile= and `sh` alike); empty
    for no proxy."""
    return "".join(f"{name}={env[name]}\n" for name in sorted(env))
