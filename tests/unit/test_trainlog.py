"""Loss parsing for both log families, noisy lines, NaN, the plot, and the `loss` command."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from llava_devserver import trainlog
from llava_devserver.cli import main

LOGS = Path(__file__).parents[1] / "fixtures" / "logs"


def losses(log: trainlog.TrainLog) -> list[float]:
    return [p.loss for p in log.points]


def test_hf_trainer_log_with_tqdm_noise() -> None:
    log = trainlog.parse_log(LOGS / "hf_trainer.log")
    assert log.summary.family == "hf"
    assert [p.step for p in log.points] == list(range(1, 21))
    assert log.points[0].loss == pytest.approx(8.0312)
    assert math.isnan(log.points[5].loss)
    assert log.summary.to_dict() == {
        "family": "hf",
        "steps": 20,
        "last_step": 20,
        "first": 8.0312,
        "last": 2.28,
        "min": 2.28,
        "nan_count": 1,
        "samples_per_second": 122.49,
        "throughput": {
            "samples_per_second": 122.49,
            "samples_per_second_per_npu": None,  # this log has no "Total train batch size" banner
            "tokens_per_second": None,
            "tokens_per_second_per_npu": None,
            "train_seconds": 41.8,
            "world_size": None,
            "source": "hf_metrics",
        },
    }


def test_several_dicts_and_bars_on_one_physical_line() -> None:
    line = (
        "  5%|▌   | 1/20 [00:02<00:40]{'loss': 3.5, 'learning_rate': 1e-05, 'epoch': 0.0}\r"
        " 10%|█   | 2/20 [00:04<00:40]{'loss': 3.25, 'learning_rate': 2e-05, 'epoch': 0.1}"
        "{'loss': 3.0, 'learning_rate': 3e-05, 'epoch': 0.15}\n"
    )
    log = trainlog.parse_lines([line])
    assert [(p.step, p.loss) for p in log.points] == [(1, 3.5), (2, 3.25), (3, 3.0)]


def test_hf_noise_is_ignored_and_code_is_never_evaluated() -> None:
    lines = [
        "{'eval_loss': 1.0, 'epoch': 1.0}\n",  # evaluation, not training loss
        "{'loss': __import__('os').system('false')}\n",  # not a literal: skipped, never run
        "{'loss': 'not a number'}\n",
        "{'loss': 2.0, 'step': 40}\n",  # an explicit step wins
        "{'loss': '1.5'}\n",  # newer transformers format values as strings
        "{'loss': -inf, 'grad_norm': inf}\n",
        "{'loss': 1.0, 'learning_rate': 1e-05\n",  # cut off by a crash: ignored
    ]
    log = trainlog.parse_lines(lines)
    assert [p.step for p in log.points] == [40, 2, 3]
    assert losses(log)[:2] == [2.0, 1.5]
    assert losses(log)[2] == -math.inf
    assert log.summary.nan_count == 1
    assert log.summary.min == 1.5
    assert log.summary.samples_per_second is None


def test_megatron_log() -> None:
    log = trainlog.parse_log(LOGS / "megatron.log")
    assert log.summary.family == "megatron"
    # iteration 7 has no loss (skipped); the validation line has no "N/M" and is no training point
    assert [p.step for p in log.points] == [1, 2, 3, 4, 5, 6, 8]
    assert log.points[0].loss == pytest.approx(1.303225)
    assert math.isnan(log.points[-1].loss)
    summary = log.summary.to_dict()
    assert summary["last"] is None and summary["nan_count"] == 1 and summary["min"] == pytest.approx(0.99)
    assert summary["samples_per_second"] == pytest.approx(128.0)  # 256 samples / 2.0 s


def test_mindspeed_timestamp_and_bare_loss() -> None:
    log = trainlog.parse_log(LOGS / "mindspeed_timestamp.log")
    assert log.summary.family == "megatron"
    assert [p.step for p in log.points] == [1, 2, 3, 4, 5]
    assert losses(log)[0] == pytest.approx(2.304)
    assert losses(log)[3] == math.inf
    assert log.summary.samples_per_second == pytest.approx(64.0)


def test_loss_scale_is_not_a_loss() -> None:
    line = "iteration 2/ 10 | global batch size: 8 | loss scale: 65536.0 | grad norm: 1.0 |\n"
    with pytest.raises(trainlog.NoLossLinesError):
        trainlog.parse_lines([line], source="x.log")


def test_no_loss_lines_names_the_file() -> None:
    with pytest.raises(trainlog.NoLossLinesError, match=r"no_loss\.log: no loss lines"):
        trainlog.parse_log(LOGS / "no_loss.log")


def test_streaming_reads_a_file_object_lazily() -> None:
    consumed: list[str] = []

    def lines() -> object:
        for i in range(1, 50_001):
            consumed.append("")
            yield f"{{'loss': {10 - i / 10_000}, 'epoch': 0.0}}\r progress {i}\n"

    log = trainlog.parse_lines(lines())  # type: ignore[arg-type]
    assert log.summary.steps == 50_000 and len(consumed) == 50_000
    assert log.summary.last == pytest.approx(5.0)


def test_a_log_without_newlines_is_read_piece_by_piece(tmp_path: Path) -> None:
    # tqdm writing to a file ends its updates with "\r" only; the file can be one physical line.
    path = tmp_path / "train.log"
    path.write_text("".join(f"\r{i}/500 [00:01<00:10]{{'loss': {5 - i / 100}}}" for i in range(1, 501)))
    with path.open(newline="") as handle:
        assert len(next(iter(handle))) < 60  # the reader splits at "\r", never holding the whole line
    log = trainlog.parse_log(path)
    assert log.summary.steps == 500 and log.summary.last == pytest.approx(0.0)


def test_invalid_utf8_does_not_stop_the_parse(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_bytes(b"\xe2\x96 bar\r{'loss': 1.25}\n\xff\xfe{'loss': 1.0}\n")
    assert losses(trainlog.parse_log(path)) == [1.25, 1.0]


def test_smooth_steps_over_nan() -> None:
    out = trainlog.smooth([1.0, math.nan, 3.0], weight=0.5)
    assert out == [1.0, 1.0, 2.0]
    assert math.isnan(trainlog.smooth([math.nan], weight=0.5)[0])


def test_plot_loss_writes_a_png(tmp_path: Path) -> None:
    log = trainlog.parse_log(LOGS / "hf_trainer.log")
    out = trainlog.plot_loss({"node-1": log.points, "node-2": log.points[:5]}, tmp_path / "d" / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000


def test_loss_command_json_one_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loss", str(LOGS / "hf_trainer.log"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["steps"] == 20
    assert data["points"][5] == {"step": 6, "loss": None}


def test_loss_command_several_logs_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path, png = tmp_path / "loss.csv", tmp_path / "loss.png"
    code = main(
        [
            "loss",
            str(LOGS / "hf_trainer.log"),
            str(LOGS / "megatron.log"),
            "--json",
            "--csv",
            str(csv_path),
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["summary"]["family"] for d in data] == ["hf", "megatron"]
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 27
    assert rows[0] == {"file": str(LOGS / "hf_trainer.log"), "step": "1", "loss": "8.0312"}
    assert rows[-1]["loss"] == "nan"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_loss_command_text_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loss", str(LOGS / "megatron.log")]) == 0
    out = capsys.readouterr().out
    assert "megatron" in out and "7 points" in out and "1 NaN/inf" in out
    assert main(["loss", str(LOGS / "no_loss.log")]) == 1
    assert "no_loss.log: no loss lines" in capsys.readouterr().err
    missing = tmp_path / "absent.log"
    assert main(["loss", str(missing), str(LOGS / "no_loss.log")]) == 2
    assert "absent.log" in capsys.readouterr().err
