"""Rolling batches: the settings (rolling_batch, max_fail_percentage), the play headers of host.yml and
container.yml that read them, and what ansible-playbook does with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llava_devserver import config
from llava_devserver.rolling import play_batches
from llava_devserver.runner import run_playbook
from test_runner import local_inventory

ROOT = Path(__file__).resolve().parents[2]
ROLLING_PLAYS = ("playbooks/host.yml", "playbooks/container.yml")


@pytest.mark.parametrize(
    ("value", "parsed"), [(2, 2), ("3", 3), ("25%", "25%"), (" 100 % ", "100%"), ("2.5", None)]
)
def test_rolling_batch_values(value: object, parsed: object) -> None:
    if parsed is None:
        with pytest.raises(ValueError, match="percentage"):
            config.parse_rolling_batch(value)
    else:
        assert config.parse_rolling_batch(value) == parsed


@pytest.mark.parametrize("value", [0, "0%", "150%", "abc", True, -1])
def test_bad_rolling_batch_is_an_error(tmp_path: Path, value: object) -> None:
    from llava_devserver.inventory import load_inventory

    inventory = local_inventory(tmp_path)
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings | {"rolling_batch": value}))
    loaded = load_inventory(inventory)
    with pytest.raises(config.FleetValidationError) as info:
        config.validate_fleet(loaded.hosts, loaded.origins)
    assert any(e.setting == "rolling_batch" for e in info.value.errors)


def test_settings_reach_llava_and_are_job_wide(tmp_path: Path) -> None:
    from llava_devserver.inventory import load_inventory

    inventory = local_inventory(tmp_path)
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    settings |= {"rolling_batch": "50%", "max_fail_percentage": 20}
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings))
    loaded = load_inventory(inventory)
    llava = config.validate_fleet(loaded.hosts, loaded.origins).to_vars()
    assert llava["node-a"]["rolling_batch"] == "50%" and llava["node-b"]["max_fail_percentage"] == 20
    loaded.hosts["node-b"]["rolling_batch"] = 1
    with pytest.raises(config.FleetValidationError, match="rolling_batch: must be the same on every server"):
        config.validate_fleet(loaded.hosts, loaded.origins)
    loaded.hosts["node-b"]["rolling_batch"] = "50%"
    loaded.hosts["node-b"]["max_fail_percentage"] = 101
    with pytest.raises(config.FleetValidationError, match="max_fail_percentage"):
        config.validate_fleet(loaded.hosts, loaded.origins)


def test_play_batches() -> None:
    hostvars = {"a": {}, "b": {"llava": {"rolling_batch": 2, "max_fail_percentage": 0}}}
    assert play_batches(["a", "b"], hostvars) == {"serial": 2, "max_fail_percentage": 0}
    unset = {"a": {"llava": {"rolling_batch": None, "max_fail_percentage": None}}}
    assert play_batches(["a"], unset) == {"serial": 0, "max_fail_percentage": 100}
    assert play_batches([], {}) == {"serial": 0, "max_fail_percentage": 100}  # --syntax-check


def _header(playbook: str) -> dict[str, str]:
    play = yaml.safe_load((ROOT / playbook).read_text())[0]
    return {key: play[key] for key in ("serial", "max_fail_percentage")}


def test_the_plays_that_restart_services_have_the_header() -> None:
    headers = [_header(p) for p in ROLLING_PLAYS]
    assert headers[0] == headers[1] and "llava_play_batch" in headers[0]["serial"]


def _batches_play(tmp_path: Path, llava: dict[str, object]) -> Path:
    """Validate's effect (llava on every server), then a play with host.yml's own header."""
    header = _header(ROLLING_PLAYS[0])
    plays = [
        {
            "name": "Give every server its llava",
            "hosts": "devservers",
            "gather_facts": False,
            "tasks": [{"name": "Set llava", "ansible.builtin.set_fact": {"llava": llava}}],
        },
        {
            "name": "Restart something",
            "hosts": "devservers",
            "gather_facts": False,
            **header,
            "tasks": [
                {"name": "Batch", "ansible.builtin.debug": {"msg": "{{ ansible_play_batch | join(',') }}"}},
                {
                    "name": "Break node-a",
                    "ansible.builtin.fail": {"msg": "broken"},
                    "when": "inventory_hostname == 'node-a'",
                },
                {"name": "After", "ansible.builtin.debug": {"msg": "after"}},
            ],
        },
    ]
    path = tmp_path / "batches.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def _run(tmp_path: Path, llava: dict[str, object], name: str) -> tuple[list[str], dict]:
    inventory = local_inventory(tmp_path, ("node-a", "node-b", "node-c"))
    batches: list[str] = []

    def on_event(event: dict) -> None:
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == "Batch":
            msg = (data.get("res") or {}).get("msg")
            if msg not in batches:
                batches.append(msg)

    result = run_playbook(
        _batches_play(tmp_path, llava), inventory, run_dir=tmp_path / name, on_event=on_event
    )
    return batches, result.stats


def test_ansible_playbook_runs_the_batches(tmp_path: Path) -> None:
    batches, stats = _run(tmp_path, {"rolling_batch": 2, "max_fail_percentage": None}, "rolling")
    assert batches == ["node-a,node-b", "node-c"]
    assert stats["node-c"].ok == 3  # node-a's failure stopped only node-a
    # max_fail_percentage 0: the first failed batch stops the play; node-c never runs it.
    batches, stats = _run(tmp_path, {"rolling_batch": 2, "max_fail_percentage": 0}, "strict")
    assert batches == ["node-a,node-b"]
    assert stats["node-c"].ok == 1  # only the first play
    batches, _ = _run(tmp_path, {"rolling_batch": None, "max_fail_percentage": None}, "unset")
    assert batches == ["node-a,node-b,node-c"]
