"""roles/llava_workspace/tasks/unpack.yml itself, run by ansible-playbook on this machine (connection local)
over a temporary work_dir in the middle of a job: the task wiring around package_unpack.py (arguments,
JSON, the failure messages) without a simulated fleet.

The stand-in package unpacks and syncs multimodal_algorithm/ only; a package whose inner zip has a `./`
member fails naming the zip and deletes nothing (it used to run `rsync -a --delete .inner/./ work/./`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llava_devserver.config import STATE_DIR_NAME
from llava_devserver.sim.standin import LLAVA_TRAIN_DIR, aigc_zip_name, build_package, package_name

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("rsync", "unzip")), reason="needs rsync and unzip"
)

PLAY = """\
---
- name: The unpack tasks of llava_workspace on this machine
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [vars.json]
  tasks:
    - name: Unpack
      ansible.builtin.include_role:
        name: llava_workspace
        tasks_from: unpack_only
"""


def workspace(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    work = tmp_path / "work"
    files = {
        work / STATE_DIR_NAME / "job.json": b'{"state": "running"}',
        work / LLAVA_TRAIN_DIR / "LLaVA/checkpoints/llava/checkpoint-10/model.bin": b"weights",
        work / "sim-assets/images/0.jpg": b"jpeg",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return work, files


def run_unpack(tmp_path: Path, work: Path, package: Path) -> subprocess.CompletedProcess[str]:
    """unpack.yml with the facts main.yml computes before it (its own set_fact, copy and owner steps)."""
    unpack = tmp_path / "host-state" / "unpack"  # main.yml creates llava.host_state_dir and copies it there
    unpack.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(package, unpack / package.name)
    roles = tmp_path / "roles"
    role = roles / "llava_workspace"
    role.mkdir(parents=True)
    for part in ("defaults", "meta", "vars"):
        shutil.copytree(ROOT / "roles/llava_workspace" / part, role / part)
    (role / "tasks").mkdir()
    shutil.copy(ROOT / "roles/llava_workspace/tasks/unpack.yml", role / "tasks/unpack_only.yml")
    shutil.copy(ROOT / "roles/llava_workspace/tasks/ownership.yml", role / "tasks/ownership.yml")
    ws = "/home/ma-user/ws"
    llava = {
        "ascendcloud_package": str(package),
        "work_dir": str(work),
        "container_work_dir": ws,
        "state_dir": str(work / STATE_DIR_NAME),
        "llava_train_commit": LLAVA_TRAIN_DIR.rsplit("/", 1)[1],
        "output_dir": f"{ws}/{LLAVA_TRAIN_DIR}/LLaVA/checkpoints/llava",
        "assets": {"images": {"source": "control", "dest": f"{ws}/sim-assets/images"}},
    }
    stem = package.name.removesuffix(".zip")
    variables = {
        "ansible_python_interpreter": sys.executable,
        "llava": llava,
        "llava_workspace_package_name": package.name,
        "llava_workspace_package_path": str(unpack / package.name),
        "llava_workspace_outer_dir": str(unpack / stem),
        "llava_workspace_commit_host_dir": str(work / LLAVA_TRAIN_DIR),
        "llava_workspace_build_marker": str(tmp_path / "host-state" / "build.ok"),
        "llava_workspace_unpack_marker": str(tmp_path / "host-state" / "package.json"),
        "llava_workspace_copy": {"checksum": "0" * 40},
        "llava_workspace_uid": os.getuid(),
        "llava_workspace_gid": os.getgid(),
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "play.yml").write_text(PLAY)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(roles),
        "LLAVA_RUN_DIR": "",  # no run folder: the report callback writes nothing
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def assert_untouched(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.is_file() and path.read_bytes() == data, f"{path} was changed or deleted"


def test_the_stand_in_package_syncs_only_its_directory(tmp_path: Path) -> None:
    work, files = workspace(tmp_path)
    stale = work / "multimodal_algorithm/dropped.txt"
    stale.write_bytes(b"from an older package")
    package = build_package(tmp_path / "pkg")
    result = run_unpack(tmp_path, work, package)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (work / LLAVA_TRAIN_DIR / "build.sh").is_file()
    assert not stale.exists()
    # the marker is root's record: in the root-only folder (llava.host_state_dir), not in the state folder
    marker = tmp_path / "host-state" / "package.json"
    assert json.loads(marker.read_text())["inner"] == aigc_zip_name()
    assert marker.stat().st_mode & 0o777 == 0o600
    assert not (work / STATE_DIR_NAME / "package.json").exists()
    # unzipped in root's folder, which keeps only the zip afterwards: nothing of the package lands in work_dir
    # but its directories
    assert sorted(p.name for p in (tmp_path / "host-state" / "unpack").iterdir()) == [package.name]
    assert sorted(p.name for p in work.iterdir()) == [STATE_DIR_NAME, "multimodal_algorithm", "sim-assets"]
    assert_untouched(files)


def test_an_inner_zip_with_a_dot_slash_member_fails_and_deletes_nothing(tmp_path: Path) -> None:
    work, files = workspace(tmp_path)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name in ("./", "./multimodal_algorithm/", f"./{LLAVA_TRAIN_DIR}/build.sh"):
            archive.writestr(zipfile.ZipInfo(name), b"" if name.endswith("/") else b"echo build\n")
    package = tmp_path / package_name()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr(aigc_zip_name(), inner.getvalue())
    result = run_unpack(tmp_path, work, package)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"localhost: ascendcloud_package {package}: {aigc_zip_name()} (inside {package.name}): "
        "the member './' is the zip's root itself"
    ) in output, output
    assert "TASK [llava_workspace : Put the package's directories into work_dir]" not in output
    assert_untouched(files)
