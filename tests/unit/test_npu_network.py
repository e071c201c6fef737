"""The fleet-wide judgement of the NPUs' own network, fed by the simulated hccn_tool as the role runs it."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import hccn, npu_network, npu_smi
from llava_devserver.sim import device_network, faults

TOOL = Path(npu_smi.__file__).parent / "sim" / "files" / "hccn_tool"
HOSTS = ["devserver-1", "devserver-2", "devserver-3"]
CARDS = [0, 1]


def fleet_states(hosts: list[str] = HOSTS) -> dict[str, dict[str, Any]]:
    states = {}
    for index, host in enumerate(hosts, start=1):
        state = npu_smi.default_sim_state(len(CARDS))
        state.update(device_network.initial_network(hosts, index, CARDS))
        states[host] = state
    return states


def with_faults(states: dict[str, dict[str, Any]], *texts: str) -> dict[str, dict[str, Any]]:
    for text in texts:
        host, _, fault = text.partition(":")
        states = device_network.publish(
            {**states, host: faults.edit_state(states[host], faults.parse_fault(fault))}
        )
    return states


def _load_tool() -> Any:
    # In-process (the script's main), so that a fleet's worth of calls takes milliseconds; the script run as
    # a process is tested in test_sim_hccn_tool.py.
    loader = importlib.machinery.SourceFileLoader("sim_hccn_tool", str(TOOL))
    spec = importlib.util.spec_from_loader("sim_hccn_tool", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


HCCN_TOOL = _load_tool()


def run_tool(tmp_path: Path, state: dict[str, Any], *args: str) -> str:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    out = io.StringIO()
    previous = os.environ.get("NPU_SIM_STATE")
    os.environ["NPU_SIM_STATE"] = str(path)
    try:
        with contextlib.redirect_stdout(out):
            HCCN_TOOL.main(list(args))
    finally:
        if previous is None:
            del os.environ["NPU_SIM_STATE"]
        else:
            os.environ["NPU_SIM_STATE"] = previous
    return out.getvalue()


def judge(tmp_path: Path, states: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """What the role does: read every server's ports, plan and run the pings, judge on the controller."""
    fleet = {}
    for host, state in states.items():
        text = "".join(
            f"### card {card} {op}\n" + run_tool(tmp_path, state, "-i", str(card), f"-{op}", "-g")
            for card in CARDS
            for op in npu_network.PORT_OPERATIONS
        )
        fleet[host] = npu_network.parse_ports(text, CARDS)
    pings = {}
    for host, state in states.items():
        text = "".join(
            f"### ping {step['card']} {step['address']}\n"
            + run_tool(tmp_path, state, "-i", str(step["card"]), "-ping", "-g", "address", step["address"])
            for step in npu_network.ping_plan(fleet, host)
        )
        pings[host] = npu_network.parse_pings(text)
    return npu_network.fleet_problems(fleet, pings)


def failing(problems: dict[str, list[str]]) -> dict[str, list[str]]:
    return {host: found for host, found in problems.items() if found}


def test_healthy_fleet_has_no_problem_and_pings_all_pairs(tmp_path: Path) -> None:
    states = fleet_states()
    assert failing(judge(tmp_path, states)) == {}
    fleet = {
        host: npu_network.parse_ports(
            "".join(
                f"### card {c} {op}\n" + run_tool(tmp_path, s, "-i", str(c), f"-{op}", "-g")
                for c in CARDS
                for op in npu_network.PORT_OPERATIONS
            ),
            CARDS,
        )
        for host, s in states.items()
    }
    plan = npu_network.ping_plan(fleet, "devserver-2")
    assert {(p["card"], p["peer"], p["address"]) for p in plan} == {
        (0, "devserver-1", "10.90.1.11"),
        (1, "devserver-1", "10.90.1.12"),
        (0, "devserver-3", "10.90.3.11"),
        (1, "devserver-3", "10.90.3.12"),
    }


