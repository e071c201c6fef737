"""Fleets shared by the fleet test modules (harness.py has the fleets, runs and commands themselves).

`job_fleet`: 3 healthy servers with one card each, Docker preinstalled, the real training image, the stand-in
package and assets; validate, host and container already run. One for the whole session: the readiness check
(test_role_accel), the workspace (test_role_workspace: from empty servers to a verified workspace, faults and
repair) and then the job (test_role_train) run on the same servers, in that order, instead of each preparing
its own (the training image alone is 1.2 GB to load on every server). A test that breaks a server for good
gets a fleet of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness

JOB_HOSTS = ("devserver-1", "devserver-2", "devserver-3")

# Modules on job_fleet, in the order they build on each other's state; the other modules keep theirs.
# test_job_hostile ends with down (two servers' containers removed), so it comes after test_rerun_safety,
# which needs the containers and repairs what its interrupted fan-out left.
JOB_FLEET_ORDER = (
    "test_role_accel.py",
    "test_role_workspace.py",
    "test_role_train.py",
    "test_rerun_safety.py",
    "test_job_hostile.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the job_fleet modules in JOB_FLEET_ORDER, after every other fleet module."""

    def key(item: pytest.Item) -> int:
        name = item.path.name
        return 1 + JOB_FLEET_ORDER.index(name) if name in JOB_FLEET_ORDER else 0

    items.sort(key=key)  # stable: file order inside each module stays


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The plays' share of the run and the slowest ten, beside pytest's --durations (where growth shows)."""
    plays = harness.PLAY_LOG
    if not plays:
        return
    if log := os.environ.get("LLAVA_FLEET_PLAY_LOG"):  # every play, one JSON object per line
        Path(log).write_text("".join(json.dumps(play) + "\n" for play in plays))
    write = terminalreporter.write_line
    total = sum(play["seconds"] for play in plays)
    task_runs = sum(play["tasks"] for play in plays)
    terminalreporter.section("ansible plays of the fleet tests")
    write(f"{len(plays)} plays, {total:.0f} s, {task_runs} task results (a task on a host)")
    for play in sorted(plays, key=lambda play: -play["seconds"])[:10]:
        where = f"{play['test']} [{play['play']}]"
        write(f"{play['seconds']:7.1f}s {play['hosts']:2d} hosts {play['tasks']:4d} tasks  {where}")


@pytest.fixture(scope="session")
def job_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    out = tmp_path_factory.mktemp("job-fleet")
    with harness.fleet_up("job", len(JOB_HOSTS), out, docker=True, devices_per_host=1) as fleet:
        settings = fleet.group_vars()
        assert settings["max_steps"] == 20 and settings["save_steps"] == 10  # what the job tests expect
        fleet.run_play("validate", "host", "container", name="prepare").assert_ok(*JOB_HOSTS)
        yield fleet
