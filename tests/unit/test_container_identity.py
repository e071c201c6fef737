"""The container's user and group and our state folder: settings of the model, passed in the llava dict,
and nowhere else written out (roles, playbooks and the server-side helpers get them from there)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fleet_settings import llava_of
from llava_devserver import jobstate
from llava_devserver.config import (
    CONTAINER_GROUP,
    CONTAINER_USER,
    STATE_DIR_NAME,
    FleetValidationError,
)

ROOT = Path(__file__).resolve().parents[2]


def errors_of(package: str, **settings: Any) -> list[str]:
    with pytest.raises(FleetValidationError) as info:
        llava_of(package, **settings)
    return [f"{e.setting}: {e.message}" for e in info.value.errors]


def test_defaults_are_the_vendor_image_user_and_our_state_folder(package: str) -> None:
    llava = llava_of(package)
    assert (CONTAINER_USER, CONTAINER_GROUP, STATE_DIR_NAME) == ("ma-user", "ma-group", ".llava-devserver")
    assert llava["container_user"] == "ma-user" and llava["container_group"] == "ma-group"
    assert llava["state_dir"] == "/data/llava-devserver/.llava-devserver"
    assert llava["host_state_dir"] == "/var/lib/llava-devserver/llava-pretrain"
    assert llava["container_work_dir"] == "/home/ma-user/ws"


def test_another_image_user_flows_into_the_llava_dict(package: str) -> None:
    llava = llava_of(package, container_user="aiuser", container_group="ai_group", work_dir="/data2/w")
    assert (llava["container_user"], llava["container_group"]) == ("aiuser", "ai_group")
    assert llava["state_dir"] == "/data2/w/.llava-devserver"


@pytest.mark.parametrize("name", ["root:0", "Ma-User", "-x", "a b", "x" * 33, "", "../etc"])
def test_user_and_group_must_be_names(package: str, name: str) -> None:
    assert any(
        e.startswith("container_user: ") and "is not a user or group name" in e
        for e in errors_of(package, container_user=name)
    )
    assert any(e.startswith("container_group: ") for e in errors_of(package, container_group=name))


def test_container_work_dir_is_never_the_home_of_the_configured_user(package: str) -> None:
    assert errors_of(package, container_user="aiuser", container_work_dir="/home/aiuser") == [
        "container_work_dir: must not be /home/aiuser: the guide forbids mounting onto aiuser's home "
        "(breaks the image)"
    ]
    assert llava_of(package, container_user="aiuser", container_work_dir="/home/aiuser/ws")
    assert errors_of(package, container_work_dir="/home/ma-user")[0].startswith(
        "container_work_dir: must not be /home/ma-user"
    )


def test_the_job_helper_keeps_its_logs_where_it_is_told_and_only_under_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobstate.STATE_ROOT_ENV, str(tmp_path / "root-only"))
    work = tmp_path / "w"
    paths = jobstate.Paths(str(work), "/home/ma-user/ws", str(work / "state"), "llava-pretrain")
    assert paths.log_dir == str(work / "state" / "logs")
    assert paths.in_container(paths.log_dir) == "/home/ma-user/ws/state/logs"
    # the record stays out of the container's reach: in the root-only folder, not in the state folder
    assert paths.state_file == str(tmp_path / "root-only" / "llava-pretrain" / "job.json")
    with pytest.raises(ValueError, match="not under work_dir"):
        jobstate.Paths(str(work), "/home/ma-user/ws", str(tmp_path / "elsewhere"))


# ------------------------------------------------------------------------------ written out nowhere else

_LITERALS = re.compile(r"\.llava-devserver\b(?!-)|\bma-user\b|\bma-group\b")


def _code_lines(path: Path) -> list[str]:
    """Lines that are not YAML or Python comments."""
    lines = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        lines.append(line)
    return lines


def test_roles_and_playbooks_read_them_from_llava() -> None:
    files = [
        *sorted((ROOT / "roles").rglob("*.yml")),
        *sorted((ROOT / "playbooks").glob("*.yml")),
        *sorted((ROOT / "molecule").rglob("*.yml")),
    ]
    assert len(files) > 30
    found = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in files for line in _code_lines(path)]
    offending = [line for line in found if _LITERALS.search(line.split(": ", 1)[1])]
    # argument_specs descriptions may name the default for the reader; values may not
    assert [line for line in offending if "argument_specs.yml" not in line] == []


def test_python_code_reads_the_one_constant() -> None:
    allowed = {ROOT / "src/llava_devserver/config.py"}
    sources = [
        path
        for path in sorted((ROOT / "src/llava_devserver").rglob("*.py"))
        if path not in allowed and "standin_files" not in path.parts
    ]
    strings = re.compile(r"""["'][^"'\n]*(\.llava-devserver\b(?!-)|\bma-user\b|\bma-group\b)[^"'\n]*["']""")
    offending = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sources
        for line in _code_lines(path)
        if strings.search(line)
    ]
    assert offending == []
