"""The stand-in LLaVA trainer, from the built package, launched the way the real job is."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from llava_devserver import trainlog
from llava_devserver.sim.assets import generate_assets
from llava_devserver.sim.standin import LLAVA_TRAIN_DIR, aigc_zip_name, build_package

BIN = Path(sys.executable).parent
LOSS_LINE = re.compile(r"\{'loss': [^}]*\}")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("job")
    assets = generate_assets(root / "assets", records=256)
    package = build_package(root)
    with zipfile.ZipFile(package) as outer:
        outer.extract(aigc_zip_name(), root / "ws")
    with zipfile.ZipFile(root / "ws" / aigc_zip_name()) as inner:
        inner.extractall(root / "ws")
    llava_train = root / "ws" / LLAVA_TRAIN_DIR
    subprocess.run(
        ["bash", "build.sh"],
        cwd=llava_train,
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )
    return {**assets, "llava": llava_train / "LLaVA"}


def _args(job: dict[str, Path], output_dir: Path, **overrides: object) -> list[str]:
    """The arguments of scripts/v1_5/pretrain.sh, with local paths and a small batch."""
    settings: dict[str, object] = {
        "model_name_or_path": job["llm"],
        "version": "plain",
        "data_path": job["pretrain_json"],
        "image_folder": job["images"],
        "vision_tower": job["vision_tower"],
        "mm_projector_type": "mlp2x_gelu",
        "tune_mm_mlp_adapter": True,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "bf16": False,
        "output_dir": output_dir,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "evaluation_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 20,
        "save_total_limit": 1,
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "warmup_ratio": 0.03,
        "lr_scheduler_type": "cosine",
        "logging_steps": 1,
        "tf32": False,
        "model_max_length": 2048,
        "gradient_checkpointing": True,
        "dataloader_num_workers": 0,
        "lazy_preprocess": True,
        "report_to": "none",
        **overrides,
    }
    return [part for key, value in settings.items() for part in (f"--{key}", str(value))]


def _run(job: dict[str, Path], launcher: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*launcher, "llava/train/train_mem.py", *args],
        cwd=job["llava"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _losses(output: str) -> list[float]:
    return [ast.literal_eval(match)["loss"] for match in LOSS_LINE.findall(output)]


def test_torchrun_two_processes_loss_falls_then_resumes(job: dict[str, Path], tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29611"]
    first = _run(job, torchrun, _args(job, output_dir, max_steps=40))
    log = first.stdout + first.stderr
    losses = _losses(log)
    assert len(losses) == 40  # rank 0 only: one line per step, not two
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    final = ast.literal_eval(re.search(r"\{'train_runtime'[^}]*\}", log).group(0))
    assert final["train_steps_per_second"] > 0 and final["epoch"] == 2.5
    assert log.count("'train_runtime'") == 1

    projector = torch.load(output_dir / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == [
        "model.mm_projector.0.bias",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.mm_projector.2.weight",
    ]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["model_type"] == "llava"
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-40"]  # save_total_limit 1

    # Same output_dir, more steps: resumes from checkpoint-40, as LLaVA does when checkpoint-* exists.
    second = _run(job, torchrun, _args(job, output_dir, max_steps=50))
    assert "Continuing training from global step 40" in second.stdout
    assert len(_losses(second.stdout + second.stderr)) == 10
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 50
    assert [entry["step"] for entry in state["log_history"]] == list(range(1, 51))


@pytest.mark.slow  # ~25 s alone, over a minute on a busy 2-core machine
def test_deepspeed_zero2_launch(job: dict[str, Path], tmp_path: Path) -> None:
    """The upstream launch line: `deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero2.json`,
    with bf16 and gradient accumulation; DeepSpeed's engine checkpoint is resumed."""
    output_dir = tmp_path / "ds"
    deepspeed = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", "29612"]
    args = [
        "--deepspeed",
        "./scripts/zero2.json",
        *_args(job, output_dir, bf16=True, gradient_accumulation_steps=2, save_steps=6),
    ]
    first = _run(job, deepspeed, [*args, "--max_steps", "6"])
    assert len(_losses(first.stdout + first.stderr)) == 6
    assert (output_dir / "checkpoint-6" / "global_step6" / "mp_rank_00_model_states.pt").is_file()
    second = _run(job, deepspeed, [*args, "--max_steps", "8"])
    assert "Continuing training from global step 6" in second.stdout
    assert len(_losses(second.stdout + second.stderr)) == 2
    assert (output_dir / "mm_projector.bin").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tf32": True}, "--tf32 requires Ampere or a newer GPU arch"),
        (
            {"model_name_or_path": "lmsys/vicuna-13b-v1.5"},
            "--model_name_or_path lmsys/vicuna-13b-v1.5: not a local",
        ),
        ({"report_to": "wandb"}, "WandbCallback requires wandb"),
    ],
)
def test_refuses_what_the_real_stack_refuses(
    job: dict[str, Path], tmp_path: Path, override: dict[str, object], message: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "llava/train/train_mem.py",
            *_args(job, tmp_path / "x", **override),
            "--unknown_hf_arg",
            "1",
        ],
        cwd=job["llava"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "ignoring arguments this trainer does not model: --unknown_hf_arg 1" in result.stderr


@pytest.mark.slow  # ~20 s alone, over a minute on a busy 2-core machine
def test_two_nodes_with_their_own_output_dirs_resume(job: dict[str, Path], tmp_path: Path) -> None:
    """torchrun per node (--nnodes 2 --node_rank N), ZeRO-2 from --deepspeed, output_dir not shared: each node
    keeps what it needs to resume, and the job resumes on both."""

    def launch(max_steps: int) -> list[subprocess.Popen[str]]:
        return [
            subprocess.Popen(
                [
                    str(BIN / "torchrun"),
                    "--nnodes",
                    "2",
                    "--node_rank",
                    str(rank),
                    "--nproc_per_node",
                    "1",
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    "29613",
                    "llava/train/train_mem.py",
                    "--deepspeed",
                    "./scripts/zero2.json",
                    *_args(job, tmp_path / f"node{rank}", save_steps=4, max_steps=max_steps),
                ],
                cwd=job["llava"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in (0, 1)
        ]

    def finish(processes: list[subprocess.Popen[str]]) -> list[str]:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
        for process, output in zip(processes, outputs, strict=True):
            assert process.returncode == 0, output[-3000:]
        return outputs

    first = finish(launch(4))
    assert len(_losses(first[0])) == 4 and not _losses(first[1])  # global rank 0 prints, node 1 does not
    for rank in (0, 1):
        checkpoint = tmp_path / f"node{rank}" / "checkpoint-4"
        assert (checkpoint / "latest").read_text() == "global_step4"
        assert (checkpoint / "global_step4" / "mp_rank_00_model_states.pt").is_file()
    second = finish(launch(6))
    assert "Continuing training from global step 4" in second[0]
    assert len(_losses(second[0])) == 2


def test_megatron_log_style_prints_on_the_last_rank_only(job: dict[str, Path], tmp_path: Path) -> None:
    """LLAVA_SIM_LOG_STYLE=megatron (`sim up --log-style megatron`): the guide's log, on the last global rank
    (node 1 of two), which llava_devserver.trainlog reads as Megatron; node 0 prints no loss."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "LLAVA_SIM_LOG_STYLE": "megatron"}
    processes = [
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                "29617",
                "llava/train/train_mem.py",
                *_args(
                    job, tmp_path / f"node{rank}", save_steps=100, max_steps=4, per_device_train_batch_size=2
                ),
            ],
            cwd=job["llava"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    node0, node1 = outputs
    assert not _losses(node0) and not _losses(node1)  # no HF dicts in this style
    assert "using world size: 2" in node0 and " iteration " not in node0
    with pytest.raises(trainlog.NoLossLinesError):
        trainlog.parse_lines(node0.splitlines())
    parsed = trainlog.parse_lines(node1.splitlines())
    assert parsed.summary.family == "megatron" and [p.step for p in parsed.points] == [1, 2, 3, 4]
    line = next(line for line in node1.splitlines() if line.startswith(" iteration        4/       4 |"))
    assert "| global batch size:     4 | lm loss: " in line and "consumed samples:           16" in line
    throughput = parsed.summary.throughput
    assert throughput is not None and throughput.samples_per_second and throughput.samples_per_second > 0
    assert (tmp_path / "node0" / "mm_projector.bin").is_file()  # LLaVA saves on global rank 0
