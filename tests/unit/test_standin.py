"""The stand-in AscendCloud package: the real nesting and names, deterministic bytes, a working build.sh."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llava_devserver.sim.standin import LLAVA_TRAIN_DIR, aigc_zip_name, build_package

TS = "20240612100000"
VENV_PYTHON = {"PYTHON": sys.executable}


def _unpack(package: Path, work: Path) -> Path:
    """What the guide does: unzip the outer zip, then the inner AIGC zip, in the work dir."""
    with zipfile.ZipFile(package) as outer:
        outer.extractall(work)
    inner = sorted(work.glob("AscendCloud-AIGC-*.zip"))
    assert len(inner) == 1
    with zipfile.ZipFile(inner[0]) as archive:
        for info in archive.infolist():
            archive.extract(info, work)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(work / info.filename, stat.S_IMODE(mode))
    return work / LLAVA_TRAIN_DIR


def _build(llava_train: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "build.sh"],
        cwd=llava_train,
        env={**os.environ, **VENV_PYTHON, **(env or {})},
        capture_output=True,
        text=True,
    )


def test_nesting_and_names(tmp_path: Path) -> None:
    package = build_package(tmp_path, timestamp=TS)
    assert package.name == f"AscendCloud-6.3.906-{TS}.zip"
    with zipfile.ZipFile(package) as outer:
        names = outer.namelist()
        # More than one inner zip: the role must pick the AIGC one by pattern.
        assert aigc_zip_name(TS) in names
        assert f"AscendCloud-LLM-6.3.906-{TS}.zip" in names
        inner = zipfile.ZipFile(io.BytesIO(outer.read(aigc_zip_name(TS))))
    build_sh = inner.getinfo(f"{LLAVA_TRAIN_DIR}/build.sh")
    assert stat.S_IMODE(build_sh.external_attr >> 16) == 0o755
    assert (
        LLAVA_TRAIN_DIR == "multimodal_algorithm/LLAVA/llava-train/5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
    )
    assert not any("__pycache__" in name for name in inner.namelist())


def test_same_bytes_every_time(tmp_path: Path) -> None:
    first = build_package(tmp_path / "a", timestamp=TS).read_bytes()
    second = build_package(tmp_path / "b", timestamp=TS).read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert build_package(tmp_path / "c", timestamp="20240613100000").read_bytes() != first


def test_build_sh_makes_the_llava_tree_and_is_idempotent(tmp_path: Path) -> None:
    llava_train = _unpack(build_package(tmp_path, timestamp=TS), tmp_path / "ws")
    result = _build(llava_train)
    assert result.returncode == 0, result.stderr
    llava = llava_train / "LLaVA"
    for name in (
        "llava/train/train_mem.py",
        "llava/train/train.py",
        "scripts/zero2.json",
        "scripts/v1_5/pretrain_new.sh",
        "scripts/v1_5/pretrain.sh",
    ):
        assert (llava / name).is_file(), name
    vendor = (llava / "scripts/v1_5/pretrain_new.sh").read_text()
    assert "lmsys/vicuna-13b-v1.5" in vendor and "--tf32 False" in vendor and "set_env.sh" in vendor
    assert "import torch_npu" in (llava / "llava/train/train_mem.py").read_text()  # the NPU patch won
    assert subprocess.run(["bash", "-n", str(llava / "scripts/v1_5/pretrain_new.sh")]).returncode == 0

    # A second run keeps what the workspace put there since (assets, checkpoints).
    data = llava / "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    data.parent.mkdir(parents=True)
    data.write_text("[]")
    again = _build(llava_train)
    assert again.returncode == 0, again.stderr
    assert data.read_text() == "[]"


def test_build_sh_fails_loudly(tmp_path: Path) -> None:
    llava_train = _unpack(build_package(tmp_path, timestamp=TS, fault="build-fails"), tmp_path / "ws")
    result = _build(llava_train)
    assert result.returncode == 1
    assert "build.sh: ERROR: missing upstream/LLaVA/llava/train/train.py" in result.stderr
    assert not (llava_train / "LLaVA").exists()

    good = _unpack(build_package(tmp_path / "good", timestamp=TS), tmp_path / "ws2")
    no_torch = _build(good, env={"PYTHON": "/bin/false"})
    assert no_torch.returncode == 1
    assert "cannot import torch" in no_torch.stderr


def test_corrupt_zip_fault(tmp_path: Path) -> None:
    package = build_package(tmp_path, timestamp=TS, fault="corrupt-zip")
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(package)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="14 digits"):
        build_package(tmp_path, timestamp="2024")
    with pytest.raises(ValueError, match="fault"):
        build_package(tmp_path, fault="nope")
