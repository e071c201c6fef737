"""Every task a fleet test names exists in the roles or playbooks.

A fleet test that asks for the outcome of a task that was renamed gets None, or fails only after a fleet has
come up: twice CI lost most of an hour to one word. This check reads the tests' sources and the roles' task
files and fails in the unit stage, in a second, naming the test line and the closest real task.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
FLEET_TESTS = sorted((REPO / "tests" / "fleet").glob("*.py"))
LABEL = re.compile(r"^[a-z_]+ : \S")  # ansible-runner's "role : task" label
TASK_LISTS = ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")


def _task_names(items: Any) -> Iterator[str]:
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("name"), str) and not any(key in item for key in ("hosts", "import_playbook")):
            yield item["name"]
        for key in TASK_LISTS:
            yield from _task_names(item.get(key))


def _as_pattern(name: str) -> re.Pattern[str]:
    """A task name whose Jinja expressions match any text."""
    parts = re.split(r"\{\{.*?\}\}", name)
    return re.compile(".+".join(re.escape(part) for part in parts) + "$")


def _as_text(pattern: re.Pattern[str]) -> str:
    """The task name a pattern was made from (Jinja expressions as '.+')."""
    return re.sub(r"\\(.)", r"\1", pattern.pattern).removesuffix("$")


def known_tasks() -> list[re.Pattern[str]]:
    """The bare name and the 'role : name' label of every task and handler."""
    patterns = []
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml")):
        role = path.parents[1].name
        for name in _task_names(yaml.safe_load(path.read_text())):
            patterns += [_as_pattern(name), _as_pattern(f"{role} : {name}")]
    for path in sorted((REPO / "playbooks").glob("*.yml")):
        for name in _task_names(yaml.safe_load(path.read_text())):
            patterns.append(_as_pattern(name))
    return patterns


def named_tasks(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, task name, used as a prefix) for every task a fleet test names: the name argument of
    outcome()/outcomes()/task(), and every "role : task" string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prefixes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if node.func.attr == "startswith":
                prefixes.update(id(a) for a in args)
            elif node.func.attr in ("outcome", "outcomes", "task") and args:
                yield node.lineno, str(args[-1].value), False
    for node in ast.walk(tree):
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and LABEL.match(text):
            yield node.lineno, text, id(node) in prefixes


def test_the_scan_finds_the_names_of_the_fleet_tests() -> None:
    # the check is only as good as its reach: it must see the tests' task names at all
    found = [name for path in FLEET_TESTS for _, name, _ in named_tasks(path)]
    assert len(found) >= 10, found
    assert any(LABEL.match(name) for name in found), found


def test_every_task_a_fleet_test_names_exists() -> None:
    patterns = known_tasks()
    texts = [_as_text(p) for p in patterns]
    missing = []
    for path in FLEET_TESTS:
        for line, name, prefix in named_tasks(path):
            if prefix:
                ok = any(text.startswith(name) for text in texts)
            else:
                ok = any(p.match(name) for p in patterns)
            if not ok:
                close = difflib.get_close_matches(name, texts, n=1, cutoff=0.6)
                hint = f" (closest task: {close[0]!r})" if close else ""
                missing.append(f"{path.relative_to(REPO)}:{line}: no task {name!r}{hint}")
    assert not missing, "\n".join(missing)


def test_a_renamed_task_is_caught(tmp_path: Path) -> None:
    # the failure CI met: one letter more than the role's task name
    test = tmp_path / "test_x.py"
    test.write_text(
        "def test_x(run):\n"
        '    assert run.changed["h"] == [\n'
        '        "accel_check : Create the root-only directory of the last results"\n'
        "    ]\n"
        '    assert run.outcome("h", "Set the device IPs of the jobs cards") is None\n'
    )
    patterns = known_tasks()
    names = [name for _, name, _ in named_tasks(test)]
    assert len(names) == 2
    assert not any(p.match(name) for p in patterns for name in names)
    assert any(p.match("accel_check : Create the root-only directory of the last result") for p in patterns)
