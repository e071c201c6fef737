"""LLaVA's architecture in miniature: CLIP vision tower -> projector -> LLaMA, in plain PyTorch.

The modules use the Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`,
`vision_model.encoder.layers.0.mlp.fc1.weight`, ...), so real HF-layout weights load by name.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from llava.constants import IGNORE_INDEX
from llava.model.hf_io import load_config, load_state_dict

# --- LLaMA ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads", self.heads)
        self.head_dim = hidden // self.heads
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)
        self.rope_theta = float(config.get("rope_theta", 10000.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        inv_freq = 1.0 / (
            self.rope_theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        )
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        # Right padding: the causal mask alone keeps real tokens from seeing the padding after them.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class LlamaMLP(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        eps = config.get("rms_norm_eps", 1e-6)
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config["hidden_size"], eps)
        self.post_attention_layernorm = RMSNorm(config["hidden_size"], eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


# --- CLIP vision ----------------------------------------------------------------------------------------


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.q_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))


class ClipMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inter)
        self.fc2 = nn.Linear(inter, hidden)
        self.act = _quick_gelu if act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-5)
        self.self_attn = ClipAttention(hidden, config["num_attention_heads"])
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = ClipMLP(hidden, config["intermediate_size"], config.get("hidden_act", "quick_gelu"))
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEmbeddings(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, patch = config["hidden_size"], config["patch_size"]
        self.class_embedding = nn.Parameter(torch.zeros(hidden))
        self.patch_embedding = nn.Conv2d(
            config.get("num_channels", 3), hidden, kernel_size=patch, stride=patch, bias=False
        )
        self.position_embedding = nn.Embedding((config["image_size"] // patch) ** 2 + 1, hidden)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1).to(patches.dtype)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class ClipEncoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layers: nn.ModuleList = nn.ModuleList(
            ClipEncoderLayer(config) for _ in range(config["num_hidden_layers"])
        )


class ClipVisionTransformer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-5)
        self.embeddings = ClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(hidden, eps=eps)  # sic: the Hugging Face name
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            ClipEncoderLayer(config) for _ in range(config["num_hidden_layers"])
        )
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)

    def hidden_states(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The embeddings and every layer's output, as `output_hidden_states=True` returns them."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        states = [x]
        for layer in cast(nn.ModuleList, self.encoder.layers):
            x = layer(x)
            states.append(x)
        return states


class ClipVisionModel(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.vision_model = ClipVisionTransformer(config)


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """A full CLIP config (`model_type: clip`, as openai/clip-vit-large-patch14-336) nests the vision part."""
    if config.get("model_type") == "clip":
        nested: dict[str, Any] = config["vision_config"]
        return nested
    return config


# --- LLaVA ----------------------------------------------------------------------------------------------


def build_vision_projector(projector_type: str, mm_hidden: int, hidden: int) -> nn.Sequential:
    if projector_type == "linear":
        return nn.Sequential(nn.Linear(mm_hidden, hidden))
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        depth = int(projector_type[3 : -len("x_gelu")])
        layers: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        return nn.Sequential(*layers)
    raise ValueError(f"--mm_projector_type {projector_type}: unknown projector type")


class LlavaLlamaModel(nn.Module):
    """`model.*` of LlavaLlamaForCausalLM: the LLaMA body plus `vision_tower` and `mm_projector`."""

    def __init__(self, config: dict[str, Any], vision: dict[str, Any], projector_type: str) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(config["hidden_size"], config.get("rms_norm_eps", 1e-6))
        self.vision_tower = ClipVisionModel(vision)
        self.mm_projector = build_vision_projector(
            projector_type, vision["hidden_size"], config["hidden_size"]
        )


class LlavaLlamaForCausalLM(nn.Module):
    def __init__(
        self,
        config: dict[str, Any],
        vision: dict[str, Any],
        projector_type: str = "mlp2x_gelu",
        select_layer: int = -2,
        select_feature: str = "patch",
    ) -> None:
        super().__init__()
        self.config = config
        self.model = LlavaLlamaModel(config, vision, projector_type)
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
        self.select_layer = select_layer
        self.select_feature = select_feature

    @classmethod
    def from_pretrained(
        cls, model_path: str, vision_tower: str, projector_type: str, select_layer: int, select_feature: str
    ) -> LlavaLlamaForCausalLM:
        config = load_config(model_path)
        vision = vision_config(load_config(vision_tower))
        model = cls(config, vision, projector_type, select_layer, select_feature)
        llm_weights = load_state_dict(model_path)
        if config.get("tie_word_embeddings") and "lm_head.weight" not in llm_weights:
            llm_weights["lm_head.weight"] = llm_weights["model.embed_tokens.weight"]
        tower_weights = {
            "model.vision_tower." + name: tensor
            for name, tensor in load_state_dict(vision_tower).items()
            if name.startswith("vision_model.")
        }
        own = model.state_dict()
        wanted = {name for name in own if ".mm_projector." not in name}
        loaded = {**llm_weights, **tower_weights}
        missing = sorted(wanted - set(loaded))
        if missing:
            raise ValueError(f"{model_path} / {vision_tower}: weights missing for {missing[:5]}")
        for name in wanted:
            if tuple(loaded[name].shape) != tuple(own[name].shape):
                raise ValueError(
                    f"{name}: checkpoint shape {tuple(loaded[name].shape)} != {tuple(own[name].shape)}"
                )
        model.load_state_dict({name: loaded[name] for name in wanted}, strict=False)
        # The projector starts as LLaVA's does: nn.Linear's default init, seeded by the trainer.
        return model

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            states = self.model.vision_tower.vision_model.hidden_states(pixels)
            features = states[self.select_layer]
            if self.select_feature == "patch":
                features = features[:, 1:]
        return self.model.mm_projector(features.detach())

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        images: torch.Tensor,
        image_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Splice the projected image features in at `image_positions` (one per sample) and return the LM
        loss on the labelled tokens."""
        embeds = self.model.embed_tokens(input_ids)
        features = self.encode_images(images.to(embeds.dtype)).to(embeds.dtype)
        rows_embeds, rows_labels = [], []
        for row in range(input_ids.shape[0]):
            at = int(image_positions[row])
            rows_embeds.append(torch.cat([embeds[row, :at], features[row], embeds[row, at + 1 :]]))
            ignore = torch.full((features.shape[1],), IGNORE_INDEX, dtype=labels.dtype)
            rows_labels.append(torch.cat([labels[row, :at], ignore, labels[row, at + 1 :]]))
        x = torch.stack(rows_embeds)
        for layer in self.model.layers:
            x = layer(x)
        hidden = self.model.norm(x)
        logits = self.lm_head(hidden).float()
        shift_labels = torch.stack(rows_labels)[:, 1:]
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
        )


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cosine_with_warmup(warmup: int, total: int, kind: str) -> Any:
    """The learning-rate multiplier of HF `get_scheduler(kind, ...)` for the kinds LLaVA uses."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant_with_warmup" or kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor
