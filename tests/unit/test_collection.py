"""The collection llava.devserver and the installed package work away from the checkout.

- A wheel (a plain, non-editable install) in a fresh virtualenv runs `validate`, `schema`, `render` and
  `plan` from an empty folder outside the checkout, with no LLAVA_DEVSERVER_HOME, ANSIBLE_CONFIG or
  PYTHONPATH: the playbooks, roles, plugins and templates come from the package; the run lands in ./runs.
- The collection tarball builds, installs with `ansible-galaxy collection install`, and its playbook
  `llava.devserver.site` passes --syntax-check from that folder.
- The versions that must agree (package, collection, the oldest ansible-core) do.

The fresh virtualenv gets only the wheel; the dependencies are this environment's (scripts/overlay_venv.py:
the checkout's src/ is not importable in it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from checkout import ansible_core_floor, floor, overlay_venv, pyproject

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GOOD = ROOT / "tests/inventories/good"
# What would point the commands back at the checkout.
ISOLATED_ENV_DROP = ("LLAVA_DEVSERVER_HOME", "LLAVA_DEVSERVER_TEMPLATES", "ANSIBLE_CONFIG", "PYTHONPATH")


def _galaxy() -> dict:
    return yaml.safe_load((ROOT / "galaxy.yml").read_text())


def test_collection_version_is_the_package_version() -> None:
    from llava_devserver import __version__

    assert _galaxy()["version"] == pyproject()["project"]["version"] == __version__


def test_the_oldest_ansible_core_is_said_the_same_everywhere() -> None:
    oldest = ansible_core_floor()  # e.g. 2.19.0
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())["requires_ansible"]
    assert floor(runtime) == oldest
    minor = ".".join(oldest.split(".")[:2])
    roles = sorted((ROOT / "roles").glob("*/meta/main.yml"))
    assert roles
    for meta in roles:
        assert yaml.safe_load(meta.read_text())["galaxy_info"]["min_ansible_version"] == minor, meta


def test_the_dependencies_are_ranges_and_the_lock_is_exact() -> None:
    deps = pyproject()["project"]["dependencies"]
    assert deps and not [d for d in deps if "==" in d], deps
    lock = (ROOT / "requirements/ci.lock").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)


def test_the_checkout_is_the_collection() -> None:
    link = ROOT / "collections/ansible_collections/llava/devserver"
    assert link.is_symlink() and link.resolve() == ROOT
    galaxy = _galaxy()
    assert (galaxy["namespace"], galaxy["name"]) == ("llava", "devserver")
    # the roles call the collection's plugins by their full names: they resolve in the installed collection
    names = {p.stem for p in (ROOT / "plugins/action").glob("*.py")}
    yaml_text = "\n".join(p.read_text() for d in ("roles", "playbooks") for p in (ROOT / d).rglob("*.yml"))
    for name in names:
        assert re.search(rf"^\s*{name}:", yaml_text, re.M) is None, f"{name} without llava.devserver."


def _isolated_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV_DROP and not k.startswith("ANSIBLE_")}
    env["ANSIBLE_NOCOLOR"] = "1"
    return {**env, **(extra or {})}


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder outside the checkout holding an inventory of two servers on 127.0.0.1:9 (refused)."""
    folder = tmp_path_factory.mktemp("outside")
    assert ROOT not in folder.parents
    for part in ("group_vars", "host_vars", "files"):
        shutil.copytree(GOOD / part, folder / part)
    (folder / "devserver.ini").write_text(
        "[devservers]\n"
        "ds-a ansible_host=127.0.0.1 ansible_port=9 npu_devices=0-3\n"
        "ds-b ansible_host=127.0.0.2 ansible_port=9\n"
        "[devservers:vars]\nansible_user=root\n"
    )
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh virtualenv holding the wheel of this checkout, not editable."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run(
        [str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work), str(ROOT)],
        cwd=work,
        env=_isolated_env(),
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(work.glob("llava_devserver-*.whl"))
    venv = work / "venv"
    overlay_venv.create(venv, [str(wheel)], ansible_playbook=True)
    return venv / "bin"


def test_the_wheel_runs_from_any_folder(installed: Path, outside: Path) -> None:
    env = _isolated_env({"PATH": f"{installed}{os.pathsep}{os.environ.get('PATH', '')}"})
    cli = str(installed / "llava-devserver")

    where = _run(
        [str(installed / "python"), "-c", "import llava_devserver.runner as r; print(r.find_project_root())"],
        outside,
        env,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout  # not the checkout

    validate = _run([cli, "validate", "-i", "devserver.ini"], outside, env)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    schema = _run([cli, "schema"], outside, env)
    assert schema.returncode == 0, schema.stderr
    assert "ascendcloud_package" in json.loads(schema.stdout)["properties"]

    render = _run([cli, "render", "-i", "devserver.ini", "-o", "rendered"], outside, env)
    assert render.returncode == 0, render.stdout + render.stderr
    assert (outside / "rendered/ds-a/pretrain_new.sh").is_file()

    # plan: the packaged playbooks run (validation passes), the servers refuse SSH, the run lands in ./runs
    plan = _run([cli, "plan", "-i", "devserver.ini"], outside, env)
    output = plan.stdout + plan.stderr
    assert plan.returncode != 0, output
    reports = sorted(p for p in (outside / "runs").glob("*/report.json") if p.parent.name != "latest")
    assert reports, output
    log = (reports[-1].parent / "ansible.log").read_text()
    assert "Validate the settings of every server of devservers" in log
    assert "UNREACHABLE" in log
    for broken in ("could not be found", "No filter named", "couldn't resolve module/action"):
        assert broken not in log, log[-3000:]
    report = json.loads(reports[-1].read_text())
    assert {h["host"]: h["status"] for h in report["hosts"]} == {"ds-a": "unreachable", "ds-b": "unreachable"}


def test_the_collection_tarball_installs_and_its_site_playbook_parses(tmp_path: Path, outside: Path) -> None:
    env = _isolated_env({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    galaxy = str(BIN / "ansible-galaxy")
    built = _run([galaxy, "collection", "build", "--output-path", str(tmp_path), str(ROOT)], tmp_path, env)
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = tmp_path / f"llava-devserver-{_galaxy()['version']}.tar.gz"
    assert tarball.is_file()

    collections = tmp_path / "collections"
    # from the empty folder: the checkout's ansible.cfg (which makes the checkout the collection) is not read
    done = _run(
        [galaxy, "collection", "install", "--offline", "-p", str(collections), str(tarball)], outside, env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    home = collections / "ansible_collections/llava/devserver"
    assert (home / "playbooks/site.yml").is_file() and (home / "plugins/filter/assets.py").is_file()
    assert not (home / "src").exists() and not (home / "tests/unit").exists()

    syntax = _run(
        [str(BIN / "ansible-playbook"), "llava.devserver.site", "-i", "devserver.ini", "--syntax-check"],
        outside,
        {**env, "ANSIBLE_COLLECTIONS_PATH": str(collections)},
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    assert str(home / "playbooks/site.yml") in syntax.stdout
