"""The inventory `sim up` writes: DIR/devserver.ini and DIR/group_vars/all.yml.

It is an ordinary inventory, the same shape a user writes for real servers; it differs only in addresses,
credentials and the paths of the stand-in package, image and assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llava_devserver.config import CONTAINER_WORK_DIR

GROUP = "devservers"
# Where the synthetic assets land inside the training container (a subfolder of container_work_dir).
CONTAINER_ASSETS = f"{CONTAINER_WORK_DIR}/sim-assets"
ASSET_CONTAINER_PATHS = {
    "llm": ("model_name_or_path", f"{CONTAINER_ASSETS}/llm"),
    "vision_tower": ("vision_tower", f"{CONTAINER_ASSETS}/vision_tower"),
    "pretrain_json": ("data_path", f"{CONTAINER_ASSETS}/blip_laion_cc_sbu_558k.json"),
    "images": ("image_folder", f"{CONTAINER_ASSETS}/images"),
}

# Knobs of the role accel_check for a simulated fleet: its image has torch for the CPU (no NPUs), so the
# check expects the CPU, and small sizes keep it short on a 2-core machine. The CPU is shared by every
# process of every simulated server, so the outlier threshold is looser than on real cards (the `slow`
# fault, a tenth of the figure, still fails it). No absolute thresholds: the CPU's figures are not an NPU's
# (a test sets accel_check_min_busbw_gbs to exercise the rerun by pairs).
SIM_ACCEL_CHECK: dict[str, Any] = {
    "accel_check_expect_accelerator": "cpu",
    "accel_check_min_tflops": 0,
    "accel_check_min_busbw_gbs": 0,
    "accel_check_matmul_size": 256,
    "accel_check_matmul_seconds": 0.1,
    "accel_check_outlier_ratio": 0.2,
    "accel_check_allreduce_mb": 4,
    "accel_check_allreduce_iters": 3,
    "accel_check_timeout": 180,
    "accel_check_rdzv_timeout": 90,
}


# How the stand-in trainer logs: hf (the HF Trainer's dicts on global rank 0) or megatron (Megatron/MindSpeed
# iteration lines on the last global rank, as the guide describes).
LOG_STYLES = ("hf", "megatron")
LOG_STYLE_ENV = "LLAVA_SIM_LOG_STYLE"


@dataclass(frozen=True)
class SimHost:
    name: str  # inventory name, also the server's hostname
    address: str  # its IP on the fleet network


@dataclass(frozen=True)
class SimJob:
    """The stand-ins the training job of a simulated fleet uses (paths on the control node)."""

    package: Path
    assets: dict[str, Path]
    image_tag: str
    image_archive: Path


def device_range(devices_per_host: int) -> str:
    if devices_per_host < 1:
        raise ValueError(f"devices per host must be >= 1, got {devices_per_host}")
    return "0" if devices_per_host == 1 else f"0-{devices_per_host - 1}"


def render_ini(hosts: list[SimHost], key_path: Path, fleet: str, via: str | None = None) -> str:
    """via: the ssh option that reaches the servers through the fleet's bastion (sim/bastion.py)."""
    lines = [
        f"# Simulated DevServer fleet {fleet!r}, written by `llava-devserver sim up`.",
        f"# Remove it with `llava-devserver sim down --name {fleet}`.",
        f"[{GROUP}]",
    ]
    lines += [f"{host.name} ansible_host={host.address}" for host in hosts]
    lines += [
        "",
        f"[{GROUP}:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key_path}",
        # Every `sim up` of a new fleet has new host keys at the same addresses.
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        + (f' -o "{via}"' if via else "")
        + "'",
        "",
    ]
    return "\n".join(lines)


def sim_group_vars(
    n_hosts: int,
    npus: int,
    devices_per_host: int,
    job: SimJob | None,
    driver_version: str,
    log_style: str = "hf",
) -> dict[str, Any]:
    """The settings of a simulated fleet (the model in llava_devserver.config checks them like any other)."""
    if log_style not in LOG_STYLES:
        raise ValueError(f"log style {log_style!r}: expected one of {', '.join(LOG_STYLES)}")
    if devices_per_host > npus:
        raise ValueError(f"devices per host ({devices_per_host}) exceed the cards per server ({npus})")
    settings: dict[str, Any] = {
        "npu_count": npus,
        "npu_driver_version": driver_version,
        # A few cards per server so that a 2-core machine can run the job on the CPU.
        "npu_devices": device_range(devices_per_host),
        "work_dir": "/data/llava-devserver",
        "container_work_dir": CONTAINER_WORK_DIR,
    }
    if job is None:
        return settings
    per_device = 2
    settings |= {
        "ascendcloud_package": str(job.package),
        "container_image": job.image_tag,
        "container_image_archive": str(job.image_archive),
        "assets": {key: {"source": "control", "path": str(path)} for key, path in sorted(job.assets.items())},
    }
    for key, (setting, container_path) in ASSET_CONTAINER_PATHS.items():
        if key in job.assets:
            settings[setting] = container_path
    settings |= {
        "output_dir": "./checkpoints/llava-sim-pretrain",
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "global_batch_size": per_device * devices_per_host * n_hosts,
        "learning_rate": 1e-3,
        "max_steps": 20,
        "save_steps": 10,
        "model_max_length": 128,
        "dataloader_num_workers": 0,
        "launcher": "torchrun",
        # The demo and the Molecule verify read the finished job: wait for it (20 steps, a few minutes).
        "train_wait": True,
    }
    if log_style != "hf":  # the stand-in trainer's environment, through the ordinary setting train_env
        settings["train_env"] = {LOG_STYLE_ENV: log_style}
    settings |= SIM_ACCEL_CHECK
    return settings


def render_group_vars(settings: dict[str, Any], fleet: str, job: bool) -> str:
    header = [
        f"# Settings of the simulated fleet {fleet!r}, written by `llava-devserver sim up`.",
        "# Same settings as for real DevServers; only the package, image and asset paths are stand-ins.",
    ]
    if not job:
        header += [
            "# INFRASTRUCTURE ONLY (`sim up --no-job`): no stand-in package, training image or assets were",
            "# prepared, so ascendcloud_package and the job settings are missing and `validate`/site.yml",
            "# will ask for them. Use it for ad-hoc Ansible, roles and fault tests; run `sim up` without",
            "# --no-job for the whole job.",
        ]
    return "\n".join(header) + "\n---\n" + yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)


def write_inventory(
    out_dir: Path,
    hosts: list[SimHost],
    key_path: Path,
    fleet: str,
    settings: dict[str, Any],
    job: bool,
    via: str | None = None,
) -> Path:
    """Write DIR/devserver.ini and DIR/group_vars/all.yml; return the ini path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "group_vars").mkdir(exist_ok=True)
    ini = out_dir / "devserver.ini"
    ini.write_text(render_ini(hosts, key_path, fleet, via))
    (out_dir / "group_vars" / "all.yml").write_text(render_group_vars(settings, fleet, job))
    return ini
