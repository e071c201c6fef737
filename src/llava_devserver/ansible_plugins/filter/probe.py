"""Jinja2 filters over `llava_devserver.sections` for a role's one probe (no logic here).

- `{{ None | llava_probe_function }}`: the shell function `probe NAME COMMAND...` a probe script starts with.
- `{{ out.stdout | llava_probe_results }}`: NAME -> {"rc", "stdout"} of every command the probe ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llava_devserver import sections
from llava_devserver.ansible_support import filter_guard as _guard

FILTERS: dict[str, Callable[..., Any]] = {
    "llava_probe_function": lambda _=None: sections.PROBE_FUNCTION,
    "llava_probe_results": sections.probe_results,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
