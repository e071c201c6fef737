"""Read Hugging Face model directories without `transformers`: config, weights (sharded or not), tokenizer.

Weights come as `model.safetensors`, `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`,
`pytorch_model.bin`, or `pytorch_model-0000N-of-0000M.bin` + `pytorch_model.bin.index.json`.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
}


def load_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {model_dir} a Hugging Face model directory?")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model, from whichever weight layout the directory has."""
    model_dir = Path(model_dir)
    for index_name, loader in (
        ("model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin.index.json", _read_bin),
    ):
        index_path = model_dir / index_name
        if index_path.is_file():
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = model_dir / shard
                if not shard_path.is_file():
                    raise FileNotFoundError(f"{shard_path}: shard named by {index_path} is missing")
                tensors.update(loader(shard_path))
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise ValueError(f"{index_path}: tensors not found in their shards: {missing[:5]}")
            return tensors
    if (model_dir / "model.safetensors").is_file():
        return read_safetensors(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        return _read_bin(model_dir / "pytorch_model.bin")
    raise FileNotFoundError(f"{model_dir}: no weights (model.safetensors, pytorch_model.bin or an index)")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: truncated safetensors file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        if end > len(body):
            raise ValueError(f"{path}: truncated: tensor {name} ends at {end}, data has {len(body)} bytes")
        dtype = SAFETENSORS_DTYPES[spec["dtype"]]
        raw = bytearray(body[begin:end])
        tensors[name] = torch.frombuffer(raw, dtype=dtype).reshape(spec["shape"]) if raw else torch.empty(0)
    return tensors


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


class WordLevelTokenizer:
    """The subset of a Hugging Face `tokenizer.json` the stand-in needs: a WordLevel model, a Lowercase
    normalizer and a Whitespace pre-tokenizer (`\\w+|[^\\w\\s]+`)."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        spec = json.loads(path.read_text())
        model = spec["model"]
        if model.get("type") != "WordLevel":
            raise ValueError(f"{path}: the stand-in reads WordLevel tokenizers, not {model.get('type')}")
        self.vocab: dict[str, int] = model["vocab"]
        self.unk_token_id = self.vocab[model["unk_token"]]
        self.lowercase = (spec.get("normalizer") or {}).get("type") == "Lowercase"
        special_map_path = model_dir / "special_tokens_map.json"
        special = json.loads(special_map_path.read_text()) if special_map_path.is_file() else {}
        self.bos_token_id = self.vocab.get(_token(special.get("bos_token", "<s>")), 1)
        self.eos_token_id = self.vocab.get(_token(special.get("eos_token", "</s>")), 2)
        self.pad_token_id = self.vocab.get(_token(special.get("pad_token", "<unk>")), self.unk_token_id)

    def encode(self, text: str) -> list[int]:
        if self.lowercase:
            text = text.lower()
        return [self.vocab.get(word, self.unk_token_id) for word in re.findall(r"\w+|[^\w\s]+", text)]

    def __len__(self) -> int:
        return len(self.vocab)


def _token(value: Any) -> str:
    # special_tokens_map.json holds either a string or {"content": ...}.
    return str(value["content"]) if isinstance(value, dict) else str(value)
