"""Jinja2 filters for the role llava_workspace, over `llava_devserver.package_unpack` (no logic here).

- `{{ llava | llava_workspace_protected }}`: what a sync of the package must never delete (setting ->
  path relative to work_dir): output_dir and the destinations of fetched assets.
- `{{ None | llava_workspace_unpack_helper }}`: the control-node file of the standalone helper that judges
  the zips' member names and syncs the package's directories (ansible.builtin.script runs it).
- `{{ result | llava_workspace_helper_error }}`: why a run of that helper failed, in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llava_devserver import package_unpack
from llava_devserver.ansible_support import filter_guard as _guard


def llava_workspace_protected(llava: Mapping[str, Any]) -> dict[str, str]:
    return package_unpack.protected_paths(llava)


def llava_workspace_unpack_helper(_value: Any = None) -> str:
    return str(package_unpack.__file__)


def llava_workspace_helper_error(result: Mapping[str, Any]) -> str:
    return package_unpack.helper_error(result)


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            f.__name__: _guard(f)
            for f in (
                llava_workspace_protected,
                llava_workspace_unpack_helper,
                llava_workspace_helper_error,
            )
        }
