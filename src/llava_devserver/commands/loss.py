"""`llava-devserver loss LOG... [--json] [--plot PNG] [--csv FILE]`: loss per step from training logs.

Several logs are several series (one per file, e.g. one per server), never concatenated: each keeps its own
steps, its own summary and its own curve in the plot. `--json` prints one object for one log and a list of
such objects for several.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from llava_devserver import trainlog

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "loss",
        help="parse training logs (Hugging Face Trainer or Megatron/MindSpeed) into loss per step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("logs", nargs="+", metavar="LOG", type=Path, help="training log file(s)")
    parser.add_argument("--json", action="store_true", help="print points and summary as JSON")
    parser.add_argument("--plot", metavar="PNG", type=Path, help="write a loss curve (raw + smoothed)")
    parser.add_argument("--csv", metavar="FILE", type=Path, help="write file,step,loss rows")
    parser.set_defaults(func=run)


def series_labels(paths: list[str]) -> list[str]:
    """Shortest path suffixes that tell the logs apart (logs/node-1/train.log -> node-1/train.log)."""
    parts = [Path(p).parts for p in paths]
    depth = 1
    while depth < max((len(p) for p in parts), default=1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return ["/".join(p) for p in parts]


def describe(log: trainlog.TrainLog) -> str:
    s = log.summary
    text = (
        f"{log.source}: {s.family}, {s.steps} points (last step {s.last_step}), "
        f"loss {s.first:.4g} -> {s.last:.4g}, min {'n/a' if s.min is None else f'{s.min:.4g}'}, "
        f"{s.nan_count} NaN/inf"
    )
    if s.samples_per_second is not None:
        text += f", {s.samples_per_second:.1f} samples/s"
    return text


def write_csv(logs: list[trainlog.TrainLog], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "step", "loss"])
        for log in logs:
            for point in log.points:
                loss = "nan" if math.isnan(point.loss) else repr(point.loss)
                writer.writerow([log.source, point.step, loss])


def run(args: argparse.Namespace) -> int:
    code = EXIT_OK
    parsed: list[trainlog.TrainLog] = []
    for path in args.logs:
        try:
            parsed.append(trainlog.parse_log(path))
        except trainlog.NoLossLinesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = max(code, EXIT_INVALID)
        except (OSError, UnicodeError) as exc:
            print(f"error: {path}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            code = EXIT_USAGE
    if not parsed:
        return code
    if args.json:
        dicts = [log.to_dict() for log in parsed]
        print(json.dumps(dicts[0] if len(args.logs) == 1 else dicts, indent=2, allow_nan=False))
    else:
        for log in parsed:
            print(describe(log))
    try:
        if args.csv:
            write_csv(parsed, args.csv)
        if args.plot:
            labels = series_labels([log.source for log in parsed])
            title = "Training loss" if len(parsed) > 1 else f"Training loss: {labels[0]}"
            trainlog.plot_loss(
                dict(zip(labels, (log.points for log in parsed), strict=True)), args.plot, title
            )
    except OSError as exc:
        print(f"error: {exc.filename}: cannot write: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    return code
