"""Sample every process command line on simulated servers while a play runs (not a test module).

`ps` shows every user of a server the command lines of all processes, so a secret on one (an argument, or
an `environment:` prefix such as `/bin/sh -c 'HF_TOKEN=... python3'`) is readable by all for as long as the
process lives. The sampler runs a loop inside each server (as root, reading /proc/<pid>/cmdline of every
process, the nested training container's included) every SAMPLE_INTERVAL seconds into a file on this
machine, until it is stopped.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

SAMPLE_INTERVAL = 0.1
STOP_FILE = "/tmp/llava-cmdline-sampler.stop"
MARK = "--- sample"
LOOP = f"""
rm -f {STOP_FILE}
end=$((SECONDS + $1))
while [ ! -e {STOP_FILE} ] && [ $SECONDS -lt $end ]; do
  echo "{MARK}"
  for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <"$f" 2>/dev/null; echo; done
  sleep {SAMPLE_INTERVAL}
done
"""


class CmdlineSampler:
    """`with CmdlineSampler(fleet, hosts, out_dir) as sampler: run the play`; then `sampler.text(host)`."""

    def __init__(self, fleet: Any, hosts: list[str] | tuple[str, ...], out_dir: Path, limit_s: int = 1800):
        self.fleet = fleet
        self.hosts = list(hosts)
        self.out_dir = out_dir
        self.limit_s = limit_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, host: str) -> Path:
        return self.out_dir / f"cmdlines-{host}.txt"

    def __enter__(self) -> CmdlineSampler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            out = self.path(host).open("wb")
            argv = ["docker", "exec", self.fleet.container_name(host), "bash", "-c", LOOP, "sampler"]
            self.procs[host] = subprocess.Popen(
                [*argv, str(self.limit_s)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(self.samples(h) for h in self.hosts):
            time.sleep(0.2)
        assert all(self.samples(h) for h in self.hosts), "the command-line sampler did not start"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for host in self.hosts:
            self.fleet.sh(host, f"touch {STOP_FILE}")
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def text(self, host: str) -> str:
        return self.path(host).read_text(errors="replace")

    def samples(self, host: str) -> int:
        path = self.path(host)
        return path.read_text(errors="replace").count(MARK) if path.is_file() else 0

    def lines(self, host: str) -> set[str]:
        return {line.strip() for line in self.text(host).splitlines() if line.strip() and line != MARK}
