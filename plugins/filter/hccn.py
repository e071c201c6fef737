"""Jinja2 filters over `llava_devserver.npu_network` for the role npu_network (no logic here).

- `{{ out.stdout | hccn_ports(cards) }}`: one server's ports from its `### card N OP` script output.
- `{{ fleet | hccn_ping_plan(host) }}`: what `host` pings (`[{card, peer, peer_card, address}]`).
- `{{ out.stdout | hccn_pings }}`: the results of those pings.
- `{{ fleet | hccn_fleet_problems(pings, max_loss_pct) }}`: every server's problems (`{host: [...]}`).
- `{{ ports | hccn_report(pings, problems) }}`: the report's view of one server's device network.
- `{{ llava.hccl_if_ip | hccn_nic_problems(llava.hccl_socket_ifname, ip_addr_text, interfaces) }}`: the
  HCCL host NIC settings against this server's addresses and interfaces.
- `{{ out.stdout | hccn_link_flap_problems(max_flaps, tool) }}` over `### card N link_stat` sections;
  `{{ out.stdout | hccn_link_flaps }}`: link-down count per card.
- `{{ text | hccn_parse(kind) }}`: one `hccn_tool` output as a dict (`llava_devserver.hccn`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llava_devserver import hccn, npu_network
from llava_devserver.ansible_support import filter_guard as _guard


def hccn_ports(text: str, cards: Sequence[Any], tool: str = "hccn_tool") -> dict[str, Any]:
    return npu_network.parse_ports(str(text), [int(card) for card in cards], str(tool))


def hccn_ping_plan(fleet: Mapping[str, Mapping[str, Any]], host: str) -> list[dict[str, Any]]:
    return npu_network.ping_plan(dict(fleet), str(host))


def hccn_pings(text: str) -> list[dict[str, Any]]:
    return npu_network.parse_pings(str(text))


def hccn_fleet_problems(
    fleet: Mapping[str, Mapping[str, Any]],
    pings: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    max_loss_pct: Any = 0,
) -> dict[str, list[str]]:
    return npu_network.fleet_problems(dict(fleet), dict(pings or {}), float(max_loss_pct))


def hccn_report(
    ports: Mapping[str, Any], pings: Sequence[Mapping[str, Any]], problems: Sequence[str]
) -> dict[str, Any]:
    return npu_network.report_entry(ports, list(pings), list(problems))


def hccn_nic_problems(
    hccl_if_ip: str | None, hccl_socket_ifname: str | None, ip_addr_output: str = "", interfaces: Any = ()
) -> list[str]:
    return npu_network.nic_problems(
        hccl_if_ip or None, hccl_socket_ifname or None, str(ip_addr_output or ""), list(interfaces or [])
    )


def hccn_link_flap_problems(text: str, max_flaps: Any = 3, tool: str = "hccn_tool") -> list[str]:
    return npu_network.link_flap_problems(str(text), int(max_flaps), str(tool))


def hccn_link_flaps(text: str) -> dict[int, int | None]:
    return npu_network.link_flaps(str(text))


def hccn_parse(text: str, kind: str | None = None) -> dict[str, Any]:
    try:
        return hccn.parse_hccn(str(text), kind)
    except hccn.HccnParseError as exc:
        raise ValueError(exc.message) from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        functions: dict[str, Callable[..., Any]] = {
            "hccn_ports": hccn_ports,
            "hccn_ping_plan": hccn_ping_plan,
            "hccn_pings": hccn_pings,
            "hccn_fleet_problems": hccn_fleet_problems,
            "hccn_report": hccn_report,
            "hccn_nic_problems": hccn_nic_problems,
            "hccn_link_flap_problems": hccn_link_flap_problems,
            "hccn_link_flaps": hccn_link_flaps,
            "hccn_parse": hccn_parse,
        }
        return {name: _guard(function) for name, function in functions.items()}
