"""A running simulated server as the Docker SDK gives it, for the unit tests of code that execs in servers."""

from __future__ import annotations


class FakeServer:
    """exec_run records each command (run as root) and answers with `reply` (exit code, output)."""

    name = "llava-sim-x-devserver-1"

    def __init__(self, code: int = 0, output: bytes = b"") -> None:
        self.reply = (code, output)
        self.commands: list[list[str]] = []

    def exec_run(self, command: list[str], user: str) -> tuple[int, bytes]:
        assert user == "root"
        self.commands.append(command)
        return self.reply
