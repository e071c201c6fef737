"""Role npu_check: the filter that finds NPUs held by other containers (unit), and the role on one simulated
fleet with a different fault on each server (fleet): only the faulty servers fail, each with a message that
names the card or the cause; the healthy one passes and records `llava_report_npu`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import harness

REPO = Path(__file__).resolve().parents[2]


def _load_filter() -> ModuleType:
    from ansible_collections.llava.devserver.plugins.filter import npu_check_bound

    return npu_check_bound


bound = _load_filter()


def _container(
    name: str, devices: tuple[str, ...] = (), env: tuple[str, ...] = (), running: bool = True
) -> dict[str, Any]:
    return {
        "Name": f"/{name}",
        "State": {"Running": running},
        "HostConfig": {"Devices": [{"PathOnHost": d, "PathInContainer": d} for d in devices] or None},
        "Config": {"Env": list(env)},
    }


# ------------------------------------------------------------------------------------------------ unit


def test_device_held_by_another_container_is_named_with_its_container() -> None:
    text = json.dumps([_container("other-user-job", ("/dev/davinci1", "/dev/davinci_manager"))])
    problems = bound.npu_check_bound_problems(text, [0, 1], "llava-train")
    assert len(problems) == 1
    assert "NPU 1 (/dev/davinci1)" in problems[0]
    assert "'other-user-job'" in problems[0]
    assert "docker stop other-user-job" in problems[0]


def test_ascend_runtime_visible_devices_ranges_count_as_held() -> None:
    text = json.dumps([_container("job", env=("PATH=/bin", "ASCEND_VISIBLE_DEVICES=0-2,6"))])
    problems = bound.npu_check_bound_problems(text, [2, 3, 6, 7], None)
    assert [p.split(" ", 2)[1] for p in problems] == ["2", "6"]
    assert "ASCEND_VISIBLE_DEVICES=0-2,6" in problems[0]


def test_own_container_stopped_containers_and_other_npus_are_not_problems() -> None:
    text = json.dumps(
        [
            _container("llava-train", ("/dev/davinci0", "/dev/davinci1")),
            _container("stopped", ("/dev/davinci0",), running=False),
            _container("elsewhere", ("/dev/davinci5", "/dev/davinci10")),
        ]
    )
    assert bound.npu_check_bound_problems(text, [0, 1], "llava-train") == []
    assert bound.npu_check_bound_problems("", [0], "x") == []
    assert bound.npu_check_bound_problems(None, [0], "x") == []


def test_davinci10_is_not_davinci1() -> None:
    text = json.dumps([_container("job", ("/dev/davinci10",))])
    assert bound.npu_check_bound_problems(text, [1], None) == []
    assert len(bound.npu_check_bound_problems(text, [10], None)) == 1


def test_unreadable_inspect_output_is_an_error() -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="not JSON"):
        bound.npu_check_bound_problems("Cannot connect to the Docker daemon", [0], None)


# ------------------------------------------------------------------------------------------------ fleet

# Server -> (fault given to `sim up`, words its failure message must contain). None: must pass.
FAULTS: dict[str, tuple[str | None, list[str]]] = {
    "devserver-1": (None, []),
    "devserver-2": ("card-critical=1", ["NPU 1 chip 0", "'Critical'"]),
    "devserver-3": ("fewer-cards", ["expected 8 NPUs", "reports 7"]),
    "devserver-4": ("driver-version=24.1.0", ["driver version is 24.1.0", "expected 23.0.5"]),
    "devserver-5": ("npu-smi-8005", ["-8005", "held by another container"]),
    "devserver-6": ("device-bound=1", ["NPU 1 (/dev/davinci1)", "'other-user-job'"]),
    "devserver-7": ("driver-missing", ["npu-smi or its libraries are missing", "install the Ascend NPU"]),
    # No fault at start: the test removes /dev/davinci1 (npu-smi still reports the card).
    "devserver-8": (None, ["device node /dev/davinci1 is missing"]),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    faults = {host: [fault] for host, (fault, _) in FAULTS.items() if fault}
    with harness.fleet_up("npu", len(FAULTS), tmp_path_factory.mktemp("npu"), faults=faults, job=False) as up:
        up.sh("devserver-8", "rm /dev/davinci1", check=True)
        yield up


@pytest.fixture(scope="module")
def preflight(fleet: harness.Fleet) -> harness.PlayResult:
    return fleet.run_play("validate", "preflight")


@pytest.mark.fleet
def test_only_the_faulty_servers_fail_each_naming_its_cause(preflight: harness.PlayResult) -> None:
    failed = preflight.messages
    expected_failing = {host for host, (fault, words) in FAULTS.items() if words}
    assert set(failed) == expected_failing, failed
    for host in sorted(expected_failing):
        message = failed[host]
        assert message.startswith(f"{host}: the NPU check found"), message
        for word in FAULTS[host][1]:
            assert word in message, f"{host}: {word!r} not in {message!r}"


@pytest.mark.fleet
def test_one_cause_one_message_line(preflight: harness.PlayResult) -> None:
    failed = preflight.messages
    # One card, one driver, one node: exactly one problem each, not the same cause reported twice.
    for host in ("devserver-2", "devserver-4", "devserver-6", "devserver-8"):
        assert "found 1 problem(s)" in failed[host], failed[host]


@pytest.mark.fleet
def test_healthy_server_passes_and_records_the_report(preflight: harness.PlayResult) -> None:
    report = preflight.fact("devserver-1", "llava_report_npu")
    assert report["problems"] == []
    assert report["driver_version"] == "23.0.5"
    assert report["npu_count_found"] == 8
    assert report["total_count"] == 8
    assert [card["health"] for card in report["cards"]] == ["OK"] * 8
    assert [card["npu"] for card in report["cards"]] == list(range(8))
    assert preflight.changed_count("devserver-1") == 0


@pytest.mark.fleet
def test_check_mode_gives_the_same_verdicts(fleet: harness.Fleet, preflight: harness.PlayResult) -> None:
    checked = fleet.run_play("validate", "preflight", check=True)
    assert set(checked.messages) == set(preflight.messages)
    assert all(stats["changed"] == 0 for stats in checked.recap.values())
