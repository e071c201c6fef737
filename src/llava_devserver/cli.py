"""The `llava-devserver` command: parse arguments, call one function.

Each concern registers its subcommands from `llava_devserver.commands.<name>` (a `register(subparsers)`
function that sets `func` on its parser); the logic lives in the package modules they call.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from importlib import metadata

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
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument(
        "--print-completion",
        choices=("bash", "zsh"),
        metavar="SHELL",
        help="print a completion script (bash, zsh): source <(llava-devserver --print-completion bash)",
    )
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


def version_text() -> str:
    try:
        ansible_core = metadata.version("ansible-core")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        ansible_core = "not installed"
    return f"llava-devserver {__version__} (ansible-core {ansible_core}, Python {sys.version.split()[0]})"


def main(argv: Sequence[str] | None = None) -> int:
    # Before Ansible is imported: this process reads the ansible.cfg the playbook runs will read.
    from llava_devserver.ansible_cli import use_project_config

    use_project_config()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.print_completion:
            from llava_devserver.completion import completion_script

            print(completion_script(parser, args.print_completion), end="")
            return _flushed(EXIT_OK)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _flushed(int(args.func(args)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _flushed(code: int) -> int:
    """Flush here, where a closed pipe is caught, not at interpreter exit (a traceback there)."""
    sys.stdout.flush()
    return code


def _closed_pipe() -> int:
    """The reader went away (`| head`): stop quietly, as cat does (exit 141 = 128 + SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing more reaches the closed pipe at exit
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
