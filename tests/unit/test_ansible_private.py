"""llava_devserver.ansible_private, the one module on ansible-core internals, on two ansible-core releases.

The locked release (this environment) and the oldest pyproject.toml's range allows, installed into a
virtualenv of its own under .cache/ (from PyPI once; the other dependencies are this environment's, reached
by a .pth path line). The same checks run in both: an unparsable source is an error that names its cause
(not a warning and an empty inventory), the settings' origins carry file and line, tagged values come out
as plain Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checkout import ansible_core_floor, overlay_venv

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "tests/inventories/good/devserver.ini"

CHECKS = """
import json, sys, tempfile, pathlib
import ansible.release
from llava_devserver.inventory import InventoryError, load_inventory, plain

good = load_inventory(sys.argv[1])
broken = pathlib.Path(tempfile.mkdtemp()) / "hosts.ini"
broken.write_text("[devservers\\na ansible_host=10.0.0.1\\n")
try:
    load_inventory(str(broken))
    error = None
except InventoryError as exc:
    error = str(exc)
values = plain(good.hosts["ds-a"])
print(json.dumps({
    "version": ansible.release.__version__,
    "origins": good.origins["ds-a"],
    "broken": error,
    "plain_types": sorted({type(v).__name__ for v in values.values()}),
    "tagged_types": sorted({type(v).__name__ for v in good.hosts["ds-a"].values()}),
}))
"""


def _oldest_python() -> Path:
    version = ansible_core_floor()
    venv = ROOT / ".cache" / f"ansible-core-{version}"
    marker = venv / ".installed"
    if not marker.is_file():
        overlay_venv.create(venv, [f"ansible-core=={version}"])
        marker.write_text(version + "\n")
    return venv / "bin/python"


@pytest.fixture(scope="module", params=["locked", "oldest"])
def release(request: pytest.FixtureRequest) -> tuple[str, dict]:
    python = Path(sys.executable) if request.param == "locked" else _oldest_python()
    done = subprocess.run(
        [str(python), "-c", CHECKS, str(GOOD)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return request.param, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_release_is_the_one_asked_for(release: tuple[str, dict]) -> None:
    name, seen = release
    if name == "oldest":
        assert seen["version"] == ansible_core_floor()
    else:
        import ansible.release

        assert seen["version"] == ansible.release.__version__


def test_an_unparsable_source_is_an_error_naming_it(release: tuple[str, dict]) -> None:
    _, seen = release
    assert seen["broken"] is not None and "hosts.ini" in seen["broken"], seen["broken"]


def test_origins_carry_file_and_line(release: tuple[str, dict]) -> None:
    _, seen = release
    assert seen["origins"]["work_dir"].endswith("group_vars/all.yml:3"), seen["origins"]


def test_tagged_values_come_out_plain(release: tuple[str, dict]) -> None:
    _, seen = release
    assert any(t.startswith("_AnsibleTagged") for t in seen["tagged_types"]), seen["tagged_types"]
    assert not [t for t in seen["plain_types"] if t.startswith("_Ansible")], seen["plain_types"]
