"""llava_assets: root on the host never makes folders inside work_dir (every folder there is the container
user's, who may have replaced it with a link to a host folder). The asset folders are made inside the
training container as its user, in one exec for all assets, skipped in check mode; root's own folders (the
helpers', the manifest's) are outside work_dir."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "roles" / "llava_assets" / "tasks"
PARENTS = "Create the parent directories of the assets to stage (in the container, as the image's user)"


def tasks(items: Any) -> Iterator[dict[str, Any]]:
    for item in items or []:
        if isinstance(item, dict):
            yield item
            for key in ("block", "rescue", "always"):
                yield from tasks(item.get(key))


def role_tasks() -> list[dict[str, Any]]:
    return [t for path in sorted(TASKS.glob("*.yml")) for t in tasks(yaml.safe_load(path.read_text()))]


def test_the_asset_folders_are_made_in_the_container_as_its_user() -> None:
    (task,) = [t for t in role_tasks() if t.get("name") == PARENTS]
    exec_ = task["community.docker.docker_container_exec"]
    assert (
        exec_["user"] == "{{ llava.container_user }}" and exec_["container"] == "{{ llava.container_name }}"
    )
    assert "llava_assets_parent_dirs" in exec_["argv"]  # container paths (assets_plan.parent_dirs), one exec
    assert "loop" not in task
    assert "not ansible_check_mode" in task["when"]


def test_root_makes_no_folder_inside_work_dir() -> None:
    """Every folder the file module makes as root is root's own, outside work_dir."""
    made = [
        t
        for t in role_tasks()
        if (t.get("ansible.builtin.file") or t.get("file") or {}).get("state") == "directory"
    ]
    assert made  # the helpers' and the manifest's folders
    role_vars = yaml.safe_load((REPO / "roles" / "llava_assets" / "vars" / "main.yml").read_text())
    for task in made:
        # the role's own variables a task names, written out
        text = json.dumps(task)
        text += "".join(json.dumps(value) for name, value in role_vars.items() if name in text)
        assert "helper_dir" in text or "llava.host_state_dir" in text, task["name"]
        assert "dest" not in text and "work_dir" not in text, task["name"]


def mkdir_script() -> str:
    (task,) = [t for t in role_tasks() if t.get("name") == PARENTS]
    return str(task["vars"]["llava_assets_mkdir_script"])


def test_the_mkdir_script_says_what_it_created(tmp_path: Path) -> None:
    """Its output is the task's `changed`: a line per folder it made, nothing when all were there."""
    (tmp_path / "there").mkdir()
    (tmp_path / "file").write_text("x")
    wanted = [str(tmp_path / "there"), str(tmp_path / "new" / "deep")]
    first = subprocess.run(["sh", "-c", mkdir_script(), "sh", *wanted], capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.splitlines() == [f"created {tmp_path}/new/deep"]
    again = subprocess.run(["sh", "-c", mkdir_script(), "sh", *wanted], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""
    bad = subprocess.run(
        ["sh", "-c", mkdir_script(), "sh", str(tmp_path / "file" / "x")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and bad.stdout == "" and bad.stderr
