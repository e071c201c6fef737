"""Root's state on a server lives in one root-only folder, llava.host_state_dir, never in the state folder
llava.state_dir that the training container can write: one source (config.py), passed in the llava dict,
read by every role, playbook and the CLI; work_dir may not come near it."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.llava.devserver.plugins.filter.llava_pretrain import llava_pretrain_state_file

from fleet_settings import llava_of
from llava_devserver import assets_manifest, assets_plan, jobstate
from llava_devserver.commands.fleet import remote_log_command
from llava_devserver.config import (
    HOST_STATE_ROOT,
    HOST_STATE_ROOT_ENV,
    FleetValidationError,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_llava_dict_names_the_root_only_folder_of_its_container(
    package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOST_STATE_ROOT_ENV, raising=False)
    llava = llava_of(package, container_name="job-7")
    assert llava["host_state_dir"] == "/var/lib/llava-devserver/job-7"
    assert not llava["host_state_dir"].startswith(llava["work_dir"] + "/")
    # the job helper's default and its test hook are the same as the model's
    assert (jobstate.STATE_ROOT, jobstate.STATE_ROOT_ENV) == (HOST_STATE_ROOT, HOST_STATE_ROOT_ENV)
    assert (
        jobstate.Paths(
            llava["work_dir"], llava["container_work_dir"], llava["state_dir"], "job-7"
        ).private_dir
        == (llava["host_state_dir"])
    )
    # everything that names a root-only file derives it from host_state_dir
    assert llava_pretrain_state_file(llava) == "/var/lib/llava-devserver/job-7/job.json"
    assert assets_plan.plan(llava)["manifest"] == "/var/lib/llava-devserver/job-7/assets-manifest.json"
    assert " --host-state-dir /var/lib/llava-devserver/job-7" in remote_log_command(llava, 5, follow=False)


def test_a_test_root_flows_through_the_llava_dict(
    package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOST_STATE_ROOT_ENV, str(tmp_path / "root-only"))
    assert llava_of(package)["host_state_dir"] == str(tmp_path / "root-only" / "llava-pretrain")


@pytest.mark.parametrize(
    "work_dir",
    ["/var/lib/llava-devserver", "//var/lib/llava-devserver/", "/var/lib/llava-devserver/llava-pretrain/w"],
)
def test_work_dir_never_overlaps_the_root_only_state(package: str, work_dir: str) -> None:
    with pytest.raises(FleetValidationError) as info:
        llava_of(package, work_dir=work_dir)
    messages = [f"{e.host}: {e.setting}: {e.message}" for e in info.value.errors]
    assert len(messages) == 1, messages
    assert messages[0].startswith("ds-0: work_dir: ") and (
        "overlaps /var/lib/llava-devserver, where llava-devserver keeps its root-only state" in messages[0]
    ), messages
    assert (
        llava_of(package, work_dir="/var/lib/llava-devserver-data")["work_dir"]
        == "/var/lib/llava-devserver-data"
    )


def test_the_job_helper_uses_the_folder_it_is_given_and_refuses_one_under_work_dir(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / ".llava-devserver").mkdir(parents=True)
    given = tmp_path / "given" / "c"
    argv = [
        sys.executable, jobstate.__file__, "plan", "--work-dir", str(work), "--container-work-dir",
        "/home/ma-user/ws", "--state-dir", str(work / ".llava-devserver"), "--container", "c",
        "--output-dir", "/home/ma-user/ws/out", "--node-rank", "0", "--host-state-dir", str(given),
        "--docker", "true",  # a container where nothing runs
    ]  # fmt: skip
    env = {**os.environ, jobstate.STATE_ROOT_ENV: str(tmp_path / "elsewhere")}  # the flag wins over the hook
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_IMODE(given.stat().st_mode) == 0o700 and (given / "job.lock").is_file()
    assert not (tmp_path / "elsewhere").exists()
    assert os.listdir(work / ".llava-devserver") == []  # nothing of root's in the container's folder
    for inside in (work / "state", work):
        argv[argv.index("--host-state-dir") + 1] = str(inside)
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        assert done.returncode == 1 and "outside work_dir" in json.loads(done.stdout)["error"], done.stdout


def test_the_manifest_is_written_root_only(tmp_path: Path) -> None:
    folder = tmp_path / "host" / "c"
    manifest = folder / "assets-manifest.json"
    assets_manifest.write_entry(str(manifest), "llm", {"ok": True})
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert assets_manifest.read_manifest(str(manifest))["assets"] == {"llm": {"ok": True}}


# ------------------------------------------------------------------------------ written out nowhere else


def _code_lines(path: Path) -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}", line.strip())
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def _yaml_files() -> list[Path]:
    return [
        *sorted((ROOT / "roles").rglob("*.yml")),
        *sorted((ROOT / "playbooks").glob("*.yml")),
        *sorted((ROOT / "molecule").rglob("*.yml")),
        ROOT / "site.yml",
    ]


def test_roles_and_playbooks_read_the_root_only_folder_from_llava() -> None:
    found = [(f, line) for path in _yaml_files() for f, line in _code_lines(path)]
    literal = [(f, line) for f, line in found if "/var/lib/llava-devserver" in line]
    # argument_specs descriptions may name the default for the reader; values may not
    assert [item for item in literal if "argument_specs.yml" not in item[0]] == []
    assert any("llava.host_state_dir" in line for f, line in found if f.startswith("roles/llava_workspace/"))
    assert any("llava.host_state_dir" in line for f, line in found if f.startswith("roles/llava_assets/"))


def test_no_ansible_module_touches_the_container_writable_state_folder() -> None:
    """llava.state_dir only reaches the helpers that open it without following links (jobstate.py's
    --state-dir) or names a top-level name the package may not use (package_unpack.py's
    --state-dir-name); no module (file, copy, slurp, stat, fetch, ...) gets a path in it."""
    uses = re.compile(r"llava\.state_dir\b")
    allowed = re.compile(
        r"'--state-dir', llava\.state_dir[,\]]|'--state-dir-name', llava\.state_dir \| basename"
    )
    lines = [(f, line) for path in _yaml_files() for f, line in _code_lines(path) if uses.search(line)]
    assert lines, "llava.state_dir is passed to the helpers somewhere"
    vars_file = "roles/llava_pretrain/vars/main.yml"
    offending = [
        (f, line)
        for f, line in lines
        if not allowed.search(line)
        and f != vars_file
        and not f.endswith("argument_specs.yml")  # descriptions
    ]
    assert offending == []
    where = (ROOT / vars_file).read_text()
    assert '  - --state-dir\n  - "{{ llava.state_dir }}"\n' in where
    assert '  - --host-state-dir\n  - "{{ llava.host_state_dir }}"\n' in where
    assert where.count("llava.state_dir") == 1
