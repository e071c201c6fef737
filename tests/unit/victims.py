"""The state of a victim file or folder on disk, for tests where a hostile container points links at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything below TOP as it is on disk (type, mode, owner, size, mtime, content)."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(top))] = (
            info.st_mode,
            info.st_uid,
            info.st_size,
            info.st_mtime_ns,
            content,
        )
    return found
