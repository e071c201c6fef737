"""The `llava-devserver` command: parse arguments, call one function.

Each concern registers its subcommands from `llava_devserver.commands.<name>` (a `register(subparsers)`
function that sets `func` on its parser); the logic lives in the package modules they call.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llava_devserver import __version__

# Order is the order of `--help`.
COMMAND_MODULES = (
    "validate",  # validate, schema
    "render",  # render
    "npu_smi",  # npu-smi parse
    "hccn",  # hccn parse
    "loss",  # loss
    "sim",  # sim up/down/status
    "fleet",  # up, plan, status, logs, down
    "report",  # report
)

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_INVALID = 1  # the input was read and is wrong (or a host failed)
EXIT_USAGE = 2  # the input could not be read, or the command line is wrong


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-devserver",
        description="Provision LLaVA pretraining on Huawei Cloud ModelArts Lite DevServers (Ascend Snt9B).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"llava_devserver.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if exc.name != f"llava_devserver.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
