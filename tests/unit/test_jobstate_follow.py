"""jobstate log --follow: what is appended to the log is streamed, also a line that lands while the tail is
being written out (the reader's position is where its read ended, not the file's size a moment later)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from llava_devserver import jobstate

LOG = "train-20261130T110000Z.log"


class AppendingOnFirstWrite(io.BytesIO):
    """The reader of the stream; its first write (the tail) is when the trainer appends a line."""

    def __init__(self, log: Path, line: str) -> None:
        super().__init__()
        self.log, self.line, self.appended = log, line, False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        written = super().write(data)
        if not self.appended:
            self.appended = True
            with self.log.open("a") as handle:
                handle.write(self.line)
        return written


def test_a_line_appended_while_the_tail_is_written_is_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobstate.STATE_ROOT_ENV, str(tmp_path / "state"))
    work = tmp_path / "work"
    paths = jobstate.Paths(str(work), "/home/ma-user/ws", str(work / ".llava-devserver"), "llava-pretrain")
    os.makedirs(paths.log_dir)
    log = Path(paths.log_dir) / LOG
    log.write_text("step 1\n")
    jobstate.write_job(paths, {"state": "running", "log": str(log)})
    out = AppendingOnFirstWrite(log, "{'loss': 1.5, 'epoch': 0.1}\n")
    assert jobstate.stream_log(paths, 1, True, out=out, interval=0, polls=3) == 0
    assert out.appended
    assert out.getvalue() == b"step 1\n{'loss': 1.5, 'epoch': 0.1}\n"
