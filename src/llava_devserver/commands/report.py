"""`llava-devserver report [RUN_DIR] [--runs DIR] [--json]`: print the fleet report of a run (the latest).

Every run (CLI or a bare `ansible-playbook`) writes `runs/<timestamp>/report.{md,json}` through the
`llava_report` callback; `runs/latest` points at the newest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llava_devserver import report

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="print the fleet report of the latest run (or of RUN_DIR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a runs/<timestamp> directory"
    )
    parser.add_argument(
        "--runs", type=Path, help="where runs are kept (default: ./runs, else runs/ of the project root)"
    )
    parser.add_argument("--json", action="store_true", help="print report.json instead of report.md")
    parser.set_defaults(func=run)


def default_runs_dir() -> Path:
    """./runs when there is one, else runs/ beside site.yml (where the callback and `up` write)."""
    local = Path("runs")
    if local.is_dir():
        return local
    try:
        from llava_devserver.runner import find_project_root, runs_dir

        return runs_dir(find_project_root())
    except (ImportError, RuntimeError):  # no runner module, or no project found
        return local


def run(args: argparse.Namespace) -> int:
    if args.runs is None:
        args.runs = default_runs_dir()
    run_dir = args.run_dir if args.run_dir is not None else report.latest_run_dir(args.runs)
    if run_dir is None:
        print(
            f"error: {args.runs}: no run with a report yet (run site.yml or `llava-devserver up`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = run_dir / ("report.json" if args.json else "report.md")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK
