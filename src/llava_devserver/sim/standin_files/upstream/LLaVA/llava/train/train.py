"""LLaVA-1.5 projector pretraining, in miniature, with the command line and logs of the real one.

Stand-in for upstream `llava/train/train.py` + the Hugging Face Trainer on the simulated fleet: it takes every
argument of `scripts/v1_5/pretrain.sh` (unknown Hugging Face arguments are tolerated), loads the LLM and the
vision tower from Hugging Face-layout directories, freezes both and trains only the projector on the
pretrain JSON and its images. Distributed with torch.distributed when launched by `torchrun` or `deepspeed`
(gloo on CPU), with DeepSpeed ZeRO from `--deepspeed` when given. Two log styles (the environment variable
LLAVA_SIM_LOG_STYLE, set per simulated fleet by `llava-devserver sim up --log-style`):
- `hf` (default): rank 0 prints what the HF Trainer prints: a tqdm bar and `{'loss': ..., 'learning_rate':
  ..., 'epoch': ...}` per logging step, then the train metrics.
- `megatron`: what Megatron-LM/MindSpeed print, as the guide describes: rank 0 the argument banner, the LAST
  global rank `iteration N/ M | consumed samples: ... | elapsed time per iteration (ms): ... | learning
  rate: ... | global batch size: ... | lm loss: ... | ...` per logging step.
Checkpoints go to `checkpoint-<step>/` every `--save_steps`; a later run resumes from the newest one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.model.hf_io import WordLevelTokenizer, load_config
from llava.model.llava_arch import LlavaLlamaForCausalLM, cosine_with_warmup, count_trainable

PREFIX_CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE_NAME = "trainer_state.json"

# --- arguments ------------------------------------------------------------------------------------------


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes", "y"):
        return True
    if value.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """LLaVA's ModelArguments, DataArguments and TrainingArguments (the part the pretrain stage uses)."""
    p = argparse.ArgumentParser(prog="train_mem.py", allow_abbrev=False)

    def flag(name: str, default: bool) -> None:
        p.add_argument(name, type=_bool, nargs="?", const=True, default=default)

    # ModelArguments
    p.add_argument("--model_name_or_path", default="facebook/opt-125m")
    p.add_argument("--version", default="v0")
    flag("--freeze_backbone", False)
    flag("--tune_mm_mlp_adapter", False)
    p.add_argument("--vision_tower", default=None)
    p.add_argument("--mm_vision_select_layer", type=int, default=-1)
    p.add_argument("--pretrain_mm_mlp_adapter", default=None)
    p.add_argument("--mm_projector_type", default="linear")
    flag("--mm_use_im_start_end", False)
    flag("--mm_use_im_patch_token", True)
    p.add_argument("--mm_vision_select_feature", default="patch")
    # DataArguments
    p.add_argument("--data_path", default=None)
    flag("--lazy_preprocess", False)
    flag("--is_multimodal", False)
    p.add_argument("--image_folder", default=None)
    p.add_argument("--image_aspect_ratio", default="square")
    # TrainingArguments
    p.add_argument("--output_dir", required=True)
    flag("--overwrite_output_dir", False)
    p.add_argument("--num_train_epochs", type=float, default=3.0)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--per_device_eval_batch_size", type=int, default=8)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--evaluation_strategy", default="no")
    p.add_argument("--save_strategy", default="steps")
    p.add_argument("--save_steps", type=float, default=500)
    p.add_argument("--save_total_limit", type=int, default=None)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--warmup_ratio", type=float, default=0.0)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--lr_scheduler_type", default="linear")
    p.add_argument("--logging_steps", type=float, default=500)
    flag("--tf32", False)
    flag("--bf16", False)
    flag("--fp16", False)
    p.add_argument("--model_max_length", type=int, default=512)
    flag("--gradient_checkpointing", False)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--report_to", nargs="*", default=["none"])
    p.add_argument("--deepspeed", default=None)
    p.add_argument("--local_rank", type=int, default=-1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume_from_checkpoint", default=None)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        # Like HfArgumentParser(return_remaining_strings=True): note, not fail on, arguments not modelled.
        print(
            f"[stand-in] ignoring arguments this trainer does not model: {' '.join(unknown)}", file=sys.stderr
        )
    return args


def check_args(args: argparse.Namespace, accelerator: str) -> None:
    """The refusals of the real stack that a launch script can trip over."""
    if args.tf32 and accelerator != "cuda":
        # transformers.TrainingArguments.__post_init__ says exactly this without CUDA.
        raise ValueError("--tf32 requires Ampere or a newer GPU arch, cuda>=11 and torch>=1.7")
    if args.bf16 and args.fp16:
        raise ValueError("At most one of fp16 and bf16 can be True, but not both")
    reporters = [r for r in args.report_to if r not in ("none", "all")] if args.report_to else []
    if "wandb" in reporters:
        try:
            import wandb  # noqa: F401
        except ImportError as error:
            raise RuntimeError(
                "WandbCallback requires wandb to be installed. Run `pip install wandb`."
            ) from error
    for name in ("data_path", "image_folder", "vision_tower"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required for the LLaVA pretraining stage")
    for name in ("model_name_or_path", "vision_tower"):
        if not Path(getattr(args, name)).is_dir():
            # Offline: a hub id cannot be fetched; the guide's FAQ says to download it and point here.
            raise OSError(
                f"--{name} {getattr(args, name)}: not a local directory and the hub is unreachable; "
                "download the model and point the argument at it"
            )


# --- data -----------------------------------------------------------------------------------------------


class ImageProcessor:
    """CLIPImageProcessor's resize (shortest edge, bicubic), centre crop, rescale and normalize."""

    def __init__(self, tower_dir: str) -> None:
        path = Path(tower_dir) / "preprocessor_config.json"
        spec = json.loads(path.read_text())
        size, crop = spec.get("size", 224), spec.get("crop_size", 224)
        self.short_edge = int(size["shortest_edge"] if isinstance(size, dict) else size)
        self.crop = int(crop["height"] if isinstance(crop, dict) else crop)
        self.mean = torch.tensor(spec.get("image_mean", [0.5, 0.5, 0.5])).view(3, 1, 1)
        self.std = torch.tensor(spec.get("image_std", [0.5, 0.5, 0.5])).view(3, 1, 1)
        self.rescale = float(spec.get("rescale_factor", 1 / 255))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        scale = self.short_edge / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        left, top = (width - self.crop) // 2, (height - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = data.view(self.crop, self.crop, 3).permute(2, 0, 1).float() * self.rescale
        return (pixels - self.mean) / self.std


class LazySupervisedDataset(Dataset[dict[str, Any]]):
    """Records of the pretrain JSON, tokenised the way LLaVA's `plain` conversation template does it:
    `<s>` + image + caption, with only the caption labelled."""

    def __init__(
        self,
        data_path: str,
        image_folder: str,
        tokenizer: WordLevelTokenizer,
        processor: ImageProcessor,
        max_length: int,
    ) -> None:
        path = Path(data_path)
        try:
            self.records: list[dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"--data_path {path}: cannot read the pretrain JSON: {error}") from error
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image_path = self.image_folder / record["image"]
        with Image.open(image_path) as image:
            pixels = self.processor(image)
        human, gpt = record["conversations"][0]["value"], record["conversations"][1]["value"]
        if DEFAULT_IMAGE_TOKEN not in human:
            raise ValueError(f"record {record.get('id')}: the human turn has no {DEFAULT_IMAGE_TOKEN}")
        # plain: DEFAULT_IMAGE_TOKEN + caption + sep; the word-level tokenizer has no "\n", so </s> ends it.
        caption = self.tokenizer.encode(gpt)[: max(1, self.max_length - 3)]
        input_ids = [
            self.tokenizer.bos_token_id,
            self.tokenizer.unk_token_id,
            *caption,
            self.tokenizer.eos_token_id,
        ]
        labels = [IGNORE_INDEX, IGNORE_INDEX, *caption, self.tokenizer.eos_token_id]
        return {"input_ids": input_ids, "labels": labels, "image": pixels}


def collate(pad_id: int) -> Any:
    def collate_batch(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            labels[row, : len(item["labels"])] = torch.tensor(item["labels"])
        return {
            "input_ids": ids,
            "labels": labels,
            "images": torch.stack([item["image"] for item in items]),
            "image_positions": torch.ones(len(items), dtype=torch.long),  # right after <s>
        }

    return collate_batch


# --- distributed ----------------------------------------------------------------------------------------


class Dist:
    """Rank, world and the collective helpers, for one process or many."""

    def __init__(self, args: argparse.Namespace, accelerator: str, use_deepspeed: bool) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank if args.local_rank >= 0 else 0))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or _local_world_size(
            self.world_size
        )
        backend = "hccl" if accelerator == "npu" else "gloo"
        if use_deepspeed:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend)
        elif self.world_size > 1:
            dist.init_process_group(backend=backend)

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


def _local_world_size(world_size: int) -> int:
    # deepspeed's launcher sets no LOCAL_WORLD_SIZE; it passes the node's ranks in CUDA_VISIBLE_DEVICES.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    return len(visible.split(",")) if visible else world_size


# --- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_steps(output_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in `output_dir` (trainer_state.json comes last), oldest first."""
    steps = []
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def projector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What LLaVA's `get_mm_adapter_state_maybe_zero_3(..., ['mm_projector'])` saves."""
    return {
        name: tensor.detach().float().cpu().clone()
        for name, tensor in model.state_dict().items()
        if "mm_projector" in name
    }


def llava_config(args: argparse.Namespace, llm_config: dict[str, Any], mm_hidden: int) -> dict[str, Any]:
    return {
        **llm_config,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "_name_or_path": args.model_name_or_path,
        "mm_hidden_size": mm_hidden,
        "mm_projector_type": args.mm_projector_type,
        "mm_vision_select_layer": args.mm_vision_select_layer,
        "mm_vision_select_feature": args.mm_vision_select_feature,
        "mm_vision_tower": args.vision_tower,
        "mm_use_im_start_end": args.mm_use_im_start_end,
        "mm_use_im_patch_token": args.mm_use_im_patch_token,
        "tune_mm_mlp_adapter": args.tune_mm_mlp_adapter,
        "image_aspect_ratio": args.image_aspect_ratio,
        "use_cache": True,
    }


