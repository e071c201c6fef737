"""Every command's and subcommand's --help prints and exits 0 (argparse formats help texts with %, so a stray
"%" in a generated help text crashed `sim up --help` and `sim fault --help` with a ValueError)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from llava_devserver.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_the_walk_finds_the_nested_commands() -> None:
    assert ("sim", "up") in COMMANDS and ("sim", "fault") in COMMANDS and len(COMMANDS) > 10


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "llava-devserver")
def test_help_prints(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out
