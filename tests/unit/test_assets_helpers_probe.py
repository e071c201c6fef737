"""The one look at the helper scripts on a server (llava_assets): what it prints, and which it sends again."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from ansible_collections.llava.devserver.plugins.filter.assets import (
    HELPER_STAT,
    llava_assets_helpers_due,
    llava_assets_helpers_probe,
    llava_assets_python_files,
)


def _lines_of_good_copies() -> list[str]:
    lines = []
    for name, path in llava_assets_python_files().items():
        lines += [f"{hashlib.sha256(Path(path).read_bytes()).hexdigest()}  {name}", f"{HELPER_STAT} {name}"]
    return lines


def test_nothing_is_due_when_every_script_matches() -> None:
    assert llava_assets_helpers_due(_lines_of_good_copies()) == {}


def test_a_missing_changed_or_wrongly_owned_script_is_due_and_only_it() -> None:
    names = list(llava_assets_python_files())
    good = _lines_of_good_copies()
    missing = [line for line in good if not line.endswith(f" {names[0]}")]
    assert list(llava_assets_helpers_due(missing)) == [names[0]]
    changed = [f"{'0' * 64}  {names[1]}" if line.endswith(f"  {names[1]}") else line for line in good]
    assert list(llava_assets_helpers_due(changed)) == [names[1]]
    linked = [f"root:root:777 {names[2]}" if line == f"{HELPER_STAT} {names[2]}" else line for line in good]
    assert list(llava_assets_helpers_due(linked)) == [names[2]]
    assert llava_assets_helpers_due([]) == llava_assets_python_files()  # no folder yet: all of them


def test_the_probe_prints_the_lines_the_filter_reads(tmp_path: Path) -> None:
    helper_dir = tmp_path / "helpers dir"  # a space: the command quotes it
    helper_dir.mkdir()
    for name, path in llava_assets_python_files().items():
        shutil.copy(path, helper_dir / name)
        (helper_dir / name).chmod(0o644)
    probe = subprocess.run(
        ["sh", "-c", llava_assets_helpers_probe(str(helper_dir))], capture_output=True, text=True, check=True
    )
    lines = probe.stdout.splitlines()
    good = _lines_of_good_copies()
    assert [line for line in good if "  " in line] == [line for line in lines if "  " in line]
    owner = subprocess.run(["stat", "-c", "%U:%G", str(helper_dir)], capture_output=True, text=True)
    stat_lines = [line for line in lines if "  " not in line]
    assert stat_lines == [f"{owner.stdout.strip()}:644 {name}" for name in llava_assets_python_files()]


def test_the_probe_of_a_missing_folder_prints_nothing_and_all_are_due(tmp_path: Path) -> None:
    probe = subprocess.run(
        ["sh", "-c", llava_assets_helpers_probe(str(tmp_path / "none"))], capture_output=True, text=True
    )
    assert probe.returncode != 0 and probe.stdout == ""
    assert llava_assets_helpers_due(probe.stdout.splitlines()) == llava_assets_python_files()
