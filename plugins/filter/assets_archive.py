"""Jinja2 filters over `llava_devserver.assets_unpack_plan` for llava_assets' archive step (no logic here).

- `{{ plan | llava_assets_unpack_command(llava, margin, sample) }}`: argv of the server-side unpack.
- `{{ result | llava_assets_unpack_problems(host) }}`: one message per archive that could not be unpacked.
- `{{ result | llava_assets_unpack_report }}`: the archives' outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llava_devserver import assets_unpack_plan
from llava_devserver.ansible_support import filter_guard as _guard

FILTERS: dict[str, Callable[..., Any]] = {
    "llava_assets_unpack_command": assets_unpack_plan.unpack_command,
    "llava_assets_unpack_problems": assets_unpack_plan.unpack_problems,
    "llava_assets_unpack_report": assets_unpack_plan.unpack_report,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
