"""runner.py: the project root, run directories, the per-host results, and real runs over ansible-runner
against a local-connection inventory (no Docker, no SSH)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import runner
from llava_devserver.runner import ResultCollector, find_project_root, new_run_dir, run_playbook

PROJECT = Path(__file__).resolve().parents[2]


def local_inventory(tmp_path: Path, hosts: tuple[str, ...] = ("node-a", "node-b")) -> Path:
    """Hosts of `devservers` reached with the local connection, with settings that validate."""
    package = tmp_path / "AscendCloud-6.3.906-20240701.zip"
    package.write_bytes(b"PK")
    lines = ["[devservers]"] + [f"{h} ansible_host=127.0.0.{i + 1}" for i, h in enumerate(hosts)]
    lines += ["", "[devservers:vars]", "ansible_connection=local", f"ansible_python_interpreter={_python()}"]
    ini = tmp_path / "devserver.ini"
    ini.write_text("\n".join(lines) + "\n")
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    settings = {
        "ascendcloud_package": str(package),
        "npu_devices": "0-1",
        "per_device_train_batch_size": 4,
        "global_batch_size": 8 * len(hosts),
        "work_dir": str(tmp_path / "work"),
    }
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings))
    return ini


def _python() -> str:
    import sys

    return sys.executable


def write_playbook(tmp_path: Path, body: str, name: str = "play.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


PLAYBOOK = """\
    - name: Test play
      hosts: devservers
      gather_facts: false
      tasks:
        - name: Record the run dir
          ansible.builtin.copy:
            dest: "{{ out }}/{{ inventory_hostname }}.run_dir"
            content: "{{ lookup('ansible.builtin.env', 'LLAVA_RUN_DIR') }}"
            mode: "0644"
        - name: Look around
          ansible.builtin.command: "true"
          changed_when: false
        - name: Fail on node-b
          ansible.builtin.fail:
            msg: "node-b: card 3 is broken; replace it"
          when: inventory_hostname == 'node-b' and (break_b | default(false) | bool)
"""


def test_project_root_from_the_package_and_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(runner.HOME_ENV, raising=False)
    assert find_project_root() == PROJECT
    (tmp_path / "site.yml").write_text("---\n")
    monkeypatch.setenv(runner.HOME_ENV, str(tmp_path))
    assert find_project_root() == tmp_path.resolve()
    monkeypatch.setenv(runner.HOME_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(runner.ProjectNotFoundError, match=r"no site\.yml"):
        find_project_root()


def test_project_root_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runner.HOME_ENV, raising=False)
    with pytest.raises(runner.ProjectNotFoundError, match=runner.HOME_ENV):
        find_project_root(tmp_path)


def test_run_dirs_are_utc_stamps_and_never_shared(tmp_path: Path) -> None:
    now = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    first = new_run_dir(tmp_path, now)
    assert first == tmp_path / "runs" / "20260304-050607"
    first.mkdir(parents=True)
    assert new_run_dir(tmp_path, now) == tmp_path / "runs" / "20260304-050607-2"


def test_collector_on_recorded_events() -> None:
    collector = ResultCollector()
    events: list[dict[str, Any]] = [
        {"event": "runner_on_ok", "event_data": {"host": "a", "task": "Install", "res": {"changed": True}}},
        {"event": "runner_on_ok", "event_data": {"host": "a", "task": "Read", "res": {"changed": False}}},
        {
            "event": "runner_on_failed",
            "event_data": {"host": "b", "task": "Check", "res": {"msg": "NPU 1:\n  Critical"}},
        },
        {
            "event": "runner_on_failed",
            "event_data": {
                "host": "b",
                "task": "Loop",
                "res": {"results": [{"failed": True, "stderr": "x"}]},
            },
        },
        {
            "event": "runner_on_unreachable",
            "event_data": {"host": "c", "task": "Gather", "res": {"msg": "ssh"}},
        },
        {
            "event": "runner_on_ok",
            "event_data": {"host": "a", "task": "Fact", "res": {"ansible_facts": {"k": 1}}},
        },
    ]
    for event in events:
        collector(event)
    assert collector.stats["a"].to_dict() == {
        "ok": 3,
        "changed": 1,
        "failed": 0,
        "unreachable": 0,
        "skipped": 0,
    }
    assert collector.changed_tasks == {"a": ["Install"]}
    assert collector.failures["b"] == ["Check: NPU 1: Critical", "Loop: x"]
    assert collector.failures["c"] == ["Gather: unreachable: ssh"]
    assert collector.facts == {"a": {"k": 1}}
    collector(
        {"event": "playbook_on_stats", "event_data": {"ok": {"a": 5}, "changed": {"a": 2}, "failures": {}}}
    )
    assert (collector.stats["a"].ok, collector.stats["a"].changed) == (5, 2)


def test_a_clean_run(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    run_dir = tmp_path / "run"
    events: list[dict[str, Any]] = []
    result = run_playbook(
        playbook, inventory, run_dir=run_dir, extravars={"out": str(tmp_path)}, on_event=events.append
    )
    assert (result.rc, result.status, result.exit_code) == (0, "successful", 0)
    assert set(result.stats) == {"node-a", "node-b"}
    assert result.stats["node-a"].to_dict() == {
        "ok": 2,
        "changed": 1,
        "failed": 0,
        "unreachable": 0,
        "skipped": 1,
    }
    assert result.changed_tasks == {"node-a": ["Record the run dir"], "node-b": ["Record the run dir"]}
    assert result.failures == {}
    # The playbook saw the run dir (the report callback writes there), and the log holds the whole stdout.
    assert (tmp_path / "node-a.run_dir").read_text() == str(run_dir)
    log = (run_dir / "ansible.log").read_text()
    assert "TASK [Look around]" in log and "PLAY RECAP" in log
    assert any(e["event"] == "playbook_on_stats" for e in events)


def test_a_host_failure_and_check_mode(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    result = run_playbook(
        playbook,
        inventory,
        run_dir=tmp_path / "run",
        check=True,
        extravars=[f"out={tmp_path}", "break_b=true"],
    )
    assert result.exit_code == 1 and result.rc != 0
    assert result.failed_hosts == ["node-b"]
    assert result.failures["node-b"] == ["Fail on node-b: node-b: card 3 is broken; replace it"]
    assert result.stats["node-a"].failed == 0
    # Check mode: the copy says it would change, and nothing was written.
    assert result.changed_tasks["node-a"] == ["Record the run dir"]
    assert not (tmp_path / "node-a.run_dir").exists()


def test_limit_and_tags(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(
        tmp_path,
        """\
        - name: Tagged
          hosts: devservers
          gather_facts: false
          tasks:
            - name: Tagged task
              ansible.builtin.command: "true"
              tags: [mine]
            - name: Other task
              ansible.builtin.command: "true"
              tags: [other]
        """,
    )
    result = run_playbook(playbook, inventory, run_dir=tmp_path / "run", limit="node-a", tags="mine")
    assert result.exit_code == 0
    assert result.changed_tasks == {"node-a": ["Tagged task"]}
