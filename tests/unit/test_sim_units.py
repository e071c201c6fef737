"""Unit tests of the simulated fleet that need no Docker engine: faults, state edits, the inventory."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
import yaml

from llava_devserver.cli import build_parser
from llava_devserver.npu_smi import default_sim_state
from llava_devserver.sim.faults import Fault, FaultError, edit_state, parse_fault, parse_host_fault
from llava_devserver.sim.fleet import FleetError, check_fleet_name, container_name, volume_name
from llava_devserver.sim.inventory import (
    SimHost,
    SimJob,
    device_range,
    render_group_vars,
    sim_group_vars,
    write_inventory,
)

HOSTS = ["devserver-1", "devserver-2", "devserver-3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card-critical", Fault("card-critical")),
        ("card-critical=3", Fault("card-critical", "3")),
        ("card-warning=1", Fault("card-warning", "1")),
        ("fewer-cards", Fault("fewer-cards")),
        ("driver-version=24.1.rc2", Fault("driver-version", "24.1.rc2")),
        (" npu-smi-8005 ", Fault("npu-smi-8005")),
        ("device-bound=5", Fault("device-bound", "5")),
    ],
)
def test_parse_fault(text: str, expected: Fault) -> None:
    assert parse_fault(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("card-crit", "unknown fault 'card-crit'"),
        ("driver-version", "needs a value"),
        ("driver-version=", "needs a value"),
        ("ip-forward-0=1", "takes no value"),
        ("card-alarm=x", "takes a card number"),
    ],
)
def test_parse_fault_errors(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_fault(text)


def test_parse_host_fault_by_name_number_and_all() -> None:
    assert parse_host_fault("devserver-2:fewer-cards", HOSTS) == [("devserver-2", Fault("fewer-cards"))]
    assert parse_host_fault("3:card-alarm=2", HOSTS) == [("devserver-3", Fault("card-alarm", "2"))]
    assert [host for host, _ in parse_host_fault("all:ip-forward-0", HOSTS)] == HOSTS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fewer-cards", "write HOST:FAULT"),
        ("4:fewer-cards", "no server 4"),
        ("devserver-9:fewer-cards", "no host 'devserver-9'"),
        ("1:bogus", "unknown fault"),
    ],
)
def test_parse_host_fault_errors(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_host_fault(text, HOSTS)


def test_edit_state_health_and_count() -> None:
    state = default_sim_state(8, "23.0.5")
    critical = edit_state(state, parse_fault("card-critical=3"))
    assert [card["health"] for card in critical["cards"]] == ["OK"] * 3 + ["Critical"] + ["OK"] * 4
    assert all(card["health"] == "OK" for card in state["cards"]), "the input state is not modified"
    assert [c["npu"] for c in edit_state(state, parse_fault("fewer-cards"))["cards"]] == list(range(7))
    assert len(edit_state(state, parse_fault("fewer-cards=3"))["cards"]) == 5
    with pytest.raises(FaultError, match="no card 9"):
        edit_state(state, parse_fault("card-warning=9"))
    with pytest.raises(FaultError, match="only 8 cards"):
        edit_state(state, parse_fault("fewer-cards=9"))


def test_edit_state_driver_and_error() -> None:
    state = default_sim_state(8, "23.0.5")
    assert edit_state(state, parse_fault("driver-missing"))["driver_installed"] is False
    other = edit_state(state, parse_fault("driver-version=24.1.0"))
    assert (other["driver_version"], other["npu_smi_version"]) == ("24.1.0", "24.1.0")
    assert edit_state(state, parse_fault("npu-smi-8005"))["error"] == "-8005"
    with pytest.raises(FaultError, match="not a state fault"):
        edit_state(state, parse_fault("ip-forward-0"))


def test_names() -> None:
    assert container_name("demo", 2) == "llava-sim-demo-devserver-2"
    assert volume_name("demo", 2) == "llava-sim-demo-devserver-2-docker"
    assert check_fleet_name("ci-1") == "ci-1"
    for bad in ("Demo", "a b", "-x", "x" * 40, ""):
        with pytest.raises(FleetError, match="fleet name"):
            check_fleet_name(bad)


def test_device_range() -> None:
    assert device_range(1) == "0"
    assert device_range(2) == "0-1"
    assert device_range(8) == "0-7"
    with pytest.raises(ValueError, match="must be >= 1"):
        device_range(0)


def test_inventory_without_job(tmp_path: Path) -> None:
    hosts = [SimHost("devserver-1", "172.30.0.2"), SimHost("devserver-2", "172.30.0.3")]
    key = tmp_path / "ssh" / "id_ed25519"
    settings = sim_group_vars(2, 8, 2, None, "23.0.5")
    ini = write_inventory(tmp_path, hosts, key, "unit", settings, job=False)

    parser = configparser.ConfigParser(allow_no_value=True, delimiters=(" ",))
    parser.read_string(ini.read_text())
    assert list(parser["devservers"]) == ["devserver-1", "devserver-2"]
    assert parser["devservers"]["devserver-2"] == "ansible_host=172.30.0.3"
    text = ini.read_text()
    assert "ansible_user=root" in text
    assert f"ansible_ssh_private_key_file={key}" in text

    group_vars_text = (tmp_path / "group_vars" / "all.yml").read_text()
    assert "INFRASTRUCTURE ONLY" in group_vars_text
    group_vars = yaml.safe_load(group_vars_text)
    assert group_vars["npu_devices"] == "0-1"
    assert group_vars["npu_count"] == 8
    assert group_vars["npu_driver_version"] == "23.0.5"
    assert "ascendcloud_package" not in group_vars


def _job(tmp_path: Path) -> SimJob:
    package = tmp_path / "AscendCloud-6.3.906-20260101000000.zip"
    package.write_bytes(b"PK")
    assets = {}
    for key in ("llm", "vision_tower", "images"):
        (tmp_path / key).mkdir()
        assets[key] = tmp_path / key
    assets["pretrain_json"] = tmp_path / "blip_laion_cc_sbu_558k.json"
    assets["pretrain_json"].write_text("[]")
    archive = tmp_path / "train.tar"
    archive.write_bytes(b"")
    return SimJob(
        package=package, assets=assets, image_tag="llava-devserver/sim-train:abc", image_archive=archive
    )


def test_group_vars_with_job_pass_the_settings_model(tmp_path: Path) -> None:
    """What `sim up` writes must be valid settings for the project's own model, batch arithmetic included."""
    from llava_devserver.config import validate_fleet

    job = _job(tmp_path)
    settings = sim_group_vars(3, 8, 2, job, "23.0.5")
    assert settings["global_batch_size"] == settings["per_device_train_batch_size"] * 2 * 3
    loaded = yaml.safe_load(render_group_vars(settings, "unit", job=True).split("---\n", 1)[1])
    assert loaded == settings
    raw = {f"devserver-{i}": {**loaded, "ansible_host": f"172.30.0.{i + 1}"} for i in range(1, 4)}
    fleet = validate_fleet(raw)
    first = fleet.hosts[0].to_vars()
    assert first["npu_devices"] == [0, 1]
    assert first["world_size"] == 6
    assert first["model_name_or_path"].endswith("/sim-assets/llm")
    assert first["container_image"] == job.image_tag


def test_group_vars_rejects_more_devices_than_cards() -> None:
    with pytest.raises(ValueError, match="exceed the cards"):
        sim_group_vars(1, 2, 4, None, "23.0.5")


def test_cli_rejects_a_misspelt_fault_before_touching_docker(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["sim", "up", "--hosts", "2", "--no-job", "--fault", "2:card-crit"])
    assert args.func(args) == 2
    assert "unknown fault 'card-crit'" in capsys.readouterr().err


def test_cli_registry_needs_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["sim", "up", "--hosts", "1", "--no-job", "--registry"])
    assert args.func(args) == 2
    assert "--registry serves the training image" in capsys.readouterr().err
