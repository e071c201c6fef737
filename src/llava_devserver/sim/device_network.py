"""The simulated NPUs' own network (device IPs, links, TLS, pings): its part of the server's state file.

Each server's `/etc/npu-sim/state.json` holds, besides the cards npu-smi prints:

- `hccn`: this server's RoCE ports, the source of truth for its fake `hccn_tool`:
  `{"host": "devserver-2", "ping_loss_pct": 0, "cards": {"0": {"ip", "netmask", "detect_ip", "link",
  "health", "tls", "link_events": [[epoch, "UP"|"DOWN"], ...]}, ...}}`;
- `hccn_fleet`: every server's ports as `sim up` made them (itself included), `{host: {card: {"ip",
  "up"}}}`, so that `hccn_tool -ping` can answer without a network: a ping reaches an address when some
  server's card holds it with its link up. On a running fleet each server also publishes its ports, as
  they change (npu-sim-sync after every fault, hccn_tool after every `-s`), to `FLEET_DIR/HOST.json` on a
  volume all servers of the fleet mount; hccn_tool reads those over `hccn_fleet`. `publish()` does the
  same for states held in memory (tests).

Device IPs: server I (1-based), card N -> 10.90.I.(11+N)/24, detect IP 10.90.I.1: unique across the fleet,
one subnet per server (the Atlas 800T A2 rule).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

NETMASK = "255.255.255.0"
FLEET_DIR = "/var/lib/npu-sim/fleet"  # the fleet's shared volume (npu-sim-sync and hccn_tool use this path)
FIRST_HOST_OCTET = 11

HCCN_FAULTS: dict[str, str] = {
    "hccn-link-down": "device port of card CARD (default 0) is DOWN",
    "hccn-no-ip": "card CARD (default 0) has no device IP",
    "hccn-tls-on": "card CARD (default 0) has the TLS switch on",
    "hccn-dup-ip": "card CARD (default 0) has the device IP of the same card of the first server",
    "hccn-unhealthy": "card CARD (default 0) reports net health Fault",
    "hccn-link-flaps": "card CARD's (default 0) port went down and up 5 times; its link is UP now",
    "hccn-ping-loss": "pings from this server to the others lose PCT % (required)",
}


def device_ip(index: int, card: int) -> str:
    if not 1 <= index <= 250:
        raise ValueError(f"server index {index} outside 1..250")
    return f"10.90.{index}.{FIRST_HOST_OCTET + card}"


def detect_ip(index: int) -> str:
    return f"10.90.{index}.1"


def initial_ports(host: str, index: int, cards: Iterable[int], booted: float | None = None) -> dict[str, Any]:
    """A healthy server's ports: an IP each, links up since boot, detect IP set, TLS off."""
    when = int(booted if booted is not None else time.time())
    return {
        "host": host,
        "ping_loss_pct": 0,
        "cards": {
            str(card): {
                "ip": device_ip(index, card),
                "netmask": NETMASK,
                "detect_ip": detect_ip(index),
                "link": "UP",
                "health": "Success",
                "tls": 0,
                "link_events": [[when, "UP"]],
            }
            for card in cards
        },
    }


def fleet_view_entry(ports: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What the other servers learn of one server's ports: the address of each card and whether it is up."""
    return {
        card: {"ip": port.get("ip"), "up": port.get("link") == "UP"}
        for card, port in ports.get("cards", {}).items()
    }


def initial_network(hosts: list[str], index: int, cards: Iterable[int]) -> dict[str, Any]:
    """The `hccn` and `hccn_fleet` keys of server `index` (1-based) of a healthy fleet of `hosts`."""
    cards = list(cards)
    now = time.time()
    ports = {host: initial_ports(host, position, cards, now) for position, host in enumerate(hosts, start=1)}
    return {
        "hccn": ports[hosts[index - 1]],
        "hccn_fleet": {host: fleet_view_entry(ports[host]) for host in hosts},
    }


def _card(state: dict[str, Any], card: int) -> dict[str, Any]:
    ports = state.get("hccn", {}).get("cards", {})
    if str(card) not in ports:
        raise ValueError(
            f"the server has no device port {card} (cards: {', '.join(sorted(ports)) or 'none'})"
        )
    port: dict[str, Any] = ports[str(card)]
    return port


def apply_hccn_fault(state: Mapping[str, Any], kind: str, value: str | None) -> dict[str, Any]:
    """Return the state with one `hccn-*` fault applied (pure). ValueError when it cannot apply."""
    new = copy.deepcopy(dict(state))
    if "hccn" not in new:
        raise ValueError("the server has no simulated device network (start it again with `sim up`)")
    if kind == "hccn-ping-loss":
        if value is None or not value.isdigit() or not 0 <= int(value) <= 100:
            raise ValueError(f"hccn-ping-loss takes a percentage 0..100, got {value!r}")
        new["hccn"]["ping_loss_pct"] = int(value)
        return new
    card = int(value) if value is not None else 0
    port = _card(new, card)
    if kind == "hccn-link-down":
        if port["link"] != "DOWN":
            port["link"] = "DOWN"
            port.setdefault("link_events", []).append([int(time.time()), "DOWN"])
    elif kind == "hccn-link-flaps":
        now = int(time.time())
        for flap in range(5):
            port.setdefault("link_events", []).extend(
                [[now - 60 * (5 - flap), "DOWN"], [now - 60 * (5 - flap) + 2, "UP"]]
            )
        port["link"] = "UP"
    elif kind == "hccn-no-ip":
        port["ip"] = None
        port["netmask"] = None
    elif kind == "hccn-tls-on":
        port["tls"] = 1
    elif kind == "hccn-unhealthy":
        port["health"] = "Fault"
    elif kind == "hccn-dup-ip":
        fleet = new.get("hccn_fleet", {})
        first = min(fleet, key=_host_order) if fleet else None
        if first is None or first == new["hccn"].get("host"):
            raise ValueError("hccn-dup-ip copies the first server's address: put it on server 2 or later")
        theirs = fleet[first].get(str(card), {}).get("ip")
        if not theirs:
            raise ValueError(f"the first server ({first}) has no device IP on card {card} to copy")
        port["ip"] = theirs
        port["netmask"] = port.get("netmask") or NETMASK
    else:
        raise ValueError(f"{kind} is not a device-network fault")
    return new


def _host_order(host: str) -> tuple[int, str]:
    tail = host.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else math.inf, host)  # type: ignore[return-value]


def publish(states: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every server's state with `hccn_fleet` rebuilt from all servers' own `hccn` (pure)."""
    view = {host: fleet_view_entry(state["hccn"]) for host, state in states.items() if "hccn" in state}
    out: dict[str, dict[str, Any]] = {}
    for host, state in states.items():
        new = copy.deepcopy(dict(state))
        if "hccn" in new:
            new["hccn_fleet"] = copy.deepcopy(view)
        out[host] = new
    return out
