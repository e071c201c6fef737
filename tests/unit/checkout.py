"""Facts of this checkout that several tests read: pyproject.toml's settings and scripts/overlay_venv.py."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def floor(spec: str) -> str:
    """The lower bound of a requirement or version range: `ansible-core>=2.19.0,<2.20` -> `2.19.0`."""
    match = re.search(r">=\s*([0-9][0-9.]*)", spec)
    assert match, spec
    return match.group(1)


def ansible_core_floor() -> str:
    """The oldest ansible-core pyproject.toml's range allows."""
    return floor(next(d for d in pyproject()["project"]["dependencies"] if d.startswith("ansible-core")))


def _load_overlay_venv() -> ModuleType:
    path = ROOT / "scripts" / "overlay_venv.py"
    spec = importlib.util.spec_from_file_location("overlay_venv", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


overlay_venv = _load_overlay_venv()
