"""What the `TOOL parse [FILE|-] [--json]` commands share (`npu-smi parse`, `hccn parse`): their command
line, their exit codes and the reading of their input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register_parse(
    subparsers: Any, command: str, *, tool: str, help: str, parse_help: str, doc: str | None,
    run: Callable[[argparse.Namespace], int],
) -> None:  # fmt: skip
    """`llava-devserver COMMAND parse [FILE|-] [--json]`, running `run`; COMMAND alone prints its help."""
    parser = subparsers.add_parser(
        command, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    actions = parser.add_subparsers(dest=f"{command.replace('-', '_')}_command", metavar="ACTION")
    parse = actions.add_parser(
        "parse", help=parse_help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parse.add_argument("file", nargs="?", default="-", metavar="FILE", help=f"{tool} output; - for stdin")
    parse.add_argument("--json", action="store_true", help="print the parsed result as JSON")
    parse.set_defaults(func=run)
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), EXIT_USAGE)[1])


def read_input(command: str, source: str) -> tuple[str, str | None]:
    """(the input's name for messages, its text); the text is None when it cannot be read, which is said."""
    name = "stdin" if source == "-" else source
    try:
        if source == "-":
            return name, sys.stdin.read()
        with open(source, encoding="utf-8", errors="replace") as handle:
            return name, handle.read()
    except OSError as exc:
        print(f"{command} parse: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return name, None
