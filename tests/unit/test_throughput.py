"""Throughput at the end of training from the fixture logs, against a computation by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_devserver import trainlog

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def test_megatron_every_iteration_logged() -> None:
    # megatron.log: iterations 1..8 (7 skipped, 8 NaN: both still took their time), each 2000.0 ms with a
    # global batch of 256: 8 x 256 = 2048 samples in 8 x 2.0 = 16.0 s -> 128 samples/s.
    throughput = trainlog.parse_log(LOGS / "megatron.log").summary.throughput
    assert throughput is not None
    assert throughput.train_seconds == pytest.approx(16.0)
    assert throughput.samples_per_second == pytest.approx(2048 / 16.0)
    assert throughput.source == "megatron_iterations" and throughput.world_size is None
    assert throughput.samples_per_second_per_npu is None  # the log does not say how many NPUs
    # the job knows: 2 servers x 8 NPUs -> 128 / 16 = 8 samples/s per NPU
    assert throughput.with_world_size(16).samples_per_second_per_npu == pytest.approx(8.0)


def test_megatron_with_a_log_interval_after_a_resume() -> None:
    # megatron_interval.log: resumed at 100, a line every 5 iterations (105, 110, 115), global batch 64,
    # 1500, 1000, 1000 ms per iteration. Each line stands for 5 iterations (the first as many as the
    # second shows): samples 3 x 5 x 64 = 960; time 5 x 1.5 + 5 x 1.0 + 5 x 1.0 = 17.5 s.
    # 960 / 17.5 = 54.857 samples/s; the banner says world size 8: 6.857 per NPU.
    throughput = trainlog.parse_log(LOGS / "megatron_interval.log").summary.throughput
    assert throughput is not None
    assert throughput.train_seconds == pytest.approx(17.5)
    assert throughput.samples_per_second == pytest.approx(960 / 17.5)
    assert throughput.world_size == 8
    assert throughput.samples_per_second_per_npu == pytest.approx(960 / 17.5 / 8)
    assert throughput.tokens_per_second is None  # Megatron's line gives no token count
    # the log's own world size wins over the caller's guess
    assert throughput.with_world_size(2).world_size == 8


def test_hf_final_metrics_and_its_banner() -> None:
    # hf_tokens.log: total batch 256 = 16 per device x 2 accumulation x 8 ranks; the final metrics say
    # 100.0 samples/s and 51234.5 tokens/s over 2560.0 s: per NPU 12.5 samples/s, 6404.3125 tokens/s.
    summary = trainlog.parse_log(LOGS / "hf_tokens.log").summary
    assert summary.family == "hf" and summary.samples_per_second == 100.0
    assert summary.to_dict()["throughput"] == {
        "samples_per_second": 100.0,
        "samples_per_second_per_npu": 12.5,
        "tokens_per_second": 51234.5,
        "tokens_per_second_per_npu": 6404.3125,
        "train_seconds": 2560.0,
        "world_size": 8,
        "source": "hf_metrics",
    }


def test_a_log_that_ends_before_the_metrics_has_no_throughput() -> None:
    summary = trainlog.parse_lines(["{'loss': 2.5, 'epoch': 0.1}\n"]).summary
    assert summary.throughput is not None and summary.throughput.samples_per_second is None
    assert summary.to_dict()["throughput"]["source"] is None


@pytest.mark.parametrize(
    ("rule", "has_loss", "expected"),
    [
        ("auto", {"n0": False, "n1": True}, "n1"),  # Megatron: the last rank prints
        ("auto", {"n0": True, "n1": False}, "n0"),  # HF: global rank 0 prints
        ("auto", {"n0": True, "n1": True}, "n1"),  # both: the last node first, as the guide says
        ("auto", {}, "n1"),  # nothing printed yet: the guide's node
        ("first", {"n0": False, "n1": True}, "n0"),
        ("last", {"n0": True, "n1": False}, "n1"),
    ],
)
def test_pick_loss_node(rule: trainlog.LossLogNode, has_loss: dict[str, bool], expected: str) -> None:
    assert trainlog.pick_loss_node(["n0", "n1"], has_loss, rule) == expected


def test_pick_loss_node_edges() -> None:
    assert trainlog.pick_loss_node([], {}, "auto") is None
    assert trainlog.pick_loss_node(["only"], {"only": False}, "first") == "only"
    with pytest.raises(ValueError, match="loss_log_node: expected auto, first or last"):
        trainlog.pick_loss_node(["a"], {}, "middle")  # type: ignore[arg-type]
