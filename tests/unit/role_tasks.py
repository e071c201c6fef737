"""A role's task files as data, for the unit tests that check what the roles do (names, conditions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def tasks_of(path: str) -> list[dict[str, Any]]:
    """The tasks of a task file, `path` relative to the repository."""
    tasks: list[dict[str, Any]] = yaml.safe_load((REPO / path).read_text())
    return tasks


def walk(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every task, with those inside blocks (block, rescue, always), in file order."""
    out = []
    for task in tasks:
        out.append(task)
        for key in ("block", "rescue", "always"):
            out += walk(task.get(key) or [])
    return out
