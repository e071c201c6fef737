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

Throughput at the end of training (`Throughput`): the HF Trainer's final metrics (`train_runtime`,
`train_samples_per_second`, `train_tokens_per_second` when it prints it) with the world size from its
`Total train batch size` banner; for Megatron, every iteration line's `elapsed time per iteration (ms)` and
`global batch size`, weighted by the iterations each line stands for (the log interval). Per NPU needs the
world size: from the log, or given by the caller (the job knows nnodes x devices).

Which node's log to read (`pick_loss_node`): HF prints on global rank 0 (node 0), Megatron/MindSpeed on the
last rank (the last node, as the guide says); `loss_log_node: auto` takes the last node whose log has loss
lines.
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
_TOKENS_PER_SEC_RE = re.compile(r"tokens per second\s*:\s*(" + _FLOAT + ")", re.IGNORECASE)
# The HF Trainer's banner: world size = total / (per device x accumulation).
_HF_TOTAL_BATCH_RE = re.compile(
    r"Total train batch size \(w\. parallel, distributed & accumulation\) = ([\d,]+)"
)
_HF_PER_DEVICE_RE = re.compile(r"Instantaneous batch size per device = ([\d,]+)")
_HF_ACCUMULATION_RE = re.compile(r"Gradient Accumulation steps = ([\d,]+)")
# Megatron's argument banner (rank 0): "using world size: 16, data-parallel size: 16, ..."
_MG_WORLD_RE = re.compile(r"using world size:\s*(\d+)", re.IGNORECASE)
LossLogNode = Literal["auto", "first", "last"]


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
class Throughput:
    """Performance at the end of training, as far as the log gives it (None: not computable)."""

    samples_per_second: float | None
    train_seconds: float | None  # the training loop's time (HF train_runtime; Megatron: sum of iterations)
    tokens_per_second: float | None = None
    world_size: int | None = None  # NPUs (ranks) of the job, from the log or the caller
    source: str | None = None  # hf_metrics, hf_progress, megatron_iterations, megatron_reported

    @property
    def samples_per_second_per_npu(self) -> float | None:
        if self.samples_per_second is None or not self.world_size:
            return None
        return self.samples_per_second / self.world_size

    @property
    def tokens_per_second_per_npu(self) -> float | None:
        if self.tokens_per_second is None or not self.world_size:
            return None
        return self.tokens_per_second / self.world_size

    def with_world_size(self, world_size: int | None) -> Throughput:
        if self.world_size or not world_size:
            return self
        return Throughput(
            self.samples_per_second, self.train_seconds, self.tokens_per_second, int(world_size), self.source
        )

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            value = json_float(value)
            return None if value is None else round(value, 4)

        return {
            "samples_per_second": rounded(self.samples_per_second),
            "samples_per_second_per_npu": rounded(self.samples_per_second_per_npu),
            "tokens_per_second": rounded(self.tokens_per_second),
            "tokens_per_second_per_npu": rounded(self.tokens_per_second_per_npu),
            "train_seconds": rounded(self.train_seconds),
            "world_size": self.world_size,
            "source": self.source,
        }


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
    throughput: Throughput | None = None

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
            "throughput": self.throughput.to_dict() if self.throughput else None,
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
    hf_runtime: float | None = None
    hf_tokens_per_second: float | None = None
    hf_total_batch: int | None = None
    hf_per_device: int | None = None
    hf_accumulation: int | None = None
    mg_samples: float = 0.0
    mg_seconds: float = 0.0
    mg_last_iteration: int | None = None
    mg_first: tuple[int, float] | None = None  # the first line's (samples, seconds), until the second
    mg_reported_rates: list[float] = field(default_factory=list)
    mg_reported_tokens: list[float] = field(default_factory=list)
    mg_world_size: int | None = None


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
            runtime = _to_float(record.get("train_runtime"))
            tokens = _to_float(record.get("train_tokens_per_second"))
            acc.hf_runtime = runtime if runtime is not None and math.isfinite(runtime) else None
            acc.hf_tokens_per_second = tokens if tokens is not None and math.isfinite(tokens) else None


