"""Jinja2 filters over `llava_devserver.server_python` for preflight's first play (no logic here).

- `{{ candidates | llava_server_python_probe }}`: the `raw` script that finds the server's Python and OS;
- `{{ ansible_python_interpreter | llava_server_python_candidates(fallback) }}`: what discovery tries;
- `{{ probe_result | llava_server_python_assess(ansible_version.full, inventory_hostname, candidates) }}`:
  `{interpreter, python_version, os, fingerprint, summary, problem}`.
"""

from __future__ import annotations

from typing import Any

from llava_devserver import server_python
from llava_devserver.ansible_support import filter_guard as _guard


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llava_server_python_probe": _guard(server_python.probe_script),
            "llava_server_python_candidates": _guard(server_python.interpreter_candidates),
            "llava_server_python_assess": _guard(server_python.assess),
        }