# --- the loop -------------------------------------------------------------------------------------------


def resolve_deepspeed_config(
    path: str, args: argparse.Namespace, world_size: int, nodes: int
) -> dict[str, Any]:
    """Fill the "auto" values the way the HF Trainer's DeepSpeed integration does."""
    try:
        config: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--deepspeed {path}: cannot read the DeepSpeed config: {error}") from error
    fills = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "gradient_clipping": args.max_grad_norm,
    }
    for key, value in fills.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for key, enabled in (("fp16", args.fp16), ("bf16", args.bf16)):
        section = config.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
    zero = config.setdefault("zero_optimization", {})
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if zero.get(key) == "auto":
            zero[key] = int(5e8)
    for section_name in ("optimizer", "scheduler"):
        section = config.get(section_name)
        if section:
            params = section.setdefault("params", {})
            for key in list(params):
                if params[key] == "auto":
                    params[key] = {"lr": args.learning_rate, "weight_decay": args.weight_decay}.get(
                        key, params[key]
                    )
    if nodes > 1 and "use_node_local_storage" not in config.get("checkpoint", {}):
        # Each server has its own output_dir: every node must write the model states it will read on resume.
        print(
            "[stand-in] multi-node run without checkpoint.use_node_local_storage in the DeepSpeed config: "
            "setting it, since output_dir is not shared",
            file=sys.stderr,
        )
        config.setdefault("checkpoint", {})["use_node_local_storage"] = True
    return config


