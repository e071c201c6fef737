"""The fleet report built from plain per-host data (no Ansible), and the `report` command."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llava_devserver import report
from llava_devserver.cli import main

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "report.md"
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("counts", "reached", "status"),
    [
        ({"ok": 3, "changed": 1, "failures": 1}, True, "failed"),
        ({"ok": 0, "unreachable": 1}, True, "unreachable"),
        ({"ok": 5, "changed": 2}, True, "changed"),
        ({"ok": 5, "skipped": 3}, True, "ok"),
        ({"skipped": 3}, True, "skipped"),
        ({}, False, "skipped"),
    ],
)
def test_host_status(counts: dict[str, int], reached: bool, status: str) -> None:
    assert report.host_status(counts, reached) == status


@pytest.mark.parametrize(
    ("role", "task", "message", "key"),
    [
        (
            "npu_check",
            "Query the NPUs",
            "npu-smi info: dcmi module initialize failed, ret -8005",
            "npu_smi_8005",
        ),
        ("npu_check", "Check card health", "NPU 3 health is Alarm (expected OK)", "npu_card_unhealthy"),
        ("npu_check", "Check card health", "card 5 is not OK", "npu_card_unhealthy"),
        ("npu_check", "Count cards", "expected 8 NPUs, npu-smi lists 7", "npu_count"),
        ("npu_check", "Check the driver", "driver version 23.0.5, expected 23.0.7", "driver_version"),
        (
            "training_container",
            "Start",
            "invalid mount config: bind source path does not exist: /data",
            "mount_source",
        ),
        (
            "docker_engine",
            "Info",
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock",
            "docker_daemon",
        ),
        ("training_container", "Start", "Error: No such image: swr.cn/ascend:1", "image_missing"),
        ("llava_assets", "Copy", "write error: No space left on device", "disk_full"),
        ("llava_pretrain", "Wait", "HCCL init failed: connect timeout to 10.0.0.1:29500", "hccl"),
        ("llava_pretrain", "Wait", "RuntimeError: NPU out of memory", "out_of_memory"),
        ("accel_check", "Run the check", "torch_npu import failed", "accel_check"),
        (None, "Validate", "FleetValidationError: node-1: npu_devices: bad range", "validation"),
        ("host", "Something odd", "exit status 42", "unknown"),
    ],
)
def test_remedy_for_known_failures(role: str | None, task: str, message: str, key: str) -> None:
    remedy = report.find_remedy("failed", report.FailedTask(task, role, message))
    assert remedy is not None and remedy.key == key


def test_validation_wins_over_the_settings_its_message_names() -> None:
    message = "Invalid inventory:\nnode-2: npu_count: Input should be a valid integer"
    failed = report.FailedTask(
        "Validate the settings of every server", None, message, action="llava_validate"
    )
    remedy = report.find_remedy("failed", failed)
    assert remedy is not None and remedy.key == "validation"


def test_no_remedy_for_healthy_hosts_and_one_for_unreachable() -> None:
    assert report.find_remedy("ok") is None
    assert report.find_remedy("changed") is None
    remedy = report.find_remedy("unreachable", report.FailedTask("Ping", None, "ssh: connect timed out"))
    assert remedy is not None and remedy.key == "unreachable"
    diverged = report.find_remedy("ok", None, "loss nan")
    assert diverged is not None and diverged.key == "loss_nan"


def test_docs_list_every_remedy() -> None:
    text = DOCS.read_text()
    keys = [r.key for r in report.REMEDIES] + ["unreachable", "not_reached", "unknown"]
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_new_run_dir_and_latest(tmp_path: Path) -> None:
    first = report.new_run_dir(tmp_path, NOW)
    second = report.new_run_dir(tmp_path, NOW)  # same second: kept apart
    assert first == tmp_path / "runs" / "20261130-120000"
    assert second == tmp_path / "runs" / "20261130-120000-1"
    assert report.latest_run_dir(tmp_path / "runs") is None  # no report yet
    (first / "report.md").write_text("x")
    assert report.latest_run_dir(tmp_path / "runs") == first


def outcomes() -> list[report.HostOutcome]:
    return [
        report.HostOutcome(
            "node-1",
            {"ok": 40, "changed": 3},
            facts={
                "npu": {"count": 8, "chip": "910B3", "healthy": 8, "driver_version": "23.0.7"},
                "host": {"docker_version": "24.0.9"},
                "container": {"name": "llava", "state": "running"},
                "accel": {"verdict": "pass", "summary": "matmul on 8 NPUs"},
                "job": {"state": "running", "step": 123, "grad": math.nan},
            },
        ),
        report.HostOutcome(
            "node-2",
            {"ok": 10, "failures": 1},
            failed_task=report.FailedTask(
                "Check card health", "npu_check", "NPU 3 | health Critical\nsee npu-smi info -t health -i 3"
            ),
            facts={"npu": {"summary": "8× 910B3, card 3 Critical"}},
        ),
        report.HostOutcome("node-3", {}, reached=False),
    ]


def test_write_report(tmp_path: Path) -> None:
    run_dir = report.new_run_dir(tmp_path, NOW)
    for host, log in (("node-1", "hf_trainer.log"), ("node-2", "no_loss.log")):
        (run_dir / "logs" / host).mkdir(parents=True)
        shutil.copy(LOGS / log, run_dir / "logs" / host / "train.log")
    paths = report.write_report(run_dir, outcomes(), playbook="site.yml", started=NOW)

    data = json.loads(paths.json.read_text())  # strict JSON: NaN became null
    assert data["schema"] == 1 and data["result"] == "failed" and data["loss_png"] == "loss.png"
    assert data["totals"] == {"ok": 0, "changed": 1, "failed": 1, "unreachable": 0, "skipped": 1}
    one, two, three = data["hosts"]
    assert (
        one["npu"] == "8× 910B3, 8 OK"
        and one["docker"] == "24.0.9"
        and one["accel"] == "pass (matmul on 8 NPUs)"
    )
    assert one["job"] == "running" and one["step"] == 123 and one["last_loss"] == 2.28  # step from job fact
    assert one["facts"]["job"]["grad"] is None
    assert one["loss"]["summary"]["steps"] == 20
    assert two["remedy"]["key"] == "npu_card_unhealthy"
    assert two["loss"] == {"log": "logs/node-2/train.log", "error": "no loss lines", "summary": None}
    assert three["reached"] is False and three["remedy"]["key"] == "not_reached"
    assert three["note"] == "not reached: the run stopped at node-2 (Check card health)"

    markdown = paths.markdown.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(rows) == 5 and all(row.count(" | ") == 12 for row in rows[2:])  # 13 cells, pipes escaped
    assert "NPU 3 \\| health Critical see npu-smi" in rows[3]  # one line, pipe escaped
    assert rows[3].startswith("| node-2 | failed | 8× 910B3, card 3 Critical |")
    assert "npu_check : Check card health" in rows[3]
    assert paths.loss_png is not None and paths.loss_png.read_bytes()[:4] == b"\x89PNG"
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == run_dir


def test_cells_from_the_facts_the_roles_publish() -> None:
    # the shapes npu_check and docker_engine set (roles/*/tasks/main.yml)
    cards = [{"npu": i, "name": "910B3", "health": "OK" if i != 3 else "Alarm"} for i in range(8)]
    npu = {"npu_count_found": 8, "cards": cards, "driver_version": "23.0.7", "problems": ["NPU 3: Alarm"]}
    assert report.npu_cell(npu) == "8× 910B3, 7 OK, not OK: NPU 3 Alarm, 1 problem(s)"
    host = {"ip_forward": 1, "docker_installed_by_role": True, "docker_daemon_mode": "systemd"}
    assert report.docker_cell(host, None) == "installed (systemd)"
    assert report.docker_cell({"ip_forward": 1}, None) == ""
    assert report.container_cell({"name": "llava", "status": "running", "image": "x"}) == "llava (running)"
    job = {"state": "running", "step": 5, "total_steps": 9, "samples_per_s": 3}
    outcome = report.HostOutcome("n", {"ok": 1}, facts={"job": job})
    entry = report.build_report(Path("/nonexistent-run"), [outcome])["hosts"][0]
    row = report.render_markdown({**report.build_report(Path("/nonexistent-run"), []), "hosts": [entry]})
    assert "| running, 3.0 samples/s | 5/9 |" in row


def test_report_without_logs_has_no_plot(tmp_path: Path) -> None:
    run_dir = tmp_path / "elsewhere"
    paths = report.write_report(run_dir, [report.HostOutcome("node-1", {"ok": 2})])
    data = json.loads(paths.json.read_text())
    assert data["result"] == "ok" and data["loss_png"] is None and paths.loss_png is None
    assert not (run_dir / "loss.png").exists() and not (tmp_path / "latest").exists()
    assert "![" not in paths.markdown.read_text()


def test_hosts_left_out_by_limit_of_a_healthy_run(tmp_path: Path) -> None:
    outcomes = [report.HostOutcome("a", {"ok": 3}), report.HostOutcome("b", {}, reached=False)]
    data = report.build_report(tmp_path, outcomes)
    assert data["result"] == "ok"
    left_out = data["hosts"][1]
    assert left_out["status"] == "skipped" and left_out["remedy"] is None
    assert left_out["note"] == "not in this run (--limit)"


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["report", "--runs", str(runs)]) == 2
    assert "no run with a report" in capsys.readouterr().err
    old = report.new_run_dir(tmp_path, NOW)
    report.write_report(old, [report.HostOutcome("old-host", {"ok": 1})])
    new = report.new_run_dir(tmp_path, datetime(2026, 12, 1, tzinfo=UTC))
    report.write_report(new, [report.HostOutcome("new-host", {"ok": 1})])
    assert main(["report", "--runs", str(runs)]) == 0
    assert "| new-host | ok |" in capsys.readouterr().out
    assert main(["report", str(old), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hosts"][0]["host"] == "old-host"
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "absent/report.md: cannot read" in capsys.readouterr().err
