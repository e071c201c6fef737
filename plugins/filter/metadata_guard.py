"""Jinja2 filter over `llava_devserver.metadata_guard` for the metadata_guard role (no logic here).

- `{{ facts | metadata_guard_coverage }}`: `{"covers": [...], "not_covered": [...]}` for the report.
"""

from __future__ import annotations

from typing import Any

from llava_devserver import metadata_guard
from llava_devserver.ansible_support import filter_guard as _guard


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"metadata_guard_coverage": _guard(metadata_guard.coverage)}
