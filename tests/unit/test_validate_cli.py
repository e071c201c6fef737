"""`llava-devserver validate` and `schema`: exit codes, one error a line, JSON, no secrets; generated docs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava_devserver.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = str(ROOT / "tests/inventories/good/devserver.ini")
BAD = str(ROOT / "tests/inventories/bad/devserver.ini")
EXAMPLE = str(ROOT / "inventory/devserver.ini")
BAD_SECRET = "s3cr3t-do-not-print"  # written in tests/inventories/bad/group_vars/all.yml


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "-i", GOOD)
    assert code == 0
    assert out.startswith("valid: 2 server(s), 4 NPU(s) each, world size 8, master 192.0.2.10:29500")


def test_invalid_inventory_one_error_per_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # origins are shown relative to the working directory
    code, out, err = run(capsys, "validate", "-i", BAD)
    assert code == 1
    lines = out.splitlines()
    assert lines == [
        "fleet: container_imgae: unknown setting; did you mean container_image? (on every server) "
        "[tests/inventories/bad/group_vars/all.yml:5]",
        "fleet: work_dir: /etc is a system directory; use a directory of its own such as /data/llava "
        "(on every server) [tests/inventories/bad/group_vars/all.yml:3]",
        "fleet: container_work_dir: must not be /home/ma-user: the guide forbids mounting onto ma-user's "
        "home (breaks the image) (on every server) [tests/inventories/bad/group_vars/all.yml:4]",
        "fleet: ascendcloud_package: AscendCloud package /nonexistent/AscendCloud-6.3.906-1.zip does not "
        "exist on the control node (or is not a file) (on every server) "
        "[tests/inventories/bad/group_vars/all.yml:7]",
        "ds-b: npu_devices: lists NPU 1 more than once [tests/inventories/bad/devserver.ini:4]",
        "fleet: ansible_host: ds-a and ds-b share the address 192.0.2.20",
    ]
    assert "6 error(s)" in err
    assert BAD_SECRET not in out + err


def test_invalid_inventory_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "-i", BAD, "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False and report["hosts"] == {}
    assert {(e["host"], e["setting"]) for e in report["errors"]} == {
        ("fleet", "container_imgae"),
        ("fleet", "work_dir"),
        ("fleet", "container_work_dir"),
        ("fleet", "ascendcloud_package"),
        ("ds-b", "npu_devices"),
        ("fleet", "ansible_host"),
    }
    assert BAD_SECRET not in out


def test_valid_inventory_as_json_has_no_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = "hub-token-never-printed"
    code, out, _ = run(
        capsys,
        "validate",
        "-i",
        GOOD,
        "--format",
        "json",
        "-e",
        f"hf_token={secret} container_registry_password=x1",
    )
    assert code == 0
    report = json.loads(out)
    assert list(report["hosts"]) == ["ds-a", "ds-b"]
    assert report["hosts"]["ds-b"]["node_rank"] == 1 and report["hosts"]["ds-b"]["hf_token_set"] is True
    assert secret not in out and "x1" not in out
    code, out, _ = run(capsys, "validate", "-i", GOOD, "--show", "-e", f"hf_token={secret}")
    assert code == 0 and '"world_size": 8' in out and secret not in out


def test_unreadable_inventory_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "validate", "-i", str(tmp_path / "missing.ini"))
    assert (code, out) == (2, "")
    assert "missing.ini: no such inventory file" in err
    broken = tmp_path / "broken.ini"
    broken.write_text("[devservers\nx\n")
    code, out, _ = run(capsys, "validate", "-i", str(broken), "--format", "json")
    assert code == 2 and "broken.ini" in json.loads(out)["unreadable"]
    nogroup = tmp_path / "nogroup.ini"
    nogroup.write_text("[web]\nx\n")
    code, _, err = run(capsys, "validate", "-i", str(nogroup))
    assert code == 2 and "no group [devservers]" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2
    capsys.readouterr()


def test_example_inventory_validates_with_a_package(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    package = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    code, out, _ = run(capsys, "validate", "-i", EXAMPLE)
    assert code == 1 and out.startswith("fleet: ascendcloud_package: ")  # the example's path is a placeholder
    package.write_bytes(b"PK")
    code, out, _ = run(capsys, "validate", "-i", EXAMPLE, "-e", f"ascendcloud_package={package}")
    assert code == 0, out
    assert "2 server(s), 8 NPU(s) each, world size 16" in out and "256 = 16 x 1 x 16" in out


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["properties"]["container_shm_size"]["default"] == "32g"
    assert "container_registry_password" in schema["properties"]


def test_generated_docs_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_inventory_docs", ROOT / "scripts/gen_inventory_docs.py"
    )
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "docs/inventory.md").read_text() == generator.inventory_doc(), (
        "run scripts/gen_inventory_docs.py"
    )
    readme = (ROOT / "README.md").read_text()
    assert generator.readme_block() in readme, "run scripts/gen_inventory_docs.py"
    assert "`container_shm_size`" in generator.inventory_doc()