def _feed_megatron(segment: str, acc: _Accumulator) -> None:
    iteration = _ITERATION_RE.search(segment)
    if iteration is None:
        return
    tail = segment[iteration.end() :]
    step = int(iteration.group(1))
    elapsed = _ELAPSED_MS_RE.search(tail)
    batch = _GLOBAL_BATCH_RE.search(tail)
    if elapsed and batch:
        seconds, samples = float(elapsed.group(1)) / 1000.0, int(batch.group(1))
        if math.isfinite(seconds) and seconds > 0:
            # A line stands for the iterations since the previous one (the log interval); the first one
            # for as many as the second line shows (a resumed run does not start at iteration 0).
            if acc.mg_last_iteration is None:
                acc.mg_first = (samples, seconds)
                interval = 1
            else:
                interval = max(1, step - acc.mg_last_iteration)
                if acc.mg_first is not None:
                    acc.mg_samples += acc.mg_first[0] * (interval - 1)
                    acc.mg_seconds += acc.mg_first[1] * (interval - 1)
                    acc.mg_first = None
            acc.mg_samples += samples * interval
            acc.mg_seconds += seconds * interval
            acc.mg_last_iteration = step
    reported = _SAMPLES_PER_SEC_RE.search(tail)
    if reported:
        acc.mg_reported_rates.append(float(reported.group(1)))
    tokens = _TOKENS_PER_SEC_RE.search(tail)
    if tokens:
        acc.mg_reported_tokens.append(float(tokens.group(1)))
    loss_match = _LM_LOSS_RE.search(tail) or _BARE_LOSS_RE.search(tail)
    if loss_match is None:  # e.g. a skipped iteration, or an evaluation line
        return
    acc.mg_points.append(LossPoint(step, float(loss_match.group(1))))


def _feed_banner(segment: str, acc: _Accumulator) -> None:
    for pattern, name in (
        (_HF_TOTAL_BATCH_RE, "hf_total_batch"),
        (_HF_PER_DEVICE_RE, "hf_per_device"),
        (_HF_ACCUMULATION_RE, "hf_accumulation"),
        (_MG_WORLD_RE, "mg_world_size"),
    ):
        match = pattern.search(segment)
        if match:
            setattr(acc, name, int(match.group(1).replace(",", "")))


def _hf_world_size(acc: _Accumulator) -> int | None:
    if not (acc.hf_total_batch and acc.hf_per_device and acc.hf_accumulation):
        return None
    world, rest = divmod(acc.hf_total_batch, acc.hf_per_device * acc.hf_accumulation)
    return world if world > 0 and rest == 0 else None


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
        if " = " in segment or "world size" in segment:
            _feed_banner(segment, acc)
    # A log is one family; if a wrapper printed both, the family with more points is the training loop.
    if not acc.hf_points and not acc.mg_points:
        raise NoLossLinesError(source)
    family: Family
    seconds = acc.mg_seconds if acc.mg_seconds > 0 else None
    if len(acc.mg_points) > len(acc.hf_points):
        family, points = "megatron", acc.mg_points
        tokens = sum(acc.mg_reported_tokens) / len(acc.mg_reported_tokens) if acc.mg_reported_tokens else None
        if acc.mg_reported_rates:
            rate: float | None = sum(acc.mg_reported_rates) / len(acc.mg_reported_rates)
            how = "megatron_reported"
        else:
            rate = acc.mg_samples / acc.mg_seconds if seconds else None
            how = "megatron_iterations"
        throughput = Throughput(rate, seconds, tokens, acc.mg_world_size, how if rate is not None else None)
    else:
        family, points, rate = "hf", acc.hf_points, acc.hf_samples_per_second
        throughput = Throughput(
            rate,
            acc.hf_runtime,
            acc.hf_tokens_per_second,
            _hf_world_size(acc),
            "hf_metrics" if rate is not None else None,
        )
    return TrainLog(source=source, points=points, summary=summarize(points, family, rate, throughput))


def summarize(
    points: Sequence[LossPoint],
    family: Family,
    samples_per_second: float | None,
    throughput: Throughput | None = None,
) -> LossSummary:
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
        throughput=throughput,
    )


def pick_loss_node(
    ranked_hosts: Sequence[str], has_loss: Mapping[str, bool], rule: LossLogNode = "auto"
) -> str | None:
    """The node whose log to read for the loss: `first` (node_rank 0, the HF Trainer's), `last` (the last
    rank's, Megatron/MindSpeed as the guide says) or `auto`: the last node whose log has loss lines,
    searching from the last node down, else the last node. `ranked_hosts` is in node_rank order."""
    if not ranked_hosts:
        return None
    if rule == "first":
        return ranked_hosts[0]
    if rule == "last":
        return ranked_hosts[-1]
    if rule != "auto":
        raise ValueError(f"loss_log_node: expected auto, first or last, got {rule!r}")
    return next((h for h in reversed(ranked_hosts) if has_loss.get(h)), ranked_hosts[-1])


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
