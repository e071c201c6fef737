"""The NPUs' own network across a fleet: read each server's ports, plan the pings, judge the whole.

HCCL talks between servers over every NPU's RoCE port (its device IP), not over the host network. What
breaks multi-node jobs there, and what this module finds before a job starts:

- a card the job uses has no device IP, its link is DOWN, or its net health is not Success while a detect
  IP is set (`Init` means none is set: not judged);
- two cards of the fleet share a device IP (HCCL: `ret[-17]`), or a server's cards are not all in one
  subnet (the Atlas 800T A2 rule);
- the TLS switch differs between cards (HCCL: `EI0014`/`EI0016`);
- a card does not reach the same-index card of another server (`hccn_tool -ping`; HCCL: `EI0006` or a hang).

The role `npu_network` runs `hccn_tool` on the servers (one script each, sections marked `### card N OP`
and `### ping CARD ADDRESS`) and calls these functions on the controller through the `hccn` filters.
Every problem is one sentence naming the card (and the peer for pings) and the command that fixes it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from llava_devserver import hccn
from llava_devserver.sections import card_sections, split_sections

PORT_OPERATIONS = ("ip", "link", "net_health", "tls")
HEALTH_OK = ("Success",)
HEALTH_NOT_SET = ("Init",)  # no detect IP set: net health is not judged
DEFAULT_NETMASK = "255.255.255.0"
TOOL_MISSING_MARK = "### hccn_tool missing"


def parse_ports(text: str, cards: Sequence[int], tool: str = "hccn_tool") -> dict[str, Any]:
    """One server's ports from its script output: `{"cards": [{card, ipaddr, netmask, link, net_health,
    tls, errors}], "errors": [...]}` in the order of `cards` (the job's npu_devices)."""
    if TOOL_MISSING_MARK in str(text):
        return {
            "cards": [],
            "errors": [
                f"{tool} not found: the Ascend driver installs it in /usr/local/Ascend/driver/tools; "
                "install the driver (or set npu_network_hccn_tool to where it is)"
            ],
        }
    found: dict[tuple[int, str], str] = {
        (int(words[1]), words[2]): body
        for words, body in split_sections(text)
        if len(words) == 3 and words[0] == "card" and words[1].isdigit()
    }
    ports = []
    for card in cards:
        port: dict[str, Any] = {
            "card": int(card),
            "ipaddr": None,
            "netmask": None,
            "link": None,
            "net_health": None,
            "tls": None,
            "errors": [],
        }
        for operation in PORT_OPERATIONS:
            body = found.get((int(card), operation))
            if body is None:
                port["errors"].append(f"card {card}: no output of {tool} -i {card} -{operation} -g")
                continue
            try:
                parsed = hccn.parse_hccn(body, kind=operation)
            except hccn.HccnParseError as exc:
                port["errors"].append(f"card {card}: {tool} -i {card} -{operation} -g: {exc.message}")
                continue
            if operation == "ip":
                port["ipaddr"], port["netmask"] = parsed["ipaddr"], parsed["netmask"]
            elif operation == "tls":
                port["tls"] = parsed["switch"]
            else:
                port[operation] = parsed["status"]
        ports.append(port)
    return {"cards": ports, "errors": []}


def parse_pings(text: str) -> list[dict[str, Any]]:
    """The pings of one server: [{card, address, transmitted, received, loss_pct, error}]."""
    pings = []
    for words, body in split_sections(text):
        if len(words) != 3 or words[0] != "ping" or not words[1].isdigit():
            continue
        entry: dict[str, Any] = {"card": int(words[1]), "address": words[2], "error": None}
        try:
            parsed = hccn.parse_hccn(body, kind="ping")
            entry.update({k: parsed[k] for k in ("transmitted", "received", "loss_pct")})
        except hccn.HccnParseError as exc:
            # A ping that timed out (killed by `timeout`) or failed counts as all packets lost.
            entry.update({"transmitted": 0, "received": 0, "loss_pct": 100.0, "error": exc.message})
        pings.append(entry)
    return pings


def _ok_address(port: Mapping[str, Any]) -> bool:
    return bool(port.get("ipaddr")) and port.get("link") == "UP"


def ping_plan(fleet: Mapping[str, Mapping[str, Any]], host: str) -> list[dict[str, Any]]:
    """What `host` pings: each of its cards -> the same-index card (k-th of the job's cards) of every other
    server, when both have an IP and their link up (otherwise their own checks already fail)."""
    mine = fleet[host].get("cards", [])
    plan = []
    for peer, ports in fleet.items():
        if peer == host:
            continue
        theirs = ports.get("cards", [])
        for position, port in enumerate(mine):
            if position >= len(theirs) or not _ok_address(port) or not _ok_address(theirs[position]):
                continue
            plan.append(
                {
                    "card": port["card"],
                    "peer": peer,
                    "peer_card": theirs[position]["card"],
                    "address": theirs[position]["ipaddr"],
                }
            )
    return plan


def _network(port: Mapping[str, Any]) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(f"{port['ipaddr']}/{port['netmask'] or DEFAULT_NETMASK}", strict=False)
    except (ValueError, TypeError):
        return None


def _set_ip_command(card: int, netmask: str | None) -> str:
    return f"hccn_tool -i {card} -ip -s address ADDRESS netmask {netmask or DEFAULT_NETMASK}"


def _host_netmask(ports: Sequence[Mapping[str, Any]]) -> str | None:
    masks = Counter(p["netmask"] for p in ports if p.get("netmask"))
    return masks.most_common(1)[0][0] if masks else None


def _local_problems(ports: Sequence[Mapping[str, Any]], duplicates: set[int]) -> tuple[list[str], set[int]]:
    """Problems of one server's own cards, and the cards that have one. A card whose address duplicates
    another's is outside the subnet too, most often: the duplicate problem says it once."""
    problems: list[str] = []
    bad: set[int] = set()
    netmask = _host_netmask(ports)
    for port in ports:
        card = port["card"]
        problems += port.get("errors", [])
        if port.get("errors"):
            bad.add(card)
        if port.get("ipaddr") is None and not port.get("errors"):
            problems.append(
                f"card {card}: no device IP is set (HCCL between servers needs one on every card the job "
                f"uses): {_set_ip_command(card, netmask)}, in the subnet of this server's other cards"
            )
            bad.add(card)
        if port.get("link") not in (None, "UP"):
            problems.append(
                f"card {card}: the device port's link is {port['link']}: check its cable or optical "
                f"module (hccn_tool -i {card} -optical -g) and the switch port, then "
                f"hccn_tool -i {card} -cfg recovery"
            )
            bad.add(card)
        elif (
            port.get("link") == "UP"
            and port.get("ipaddr")  # without an IP (or a link) health fails too: the first problem says it
            and port.get("net_health") not in (None, *HEALTH_OK, *HEALTH_NOT_SET)
        ):
            problems.append(
                f"card {card}: net health is {port['net_health']}, not Success: the card cannot reach its "
                f"detect IP (hccn_tool -i {card} -netdetect -g); check the gateway and the switch"
            )
            bad.add(card)
    networks = {p["card"]: _network(p) for p in ports if p.get("ipaddr")}
    counted = Counter(str(n) for n in networks.values() if n is not None)
    if len(counted) > 1:
        subnet = counted.most_common(1)[0][0]
        for card, network in networks.items():
            if str(network) != subnet and card not in duplicates:
                problems.append(
                    f"card {card}: device IP {_port(ports, card)['ipaddr']} is outside {subnet}, the "
                    f"subnet of this server's other cards (all ports of a server share one subnet): "
                    f"{_set_ip_command(card, netmask)} with ADDRESS in {subnet}"
                )
                bad.add(card)
    return problems, bad


def _port(ports: Sequence[Mapping[str, Any]], card: int) -> Mapping[str, Any]:
    return next(p for p in ports if p["card"] == card)


def fleet_problems(
    fleet: Mapping[str, Mapping[str, Any]],
    pings: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    max_loss_pct: float = 0.0,
) -> dict[str, list[str]]:
    """Every server's problems: `fleet` maps host (inventory order) -> parse_ports(); `pings` host ->
    parse_pings() of its ping_plan(). Only the servers at fault are named: a ping that fails towards a card
    with its own problem is that card's, and a server in every failing pair (of two or more) is the one."""
    pings = pings or {}
    hosts = list(fleet)
    problems: dict[str, list[str]] = {host: list(fleet[host].get("errors", [])) for host in hosts}
    # Device IPs: the first holder (inventory order, then card order) keeps an address.
    holders: dict[str, list[tuple[str, int]]] = {}
    for host in hosts:
        for port in fleet[host].get("cards", []):
            if port.get("ipaddr"):
                holders.setdefault(port["ipaddr"], []).append((host, port["card"]))
    duplicates: dict[str, dict[int, str]] = {host: {} for host in hosts}
    for address, holding in holders.items():
        first_host, first_card = holding[0]
        for host, card in holding[1:]:
            owner = f"card {first_card} of {first_host}" if first_host != host else f"card {first_card}"
            netmask = _host_netmask(fleet[host].get("cards", []))
            duplicates[host][card] = (
                f"card {card}: device IP {address} is also the device IP of {owner} (HCCL fails with "
                f"ret[-17]): give this card its own: {_set_ip_command(card, netmask)}"
            )
    bad: dict[str, set[int]] = {}
    for host in hosts:
        local, bad[host] = _local_problems(fleet[host].get("cards", []), set(duplicates[host]))
        problems[host] += local + list(duplicates[host].values())
        bad[host] |= set(duplicates[host])

    # TLS: the switch most cards have wins (0 on a tie: what Huawei's guides advise).
    switches = Counter(
        port["tls"] for host in hosts for port in fleet[host].get("cards", []) if port.get("tls") is not None
    )
    if len(switches) > 1:
        ranked = switches.most_common()
        expected = 0 if ranked[0][1] == ranked[1][1] else ranked[0][0]
        for host in hosts:
            for port in fleet[host].get("cards", []):
                if port.get("tls") is not None and port["tls"] != expected:
                    problems[host].append(
                        f"card {port['card']}: TLS switch is {port['tls']}, the rest of the fleet has "
                        f"{expected} (HCCL fails with EI0014/EI0016 when it differs): "
                        f"hccn_tool -i {port['card']} -tls -s enable {expected}"
                    )

    _ping_problems(fleet, pings, bad, problems, max_loss_pct)
    return problems


def _ping_problems(
    fleet: Mapping[str, Mapping[str, Any]],
    pings: Mapping[str, Sequence[Mapping[str, Any]]],
    bad: Mapping[str, set[int]],
    problems: dict[str, list[str]],
    max_loss_pct: float,
) -> None:
    by_address = {
        port["ipaddr"]: (host, port["card"])
        for host in fleet
        for port in reversed(fleet[host].get("cards", []))
        if port.get("ipaddr")
    }
    failing: list[tuple[str, Mapping[str, Any], str, int]] = []
    for host, results in pings.items():
        for result in results:
            if float(result.get("loss_pct", 100.0)) <= max_loss_pct:
                continue
            peer, peer_card = by_address.get(result["address"], (None, None))
            if peer is None or peer_card in bad.get(peer, set()) or result["card"] in bad.get(host, set()):
                continue  # that card's own problem says it
            failing.append((host, result, peer, int(peer_card)))  # type: ignore[arg-type]
    pairs = [frozenset((host, peer)) for host, _, peer, _ in failing]
    common = set.intersection(*(set(pair) for pair in pairs)) if len(set(pairs)) >= 2 else set()
    for host, result, peer, peer_card in failing:
        if common and host not in common:
            # The common node is at fault; say it on that node, naming this one as the peer.
            culprit, other, card, other_card = peer, host, peer_card, result["card"]
        else:
            culprit, other, card, other_card = host, peer, result["card"], peer_card
        problems[culprit].append(
            _ping_message(host, result, peer, peer_card, culprit, card, other, other_card)
        )


def _ping_message(
    source: str,
    result: Mapping[str, Any],
    peer: str,
    peer_card: int,
    culprit: str,
    card: int,
    other: str,
    other_card: int,
) -> str:
    received = f"{result.get('received', 0)} of {result.get('transmitted', 0)} received"
    if result.get("error"):
        received = result["error"]
    direction = (
        f"ping from card {result['card']} to {peer} card {peer_card} ({result['address']})"
        if source == culprit
        else f"ping from {source} card {result['card']} to this server's card {card} ({result['address']})"
    )
    return (
        f"card {card}: {direction} lost {float(result.get('loss_pct', 100.0)):g}% ({received}); peer "
        f"{other} card {other_card}: check both ports' links, cables and switch ports, the device IPs and "
        f"routes (hccn_tool -i {card} -ip -g), then hccn_tool -i {result['card']} -ping -g address "
        f"{result['address']} on {source}"
    )


def report_entry(
    ports: Mapping[str, Any], pings: Sequence[Mapping[str, Any]], problems: Sequence[str]
) -> dict[str, Any]:
    """The report's view of one server's device network: cards, links, TLS, the worst ping."""
    worst = max(pings, key=lambda p: float(p.get("loss_pct", 0.0)), default=None)
    return {
        "cards": [
            {key: port.get(key) for key in ("card", "ipaddr", "netmask", "link", "net_health", "tls")}
            for port in ports.get("cards", [])
        ],
        "pings": len(pings),
        "worst_ping_loss_pct": float(worst["loss_pct"]) if worst else None,
        "worst_ping": f"card {worst['card']} -> {worst['address']}" if worst else None,
        "problems": list(problems),
    }


_INET_RE = re.compile(r"\binet6?\s+([0-9A-Fa-f.:]+)/")


def nic_problems(
    hccl_if_ip: str | None,
    hccl_socket_ifname: str | None,
    ip_addr_output: str = "",
    interfaces: Sequence[str] = (),
) -> list[str]:
    """Does this server have the HCCL host NIC the settings name? `ip_addr_output` is `ip -o addr show`,
    `interfaces` the names under /sys/class/net. Prefix items (`eth`) match like HCCL matches them."""
    problems = []
    if hccl_if_ip:
        addresses = _INET_RE.findall(str(ip_addr_output))
        if hccl_if_ip not in addresses:
            problems.append(
                f"HCCL host NIC: hccl_if_ip {hccl_if_ip} is not an address of this server "
                f"({', '.join(addresses) or 'none found'}): set one of them, or unset it to use the address "
                "of the route to the master"
            )
    if hccl_socket_ifname and not hccl_if_ip:
        names = [str(name) for name in interfaces]
        wanted = [item for item in hccl_socket_ifname.split(",") if not item.startswith("^")]
        for item in wanted:
            exact = item.startswith("=")
            name = item.lstrip("=")
            if not any(n == name if exact else n.startswith(name) for n in names):
                problems.append(
                    f"HCCL host NIC: hccl_socket_ifname {item} matches no interface of this server "
                    f"({', '.join(names) or 'none found'})"
                )
    return problems


def link_flap_problems(text: str, max_flaps: int, tool: str = "hccn_tool") -> list[str]:
    """Cards whose port went down more than `max_flaps` times (`### card N link_stat` sections of
    `hccn_tool -i N -link_stat -g`). Unreadable sections say nothing: npu_network reports the tool."""
    problems = []
    for card, body in sorted(card_sections(text, "link_stat").items()):
        try:
            stat = hccn.parse_hccn(body, kind="link_stat")
        except hccn.HccnParseError:
            continue
        if stat["down_count"] > max_flaps:
            last = next((r["time"] for r in stat["records"] if r["status"] == "DOWN"), None)
            problems.append(
                f"NPU {card}: its device port went down {stat['down_count']} times"
                + (f" (last {last})" if last else "")
                + f", more than npu_link_flaps_max {max_flaps}: a flapping link breaks HCCL mid-job; check "
                f"the optical module ({tool} -i {card} -optical -g), the cable and the switch port"
            )
    return problems


def link_flaps(text: str) -> dict[int, int | None]:
    """Link-down count per card, for the report (None: unreadable)."""
    out: dict[int, int | None] = {}
    for card, body in card_sections(text, "link_stat").items():
        try:
            out[card] = int(hccn.parse_hccn(body, kind="link_stat")["down_count"])
        except hccn.HccnParseError:
            out[card] = None
    return out


def port_plan(
    card: int,
    ip_output: str,
    netdetect_output: str | None,
    address: str,
    netmask: str,
    detect_ip: str | None = None,
    tool: str = "hccn_tool",
) -> dict[str, Any]:
    """What setting one card's port to `address`/`netmask` (and detect IP) takes: `{"before", "after",
    "commands"}` from its `-ip -g` and `-netdetect -g` outputs; no commands when it is already so."""
    current = hccn.parse_hccn(ip_output, kind="ip")
    before = {"address": current["ipaddr"], "netmask": current["netmask"]}
    after = {"address": address, "netmask": netmask}
    commands: list[list[str]] = []
    if (current["ipaddr"], current["netmask"]) != (address, netmask):
        commands.append([tool, "-i", str(card), "-ip", "-s", "address", address, "netmask", netmask])
    if detect_ip is not None:
        found = hccn.parse_hccn(netdetect_output or "", kind="netdetect")["address"]
        before["detect_ip"], after["detect_ip"] = found, detect_ip
        if found != detect_ip:
            commands.append([tool, "-i", str(card), "-netdetect", "-s", "address", detect_ip])
    return {"before": before, "after": after, "commands": commands}
