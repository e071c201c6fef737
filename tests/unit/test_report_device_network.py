"""The report's device-network section: one row per host that ran npu_network, none otherwise."""

from __future__ import annotations

from pathlib import Path

from llava_devserver import npu_network, report


def network(ips: list[str | None], loss: float, problems: list[str]) -> dict[str, object]:
    ports = {
        "cards": [
            {"card": card, "ipaddr": ip, "netmask": "255.255.255.0", "link": "UP" if ip else "DOWN",
             "net_health": "Success", "tls": 0}
            for card, ip in enumerate(ips)
        ]
    }  # fmt: skip
    pings = [{"card": 0, "address": "10.90.2.11", "loss_pct": loss}]
    return npu_network.report_entry(ports, pings, problems)


def test_section_lists_ips_links_tls_and_worst_ping(tmp_path: Path) -> None:
    outcomes = [
        report.HostOutcome(
            "devserver-1", {"ok": 9}, facts={"device_network": network(["10.90.1.11", "10.90.1.12"], 0.0, [])}
        ),
        report.HostOutcome(
            "devserver-2",
            {"ok": 8, "failures": 1},
            facts={"device_network": network(["10.90.2.11", None], 66.67, ["card 1: no device IP is set"])},
        ),
        report.HostOutcome("devserver-3", {"ok": 3}),
    ]
    text = report.render_markdown(report.build_report(tmp_path, outcomes, plot=False))
    section = text.split("## Device network (NPU RoCE ports)", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| devserver-")]
    assert rows == [
        "| devserver-1 | 0: 10.90.1.11, 1: 10.90.1.12 | UP UP | 0 0 | 0% (card 0 -> 10.90.2.11) | – |",
        "| devserver-2 | 0: 10.90.2.11, 1: none | UP DOWN | 0 0 | 66.67% (card 0 -> 10.90.2.11) "
        "| 1: card 1: no device IP is set |",
    ]


def test_no_section_without_device_network_facts(tmp_path: Path) -> None:
    outcomes = [report.HostOutcome("devserver-1", {"ok": 3})]
    assert "Device network" not in report.render_markdown(report.build_report(tmp_path, outcomes, plot=False))
