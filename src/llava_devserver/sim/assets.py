"""Small synthetic training assets in the real formats, for the simulated fleet.

LLaVA-1.5 pretraining reads four assets: the LLM (vicuna-13b-v1.5, Hugging Face layout, sharded weights with
an index), the vision tower (openai/clip-vit-large-patch14-336), `blip_laion_cc_sbu_558k.json` and its images.
Here each is generated in the same layout and file formats, only tiny:

- `llm/`: a LLaMA-architecture model (config.json `model_type: llama`, generation_config.json, a word-level
  `tokenizer.json` in the Hugging Face tokenizers format + tokenizer_config.json + special_tokens_map.json),
  weights sharded into `model-0000N-of-00002.safetensors` + `model.safetensors.index.json`;
- `vision_tower/`: a CLIP vision model (config.json `model_type: clip_vision_model`, preprocessor_config.json,
  `model.safetensors`);
- `blip_laion_cc_sbu_558k.json`: records `{"id", "image": "00000/000000123.jpg", "conversations": [...]}`;
- `images/`: the JPEGs the records name: coloured shapes whose captions describe them, so a projector can
  actually learn something and the loss falls.

Weights are written as safetensors by hand (no extra dependency): unlike `torch.save`, whose zip carries a
random serialization id, the bytes are a pure function of the seed, so regenerated assets have the same
checksums and the roles' checksum-based skips hold.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

# Bump when the generated files change for the same (seed, records).
GENERATOR_VERSION = "1"
STAMP_FILE = ".llava-sim-assets.json"

PRETRAIN_JSON_NAME = "blip_laion_cc_sbu_558k.json"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
# The prompts of the real file vary, with `<image>` before or after the question.
PROMPTS = (
    "<image>\nRender a clear and concise summary of the photo.",
    "Give a brief description of the image.\n<image>",
    "<image>\nWrite a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.\n<image>",
)
CAPTION_WORDS = ("a", "at", "on", "the", "white", "background")

IMAGE_SIDE = 64
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")

LLM_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 172,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.31.0",
    "use_cache": True,
}

VISION_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPVisionModel"],
    "attention_dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "image_size": 32,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 4,
    "num_channels": 3,
    "num_hidden_layers": 3,
    "patch_size": 8,
    "projection_dim": 32,
    "torch_dtype": "float32",
    "transformers_version": "4.31.0",
}

PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": 32, "width": 32},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 32},
}


def generate_assets(out_dir: Path, seed: int = 0, records: int = 256) -> dict[str, Path]:
    """Write the four assets under `out_dir` (reused when already generated with the same inputs).

    Returns `{"llm", "vision_tower", "pretrain_json", "images"}` -> paths.
    """
    out_dir = Path(out_dir)
    paths = {
        "llm": out_dir / "llm",
        "vision_tower": out_dir / "vision_tower",
        "pretrain_json": out_dir / PRETRAIN_JSON_NAME,
        "images": out_dir / "images",
    }
    key = {"generator": GENERATOR_VERSION, "seed": seed, "records": records}
    stamp = out_dir / STAMP_FILE
    if _stamp_matches(stamp, key) and all(p.exists() for p in paths.values()):
        return paths

    out_dir.mkdir(parents=True, exist_ok=True)
    samples = _samples(seed, records)
    vocab = _vocab()
    _write_llm(paths["llm"], vocab, seed)
    _write_vision_tower(paths["vision_tower"], seed)
    _write_pretrain_json(paths["pretrain_json"], samples)
    _write_images(paths["images"], samples)
    stamp.write_text(json.dumps(key, sort_keys=True) + "\n")
    return paths


def _stamp_matches(stamp: Path, key: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(stamp.read_text()) == key)
    except (OSError, ValueError):
        return False


# --- data ---------------------------------------------------------------------------------------------


def _samples(seed: int, records: int) -> list[dict[str, Any]]:
    """One description per record: what to draw and the caption that says it."""
    rng = random.Random(seed)
    samples = []
    for index in range(records):
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        size, position = rng.choice(SIZES), rng.choice(POSITIONS)
        # Ids look like the real file's: 9 digits, images sharded into folders of 10,000.
        image_id = f"{index * 7919 % 1_000_000_000:09d}"
        samples.append(
            {
                "id": image_id,
                "image": f"{image_id[:5]}/{image_id}.jpg",
                "color": color,
                "shape": shape,
                "size": size,
                "position": position,
                "caption": f"a {size} {color} {shape} at the {position} on a white background",
                "prompt": PROMPTS[index % len(PROMPTS)],
            }
        )
    return samples


def _write_pretrain_json(path: Path, samples: list[dict[str, Any]]) -> None:
    records = [
        {
            "id": s["id"],
            "image": s["image"],
            "conversations": [
                {"from": "human", "value": s["prompt"]},
                {"from": "gpt", "value": s["caption"]},
            ],
        }
        for s in samples
    ]
    path.write_text(json.dumps(records))  # one line, like the real file


def _write_images(images_dir: Path, samples: list[dict[str, Any]]) -> None:
    for s in samples:
        path = images_dir / s["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        _draw(s).save(path, format="JPEG", quality=90)


def _draw(sample: dict[str, Any]) -> Image.Image:
    side = IMAGE_SIDE
    image = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    radius = side * (0.3 if sample["size"] == "large" else 0.15)
    cx, cy = {
        "left": (side * 0.28, side * 0.5),
        "right": (side * 0.72, side * 0.5),
        "top": (side * 0.5, side * 0.28),
        "bottom": (side * 0.5, side * 0.72),
        "center": (side * 0.5, side * 0.5),
    }[sample["position"]]
    fill = COLORS[sample["color"]]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    shape = sample["shape"]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)
    return image


# --- tokenizer ----------------------------------------------------------------------------------------


def _vocab() -> dict[str, int]:
    words = sorted({*CAPTION_WORDS, *COLORS, *SHAPES, *SIZES, *POSITIONS})
    # A few words of the prompts too, so the tokenizer covers the human turns (unknown words map to <unk>).
    prompt_words = sorted(
        {w.strip(".").lower() for p in PROMPTS for w in p.replace("<image>", " ").split()} - set(words)
    )
    tokens = [*SPECIAL_TOKENS, *words, *prompt_words, ".", ","]
    return {token: index for index, token in enumerate(tokens)}


def _tokenizer_json(vocab: dict[str, int]) -> dict[str, Any]:
    """A word-level tokenizer in the Hugging Face `tokenizers` JSON format."""
    added = [
        {
            "id": vocab[token],
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


# --- weights ------------------------------------------------------------------------------------------


def _write_llm(llm_dir: Path, vocab: dict[str, int], seed: int) -> None:
    llm_dir.mkdir(parents=True, exist_ok=True)
    config = {**LLM_CONFIG, "vocab_size": len(vocab)}
    _write_json(llm_dir / "config.json", config)
    _write_json(
        llm_dir / "generation_config.json",
        {
            "bos_token_id": 1,
            "do_sample": True,
            "eos_token_id": 2,
            "max_length": 4096,
            "pad_token_id": 0,
            "temperature": 0.9,
            "top_p": 0.6,
            "transformers_version": "4.31.0",
        },
    )
    _write_json(llm_dir / "tokenizer.json", _tokenizer_json(vocab))
    _write_json(
        llm_dir / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 4096,
            "pad_token": None,
            "padding_side": "right",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "<unk>",
        },
    )
    _write_json(
        llm_dir / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"},
    )
    tensors = _llama_weights(config, seed)
    _write_sharded(llm_dir, tensors, shards=2)


def _llama_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1000 + 1)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    std = config["initializer_range"]

    def normal(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(vocab, hidden, scale=1.0)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        # Scaled so the frozen random blocks neither vanish nor explode: a usable, if ignorant, LM.
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[prefix + f"self_attn.{proj}.weight"] = normal(hidden, hidden, scale=hidden**-0.5)
        tensors[prefix + "mlp.gate_proj.weight"] = normal(inter, hidden, scale=hidden**-0.5)
        tensors[prefix + "mlp.up_proj.weight"] = normal(inter, hidden, scale=hidden**-0.5)
        tensors[prefix + "mlp.down_proj.weight"] = normal(hidden, inter, scale=inter**-0.5)
        tensors[prefix + "input_layernorm.weight"] = torch.ones(hidden)
        tensors[prefix + "post_attention_layernorm.weight"] = torch.ones(hidden)
    tensors["model.norm.weight"] = torch.ones(hidden)
    tensors["lm_head.weight"] = normal(vocab, hidden, scale=hidden**-0.5)
    return tensors


def _write_vision_tower(tower_dir: Path, seed: int) -> None:
    tower_dir.mkdir(parents=True, exist_ok=True)
    _write_json(tower_dir / "config.json", VISION_CONFIG)
    _write_json(tower_dir / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_safetensors(tower_dir / "model.safetensors", _clip_vision_weights(VISION_CONFIG, seed))


def _clip_vision_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1000 + 2)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    patch, channels = config["patch_size"], config["num_channels"]
    positions = (config["image_size"] // patch) ** 2 + 1

    def normal(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    p = "vision_model."
    tensors: dict[str, torch.Tensor] = {
        p + "embeddings.class_embedding": normal(hidden, scale=0.5),
        p + "embeddings.patch_embedding.weight": normal(
            hidden, channels, patch, patch, scale=(channels * patch * patch) ** -0.5
        ),
        p + "embeddings.position_embedding.weight": normal(positions, hidden, scale=0.1),
        p + "pre_layrnorm.weight": torch.ones(hidden),
        p + "pre_layrnorm.bias": torch.zeros(hidden),
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"{p}encoder.layers.{layer}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            tensors[prefix + f"self_attn.{proj}.weight"] = normal(hidden, hidden, scale=hidden**-0.5)
            tensors[prefix + f"self_attn.{proj}.bias"] = torch.zeros(hidden)
        tensors[prefix + "layer_norm1.weight"] = torch.ones(hidden)
        tensors[prefix + "layer_norm1.bias"] = torch.zeros(hidden)
        tensors[prefix + "mlp.fc1.weight"] = normal(inter, hidden, scale=hidden**-0.5)
        tensors[prefix + "mlp.fc1.bias"] = torch.zeros(inter)
        tensors[prefix + "mlp.fc2.weight"] = normal(hidden, inter, scale=inter**-0.5)
        tensors[prefix + "mlp.fc2.bias"] = torch.zeros(hidden)
        tensors[prefix + "layer_norm2.weight"] = torch.ones(hidden)
        tensors[prefix + "layer_norm2.bias"] = torch.zeros(hidden)
    tensors[p + "post_layernorm.weight"] = torch.ones(hidden)
    tensors[p + "post_layernorm.bias"] = torch.zeros(hidden)
    return tensors


def _write_sharded(model_dir: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """Split the tensors in order over `shards` files, with the index Hugging Face writes beside them."""
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for number in range(shards):
        file_name = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[number * per_shard : (number + 1) * per_shard]}
        _write_safetensors(model_dir / file_name, part)
        weight_map.update(dict.fromkeys(part, file_name))
        total += sum(t.numel() * t.element_size() for t in part.values())
    _write_json(
        model_dir / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format: u64 little-endian header length, JSON header, raw little-endian data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to(torch.float32).contiguous()
        blob = tensor.numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for blob in blobs:
            handle.write(blob)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
