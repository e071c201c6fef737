"""Training-log parsing (loss per step) and the loss plot.

Two log families are recognised, line by line, so that a log of several GB is never read into memory:

- ``hf``: the Hugging Face Trainer prints Python dict reprs on rank 0 (``{'loss': 8.0312, 'learning_rate':
  3.57e-06, 'epoch': 0.0}``, not JSON) amid tqdm progress updates that end in ``\\r``, so one physical line
  may hold several dicts and progress bars. The dicts carry no step: points are numbered 1..n in order unless
  a dict has its own ``step``. The final ``{'train_runtime': ..., 'train_samples_per_second': ...}`` gives the
  throughput.
- ``megatron``: Megatron-LM / MindSpeed print ``iteration 3/ 1000 | consumed samples: ... | elapsed time per
  iteration (ms): ... | global batch size: ... | lm loss: 1.303225E+00 | ...`` on the last rank, sometimes
  behind a timestamp and with ``loss:`` instead of ``lm loss:``. Throughput is global batch size over the
  iteration time.

NaN and infinite losses are kept as points (they are what a user most needs to see); JSON writes NaN as null.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Family = Literal["hf", "megatron"]

# A flat dict literal; HF log dicts never nest. Bounded so that a corrupt line cannot feed the evaluator a
# megabyte of text.
_DICT_RE = re.compile(r"\{[^{}]{1,4000}\}")
# Bare nan/inf are how Python prints non-finite floats; ast.literal_eval knows neither name.
_NONFINITE_RE = re.compile(r"(?<=[\s:,\[(])([-+]?)(nan|inf)(?=\s*[,}\])])", re.IGNORECASE)
_NAN_SENTINEL = "__llava_nan__"

_FLOAT = r"[-+]?(?:nan|inf(?:inity)?|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
# Fast path for the common dict: the loss value read directly, without building the dict.
_HF_LOSS_RE = re.compile(r"""['"]loss['"]\s*:\s*(['"]?)(""" + _FLOAT + r""")\1\s*[,}]""", re.IGNORECASE)
_ITERATION_RE = re.compile(r"\biteration\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)
# "lm loss:" first; a bare "loss:" only when it is not part of another field ("loss scale:", "train_loss:").
_LM_LOSS_RE = re.compile(r"\blm[ _]loss\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_BARE_LOSS_RE = re.compile(r"(?:^|\|)\s*loss\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_ELAPSED_MS_RE = re.compile(r"elapsed time per iteration \(ms\)\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
_GLOBAL_BATCH_RE = re.compile(r"global batch size\s*:\s*(\d+)", re.IGNORECASE)
_SAMPLES_PER_SEC_RE = re.compile(r"samples per second\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)


class NoLossLinesError(ValueError):
    """The log was read but holds no loss line of a known family."""

    def __init__(self, source: str) -> None:
        super().__init__(
            f"{source}: no loss lines found (expected Hugging Face Trainer dicts like "
            "{'loss': 2.31, ...} or Megatron/MindSpeed lines like 'iteration 3/ 1000 | ... | lm loss: ...')"
        )
        self.source = source


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float  # may be NaN or +-inf

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": json_float(self.loss)}


@dataclass(frozen=True)
class LossSummary:
    family: Family
    steps: int
    first: float
    last: float
    min: float | None  # None when every loss is NaN
    nan_count: int  # NaN and infinite losses
    samples_per_second: float | None
    last_step: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "steps": self.steps,
            "last_step": self.last_step,
            "first": json_float(self.first),
            "last": json_float(self.last),
            "min": json_float(self.min),
            "nan_count": self.nan_count,
            "samples_per_second": json_float(self.samples_per_second),
        }


@dataclass(frozen=True)
class TrainLog:
    source: str
    points: list[LossPoint]
    summary: LossSummary

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "points": [p.to_dict() for p in self.points],
            "summary": self.summary.to_dict(),
        }


def json_float(value: float | None) -> float | None:
    """NaN and infinities become None: JSON has no spelling for them."""
    if value is None or not math.isfinite(value):
        return None
    return value


@dataclass
class _Accumulator:
    hf_points: list[LossPoint] = field(default_factory=list)
    mg_points: list[LossPoint] = field(default_factory=list)
    hf_samples_per_second: float | None = None
    mg_samples: float = 0.0
    mg_seconds: float = 0.0
    mg_reported_rates: list[float] = field(default_factory=list)


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # recent transformers may format values as strings; the NaN sentinel too
        if value == _NAN_SENTINEL:
            return math.nan
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _replace_nonfinite(match: re.Match[str]) -> str:
    if match.group(2).lower() == "inf":
        return f"{match.group(1)}1e999"  # a literal that overflows to infinity
    return repr(_NAN_SENTINEL)


def _literal_dict(text: str) -> dict[str, Any] | None:
    if "loss" not in text and "train_runtime" not in text:
        return None
    text = _NONFINITE_RE.sub(_replace_nonfinite, text)
    try:
        # literal_eval only builds literals: no names, calls or attribute access, so log text cannot run code.
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _feed_hf(segment: str, acc: _Accumulator) -> None:
    for match in _DICT_RE.finditer(segment):
        text = match.group(0)
        if "step" not in text and "train_" not in text:
            fast = _HF_LOSS_RE.search(text)
            if fast is not None:
                acc.hf_points.append(LossPoint(len(acc.hf_points) + 1, float(fast.group(2))))
                continue
        record = _literal_dict(text)
        if record is None:
            continue
        if "loss" in record:
            loss = _to_float(record["loss"])
            if loss is None:
                continue
            step_value = _to_float(record.get("step"))
            step = int(step_value) if step_value is not None and math.isfinite(step_value) else None
            acc.hf_points.append(LossPoint(step if step is not None else len(acc.hf_points) + 1, loss))
        rate = _to_float(record.get("train_samples_per_second"))
        if rate is not None and math.isfinite(rate):
            acc.hf_samples_per_second = rate


def _feed_megatron(segment: str, acc: _Accumulator) -> None:
    iteration = _ITERATION_RE.search(segment)
    if iteration is None:
        return
    tail = segment[iteration.end() :]
    loss_match = _LM_LOSS_RE.search(tail) or _BARE_LOSS_RE.search(tail)
    if loss_match is None:  # e.g. a skipped iteration, or an evaluation line
        return
    acc.mg_points.append(LossPoint(int(iteration.group(1)), float(loss_match.group(1))))
    elapsed = _ELAPSED_MS_RE.search(tail)
    batch = _GLOBAL_BATCH_RE.search(tail)
    if elapsed and batch:
        seconds = float(elapsed.group(1)) / 1000.0
        if math.isfinite(seconds) and seconds > 0:
            acc.mg_samples += int(batch.group(1))
            acc.mg_seconds += seconds
    reported = _SAMPLES_PER_SEC_RE.search(tail)
    if reported:
        acc.mg_reported_rates.append(float(reported.group(1)))


def _segments(lines: Iterable[str]) -> Iterator[str]:
    # tqdm rewrites its bar with "\r"; each rewrite is a segment of its own.
    for line in lines:
        yield from line.split("\r")


def parse_lines(lines: Iterable[str], source: str = "<stream>") -> TrainLog:
    """Parse log lines (an open file works: it is iterated, never read whole)."""
    acc = _Accumulator()
    for segment in _segments(lines):
        if "{" in segment:
            _feed_hf(segment, acc)
        if "iteration" in segment or "ITERATION" in segment:
            _feed_megatron(segment, acc)
    # A log is one family; if a wrapper printed both, the family with more points is the training loop.
    if not acc.hf_points and not acc.mg_points:
        raise NoLossLinesError(source)
    family: Family
    if len(acc.mg_points) > len(acc.hf_points):
        family, points = "megatron", acc.mg_points
        if acc.mg_reported_rates:
            rate: float | None = sum(acc.mg_reported_rates) / len(acc.mg_reported_rates)
        else:
            rate = acc.mg_samples / acc.mg_seconds if acc.mg_seconds > 0 else None
    else:
        family, points, rate = "hf", acc.hf_points, acc.hf_samples_per_second
    return TrainLog(source=source, points=points, summary=summarize(points, family, rate))


def summarize(points: Sequence[LossPoint], family: Family, samples_per_second: float | None) -> LossSummary:
    finite = [p.loss for p in points if math.isfinite(p.loss)]
    return LossSummary(
        family=family,
        steps=len(points),
        first=points[0].loss,
        last=points[-1].loss,
        min=min(finite) if finite else None,
        nan_count=len(points) - len(finite),
        samples_per_second=samples_per_second,
        last_step=points[-1].step,
    )


def parse_log(path: str | Path) -> TrainLog:
    """Parse one log file. Raises OSError when it cannot be read, NoLossLinesError when it has no loss."""
    path = Path(path)
    # newline="": lines end at "\n", "\r\n" or a lone "\r" (tqdm), so a log that is one physical line of
    # progress bars is still read piece by piece. Undecodable bytes (a multi-byte character cut in a
    # progress bar) must not stop the parse.
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return parse_lines(handle, source=str(path))


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Exponential moving average that steps over NaN (it keeps the previous value there).

    The weight grows with the number of points so that a 2000-step curve is smoothed about as much, in
    appearance, as a 50-step one; ten points or fewer are not smoothed.
    """
    if weight is None:
        weight = min(0.98, max(0.0, 1.0 - 10.0 / max(len(values), 1)))
    out: list[float] = []
    current: float | None = None
    for value in values:
        if math.isfinite(value):
            current = value if current is None else weight * current + (1.0 - weight) * value
        out.append(current if current is not None else math.nan)
    return out


def plot_loss(
    series: Sequence[LossPoint] | Mapping[str, Sequence[LossPoint]],
    png_path: str | Path,
    title: str = "Training loss",
) -> Path:
    """Draw the raw points and a smoothed line per series into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    import matplotlib.pyplot as plt

    named: Mapping[str, Sequence[LossPoint]] = series if isinstance(series, Mapping) else {"loss": series}
    figure, axes = plt.subplots(figsize=(9, 5), dpi=100)
    try:
        from matplotlib.ticker import MaxNLocator

        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        marked_nan = False
        for index, (name, points) in enumerate(named.items()):
            color = colors[index % len(colors)]
            steps = [p.step for p in points]
            losses = [p.loss if math.isfinite(p.loss) else math.nan for p in points]
            axes.plot(steps, losses, ".", color=color, alpha=0.45, markersize=4)
            axes.plot(steps, smooth(losses), "-", color=color, linewidth=1.8, label=name)
            nan_steps = [p.step for p in points if not math.isfinite(p.loss)]
            if nan_steps:
                # NaN cannot sit on the curve: mark its steps along the bottom edge, outside the data range.
                axes.plot(
                    nan_steps,
                    [0.02] * len(nan_steps),
                    "x",
                    color=color,
                    markersize=7,
                    transform=axes.get_xaxis_transform(),
                    label=None if marked_nan else "NaN/inf loss",
                )
                marked_nan = True
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.set_ylabel("loss (dots: logged, line: smoothed)")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
        figure.tight_layout()
        out = Path(png_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    finally:
        plt.close(figure)
    return out