@pytest.mark.parametrize(
    ("fault", "host", "says"),
    [
        (
            "devserver-2:hccn-no-ip=1",
            "devserver-2",
            ["card 1: no device IP", "hccn_tool -i 1 -ip -s address"],
        ),
        ("devserver-3:hccn-link-down=0", "devserver-3", ["card 0: the device port's link is DOWN"]),
        ("devserver-2:hccn-unhealthy=1", "devserver-2", ["card 1: net health is Fault"]),
        (
            "devserver-3:hccn-tls-on=1",
            "devserver-3",
            ["card 1: TLS switch is 1", "hccn_tool -i 1 -tls -s enable 0"],
        ),
        (
            "devserver-3:hccn-dup-ip=1",
            "devserver-3",
            ["card 1: device IP 10.90.1.12 is also the device IP of card 1 of devserver-1", "ret[-17]"],
        ),
        (
            "devserver-3:hccn-ping-loss=50",
            "devserver-3",
            ["card 0: ping from card 0 to devserver-1 card 0 (10.90.1.11) lost 66.67% (1 of 3 received)"],
        ),
    ],
)
def test_each_fault_fails_exactly_its_host_naming_the_card(
    tmp_path: Path, fault: str, host: str, says: list[str]
) -> None:
    problems = failing(judge(tmp_path, with_faults(fleet_states(), fault)))
    assert list(problems) == [host]
    if "ping" not in fault:
        assert len(problems[host]) == 1, problems[host]  # one cause, said once
    text = "\n".join(problems[host])
    for phrase in says:
        assert phrase in text


def test_ping_loss_names_every_peer(tmp_path: Path) -> None:
    problems = judge(tmp_path, with_faults(fleet_states(), "devserver-3:hccn-ping-loss=50"))["devserver-3"]
    assert len(problems) == 4  # 2 cards x 2 peers
    assert any("to devserver-2 card 1 (10.90.2.12)" in p and "peer devserver-2 card 1" in p for p in problems)


def test_a_server_in_every_failing_pair_is_the_one_named() -> None:
    """Pings from 1 and from 2 to 3 fail (3's port does not answer): 3 is named, 1 and 2 are not."""
    fleet = {
        host: {
            "cards": [
                {"card": 0, "ipaddr": f"10.90.{i}.11", "netmask": "255.255.255.0", "link": "UP",
                 "net_health": "Success", "tls": 0, "errors": []}
            ],
            "errors": [],
        }
        for i, host in enumerate(HOSTS, start=1)
    }  # fmt: skip
    lost = {"transmitted": 3, "received": 0, "loss_pct": 100.0, "error": None}
    fine = {"transmitted": 3, "received": 3, "loss_pct": 0.0, "error": None}
    pings = {
        "devserver-1": [
            {"card": 0, "address": "10.90.2.11", **fine},
            {"card": 0, "address": "10.90.3.11", **lost},
        ],
        "devserver-2": [
            {"card": 0, "address": "10.90.1.11", **fine},
            {"card": 0, "address": "10.90.3.11", **lost},
        ],
        "devserver-3": [],
    }
    problems = failing(npu_network.fleet_problems(fleet, pings))
    assert list(problems) == ["devserver-3"]
    assert any("ping from devserver-1 card 0 to this server's card 0" in p for p in problems["devserver-3"])
    # With two servers nothing isolates a node: the source of the failing ping is named.
    two = {h: fleet[h] for h in HOSTS[:2]}
    one_way = {"devserver-1": [{"card": 0, "address": "10.90.2.11", **lost}], "devserver-2": []}
    assert list(failing(npu_network.fleet_problems(two, one_way))) == ["devserver-1"]


def test_a_card_outside_its_servers_subnet() -> None:
    cards = [
        {"card": c, "ipaddr": ip, "netmask": "255.255.255.0", "link": "UP", "net_health": "Init", "tls": 0,
         "errors": []}
        for c, ip in enumerate(["10.1.0.2", "10.1.0.3", "10.2.0.4"])
    ]  # fmt: skip
    problems = npu_network.fleet_problems({"a": {"cards": cards, "errors": []}})["a"]
    assert len(problems) == 1
    assert problems[0].startswith("card 2: device IP 10.2.0.4 is outside 10.1.0.0/24")


def test_tls_tie_asks_for_disabled() -> None:
    def port(tls: int) -> dict[str, Any]:
        return {"card": 0, "ipaddr": None, "netmask": None, "link": "UP", "net_health": "Init", "tls": tls,
                "errors": []}  # fmt: skip

    fleet = {"a": {"cards": [port(0)], "errors": []}, "b": {"cards": [port(1)], "errors": []}}
    problems = npu_network.fleet_problems(fleet)
    assert not any("TLS" in p for p in problems["a"])
    assert any("hccn_tool -i 0 -tls -s enable 0" in p for p in problems["b"])


