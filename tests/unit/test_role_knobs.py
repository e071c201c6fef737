"""Every role's knobs agree in defaults/main.yml, meta/argument_specs.yml and the README's table.

The README table is generated from the argument specs (scripts/gen_role_docs.py), defaults/main.yml is
compared with the specs; a knob changed in one place only fails here. Settings of the model are not knobs:
what an inventory sets is either a setting (llava_devserver.config) or a knob of a role.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from llava_devserver.config import KNOWN_SETTINGS
from llava_devserver.sim.inventory import SimJob, sim_group_vars

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_role_docs", ROOT / "scripts" / "gen_role_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_role_docs"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
ROLES = gen.role_dirs()


def test_every_role_is_covered() -> None:
    on_disk = sorted(path.name for path in (ROOT / "roles").iterdir() if path.is_dir())
    assert [role.name for role in ROLES] == on_disk
    assert len(ROLES) >= 9


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_defaults_and_argument_specs_agree(role: Path) -> None:
    assert gen.role_problems(role) == []


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_readme_knob_table_is_generated_from_the_specs(role: Path) -> None:
    readme = (role / "README.md").read_text()
    assert gen.readme_with_table(role) == readme, "run scripts/gen_role_docs.py"
    for knob in gen.knob_specs(role):
        assert f"| `{knob}` |" in readme


def test_generator_check_mode_passes_on_the_tree() -> None:
    assert gen.main(["--check"]) == 0


def _all_knobs() -> set[str]:
    return {knob for role in ROLES for knob in gen.knob_specs(role)}


def _role_prefixed(names: set[str]) -> set[str]:
    prefixes = tuple(role.name + "_" for role in ROLES)
    return {name for name in names if name.startswith(prefixes) and name not in KNOWN_SETTINGS}


def test_the_simulated_fleet_sets_only_settings_and_knobs(tmp_path: Path) -> None:
    job = SimJob(
        package=tmp_path / "AscendCloud-6.3.906-1.zip",
        assets={"llm": tmp_path / "llm"},
        image_tag="llava-sim/train:1",
        image_archive=tmp_path / "image.tar",
    )
    names = set(sim_group_vars(2, 8, 2, job, "23.0.5"))
    knobs = _role_prefixed(names)
    assert knobs, "the simulated fleet sets accel_check knobs"
    assert knobs <= _all_knobs()
    assert names - knobs <= set(KNOWN_SETTINGS)


def test_the_example_inventory_sets_only_settings_and_knobs() -> None:
    for path in sorted((ROOT / "inventory" / "group_vars").rglob("*.yml")):
        names = set(yaml.safe_load(path.read_text()) or {})
        assert names - _all_knobs() <= set(KNOWN_SETTINGS), path


# ----------------------------------------------------------------------- a knob changed in one place only


@pytest.fixture
def role_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "roles" / "npu_check"
    shutil.copytree(ROOT / "roles" / "npu_check", copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_default_changed_in_defaults_only_is_found(role_copy: Path) -> None:
    _edit(
        role_copy / "defaults" / "main.yml", "npu_check_npu_smi: npu-smi", "npu_check_npu_smi: /opt/npu-smi"
    )
    assert gen.role_problems(role_copy) == [
        "npu_check: npu_check_npu_smi defaults to '/opt/npu-smi' in defaults/main.yml but to 'npu-smi' "
        "in argument_specs"
    ]


def test_a_knob_added_to_the_specs_only_is_found(role_copy: Path) -> None:
    specs = role_copy / "meta" / "argument_specs.yml"
    data = yaml.safe_load(specs.read_text())
    data["argument_specs"]["main"]["options"]["npu_check_extra"] = {
        "type": "int",
        "default": 1,
        "description": "x",
    }
    specs.write_text(yaml.safe_dump(data))
    assert gen.role_problems(role_copy) == [
        "npu_check: npu_check_extra is in argument_specs main but not in defaults/main.yml"
    ]


def test_a_wrong_type_or_choice_is_found(role_copy: Path) -> None:
    specs = role_copy / "meta" / "argument_specs.yml"
    data = yaml.safe_load(specs.read_text())
    options = data["argument_specs"]["main"]["options"]
    options["npu_check_bound_devices"]["type"] = "int"
    options["npu_check_npu_smi"]["choices"] = ["npu-smi-2"]
    specs.write_text(yaml.safe_dump(data))
    problems = gen.role_problems(role_copy)
    assert "npu_check: argument_specs main.npu_check_bound_devices: default True is not a int" in problems
    assert any("main.npu_check_npu_smi: default 'npu-smi' is not one of its choices" in p for p in problems)


def test_a_readme_edited_by_hand_is_out_of_date(role_copy: Path) -> None:
    readme = role_copy / "README.md"
    assert gen.readme_with_table(role_copy) == readme.read_text()
    _edit(
        readme,
        "| `npu_check_bound_devices` | bool | `true` |",
        "| `npu_check_bound_devices` | bool | `false` |",
    )
    assert gen.readme_with_table(role_copy) != readme.read_text()


def test_a_readme_without_markers_is_an_error(role_copy: Path) -> None:
    readme = role_copy / "README.md"
    readme.write_text(readme.read_text().replace(gen.START, ""))
    with pytest.raises(ValueError, match="markers"):
        gen.readme_with_table(role_copy)


def test_an_entry_point_must_agree_with_main(tmp_path: Path) -> None:
    copy = tmp_path / "roles" / "llava_pretrain"
    shutil.copytree(ROOT / "roles" / "llava_pretrain", copy)
    specs = copy / "meta" / "argument_specs.yml"
    data = yaml.safe_load(specs.read_text())
    data["argument_specs"]["stop"]["options"]["llava_pretrain_stop_grace"]["default"] = 5
    specs.write_text(yaml.safe_dump(data))
    assert "llava_pretrain: argument_specs stop.llava_pretrain_stop_grace differs from main." + (
        "llava_pretrain_stop_grace"
    ) in gen.role_problems(copy)
