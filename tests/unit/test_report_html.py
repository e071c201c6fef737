"""The report's header, whole messages and report.html (self-contained: loss curve, time by role,
readiness figures), rendered in a real headless Chromium whose screenshot lands in the test artifacts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llava_devserver import report
from llava_devserver.report_html import readiness_rows

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
LONG = "validate: " + "; ".join(f"ds-{i}: work_dir: /etc is a system directory" for i in range(12))
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # ignored by git; CI keeps it


def _outcomes() -> list[report.HostOutcome]:
    accel = {
        "verdict": "PASS",
        "accelerator": "npu",
        "device_count": 8,
        "tflops_median": 281.5,
        "allreduce": {"busbw_gbps": 152.25, "world_size": 16},
        "summary": "matmul ok",
    }
    return [
        report.HostOutcome("node-1", {"ok": 40, "changed": 3}, facts={"accel": accel}),
        report.HostOutcome(
            "node-2", {"ok": 3, "failures": 1}, failed_task=report.FailedTask("Validate", None, LONG)
        ),
    ]


CONTEXT = report.run_context(
    {"check": True, "subset": "node-*", "tags": ("all",), "skip_tags": ("train",)},
    [
        "/venv/bin/ansible-playbook",
        "site.yml",
        "-e",
        "hf_token=SECRET",
        "-e",
        "@vars.yml",
        "--extra-vars=x=SECRET",
    ],
    {"llava-devserver": "0.1.0", "ansible-core": "2.19.14"},
    {"world_size": 16, "global_batch_size": 256, "container_image": "swr.example/pytorch:1"},
)
TIMINGS = {
    "node-1": {"npu_check": 2.5, "docker_engine": 30.0, "(play tasks)": 1.0},
    "node-2": {"npu_check": 3.0},
}


def _write(tmp_path: Path) -> report.ReportPaths:
    run_dir = tmp_path / "runs" / "20261201-100000"
    (run_dir / "logs" / "node-1").mkdir(parents=True)
    shutil.copy(LOGS / "hf_trainer.log", run_dir / "logs" / "node-1" / "train.log")
    return report.write_report(
        run_dir, _outcomes(), playbook="site.yml", started=NOW, context=CONTEXT, timings=TIMINGS
    )


def test_context_never_shows_extra_vars() -> None:
    assert CONTEXT["command"] == "ansible-playbook site.yml -e … -e @vars.yml --extra-vars=…"
    assert CONTEXT["check_mode"] is True and CONTEXT["limit"] == "node-*"
    assert CONTEXT["tags"] is None and CONTEXT["skip_tags"] == ["train"]


def test_header_and_whole_messages_in_markdown_and_json(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    data = json.loads(paths.json.read_text())
    assert data["context"]["world_size"] == 16 and data["context"]["ansible_core"] == "2.19.14"
    assert data["hosts"][0]["seconds_by_role"] == {
        "npu_check": 2.5,
        "docker_engine": 30.0,
        "(play tasks)": 1.0,
    }
    markdown = paths.markdown.read_text()
    for line in ("- Check mode: yes", "- Limit: node-*", "- Global batch: 256", "- ansible-core: 2.19.14",
                 "- Image: swr.example/pytorch:1", "- World size: 16"):  # fmt: skip
        assert line in markdown, line
    assert "SECRET" not in markdown + paths.json.read_text() + (paths.html or paths.markdown).read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| node-2"))
    assert "…" in row and LONG not in row  # cut in the table
    assert "## Messages" in markdown and LONG in markdown  # whole below it
    assert f"`{paths.run_dir / 'loss.png'}`" in markdown


def test_html_is_self_contained(tmp_path: Path) -> None:
    page = (_write(tmp_path).html or Path("missing")).read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert images == ["Training loss", "Time per host by role"]
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    assert LONG in page and "Check mode" in page and "152" in page


def test_readiness_rows() -> None:
    entries = [{"host": "a", "facts": {"accel": _outcomes()[0].facts["accel"]}}, {"host": "b", "facts": {}}]
    assert readiness_rows(entries) == [["a", "npu", "8", "282", "152", "PASS"]]


def test_report_html_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium")
    paths = _write(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-html.png"
    shot.unlink(missing_ok=True)
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--screenshot={shot}", "--window-size=1400,2200", (paths.html or Path()).as_uri()]  # fmt: skip
    subprocess.run(argv, capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000
    # The DOM as the browser built it: both embedded images and the chart's section are there.
    page = (paths.html or Path()).as_uri()
    dump = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert dump.stdout.count("data:image/png;base64,") == 2 and "Time by role" in dump.stdout
