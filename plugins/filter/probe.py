"""Jinja2 filters over `llava_devserver.sections` for a role's one probe (no logic here).

- `{{ None | llava_probe_function }}`: the shell function `probe NAME COMMAND...` a probe script starts with.
- `{{ out.stdout | llava_probe_results }}`: NAME -> {"rc", "stdout"} of every command the probe ran.
- `{{ dirs | llava_root_dirs_probe }}`: argv of one `stat` of root's folders; `{{ dirs |
  llava_root_dirs_due(out.stdout_lines) }}` the ones that are not yet root's own 0700 directories.
- `{{ lines | llava_stat_from_kinds }}`: `stat -L -c %F` lines (or `missing`) as ansible.builtin.stat's
  `exists`, `isdir`, `isreg`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llava_devserver import sections
from llava_devserver.ansible_support import filter_guard as _guard

# How `stat -c ROOT_DIR_FORMAT` shows a root-only folder as the roles make it (root:root, 0700).
ROOT_DIR_FORMAT = "%U:%G:%a:%F %n"
ROOT_DIR_STAT = "root:root:700:directory"


def llava_root_dirs_probe(dirs: Sequence[str]) -> list[str]:
    return ["stat", "-c", ROOT_DIR_FORMAT, "--", *(str(path) for path in dirs)]


def llava_root_dirs_due(dirs: Sequence[str], stat_lines: Sequence[str]) -> list[str]:
    """The folders to create or fix, in order: missing, no directory (a link too), another owner or mode."""
    seen = set(stat_lines)
    return [str(path) for path in dirs if f"{ROOT_DIR_STAT} {path}" not in seen]


def llava_stat_from_kinds(kinds: Sequence[str]) -> list[dict[str, bool]]:
    """What ansible.builtin.stat (follow: true) says of each path, from `stat -L -c %F` or `missing`."""
    return [
        {"exists": kind != "missing", "isdir": kind == "directory", "isreg": kind.startswith("regular")}
        for kind in (str(line).strip() for line in kinds)
    ]


FILTERS: dict[str, Callable[..., Any]] = {
    "llava_probe_function": lambda _=None: sections.PROBE_FUNCTION,
    "llava_probe_results": sections.probe_results,
    "llava_root_dirs_probe": llava_root_dirs_probe,
    "llava_root_dirs_due": llava_root_dirs_due,
    "llava_stat_from_kinds": llava_stat_from_kinds,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
