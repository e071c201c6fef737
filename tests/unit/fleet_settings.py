"""One host's validated settings (the `llava` variable) from raw inventory values, for unit tests (the
`package` fixture it takes is in conftest.py)."""

from __future__ import annotations

from typing import Any

from llava_devserver.config import validate_fleet


def llava_of(package: str, **settings: Any) -> dict[str, Any]:
    raw = {"ds-0": {"ansible_host": "10.0.0.1", "ascendcloud_package": package, **settings}}
    return validate_fleet(raw).hosts[0].to_vars()
