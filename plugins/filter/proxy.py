"""Jinja2 filters over `llava_devserver.proxy` (no logic here).

- `{{ llava.proxy_env | llava_proxy_environment_file }}`: the text of dockerd's proxy environment file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llava_devserver import proxy
from llava_devserver.ansible_support import filter_guard as _guard

FILTERS: dict[str, Callable[..., Any]] = {
    "llava_proxy_environment_file": proxy.environment_file,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
