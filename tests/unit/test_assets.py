"""Synthetic training assets: real formats (HF layout, sharded safetensors, LLaVA pretrain JSON, JPEGs)."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

import pytest
from PIL import Image

from llava_devserver.sim.assets import COLORS, SHAPES, generate_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_assets(tmp_path_factory.mktemp("assets"), seed=0, records=64)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_keys_and_layout(assets: dict[str, Path]) -> None:
    assert set(assets) == {"llm", "vision_tower", "pretrain_json", "images"}
    assert assets["pretrain_json"].name == "blip_laion_cc_sbu_558k.json"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (assets["llm"] / name).is_file(), name
    assert (assets["vision_tower"] / "preprocessor_config.json").is_file()


def test_llm_is_llama_with_sharded_weights(assets: dict[str, Path]) -> None:
    llm = assets["llm"]
    config = json.loads((llm / "config.json").read_text())
    assert config["model_type"] == "llama"
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.layers.0.self_attn.q_proj.weight" in index["weight_map"]
    assert "lm_head.weight" in index["weight_map"]
    # Each shard is a valid safetensors file holding exactly the tensors the index assigns to it.
    total = 0
    for shard in shards:
        data = (llm / shard).read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        names = {n for n in header if n != "__metadata__"}
        assert names == {n for n, f in index["weight_map"].items() if f == shard}
        end = max(spec["data_offsets"][1] for n, spec in header.items() if n != "__metadata__")
        assert len(data) == 8 + length + end
        total += end
    assert index["metadata"]["total_size"] == total
    vocab = json.loads((llm / "tokenizer.json").read_text())["model"]["vocab"]
    assert config["vocab_size"] == len(vocab)
    assert all(color in vocab for color in COLORS)


def test_vision_tower_is_clip(assets: dict[str, Path]) -> None:
    config = json.loads((assets["vision_tower"] / "config.json").read_text())
    assert config["model_type"] == "clip_vision_model"
    data = (assets["vision_tower"] / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert "vision_model.embeddings.patch_embedding.weight" in header
    assert f"vision_model.encoder.layers.{config['num_hidden_layers'] - 1}.mlp.fc2.weight" in header


def test_pretrain_json_records_match_images(assets: dict[str, Path]) -> None:
    records = json.loads(assets["pretrain_json"].read_text())
    assert len(records) == 64
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        assert record["image"] == f"{record['id'][:5]}/{record['id']}.jpg"
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert "<image>" in human["value"]
        with Image.open(assets["images"] / record["image"]) as image:
            assert image.format == "JPEG"
            # The caption names the colour drawn: the most saturated pixel is close to that colour.
            raw = image.convert("RGB").tobytes()
        pixels = [tuple(raw[i : i + 3]) for i in range(0, len(raw), 3)]
        color = next(c for c in COLORS if f" {c} " in gpt["value"])
        assert any(s in gpt["value"] for s in SHAPES)
        target = COLORS[color]
        assert min(sum(abs(a - b) for a, b in zip(p, target, strict=True)) for p in pixels) < 60


def test_deterministic_and_cached(tmp_path: Path) -> None:
    started = time.monotonic()
    first = generate_assets(tmp_path / "a", seed=3, records=32)
    assert time.monotonic() - started < 10
    generate_assets(tmp_path / "b", seed=3, records=32)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = generate_assets(tmp_path / "c", seed=4, records=32)
    assert _digest(tmp_path / "a") != _digest(other["llm"].parent)
    # Same inputs again: nothing rewritten.
    mtime = first["pretrain_json"].stat().st_mtime_ns
    generate_assets(tmp_path / "a", seed=3, records=32)
    assert first["pretrain_json"].stat().st_mtime_ns == mtime
