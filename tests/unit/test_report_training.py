"""The report's training figures: the node whose log holds the loss, throughput against a hand computation,
the job's elapsed time and the projector; in report.json and report.md."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llava_devserver import report

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
PROJECTOR = {"path": "/home/ma-user/ws/out/mm_projector.bin", "host_path": "/data/w/out/mm_projector.bin"}

# The last rank's log in the Megatron style: 4 iterations of 500.0 ms, global batch 8.
# By hand: 4 x 8 = 32 samples in 4 x 0.5 = 2.0 s -> 16 samples/s; 2 servers x 2 NPUs -> 4 per NPU.
LAST_RANK_LOG = "".join(
    f" iteration {i:8d}/       4 | consumed samples: {8 * i:12d} | elapsed time per iteration (ms): 500.0 |"
    f" learning rate: 1.000000E-03 | global batch size:     8 | lm loss: {4.0 - i / 2:.6E} |"
    " loss scale: 1.0 |"
    " number of skipped iterations:   0 | number of nan iterations:   0 |\n"
    for i in range(1, 5)
)


def _job(rank: int, loss_log: bool, **extra: object) -> dict[str, object]:
    return {
        "state": "finished",
        "node_rank": rank,
        "world_size": 4,
        "loss_log": loss_log,
        "started_at": "2026-11-30T11:00:00Z",
        "finished_at": f"2026-11-30T11:0{2 + rank}:05Z",
        **extra,
    }


def _outcomes() -> list[report.HostOutcome]:
    return [
        report.HostOutcome(
            "ds-1", {"ok": 9}, facts={"job": _job(0, False, projector={**PROJECTOR, "bytes": 3 * 2**20})}
        ),
        report.HostOutcome("ds-2", {"ok": 9}, facts={"job": _job(1, True, loss=2.0, step=4)}),
    ]


def test_megatron_style_reads_the_last_node(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "logs" / "ds-2").mkdir(parents=True)
    (run_dir / "logs" / "ds-2" / "train.log").write_text(LAST_RANK_LOG)
    paths = report.write_report(run_dir, _outcomes(), playbook="train.yml", started=NOW)
    data = json.loads(paths.json.read_text())
    training = data["training"]
    assert training["loss_log"] == {"host": "ds-2", "node_rank": 1, "log": "logs/ds-2/train.log"}
    assert training["last_loss"] == 2.0 and training["last_step"] == 4 and training["steps"] == 4
    assert training["throughput"] == {
        "samples_per_second": 16.0,
        "samples_per_second_per_npu": 4.0,
        "tokens_per_second": None,
        "tokens_per_second_per_npu": None,
        "train_seconds": 2.0,
        "world_size": 4,
        "source": "megatron_iterations",
    }
    assert training["elapsed_seconds"] == 185.0  # the later node: 11:00:00 -> 11:03:05
    assert training["projector"] == {"host": "ds-1", **PROJECTOR, "bytes": 3 * 2**20}
    one, two = data["hosts"]
    assert one["loss"] is None and one["loss_log"] is False and one["last_loss"] is None
    assert two["loss_log"] is True and two["last_loss"] == 2.0 and two["throughput"]["world_size"] == 4
    markdown = paths.markdown.read_text()
    assert "- Loss read from the log of **ds-2** (node 1): `logs/ds-2/train.log`; last loss 2 at step 4." in (
        markdown
    )
    assert (
        "- Throughput on 4 NPUs: 16.00 samples/s, 4.00 samples/s per NPU (from the log: megatron_iterations)."
        in (markdown)
    )
    assert "- Training time 0 min 02 s (the training loop); job elapsed 3 min 05 s" in markdown
    assert (
        "- Projector: `/home/ma-user/ws/out/mm_projector.bin` on ds-1, 3.0 MiB (3145728 bytes)." in markdown
    )


def test_hf_style_reads_node_0(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r2"
    (run_dir / "logs" / "ds-1").mkdir(parents=True)
    shutil.copy(LOGS / "hf_tokens.log", run_dir / "logs" / "ds-1" / "train.log")
    outcomes = [
        report.HostOutcome("ds-1", {"ok": 9}, facts={"job": _job(0, True)}),
        report.HostOutcome("ds-2", {"ok": 9}, facts={"job": _job(1, False)}),
    ]
    training = report.build_report(run_dir, outcomes, plot=False)["training"]
    assert training["loss_log"]["host"] == "ds-1" and training["last_loss"] == 2.0
    # hf_tokens.log's banner says 8 ranks: the log's world size wins over the job's 4
    assert training["throughput"]["samples_per_second_per_npu"] == pytest.approx(100.0 / 8)
    assert training["throughput"]["tokens_per_second"] == 51234.5


def test_no_loss_log_chosen_falls_back_to_a_log_with_loss_and_none_without(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r3"
    (run_dir / "logs" / "ds-2").mkdir(parents=True)
    (run_dir / "logs" / "ds-2" / "train.log").write_text(LAST_RANK_LOG)
    outcomes = [
        report.HostOutcome(h, {"ok": 1}, facts={"job": {"state": "finished"}}) for h in ("ds-1", "ds-2")
    ]
    assert report.build_report(run_dir, outcomes, plot=False)["training"]["loss_log"]["host"] == "ds-2"
    empty = tmp_path / "runs" / "r4"
    empty.mkdir()
    assert report.build_report(empty, outcomes, plot=False)["training"] is None
