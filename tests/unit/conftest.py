"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def package(tmp_path: Path) -> str:
    """A file with the AscendCloud package's name (validation checks the name and that it exists)."""
    path = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    path.write_bytes(b"PK")
    return str(path)
