"""The only place that touches ansible-core's private parts; nothing public serves these needs.

- `strict_inventory_parsing`: an unparsable inventory source must be an error naming its cause, not a warning
  and an empty inventory. ansible-core has the settings (INVENTORY_UNPARSED_IS_FAILED,
  INVENTORY_ANY_UNPARSED_IS_FAILED) but reads them from its constants module, and reports each plugin's
  reason through the inventory manager's display: both are set here for the duration of one load.
- `origin_of`: the file and line a value came from (ansible-core 2.19's data tagging, `Origin`, is internal),
  so that validation errors name the inventory file. Without it errors only lack the file name.

tests/unit/test_ansible_private.py runs these against the locked ansible-core and against the oldest one
pyproject.toml's range allows.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def strict_inventory_parsing(failures: list[str]) -> Iterator[None]:
    """Make an unparsable source an error, not a warning and an empty inventory; collect the reasons.

    Ansible reports why each inventory plugin failed as warnings on stderr; they are collected instead so
    that the error names the cause once.
    """
    from ansible import constants as C
    from ansible.inventory import manager

    def collect(msg: str, exception: BaseException | None = None, **_: Any) -> None:
        reason = getattr(exception, "message", None) or str(exception or "")
        failures.append(f"{msg} {reason.strip()}".strip())

    saved = C.INVENTORY_UNPARSED_IS_FAILED, C.INVENTORY_ANY_UNPARSED_IS_FAILED
    saved_report = manager.display.error_as_warning
    C.INVENTORY_UNPARSED_IS_FAILED = C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    manager.display.error_as_warning = collect
    try:
        yield
    finally:
        C.INVENTORY_UNPARSED_IS_FAILED, C.INVENTORY_ANY_UNPARSED_IS_FAILED = saved
        manager.display.error_as_warning = saved_report


def origin_of(value: Any) -> str | None:
    """`path:line` (relative to the working directory when below it) of where Ansible read `value`."""
    try:
        from ansible._internal._datatag._tags import Origin
    except ImportError:  # pragma: no cover - a release that moved it: errors just lack the file name
        return None
    tag = Origin.get_tag(value)
    if tag is None or not tag.path:
        return None
    path = _display_path(tag.path, os.getcwd())
    return f"{path}:{tag.line_num}" if tag.line_num else path


@functools.lru_cache(maxsize=256)
def _display_path(path: str, cwd: str) -> str:
    """Relative to the working directory when below it (shorter errors), else absolute."""
    relative = os.path.relpath(path, cwd)
    return path if relative.startswith("..") else relative
