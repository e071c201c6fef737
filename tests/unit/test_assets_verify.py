"""assets_verify: sound assets pass; damaged ones fail with an error naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava_devserver import assets_verify
from llava_devserver.assets_verify import verify_pretrain_json, verify_weights
from llava_devserver.sim.assets import generate_assets


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_assets(tmp_path_factory.mktemp("pristine"), records=48)


@pytest.fixture
def assets(pristine: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy each test may damage."""
    root = pristine["llm"].parent
    shutil.copytree(root, tmp_path / "a")
    return {key: tmp_path / "a" / path.relative_to(root) for key, path in pristine.items()}


def test_generated_assets_pass(assets: dict[str, Path]) -> None:
    llm = verify_weights(str(assets["llm"]), kind="llm")
    assert llm.ok, llm.errors
    assert len(llm.details["shards"]) == 2
    tower = verify_weights(str(assets["vision_tower"]), kind="vision_tower")
    assert tower.ok, tower.errors
    data = verify_pretrain_json(
        str(assets["pretrain_json"]), str(assets["images"]), sample=None, expect_records=48
    )
    assert data.ok, data.errors
    assert data.details["images_checked"] == 48


def test_truncated_shard(assets: dict[str, Path]) -> None:
    shard = assets["llm"] / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = verify_weights(str(assets["llm"]))
    assert not result.ok
    assert str(shard) in result.error and "truncated" in result.error


def test_missing_shard_and_tokenizer(assets: dict[str, Path]) -> None:
    (assets["llm"] / "model-00001-of-00002.safetensors").unlink()
    (assets["llm"] / "tokenizer.json").unlink()
    result = verify_weights(str(assets["llm"]))
    text = "\n".join(result.errors)
    assert "model-00001-of-00002.safetensors: shard named by model.safetensors.index.json is missing" in text
    assert "no tokenizer" in text


def test_vision_tower_needs_preprocessor_config(assets: dict[str, Path]) -> None:
    (assets["vision_tower"] / "preprocessor_config.json").unlink()
    result = verify_weights(str(assets["vision_tower"]), kind="vision_tower")
    assert result.error == f"{assets['vision_tower'] / 'preprocessor_config.json'}: missing"


def test_record_pointing_at_missing_image(assets: dict[str, Path]) -> None:
    records = json.loads(assets["pretrain_json"].read_text())
    gone = assets["images"] / records[5]["image"]
    gone.unlink()
    result = verify_pretrain_json(str(assets["pretrain_json"]), str(assets["images"]), sample=None)
    assert not result.ok
    assert result.details["images_missing"] == 1
    assert str(gone) in result.error and str(assets["pretrain_json"]) in result.error


def test_bad_json_and_malformed_records(assets: dict[str, Path]) -> None:
    path = assets["pretrain_json"]
    path.write_text(path.read_text()[:-10])
    result = verify_pretrain_json(str(path), str(assets["images"]))
    assert result.error.startswith(f"{path}: not valid JSON")

    records = json.loads(
        json.dumps([{"id": "1", "image": "x.jpg", "conversations": [{"from": "human", "value": "hi"}]}])
    )
    records.append({"id": "2", "image": "y.jpg", "conversations": [{"value": "no token"}, {"value": "cap"}]})
    path.write_text(json.dumps(records))
    result = verify_pretrain_json(str(path), None, expect_records=3)
    text = "\n".join(result.errors)
    assert "2 records, expected 3" in text
    assert "record 0 (id 1): fewer than two conversation turns" in text
    assert "record 1 (id 2): the first turn has no <image>" in text


def test_torch_bin_shards(tmp_path: Path) -> None:
    """The vicuna layout: pytorch_model-0000N-of-00002.bin + pytorch_model.bin.index.json."""
    model = tmp_path / "vicuna"
    shutil.copytree(generate_assets(tmp_path / "gen", records=4)["llm"], model)
    for path in model.glob("model*.safetensors*"):
        path.unlink()
    weight_map = {}
    for number, names in enumerate((["model.embed_tokens.weight"], ["lm_head.weight"]), start=1):
        name = f"pytorch_model-{number:05d}-of-00002.bin"
        torch.save({n: torch.zeros(4, 4) for n in names}, model / name)
        weight_map.update(dict.fromkeys(names, name))
    (model / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert verify_weights(str(model), deep=True).ok
    shard = model / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:-200])
    result = verify_weights(str(model))
    assert result.error.startswith(f"{shard}: damaged torch checkpoint")


def test_command_line_runs_on_plain_python(assets: dict[str, Path], tmp_path: Path) -> None:
    """The file runs standalone (stdlib only, beside the helpers the role copies with it, no package on
    the path: -S, no PYTHONPATH) with the exit codes the role relies on."""
    from ansible_collections.llava.devserver.plugins.filter.assets import llava_assets_python_files

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, path in llava_assets_python_files().items():
        shutil.copy(path, bin_dir / name)
    script = bin_dir / Path(assets_verify.__file__).name
    env = {"PATH": os.environ["PATH"]}
    ok = subprocess.run(
        [sys.executable, "-S", str(script), "weights", str(assets["llm"])],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    (assets["images"] / json.loads(assets["pretrain_json"].read_text())[0]["image"]).unlink()
    bad = subprocess.run(
        [
            sys.executable,
            "-S",
            str(script),
            "pretrain-json",
            str(assets["pretrain_json"]),
            "--image-root",
            str(assets["images"]),
            "--sample",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["details"]["images_missing"] == 1
    usage = subprocess.run(
        [sys.executable, "-S", str(script), "nonsense"], capture_output=True, text=True, env=env
    )
    assert usage.returncode == 2
