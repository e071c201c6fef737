"""A rerun never disturbs a running job: the decisions of docker_engine (a daemon.json change waits) and
accel_check (skipped while the job runs or after it finished, last result kept), from the probe's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llava_devserver import job_guard as jg
from llava_devserver.config import Settings

REPO = Path(__file__).resolve().parents[2]


def _probe(state: str | None = None, **job: Any) -> dict[str, Any]:
    body = {"job": ({"state": state, **job} if state else {}), "llava_progress": {}}
    return jg.probe_result({"rc": 0, "stdout": json.dumps(body)})


RUNNING = _probe("running", pid=321, step=40, total_steps=200, container="llava-pretrain")


def test_probe_result_reads_states_errors_and_skips() -> None:
    assert RUNNING["ok"] and RUNNING["running"] and RUNNING["pid"] == 321
    assert _probe("finished")["finished"] and not _probe("finished")["running"]
    assert _probe()["ok"] and _probe()["state"] is None
    failed = jg.probe_result({"rc": 1, "stdout": json.dumps({"error": "state folder was tampered with"})})
    assert not failed["ok"] and "tampered" in failed["error"]
    garbled = jg.probe_result({"rc": 2, "stdout": "", "stderr": "python3: not found"})
    assert not garbled["ok"] and garbled["error"] == "python3: not found"
    assert jg.probe_result({"skipped": True})["ok"]


def test_changed_daemon_json_waits_while_the_job_runs_and_says_what_waits() -> None:
    current = {"log-driver": "json-file", "insecure-registries": ["a:5000"]}
    wanted = {**current, "insecure-registries": ["a:5000", "b:5000"]}
    decision = jg.docker_restart_decision(RUNNING, "devserver-2", "llava-pretrain", current, wanted)
    assert decision["wait"] and decision["keys"] == ["insecure-registries"]
    message = decision["message"]
    assert message.startswith("devserver-2: the change of /etc/docker/daemon.json (insecure-registries)")
    assert "the training job in llava-pretrain (pid 321, step 40/200) runs" in message
    assert "run playbooks/host.yml again when the job has ended" in message


def test_no_job_or_an_ended_job_lets_the_change_through() -> None:
    current: dict[str, Any] = {}
    wanted = {"log-driver": "json-file"}
    for probe in (_probe(), _probe("finished"), _probe("failed"), _probe("stopped")):
        assert not jg.docker_restart_decision(probe, "h", "c", current, wanted)["wait"]
    assert jg.docker_restart_decision(RUNNING, "h", "c", wanted, wanted) == {
        "wait": False,
        "keys": [],
        "message": None,
    }


def test_unknown_job_state_makes_the_change_wait() -> None:
    probe = jg.probe_result({"rc": 1, "stdout": json.dumps({"error": "docker exec llava-pretrain: timeout"})})
    decision = jg.docker_restart_decision(probe, "h", "llava-pretrain", {}, {"a": 1})
    assert decision["wait"] and "cannot be read (docker exec llava-pretrain: timeout)" in decision["message"]


def test_accel_check_skips_under_a_running_job_even_when_forced() -> None:
    for force, tags in ((False, []), (True, []), (False, ["accel_check"])):
        decision = jg.accel_skip_decision(RUNNING, "devserver-1", "llava-pretrain", force, tags)
        assert decision["skip"], (force, tags)
        assert "the training job in llava-pretrain (pid 321, step 40/200) runs" in decision["message"]
    assert "does not override" in jg.accel_skip_decision(RUNNING, "h", "c", True, [])["message"]


def test_accel_check_after_the_job_finished_runs_only_when_asked() -> None:
    done = _probe("finished", pid=5)
    skipped = jg.accel_skip_decision(done, "h", "c", False, ["all"])
    assert (
        skipped["skip"] and "has finished" in skipped["reason"] and "accel_check_force" in skipped["message"]
    )
    assert not jg.accel_skip_decision(done, "h", "c", True, [])["skip"]
    assert not jg.accel_skip_decision(done, "h", "c", False, ["accel_check"])["skip"]
    for state in (None, "failed", "stopped"):
        assert not jg.accel_skip_decision(_probe(state), "h", "c", False, [])["skip"], state


def test_skipped_report_keeps_the_last_result() -> None:
    decision = jg.accel_skip_decision(RUNNING, "h", "c")
    last = {
        "checked_at": "2026-12-01T09:00:00Z",
        "report": {"verdict": "PASS", "summary": "accel-check PASS h: cpu x2"},
    }
    report = jg.accel_skipped_report(decision, last)
    assert report["verdict"] == "skipped" and report["skipped"] is True
    assert report["last"] == last["report"] and report["last_checked_at"] == "2026-12-01T09:00:00Z"
    assert "last result (2026-12-01T09:00:00Z): accel-check PASS h: cpu x2" in report["summary"]
    assert "no earlier result" in jg.accel_skipped_report(decision, None)["summary"]


def test_accel_check_force_is_a_setting_in_the_llava_dict() -> None:
    field = Settings.model_fields["accel_check_force"]
    assert field.default is False and "while a job runs" in str(field.description)
    tasks = yaml.safe_load((REPO / "roles/accel_check/tasks/main.yml").read_text())
    decide = next(t for t in tasks if t["name"] == "Decide whether the check runs on this host")
    assert "llava.accel_check_force" in decide["ansible.builtin.set_fact"]["accel_check_skip"]
    assert "ansible_run_tags" in decide["ansible.builtin.set_fact"]["accel_check_skip"]


def test_docker_handlers_never_restart_under_a_waiting_change() -> None:
    handlers = yaml.safe_load((REPO / "roles/docker_engine/handlers/main.yml").read_text())
    assert len(handlers) == 2
    for handler in handlers:
        assert "not (docker_engine_restart.wait | default(true))" in handler["when"], handler["name"]
    tasks = yaml.safe_load((REPO / "roles/docker_engine/tasks/daemon-json.yml").read_text())
    write = next(t for t in tasks if t["name"] == "Write the merged daemon configuration")
    assert "not docker_engine_restart.wait" in write["when"] and write["notify"] == "Restart Docker"