def train() -> None:
    args = parse_args()
    # Line-buffered, so the loss lines reach a redirected log as they happen (torchrun does not pass -u).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    accelerator = _accelerator()
    check_args(args, accelerator)
    use_deepspeed = bool(args.deepspeed)
    world = Dist(args, accelerator, use_deepspeed)
    is_main = world.rank == 0
    log_style = os.environ.get("LLAVA_SIM_LOG_STYLE", "hf") or "hf"
    if log_style not in ("hf", "megatron"):
        raise ValueError(f"LLAVA_SIM_LOG_STYLE={log_style!r}: expected hf or megatron")
    megatron = log_style == "megatron"
    is_last = world.rank == world.world_size - 1  # Megatron's loss printer: the last pipeline rank
    is_local_main = world.local_rank == 0
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, world.local_world_size)))
    nodes = max(1, world.world_size // max(1, world.local_world_size))

    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = WordLevelTokenizer(args.model_name_or_path)
    model = LlavaLlamaForCausalLM.from_pretrained(
        args.model_name_or_path,
        args.vision_tower,
        args.mm_projector_type,
        args.mm_vision_select_layer,
        args.mm_vision_select_feature,
    )
    # The pretraining stage: LLM and vision tower frozen, only the projector learns.
    if not args.tune_mm_mlp_adapter:
        print(
            "[stand-in] --tune_mm_mlp_adapter False: the stand-in still trains only the projector",
            file=sys.stderr,
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "mm_projector" in name

    dataset = LazySupervisedDataset(
        args.data_path,
        args.image_folder,
        tokenizer,
        ImageProcessor(args.vision_tower),
        args.model_max_length,
    )
    sampler: DistributedSampler[dict[str, Any]] = DistributedSampler(
        dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=args.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collate(tokenizer.pad_token_id),
        num_workers=args.dataloader_num_workers,
        persistent_workers=False,
    )
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = max(len(loader) // accumulation, 1)
    if args.max_steps > 0:
        max_steps = args.max_steps
        epochs = math.ceil(max_steps / steps_per_epoch)
    else:
        max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
        epochs = math.ceil(args.num_train_epochs)
    warmup = args.warmup_steps if args.warmup_steps > 0 else math.ceil(max_steps * args.warmup_ratio)
    save_steps = int(args.save_steps if args.save_steps >= 1 else math.ceil(max_steps * args.save_steps))
    # Stand-in only: a pause after each step (seconds) so that tests can act on a running job at a known pace,
    # however fast the machine (a tiny model steps in milliseconds). Set through the setting train_env.
    step_pause = float(os.environ.get("LLAVA_SIM_STEP_PAUSE", "0") or 0)
    logging_steps = int(
        args.logging_steps if args.logging_steps >= 1 else math.ceil(max_steps * args.logging_steps)
    )
    total_batch = args.per_device_train_batch_size * accumulation * world.world_size

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(warmup, max_steps, args.lr_scheduler_type)
    )

    engine: Any = None
    ddp: Any = None
    autocast_dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None)
    if use_deepspeed:
        import deepspeed

        ds_config = resolve_deepspeed_config(args.deepspeed, args, world.world_size, nodes)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        autocast_dtype = None  # DeepSpeed casts the model itself
    elif world.active:
        ddp = torch.nn.parallel.DistributedDataParallel(model)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    global_step = 0
    log_history: list[dict[str, Any]] = []
    resume_step = _resume_step(args, output_dir, world)
    if resume_step:
        checkpoint_dir = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{resume_step}"
        if engine is not None:
            # The tag named outright: DeepSpeed writes `latest` on global rank 0's node only.
            load_path, _ = engine.load_checkpoint(str(checkpoint_dir), tag=f"global_step{resume_step}")
            if load_path is None:
                raise RuntimeError(f"{checkpoint_dir}: DeepSpeed found no checkpoint to load")
        else:
            state = torch.load(checkpoint_dir / "training_state.pt", map_location="cpu", weights_only=False)
            model.load_state_dict(state["projector"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        trainer_state = json.loads((checkpoint_dir / TRAINER_STATE_NAME).read_text())
        global_step = int(trainer_state["global_step"])
        log_history = list(trainer_state.get("log_history", []))

    if is_main and megatron:
        _info(
            f"using world size: {world.world_size}, data-parallel size: {world.world_size}, "
            "context-parallel size: 1, tensor-model-parallel size: 1, pipeline-model-parallel size: 1"
        )
        _info(f"> training for {max_steps} iterations, global batch size {total_batch}")
    if is_main and not megatron:
        _info("***** Running training *****")
        _info(f"  Num examples = {len(dataset):,}")
        _info(f"  Num Epochs = {epochs:,}")
        _info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size:,}")
        _info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch:,}")
        _info(f"  Gradient Accumulation steps = {accumulation}")
        _info(f"  Total optimization steps = {max_steps:,}")
        _info(f"  Number of trainable parameters = {count_trainable(model):,}")
        if resume_step:
            _info("  Continuing training from checkpoint, will skip to saved global_step")
            _info(f"  Continuing training from epoch {global_step // steps_per_epoch}")
            _info(f"  Continuing training from global step {global_step}")
            _info(
                f"  Will skip the first {global_step // steps_per_epoch} epochs then the first "
                f"{(global_step % steps_per_epoch) * accumulation} batches in the first epoch."
            )
            _info(f"Resumed from checkpoint {output_dir / f'{PREFIX_CHECKPOINT_DIR}-{resume_step}'}")

    bar = _progress(max_steps, global_step) if is_main and not megatron else None
    logged_at, logged_from = time.time(), global_step
    grad_norm = 0.0
    start_time = time.time()
    start_step = global_step
    logged_loss, logged_steps, run_loss = 0.0, 0, 0.0
    micro_loss = 0.0
    forward = engine if engine is not None else (ddp if ddp is not None else model)
    model.train()
    epoch = global_step // steps_per_epoch
    while global_step < max_steps and epoch < epochs:
        sampler.set_epoch(epoch)
        skip = (global_step - epoch * steps_per_epoch) * accumulation
        for micro_step, batch in enumerate(loader):
            if micro_step < skip:
                continue
            if micro_step >= steps_per_epoch * accumulation or global_step >= max_steps:
                break
            with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = forward(batch["input_ids"], batch["labels"], batch["images"], batch["image_positions"])
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / accumulation).backward()
            micro_loss += float(loss.detach()) / accumulation
            if (micro_step + 1) % accumulation != 0:
                continue
            if engine is None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_loss = world.mean(micro_loss)
            micro_loss = 0.0
            logged_loss += step_loss
            logged_steps += 1
            run_loss += step_loss
            epoch_float = epoch + (micro_step + 1) / (steps_per_epoch * accumulation)
            if bar is not None:
                bar.update(1)
            if step_pause:
                time.sleep(step_pause)
            if global_step % logging_steps == 0 or global_step == max_steps:
                logs = {
                    "loss": round(logged_loss / logged_steps, 4),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "epoch": round(epoch_float, 2),
                }
                log_history.append({**logs, "step": global_step})
                logged_loss, logged_steps = 0.0, 0
                if bar is not None:
                    bar.write(str(logs))
                if megatron and is_last:
                    now = time.time()
                    per_iteration_ms = (now - logged_at) * 1000.0 / max(1, global_step - logged_from)
                    fields = [
                        f" iteration {global_step:8d}/{max_steps:8d}",
                        f"consumed samples: {global_step * total_batch:12d}",
                        f"elapsed time per iteration (ms): {per_iteration_ms:.1f}",
                        f"learning rate: {logs['learning_rate']:.6E}",
                        f"global batch size: {total_batch:5d}",
                        f"lm loss: {logs['loss']:.6E}",
                        "loss scale: 1.0",
                        f"grad norm: {grad_norm:.3f}",
                        "number of skipped iterations:   0",
                        "number of nan iterations:   0",
                    ]
                    _info(" | ".join(fields) + " |")
                logged_at, logged_from = time.time(), global_step
            if save_steps > 0 and args.save_strategy == "steps" and global_step % save_steps == 0:
                _save_checkpoint(
                    output_dir,
                    global_step,
                    max_steps,
                    epoch_float,
                    log_history,
                    model,
                    engine,
                    optimizer,
                    scheduler,
                    world,
                    is_local_main,
                    args.save_total_limit,
                )
        epoch += 1

    runtime = time.time() - start_time
    steps_run = global_step - start_step
    if bar is not None:
        bar.close()
    metrics = {
        "train_runtime": round(runtime, 4),
        "train_samples_per_second": round(steps_run * total_batch / max(runtime, 1e-9), 3),
        "train_steps_per_second": round(steps_run / max(runtime, 1e-9), 3),
        "train_loss": run_loss / max(steps_run, 1),
        "epoch": round(global_step / steps_per_epoch, 2),
    }
    world.barrier()
    if megatron and is_last:
        _info(f"[after training is done] {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if is_main and not megatron:
        print(str(metrics), flush=True)
    if is_main:
        # What LLaVA's safe_save_model_for_hf_trainer writes in the pretrain stage, + trainer.save_state().
        torch.save(projector_state(model), output_dir / "mm_projector.bin")
        mm_hidden = model.model.mm_projector[0].in_features
        (output_dir / "config.json").write_text(
            json.dumps(llava_config(args, load_config(args.model_name_or_path), mm_hidden), indent=2) + "\n"
        )
        _write_trainer_state(
            output_dir / TRAINER_STATE_NAME, global_step, max_steps, metrics["epoch"], log_history
        )
    world.barrier()


def _save_checkpoint(
    output_dir: Path,
    step: int,
    max_steps: int,
    epoch: float,
    log_history: list[dict[str, Any]],
    model: torch.nn.Module,
    engine: Any,
    optimizer: Any,
    scheduler: Any,
    world: Dist,
    is_local_main: bool,
    save_total_limit: int | None,
) -> None:
    checkpoint_dir = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    if engine is not None:
        engine.save_checkpoint(str(checkpoint_dir), tag=f"global_step{step}")
    world.barrier()
    if is_local_main:
        # Every node writes its own copy: each server has its own output_dir.
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if engine is not None and not (checkpoint_dir / "latest").exists():
            (checkpoint_dir / "latest").write_text(f"global_step{step}")
        torch.save(projector_state(model), checkpoint_dir / "mm_projector.bin")
        if engine is None:
            torch.save(
                {
                    "projector": projector_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
                checkpoint_dir / "training_state.pt",
            )
        _write_trainer_state(checkpoint_dir / TRAINER_STATE_NAME, step, max_steps, epoch, log_history)
        if save_total_limit:
            for old in checkpoint_steps(output_dir)[:-save_total_limit]:
                shutil.rmtree(output_dir / f"{PREFIX_CHECKPOINT_DIR}-{old}", ignore_errors=True)
    world.barrier()


def _write_trainer_state(
    path: Path, step: int, max_steps: int, epoch: float, log_history: list[dict[str, Any]]
) -> None:
    state = {"global_step": step, "max_steps": max_steps, "epoch": epoch, "log_history": log_history}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _resume_step(args: argparse.Namespace, output_dir: Path, world: Dist) -> int:
    """The newest checkpoint complete on every node (LLaVA resumes whenever output_dir has `checkpoint-*`)."""
    if args.resume_from_checkpoint:
        match = re.search(r"(\d+)$", str(args.resume_from_checkpoint).rstrip("/"))
        return int(match.group(1)) if match else 0
    everywhere = None
    for steps in world.gather(checkpoint_steps(output_dir)):
        everywhere = set(steps) if everywhere is None else everywhere & set(steps)
    return max(everywhere) if everywhere else 0


def _accelerator() -> str:
    if "torch_npu" in sys.modules and hasattr(torch, "npu") and torch.npu.is_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _info(message: str) -> None:
    print(message, flush=True)


class _Bar:
    """tqdm's bar when tqdm is there (as under the HF Trainer), else a minimal one in the same format."""

    def __init__(self, total: int, initial: int) -> None:
        try:
            from tqdm.auto import tqdm

            self._tqdm: Any = tqdm(total=total, initial=initial)
        except ImportError:
            self._tqdm = None
        self.total, self.n, self.start = total, initial, time.time()

    def update(self, count: int) -> None:
        self.n += count
        if self._tqdm is not None:
            self._tqdm.update(count)
            return
        elapsed = time.time() - self.start
        percent = int(100 * self.n / max(1, self.total))
        sys.stderr.write(
            f"\r{percent:3d}%| {self.n}/{self.total} [{elapsed:.0f}s, {self.n / max(elapsed, 1e-9):.2f}it/s]"
        )
        sys.stderr.flush()

    def write(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(text)
        else:
            sys.stderr.write("\n")
            print(text, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            sys.stderr.write("\n")


def _progress(total: int, initial: int) -> _Bar:
    return _Bar(total, initial)


if __name__ == "__main__":
    train()
