"""The simulated fleet's training image: the vendor image's user and layout, and the real job runs in it."""

from __future__ import annotations

import ast
import json
import re
import tarfile
import uuid
from pathlib import Path

import pytest

import harness
from llava_devserver.sim.assets import generate_assets
from llava_devserver.sim.standin import LLAVA_TRAIN_DIR, aigc_zip_name, build_package, package_name
from llava_devserver.sim.training_image import TrainingImage, ensure_training_image

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    return harness.docker_client()


@pytest.fixture(scope="module")
def image(client) -> TrainingImage:  # type: ignore[no-untyped-def]
    return ensure_training_image(client)


def _run(
    client, image: TrainingImage, script: str, work: Path | None = None, timeout: int = 300
) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    volumes = {str(work): {"bind": "/home/ma-user/ws", "mode": "rw"}} if work else {}
    container = client.containers.run(
        image.tag,
        ["bash", "-c", script],
        name=f"llava-standin-test-{uuid.uuid4().hex[:8]}",
        detach=True,
        volumes=volumes,
        shm_size="256m",
    )
    try:
        status = container.wait(timeout=timeout)
        return int(status["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_image_and_archive(client, image: TrainingImage) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"llava-devserver/train:[0-9a-f]{12}", image.tag)
    assert image.archive.is_file()
    with tarfile.open(image.archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [image.tag]
    # Asking again is a lookup that returns the same image and archive.
    assert ensure_training_image(client) == image


def test_vendor_user_and_toolkit(client, image: TrainingImage) -> None:  # type: ignore[no-untyped-def]
    code, out = _run(
        client,
        image,
        (
            "set -e; echo user=$(id -un):$(id -u):$(id -gn):$(id -g) home=$HOME pwd=$(pwd); "
            "sudo -n true && echo sudo=ok; "
            "source /usr/local/Ascend/ascend-toolkit/set_env.sh; echo toolkit=$ASCEND_TOOLKIT_HOME; "
            "grep ^version= $ASCEND_TOOLKIT_HOME/x86_64-linux/ascend_toolkit_install.info; "
            "python3 -c 'import torch, deepspeed, PIL; "
            'print("torch", torch.__version__, deepspeed.__version__)\''
        ),
    )
    assert code == 0, out
    assert "user=ma-user:1000:ma-group:100 home=/home/ma-user pwd=/home/ma-user" in out
    assert "sudo=ok" in out
    assert "toolkit=/usr/local/Ascend/ascend-toolkit/latest" in out
    assert "version=8.0.RC2" in out
    assert "torch 2.13.0+cpu 0.19.8" in out


def test_the_job_runs_in_the_image(client, image: TrainingImage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As the guide does it, as ma-user: unzip both zips, build.sh, then the DeepSpeed launch line."""
    work = tmp_path / "ws"
    generate_assets(work / "assets", records=64)
    build_package(work)
    llava = f"/home/ma-user/ws/{LLAVA_TRAIN_DIR}/LLaVA"
    a = "/home/ma-user/ws/assets"
    script = f"""set -euo pipefail
sudo chown -R ma-user:ma-group /home/ma-user/ws
cd /home/ma-user/ws && unzip -q {package_name()} && unzip -q {aigc_zip_name()}
cd {LLAVA_TRAIN_DIR} && bash build.sh
cd LLaVA && source /usr/local/Ascend/ascend-toolkit/set_env.sh
deepspeed --num_gpus 2 llava/train/train_mem.py --deepspeed ./scripts/zero2.json \\
  --model_name_or_path {a}/llm --version plain --data_path {a}/blip_laion_cc_sbu_558k.json \\
  --image_folder {a}/images --vision_tower {a}/vision_tower --mm_projector_type mlp2x_gelu \\
  --tune_mm_mlp_adapter True --mm_vision_select_layer -2 --bf16 True --tf32 False \\
  --output_dir ./checkpoints/llava-v1.5-tiny-pretrain --max_steps 6 --per_device_train_batch_size 4 \\
  --gradient_accumulation_steps 1 --save_steps 3 --learning_rate 1e-3 --warmup_ratio 0.03 \\
  --lr_scheduler_type cosine --logging_steps 1 --model_max_length 2048 --dataloader_num_workers 1 \\
  --lazy_preprocess True --report_to none
"""
    code, out = _run(client, image, script, work=work, timeout=400)
    assert code == 0, out[-4000:]
    losses = [ast.literal_eval(m)["loss"] for m in re.findall(r"\{'loss': [^}]*\}", out)]
    assert len(losses) == 6, out[-4000:]
    assert "train_runtime" in out
    assert "Your compiler" not in out  # the prebuilt DeepSpeed op loads quietly, no rebuild attempted
    output_dir = work / LLAVA_TRAIN_DIR / "LLaVA/checkpoints/llava-v1.5-tiny-pretrain"
    assert (output_dir / "mm_projector.bin").is_file()
    assert (output_dir / "checkpoint-6" / "trainer_state.json").is_file()
    assert f"{llava}" in out  # build.sh said where it built