def test_parse_ports_reports_missing_tool_missing_sections_and_tool_errors() -> None:
    missing = npu_network.parse_ports("### hccn_tool missing\n", CARDS, "/opt/hccn_tool")
    assert missing["errors"][0].startswith("/opt/hccn_tool not found")
    text = (
        "### card 0 ip\nipaddr:10.0.0.1\nnetmask:255.255.255.0\n### card 0 link\nlink status: UP\n"
        "### card 0 net_health\nhccn_tool is busy, please try again\n### card 0 tls\n"
        "dev_id:0, tls switch[0](0:disable, 1:enable)\n"
    )
    ports = npu_network.parse_ports(text, [0, 1])
    card0, card1 = ports["cards"]
    assert card0["ipaddr"] == "10.0.0.1" and card0["link"] == "UP" and card0["tls"] == 0
    assert any("busy" in e for e in card0["errors"])
    assert len(card1["errors"]) == 4 and "no output of hccn_tool -i 1 -ip -g" in card1["errors"][0]


def test_a_ping_killed_by_timeout_counts_as_lost() -> None:
    pings = npu_network.parse_pings("### ping 0 10.0.0.2\ndevice 0 PING 10.0.0.2\n### ping 1 10.0.0.3\n")
    assert [(p["card"], p["address"], p["loss_pct"]) for p in pings] == [
        (0, "10.0.0.2", 100.0),
        (1, "10.0.0.3", 100.0),
    ]
    assert pings[0]["error"]


def test_nic_problems() -> None:
    ip_a = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "2: eth0    inet 172.18.0.2/16 brd 172.18.255.255 scope global eth0\\       valid_lft forever\n"
    )
    assert npu_network.nic_problems("172.18.0.2", None, ip_a) == []
    assert (
        "not an address of this server (127.0.0.1, 172.18.0.2)"
        in npu_network.nic_problems("10.0.0.9", None, ip_a)[0]
    )
    assert npu_network.nic_problems(None, "eth,^=docker0", "", ["lo", "eth0"]) == []
    assert npu_network.nic_problems(None, "=eth1", "", ["lo", "eth0"])[0].startswith(
        "HCCL host NIC: hccl_socket_ifname =eth1 matches no interface"
    )


def test_report_entry_has_the_worst_ping() -> None:
    ports = {"cards": [{"card": 0, "ipaddr": "10.0.0.1", "netmask": "255.255.255.0", "link": "UP",
                        "net_health": "Success", "tls": 0, "errors": []}]}  # fmt: skip
    pings = [
        {"card": 0, "address": "10.0.0.2", "loss_pct": 0.0},
        {"card": 0, "address": "10.0.0.3", "loss_pct": 33.33},
    ]
    entry = npu_network.report_entry(ports, pings, [])
    assert entry["worst_ping_loss_pct"] == 33.33 and entry["worst_ping"] == "card 0 -> 10.0.0.3"
    assert entry["cards"][0]["ipaddr"] == "10.0.0.1"


def test_port_plan_changes_only_what_differs() -> None:
    same = npu_network.port_plan(
        0, "ipaddr:10.0.0.5\nnetmask:255.255.255.0\n", None, "10.0.0.5", "255.255.255.0"
    )
    assert same["commands"] == []
    unset = npu_network.port_plan(
        1,
        "Get ipconf failed, because no ip was preset there!\n",
        "netdetect address: 10.0.0.1\n",
        "10.0.0.6",
        "255.255.255.0",
        "10.0.0.254",
        "/opt/hccn_tool",
    )
    assert unset["before"] == {"address": None, "netmask": None, "detect_ip": "10.0.0.1"}
    assert unset["commands"] == [
        ["/opt/hccn_tool", "-i", "1", "-ip", "-s", "address", "10.0.0.6", "netmask", "255.255.255.0"],
        ["/opt/hccn_tool", "-i", "1", "-netdetect", "-s", "address", "10.0.0.254"],
    ]
    with pytest.raises(hccn.HccnParseError, match="busy"):
        npu_network.port_plan(0, "hccn_tool is busy, please try again\n", None, "10.0.0.5", "255.255.255.0")
