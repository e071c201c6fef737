"""Role npu_network (and npu_check's card health) on ONE 3-server simulated fleet: the preflight is run
again after each change of faults (`llava-devserver sim fault`), with a different `hccn-*` fault on servers
2 and 3 each round, so that every fault's message is checked; server 1 stays healthy and passes every
round. The same servers seen as a one-server fleet skip the device network checks with one line.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import harness

pytestmark = pytest.mark.fleet

HOSTS = ("devserver-1", "devserver-2", "devserver-3")
STATE = "/etc/npu-sim/state.json"
HEALTHY = "/etc/npu-sim/state.healthy.json"
SKIP_LINE = "a one-server fleet has no other server to reach: the device network checks are skipped"

# Round -> ({host: faults given with `sim fault`}, {host: words its failure message must contain}).
ROUNDS: dict[str, tuple[dict[str, list[str]], dict[str, list[str]]]] = {
    "no-ip-and-tls": (
        {"devserver-2": ["hccn-no-ip=1"], "devserver-3": ["hccn-tls-on=0"]},
        {
            "devserver-2": ["card 1: no device IP is set", "hccn_tool -i 1 -ip -s address ADDRESS netmask"],
            "devserver-3": ["card 0: TLS switch is 1", "EI0014", "hccn_tool -i 0 -tls -s enable 0"],
        },
    ),
    "link-down-and-duplicate-ip": (
        {"devserver-2": ["hccn-link-down=0"], "devserver-3": ["hccn-dup-ip=1"]},
        {
            "devserver-2": ["card 0: the device port's link is DOWN", "hccn_tool -i 0 -cfg recovery"],
            "devserver-3": ["card 1: device IP 10.90.1.12 is also the device IP of card 1 of devserver-1"],
        },
    ),
    "unhealthy-and-ping-loss": (
        {"devserver-2": ["hccn-unhealthy=1"], "devserver-3": ["hccn-ping-loss=50"]},
        {
            "devserver-2": ["card 1: net health is Fault"],
            "devserver-3": [
                "card 0: ping from card 0 to devserver-1 card 0 (10.90.1.11) lost 66.67% (1 of 3 received)",
                "peer devserver-2 card 0",  # card 1 of devserver-2 is unhealthy: its own problem
            ],
        },
    ),
    # npu_check's deeper card health, on the same fleet.
    "ecc-lost-card-and-flaps": (
        {"devserver-2": ["card-ecc=1", "card-lost=5"], "devserver-3": ["hccn-link-flaps=0"]},
        {
            "devserver-2": ["NPU 1: 2 uncorrectable ECC errors", "the driver lost 1 card(s)"],
            "devserver-3": ["NPU 0: its device port went down 5 times", "npu_link_flaps_max 3"],
        },
    ),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    with harness.fleet_up("hccn", len(HOSTS), tmp_path_factory.mktemp("hccn"), job=False) as up:
        for host in HOSTS:
            up.sh(host, f"cp {STATE} {HEALTHY}", check=True)
        yield up


def heal(fleet: harness.Fleet) -> None:
    """Every server back to the state of `sim up` (each holds its view of the whole fleet's ports)."""
    for host in HOSTS:
        fleet.sh(host, f"cp {HEALTHY} {STATE} && /usr/local/sbin/npu-sim-sync", check=True)


def test_healthy_fleet_passes_and_reports_its_device_network(fleet: harness.Fleet) -> None:
    result = fleet.run_play("validate", "preflight", name="healthy")
    result.assert_ok(*HOSTS)
    for index, host in enumerate(HOSTS, start=1):
        network = result.host_report(host)["facts"]["device_network"]
        assert [(c["card"], c["ipaddr"], c["link"], c["tls"]) for c in network["cards"]] == [
            (0, f"10.90.{index}.11", "UP", 0),
            (1, f"10.90.{index}.12", "UP", 0),
        ]
        assert network["pings"] == 4 and network["worst_ping_loss_pct"] == 0.0
        npu = result.host_report(host)["facts"]["npu"]
        assert npu["pci_count"] == 8 and npu["ecc_uncorrectable"] == {"0": 0, "1": 0}
        assert npu["link_flaps"] == {"0": 0, "1": 0}
    markdown = (result.run_dir / "report.md").read_text()
    assert "## Device network (NPU RoCE ports)" in markdown
    assert "| devserver-2 | 0: 10.90.2.11, 1: 10.90.2.12 | UP UP | 0 0 | 0% (" in markdown


@pytest.mark.parametrize("round_name", ROUNDS)
def test_each_fault_fails_exactly_its_host_naming_card_peer_and_remedy(
    fleet: harness.Fleet, round_name: str
) -> None:
    faults, expected = ROUNDS[round_name]
    heal(fleet)
    for host, specs in faults.items():
        for spec in specs:
            done = fleet.llava("sim", "fault", "--name", fleet.name, f"{host}:{spec}")
            assert done.returncode == 0, done.stdout + done.stderr
    result = fleet.run_play("validate", "preflight", name=round_name)
    assert set(result.failed) == set(expected), f"{result.failed}\n{result.tail()}"
    for host, words in expected.items():
        message = result.messages[host]
        for word in words:
            assert word in message, f"{host}: {word!r} not in:\n{message}"
    assert "devserver-1" not in result.failed


def test_declared_device_ips_are_set_once_and_reached_by_the_peers(fleet: harness.Fleet) -> None:
    heal(fleet)
    fleet.set_host_vars("devserver-2", {"device_ips": ["10.90.2.61/24", "10.90.2.62/24"]})
    try:
        first = fleet.run_play("validate", "preflight", name="device-ips")
        first.assert_ok(*HOSTS)  # the other servers' pings reach the new addresses
        assert first.outcome("devserver-2", "Set the device IPs of the job's cards") == "changed"
        cards = first.host_report("devserver-2")["facts"]["device_network"]["cards"]
        assert [c["ipaddr"] for c in cards] == ["10.90.2.61", "10.90.2.62"]
        second = fleet.run_play("validate", "preflight", name="device-ips-again")
        second.assert_ok(*HOSTS)
        assert second.outcome("devserver-2", "Set the device IPs of the job's cards") == "ok"
    finally:
        fleet.set_host_vars("devserver-2", None)


def test_one_server_fleet_skips_the_device_network_with_one_line(fleet: harness.Fleet) -> None:
    heal(fleet)
    result = fleet.run_play(
        "validate", "preflight", inventory=fleet.subset(["devserver-1"], "one"), name="one"
    )
    result.assert_ok("devserver-1")
    assert result.output.count(SKIP_LINE) == 1
    assert result.outcome("devserver-1", "Read the device ports of the job's cards") is None
    # npu_check's probe reads no link history on one server (its ports are not used)
    probe = result.task("devserver-1", "Read the NPUs, the driver and the device nodes (one probe)")
    assert "#### begin info" in probe.res["stdout"] and "#### begin link_stat" not in probe.res["stdout"]
