"""llava_devserver.npu_devices: the one NPU id parser and the one "NPU held by another container" rule,
and the adapters that use them (the settings model, container_spec, the npu_check role's filter)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible_collections.llava.devserver.plugins.filter import npu_check_bound

from llava_devserver import container_spec
from llava_devserver.npu_devices import (
    HeldNpu,
    held_npu_problem,
    held_npus,
    inspect_entries,
    is_running,
    npus_held_elsewhere,
    parse_device_ids,
    read_device_ids,
)

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-7", list(range(8))),
        ("0,1,2,3", [0, 1, 2, 3]),
        ("0-1, 6", [0, 1, 6]),
        ("6,0-1", [6, 0, 1]),  # the given order
        ("3-3", [3]),
        ([4, 5, "6"], [4, 5, 6]),
        (["0-1", 4], [0, 1, 4]),  # a YAML list may hold ranges
        ((0, 1), [0, 1]),  # what Ansible's INI parser makes of 0,1
        (3, [3]),
        ("10 - 11", [10, 11]),
    ],
)
def test_device_ids(value: Any, expected: list[int]) -> None:
    assert parse_device_ids(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0-3,3", "NPU 3 more than once"),
        ([1, "1"], "NPU 1 more than once"),
        ("7-0", "range '7-0' runs backwards"),
        ("zero", "'zero' is not an NPU id"),
        ("0,,1", "'' is not an NPU id"),
        ("-1", "'-1' is not an NPU id"),
        ([-1], "-1 is not an NPU id"),
        ("", "at least one"),
        ([], "at least one"),
        (True, "must be NPU ids"),
        ({"0": 1}, "must be NPU ids"),
        (1.5, "must be NPU ids"),
    ],
)
def test_invalid_device_ids(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_device_ids(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-2,6", [0, 1, 2, 6]),
        ("6,0-1,1", [0, 1, 6]),  # sorted, once each
        ("0-3,abc,5", [0, 1, 2, 3, 5]),  # what cannot be read is skipped
        ("7-0", []),
        ("", []),
        (None, []),
    ],
)
def test_read_device_ids_of_another_tool(value: Any, expected: list[int]) -> None:
    assert read_device_ids(value) == expected


def test_the_settings_model_reads_npu_devices_with_the_parser() -> None:
    from llava_devserver import config

    assert config.parse_device_ids is parse_device_ids


# --------------------------------------------------------------------------- NPUs held by a container


def _container(
    name: str, devices: tuple[str, ...] = (), env: tuple[str, ...] = (), state: Any = "running"
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Name": f"/{name}",
        "HostConfig": {"Devices": [{"PathOnHost": d, "PathInContainer": d} for d in devices] or None},
        "Config": {"Env": list(env)},
    }
    if state == "running":
        entry["State"] = {"Running": True, "Status": "running"}
    elif state == "exited":
        entry["State"] = {"Running": False, "Status": "exited"}
    elif state == "paused":
        entry["State"] = {"Running": True, "Paused": True, "Status": "paused"}
    elif state == "no-running-key":
        entry["State"] = {"Status": "created"}
    # state None: no State at all
    return entry


def test_held_npus_by_device_and_by_the_ascend_runtime() -> None:
    entry = _container(
        "job", ("/dev/davinci1", "/dev/davinci_manager", "/dev/davinci10"), ("ASCEND_VISIBLE_DEVICES=0-1,6",)
    )
    assert held_npus(entry) == {
        1: "--device=/dev/davinci1",
        10: "--device=/dev/davinci10",
        0: "ASCEND_VISIBLE_DEVICES=0-1,6",
        6: "ASCEND_VISIBLE_DEVICES=0-1,6",
    }


@pytest.mark.parametrize(
    ("state", "running"),
    [("running", True), ("paused", True), ("exited", False), ("no-running-key", False), (None, False)],
)
def test_only_a_running_container_holds_devices(state: Any, running: bool) -> None:
    entry = _container("other", ("/dev/davinci0",), state=state)
    assert is_running(entry) is running
    expected = [HeldNpu(0, "other", "--device=/dev/davinci0")] if running else []
    assert npus_held_elsewhere([entry], [0], "ours") == expected


def test_own_container_and_npus_not_wanted_are_left_out() -> None:
    entries = [
        _container("llava-train", ("/dev/davinci0", "/dev/davinci1")),
        _container("elsewhere", ("/dev/davinci5", "/dev/davinci10")),
        _container("runtime", env=("PATH=/bin", "ASCEND_VISIBLE_DEVICES=1-2")),
    ]
    assert npus_held_elsewhere(entries, [0, 1], "llava-train") == [
        HeldNpu(1, "runtime", "ASCEND_VISIBLE_DEVICES=1-2")
    ]
    assert [(h.container, h.npu) for h in npus_held_elsewhere(entries, [1, 10], None)] == [
        ("llava-train", 1),
        ("elsewhere", 10),
        ("runtime", 1),
    ]
    assert npus_held_elsewhere(entries, [3, 4], "") == []


def test_inspect_output_forms() -> None:
    entry = _container("a", ("/dev/davinci0",))
    reduced = {"name": "a", "running": True, "devices": ["/dev/davinci0"], "visible": None}
    assert inspect_entries(json.dumps([entry])) == [reduced]
    assert inspect_entries(json.dumps(entry)) == [reduced]  # `docker inspect` of one id, as an object
    assert inspect_entries([entry]) == [reduced]
    # what the roles' `docker inspect --format HOLDERS_FORMAT` prints: one reduced object a line
    assert inspect_entries(json.dumps(reduced) + "\n" + json.dumps(reduced | {"name": "b"})) == [
        reduced,
        reduced | {"name": "b"},
    ]
    assert inspect_entries("  \n") == [] and inspect_entries(None) == []
    with pytest.raises(ValueError, match="docker inspect output is not JSON"):
        inspect_entries("Cannot connect to the Docker daemon")


def test_the_sentence_names_the_npu_the_container_and_what_to_do() -> None:
    assert held_npu_problem(HeldNpu(1, "other-user-job", "--device=/dev/davinci1")) == (
        "NPU 1 (/dev/davinci1) is held by the running container 'other-user-job' (--device=/dev/davinci1); "
        "one NPU cannot serve two containers: stop it (`docker stop other-user-job`) or leave NPU 1 out of "
        "npu_devices"
    )


# -------------------------------------------------------------------------- both roles use the one rule


def _npu_check_filter() -> ModuleType:
    return npu_check_bound


def test_preflight_and_container_role_agree_on_every_kind_of_container() -> None:
    entries = [
        _container("no-state", ("/dev/davinci0",), state=None),
        _container("created", ("/dev/davinci0",), state="no-running-key"),
        _container("exited", ("/dev/davinci1",), state="exited"),
        _container("paused", ("/dev/davinci2",), state="paused"),
        _container("runtime", env=("ASCEND_VISIBLE_DEVICES=3",)),
        _container("llava-pretrain", ("/dev/davinci0",)),
    ]
    text = json.dumps(entries)
    preflight = _npu_check_filter().npu_check_bound_problems(text, [0, 1, 2, 3], "llava-pretrain")
    container = container_spec.bound_npu_problems("h1", text, [0, 1, 2, 3], "llava-pretrain")
    assert [f"h1: {p}" for p in preflight] == container
    assert [p.split("'")[1] for p in preflight] == ["paused", "runtime"]


def test_the_filter_turns_bad_input_into_a_filter_error() -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(
        AnsibleFilterError, match="npu_check_bound_problems: docker inspect output is not JSON"
    ):
        _npu_check_filter().npu_check_bound_problems("Cannot connect to the Docker daemon", [0], None)
