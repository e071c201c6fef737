"""Every setting of a DevServer fleet, its default and its rules: the one source of truth.

`validate_fleet` takes, per host of the group `devservers` (inventory order), the variables Ansible resolved
for it, and returns the normalized settings (`FleetSettings`) or raises `FleetValidationError` with every
error at once. The CLI (`llava-devserver validate`) and the first play of site.yml (action plugin
`llava_validate`) both call it; roles consume `HostSettings.to_vars()` as the host variable `llava`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

GROUP = "devservers"
FLEET = "fleet"  # the "host" of errors that concern several hosts

GUIDE_IMAGE = (
    "swr.cn-southwest-2.myhuaweicloud.com/atelier/pytorch_2_1_ascend:"
    "pytorch_2.1.0-cann_8.0.rc2-py_3.9-hce_2.0.2312-aarch64-snt9b-20240606190017-b881580"
)
LLAVA_TRAIN_COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
MA_USER_HOME = "/home/ma-user"
DEFAULT_TRAIN_ENV: dict[str, str] = {
    "HCCL_CONNECT_TIMEOUT": "1200",
    "TASK_QUEUE_ENABLE": "1",
    "CPU_AFFINITY_CONF": "1",
}

# Mounting or chown-ing these would break the server (or, for /home/ma-user, the vendor image).
SYSTEM_DIRS = frozenset(
    {
        "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
        "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/var", "/var/lib", "/var/log", "/var/run",
    }
)  # fmt: skip
# Nothing below these is ever a workspace.
SYSTEM_TREES = ("/boot", "/dev", "/etc", "/proc", "/sys", "/bin", "/sbin", "/lib", "/lib64", "/run")

# Variables that belong to Ansible (or that we set ourselves) and are never user settings.
ANSIBLE_PREFIXES = ("ansible_", "inventory_", "discovered_", "_")
ANSIBLE_NAMES = frozenset(
    {
        "environment", "group_names", "groups", "hostvars", "omit", "play_hosts", "playbook_dir",
        "role_name", "role_names", "role_path", "vars", "module_setup", "gather_subset",
        "llava", "llava_validation", "llava_item",
    }
)  # fmt: skip
SUGGESTION_CUTOFF = 0.8  # difflib ratio: `container_imgae` -> container_image, `docker_name` is foreign

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# docker/distribution reference grammar: [domain[:port]/]path[:tag][@digest]
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?) ?([kKmMgGtTpP]?)[iI]?[bB]?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


# ---------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigError:
    """One problem: `HOST: SETTING: message` (`fleet` as host for cross-host rules)."""

    host: str
    setting: str
    message: str
    origin: str | None = None  # "file:line" where Ansible read the value, when known

    def __str__(self) -> str:
        text = f"{self.host}: {self.setting}: {self.message}"
        return f"{text} [{self.origin}]" if self.origin else text

    def as_dict(self) -> dict[str, str | None]:
        return {"host": self.host, "setting": self.setting, "message": self.message, "origin": self.origin}


class FleetValidationError(ValueError):
    """The inventory was read and is wrong; `.errors` holds every problem found."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class UnresolvedValue:
    """A variable Ansible could not give a value for (a failing template, an undecryptable vault)."""

    reason: str


# ------------------------------------------------------------------------------------------ value rules


def parse_device_list(value: Any) -> list[int]:
    """`0-7`, `0,1,2,3`, `0-3,6`, 5, or a list of ids -> the list of ids, in the given order."""
    if isinstance(value, bool):
        raise ValueError("must be NPU ids such as 0-7, 0,1,2,3 or a list")
    if isinstance(value, int):
        return [value]
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")] if value.strip() else []
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ValueError("must be NPU ids such as 0-7, 0,1,2,3 or a list")
    devices: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            devices.append(item)
            continue
        text = str(item).strip()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if first > last:
                raise ValueError(f"range {text!r} runs backwards")
            devices.extend(range(first, last + 1))
        elif text.isdigit():
            devices.append(int(text))
        else:
            raise ValueError(f"{text!r} is not an NPU id or a range such as 0-7")
    if not devices:
        raise ValueError("must name at least one NPU")
    duplicates = sorted({d for d in devices if devices.count(d) > 1})
    if duplicates:
        raise ValueError(f"lists NPU {', '.join(map(str, duplicates))} more than once")
    return devices


def check_address(value: str) -> str:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is neither an IP address nor a valid host name")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{value!r} is not a valid IP address")
    return value


def check_workspace_path(value: str, *, container: bool) -> str:
    """An absolute, normalized path: not `/`, not a system directory, in the container not /home/ma-user."""
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    path = PurePosixPath(value)
    if ".." in path.parts:
        raise ValueError(f"{value!r} must not contain '..'")
    text = str(path)
    if text == "/":
        raise ValueError("must not be / (the whole file system would be mounted and chown-ed)")
    if text in SYSTEM_DIRS or any(text.startswith(tree + "/") for tree in SYSTEM_TREES):
        raise ValueError(f"{text} is a system directory; use a directory of its own such as /data/llava")
    if container and text == MA_USER_HOME:
        raise ValueError(
            f"must not be {MA_USER_HOME}: the guide forbids mounting onto ma-user's home (breaks the image)"
        )
    return text


def check_control_file(value: str, *, what: str) -> str:
    """A readable file on the control node (where validate and ansible-playbook run)."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path on the control node")
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist on the control node (or is not a file)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path} is not readable")
    return str(path)


def size_in_bytes(value: str) -> int:
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a Docker size such as 32g or 512m")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    return int(float(match.group(1)) * scale[match.group(2).lower()])


def is_hub_id(value: str) -> bool:
    """`org/name` is a Hugging Face id; write `./org/name` for a directory relative to the LLaVA tree."""
    return bool(_HUB_ID.match(value)) and not value.startswith(".")


# ------------------------------------------------------------------------------------------- the models

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveInt = Annotated[int, Field(ge=1)]


class AssetSource(BaseModel):
    """Where one training asset comes from; it is put at the path its setting names in the container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["control", "server", "hub", "none"] = Field(
        "none",
        description="control: copy `path` from the control node; server: `path` already on each server; "
        "hub: download `repo_id` from Hugging Face; none: nothing is fetched (hub ids are read at run time).",
    )
    path: str | None = Field(None, description="File or directory (control: control node; server: server).")
    repo_id: str | None = Field(None, description="Hugging Face repository (source hub).")
    revision: str = Field("main", description="Hugging Face revision (source hub).")
    repo_type: Literal["model", "dataset"] = Field("model", description="Hugging Face repository type.")

    @model_validator(mode="after")
    def _source_needs(self) -> AssetSource:
        if self.source == "hub" and not self.repo_id:
            raise ValueError("source hub needs repo_id")
        if self.source in ("control", "server") and not self.path:
            raise ValueError(f"source {self.source} needs path")
        if self.source == "server" and self.path and not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must be an absolute path on the server")
        if self.source == "control" and self.path:
            path = Path(os.path.expanduser(self.path))
            if not path.is_absolute():
                raise ValueError(f"path {self.path!r} must be an absolute path on the control node")
            if not path.exists():
                raise ValueError(f"path {path} does not exist on the control node")
            if not os.access(path, os.R_OK):
                raise ValueError(f"path {path} is not readable")
        return self


class Assets(BaseModel):
    """The four inputs of the pretraining job and where each comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: AssetSource = Field(
        default_factory=lambda: AssetSource.model_validate({}),
        description="The language model (model_name_or_path).",
    )
    vision_tower: AssetSource = Field(
        default_factory=lambda: AssetSource.model_validate({}), description="The CLIP vision tower."
    )
    pretrain_json: AssetSource = Field(
        default_factory=lambda: AssetSource.model_validate({}), description="The caption file (data_path)."
    )
    images: AssetSource = Field(
        default_factory=lambda: AssetSource.model_validate({}), description="The image folder (image_folder)."
    )


# Which setting of the launch script each asset fills.
ASSET_SETTING = {
    "llm": "model_name_or_path",
    "vision_tower": "vision_tower",
    "pretrain_json": "data_path",
    "images": "image_folder",
}

# Settings that define the training job and must therefore be equal on every server.
JOB_WIDE = (
    "llava_train_commit", "container_work_dir", "launcher", "master_port", "per_device_train_batch_size",
    "gradient_accumulation_steps", "global_batch_size", "learning_rate", "num_train_epochs", "max_steps",
    "save_steps", "model_max_length", "model_name_or_path", "vision_tower", "data_path", "image_folder",
    "output_dir", "npu_count",
)  # fmt: skip


def _scope(scope: str) -> dict[str, Any]:
    return {"scope": scope}


class Settings(BaseModel):
    """The settings of one DevServer as the inventory gives them (before fleet-wide derivation).

    `scope` says where a setting usually lives: `host` in devserver.ini, `fleet` in group_vars/all.yml
    (any setting may be set at either level; Ansible's precedence applies).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    # --- the server
    ansible_host: str = Field(
        description="Address Ansible connects to: IPv4/IPv6 or DNS name (default: the inventory name).",
        json_schema_extra=_scope("host"),
    )
    npu_count: int = Field(
        8,
        ge=1,
        le=16,
        description="Cards every server must report (npu-smi).",
        json_schema_extra=_scope("fleet"),
    )
    npu_devices: list[int] | None = Field(
        None,
        description="NPU ids given to the container: `0-7`, `0,1,2,3` or a YAML list (default: all cards).",
        json_schema_extra=_scope("host"),
    )
    npu_driver_version: str | None = Field(
        None,
        description="Expected NPU driver version, e.g. `23.0.5` (quote it in YAML); unset: not checked.",
        json_schema_extra=_scope("fleet"),
    )
    # --- the container
    work_dir: str = Field(
        "/data/llava-devserver",
        description="Directory on the server mounted into the container (the guide's work_dir).",
        json_schema_extra=_scope("fleet"),
    )
    container_work_dir: str = Field(
        "/home/ma-user/ws",
        description="Mount point of work_dir inside the container; never /home/ma-user itself.",
        json_schema_extra=_scope("fleet"),
    )
    container_name: str = Field(
        "llava-pretrain", description="Name of the training container.", json_schema_extra=_scope("fleet")
    )
    container_image: str = Field(
        GUIDE_IMAGE,
        description="Training image (the guide's SWR image by default).",
        json_schema_extra=_scope("fleet"),
    )
    container_image_archive: str | None = Field(
        None,
        description="`docker save` archive of container_image on the control node, loaded, not pulled.",
        json_schema_extra=_scope("fleet"),
    )
    container_registry_username: str | None = Field(
        None, description="SWR login user, when the image is pulled.", json_schema_extra=_scope("fleet")
    )
    container_registry_password: SecretStr | None = Field(
        None,
        description="SWR login password (secret: keep it in Ansible Vault; never printed).",
        json_schema_extra=_scope("fleet"),
    )
    container_recreate: bool = Field(
        False,
        description="Remove and recreate an existing container whose settings differ.",
        json_schema_extra=_scope("fleet"),
    )
    container_shm_size: str = Field(
        "32g",
        description="Shared memory of the container (docker --shm-size).",
        json_schema_extra=_scope("fleet"),
    )
    # --- the code
    ascendcloud_package: str = Field(
        description="The AscendCloud-6.3.906-*.zip on the control node (absolute path; must exist).",
        json_schema_extra=_scope("fleet"),
    )
    llava_train_commit: str = Field(
        LLAVA_TRAIN_COMMIT,
        description="LLaVA commit of the AscendCloud llava-train tree.",
        json_schema_extra=_scope("fleet"),
    )
    # --- the job (defaults: upstream scripts/v1_5/pretrain.sh)
    model_name_or_path: str = Field(
        "lmsys/vicuna-13b-v1.5",
        description="Language model: hub id, absolute container path, or path relative to the LLaVA tree.",
        json_schema_extra=_scope("fleet"),
    )
    vision_tower: str = Field(
        "openai/clip-vit-large-patch14-336",
        description="Vision tower: hub id, absolute container path, or path relative to the LLaVA tree.",
        json_schema_extra=_scope("fleet"),
    )
    data_path: str = Field(
        "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
        description="Caption file (container path, relative to the LLaVA tree unless absolute).",
        json_schema_extra=_scope("fleet"),
    )
    image_folder: str = Field(
        "./playground/data/LLaVA-Pretrain/images",
        description="Image folder (container path, relative to the LLaVA tree unless absolute).",
        json_schema_extra=_scope("fleet"),
    )
    output_dir: str = Field(
        "./checkpoints/llava-v1.5-13b-pretrain",
        description="Where mm_projector.bin is saved (container path; relative: to the LLaVA tree).",
        json_schema_extra=_scope("fleet"),
    )
    per_device_train_batch_size: PositiveInt = Field(
        32, description="Samples per NPU per step.", json_schema_extra=_scope("fleet")
    )
    gradient_accumulation_steps: PositiveInt | None = Field(
        None,
        description="Steps per optimizer update; unset: global_batch_size / (per_device x world_size).",
        json_schema_extra=_scope("fleet"),
    )
    global_batch_size: PositiveInt = Field(
        256,
        description="Samples per optimizer update over the whole fleet.",
        json_schema_extra=_scope("fleet"),
    )
    learning_rate: float = Field(
        1e-3, gt=0, description="Peak learning rate.", json_schema_extra=_scope("fleet")
    )
    num_train_epochs: float = Field(
        1.0, gt=0, description="Epochs over the data.", json_schema_extra=_scope("fleet")
    )
    max_steps: int = Field(
        -1,
        ge=-1,
        description="Stop after this many steps; -1: the epochs decide.",
        json_schema_extra=_scope("fleet"),
    )
    save_steps: PositiveInt = Field(
        24000, description="Checkpoint interval in steps.", json_schema_extra=_scope("fleet")
    )
    model_max_length: PositiveInt = Field(
        2048, description="Maximum sequence length.", json_schema_extra=_scope("fleet")
    )
    dataloader_num_workers: int = Field(
        4, ge=0, description="Data loader processes per rank.", json_schema_extra=_scope("fleet")
    )
    launcher: Literal["deepspeed", "torchrun"] = Field(
        "torchrun",
        description="torchrun per node (no SSH between servers) or deepspeed's launcher (pdsh, SSH).",
        json_schema_extra=_scope("fleet"),
    )
    master_port: Port = Field(
        29500, description="Rendezvous port on the first server.", json_schema_extra=_scope("fleet")
    )
    train_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for the launch script, merged over HCCL_CONNECT_TIMEOUT=1200, "
        "TASK_QUEUE_ENABLE=1, CPU_AFFINITY_CONF=1.",
        json_schema_extra=_scope("fleet"),
    )
    train_wait: bool = Field(
        False,
        description="Wait for training to finish (otherwise start it and return).",
        json_schema_extra=_scope("fleet"),
    )
    loss_log_node: Literal["auto", "first", "last"] = Field(
        "auto",
        description="Which node's training log holds the loss (logs, status, the report read it): first "
        "(node_rank 0, where the HF Trainer prints), last (the last rank, where Megatron/MindSpeed print, as "
        "the guide says) or auto: the last node whose log has loss lines.",
        json_schema_extra=_scope("fleet"),
    )
    train_restart: bool = Field(
        False,
        description="Start the job again although it finished (mm_projector.bin saved); it resumes from "
        "the newest checkpoint-* in output_dir, so empty output_dir to start over. A running job is never "
        "touched.",
        json_schema_extra=_scope("fleet"),
    )
    metadata_guard: bool = Field(
        True,
        description="Block containers from the metadata service 169.254.169.254 (the guide's advice).",
        json_schema_extra=_scope("fleet"),
    )
    hf_endpoint: str | None = Field(
        None,
        description="Hugging Face mirror (HF_ENDPOINT), e.g. https://hf-mirror.com.",
        json_schema_extra=_scope("fleet"),
    )
    hf_token: SecretStr | None = Field(
        None, description="Hugging Face token (secret; never printed).", json_schema_extra=_scope("fleet")
    )
    assets: Assets = Field(
        default_factory=Assets,
        description="Where llm, vision_tower, pretrain_json and images come from: each "
        "{source: control|server|hub|none, path, repo_id, revision, repo_type}.",
        json_schema_extra=_scope("fleet"),
    )

    @field_validator("ansible_host", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return check_address(value) if isinstance(value, str) else value

    @field_validator("npu_devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        return None if value is None else parse_device_list(value)

    @field_validator("npu_driver_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # an unquoted 23.0 in YAML; 23.10 would already be 23.1, hence "quote it"
        if isinstance(value, str) and not _VERSION.match(value):
            raise ValueError(f"{value!r} is not a version such as 23.0.5")
        return value

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, value: str) -> str:
        return check_workspace_path(value, container=False)

    @field_validator("container_work_dir")
    @classmethod
    def _container_work_dir(cls, value: str) -> str:
        return check_workspace_path(value, container=True)

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER_NAME.match(value):
            raise ValueError(f"{value!r} is not a Docker container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
        return value

    @field_validator("container_image")
    @classmethod
    def _image(cls, value: str) -> str:
        if len(value) > 512 or not _IMAGE_REF.match(value):
            raise ValueError(f"{value!r} is not a Docker image reference such as registry/repo:tag")
        return value

    @field_validator("container_shm_size")
    @classmethod
    def _shm(cls, value: str) -> str:
        if size_in_bytes(value) <= 0:
            raise ValueError(f"{value!r} must be more than 0")
        return value

    @field_validator("container_image_archive")
    @classmethod
    def _archive(cls, value: str | None) -> str | None:
        return None if value is None else check_control_file(value, what="image archive")

    @field_validator("ascendcloud_package")
    @classmethod
    def _package(cls, value: str) -> str:
        if not value.endswith(".zip"):
            raise ValueError(f"{value!r} must be the AscendCloud-*.zip package")
        return check_control_file(value, what="AscendCloud package")

    @field_validator("llava_train_commit")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not _COMMIT.match(value):
            raise ValueError(f"{value!r} is not a full 40-character git commit id")
        return value

    @field_validator("data_path", "image_folder", "output_dir", "model_name_or_path", "vision_tower")
    @classmethod
    def _container_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if ".." in PurePosixPath(value).parts:
            raise ValueError(f"{value!r} must not contain '..'")
        if value.startswith("/") and str(PurePosixPath(value)) in SYSTEM_DIRS | {"/"}:
            raise ValueError(f"{value!r} is a system directory")
        return value

    @field_validator("train_env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        env: dict[str, str] = {}
        for name, setting in value.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if isinstance(setting, Mapping | list | tuple) or setting is None:
                raise ValueError(f"{name} must be a string or a number")
            env[name] = str(setting).lower() if isinstance(setting, bool) else str(setting)
        return env

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 would train nothing; use -1 (the epochs decide) or a number of steps")
        return value

    @field_validator("hf_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} must be an http(s) URL")
        return value

    # Cross-field rules as field validators, so that they run (and report) even when an unrelated setting
    # is wrong; `info.data` holds the settings declared above that were valid.
    @field_validator("npu_devices")
    @classmethod
    def _devices_within_count(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        count = info.data.get("npu_count")
        if value is not None and count is not None:
            outside = [d for d in value if d >= count]
            if outside:
                raise ValueError(
                    f"NPU {', '.join(map(str, outside))} outside 0-{count - 1} (npu_count is {count})"
                )
        return value

    @field_validator("assets")
    @classmethod
    def _fetched_assets_need_paths(cls, value: Assets, info: ValidationInfo) -> Assets:
        for asset, setting in ASSET_SETTING.items():
            spec: AssetSource = getattr(value, asset)
            target = info.data.get(setting)
            hub_allowed = setting in ("model_name_or_path", "vision_tower")
            if spec.source != "none" and hub_allowed and isinstance(target, str) and is_hub_id(target):
                raise ValueError(
                    f"{asset}: source {spec.source} puts the asset at {setting}, which is the hub id "
                    f"{target!r}; give {setting} a path (e.g. ./playground/model/...) or use source none"
                )
        return value

    @property
    def devices(self) -> list[int]:
        return list(self.npu_devices) if self.npu_devices is not None else list(range(self.npu_count))


def llava_dir(container_work_dir: str, commit: str) -> str:
    return f"{container_work_dir}/multimodal_algorithm/LLAVA/llava-train/{commit}/LLaVA"


def container_path(value: str, base: str, *, hub_allowed: bool) -> str:
    """A launch-script path as the container sees it: hub ids kept, relative paths made absolute."""
    if (hub_allowed and is_hub_id(value)) or value.startswith("/"):
        return value
    return str(PurePosixPath(base) / PurePosixPath(value.removeprefix("./")))


class HostSettings(BaseModel):
    """One server's settings with the fleet-wide derived values."""

    model_config = ConfigDict(frozen=True)

    host: str
    settings: Settings
    node_rank: int
    nnodes: int
    master_addr: str
    gradient_accumulation_steps: int

    @property
    def nproc_per_node(self) -> int:
        return len(self.settings.devices)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def llava_dir(self) -> str:
        return llava_dir(self.settings.container_work_dir, self.settings.llava_train_commit)

    def to_vars(self) -> dict[str, Any]:
        """The llava dict (docs/architecture.md, Contract 1): plain JSON types, no secrets."""
        s = self.settings
        base = self.llava_dir
        paths = {
            "model_name_or_path": container_path(s.model_name_or_path, base, hub_allowed=True),
            "vision_tower": container_path(s.vision_tower, base, hub_allowed=True),
            "data_path": container_path(s.data_path, base, hub_allowed=False),
            "image_folder": container_path(s.image_folder, base, hub_allowed=False),
            "output_dir": container_path(s.output_dir, base, hub_allowed=False),
        }
        assets = {
            name: {**getattr(s.assets, name).model_dump(), "dest": paths[setting]}
            for name, setting in ASSET_SETTING.items()
        }
        return {
            "host": self.host,
            "ansible_host": s.ansible_host,
            "npu_count": s.npu_count,
            "npu_devices": s.devices,
            "npu_driver_version": s.npu_driver_version,
            "work_dir": s.work_dir,
            "container_work_dir": s.container_work_dir,
            "container_name": s.container_name,
            "container_image": s.container_image,
            "container_image_archive": s.container_image_archive,
            "container_registry_username": s.container_registry_username,
            "container_registry_login": s.container_registry_password is not None,
            "container_recreate": s.container_recreate,
            "container_shm_size": s.container_shm_size,
            "ascendcloud_package": s.ascendcloud_package,
            "llava_train_commit": s.llava_train_commit,
            "llava_dir": base,
            **paths,
            "per_device_train_batch_size": s.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "global_batch_size": s.global_batch_size,
            "learning_rate": s.learning_rate,
            "num_train_epochs": s.num_train_epochs,
            "max_steps": s.max_steps,
            "save_steps": s.save_steps,
            "model_max_length": s.model_max_length,
            "dataloader_num_workers": s.dataloader_num_workers,
            "launcher": s.launcher,
            "master_addr": self.master_addr,
            "master_port": s.master_port,
            "node_rank": self.node_rank,
            "nnodes": self.nnodes,
            "nproc_per_node": self.nproc_per_node,
            "world_size": self.world_size,
            "train_env": {**DEFAULT_TRAIN_ENV, **s.train_env},
            "train_wait": s.train_wait,
            "loss_log_node": s.loss_log_node,
            "train_restart": s.train_restart,
            "cann_set_env": CANN_SET_ENV,
            "metadata_guard": s.metadata_guard,
            "hf_endpoint": s.hf_endpoint,
            "hf_token_set": s.hf_token is not None,
            "assets": assets,
        }


class FleetSettings(BaseModel):
    """The validated fleet: the hosts of `devservers` in inventory order."""

    model_config = ConfigDict(frozen=True)

    hosts: list[HostSettings]

    def to_vars(self) -> dict[str, dict[str, Any]]:
        return {h.host: h.to_vars() for h in self.hosts}


# ------------------------------------------------------------------------------------------- validation

KNOWN_SETTINGS = tuple(Settings.model_fields)
SECRET_SETTINGS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)


def is_ansible_variable(name: str) -> bool:
    return name.startswith(ANSIBLE_PREFIXES) or name in ANSIBLE_NAMES


def unknown_setting_errors(
    host: str, names: Iterable[str], origins: Mapping[str, str] | None = None
) -> list[ConfigError]:
    """A name close to one of ours is a typo; anything else that is not ours belongs to someone else."""
    errors = []
    lowered = {known.lower(): known for known in KNOWN_SETTINGS}
    for name in names:
        if name in Settings.model_fields or is_ansible_variable(name):
            continue
        match = lowered.get(name.lower())
        if match is None:
            close = difflib.get_close_matches(name.lower(), lowered, n=1, cutoff=SUGGESTION_CUTOFF)
            match = lowered[close[0]] if close else None
        if match is not None:
            errors.append(
                ConfigError(
                    host,
                    name,
                    f"unknown setting; did you mean {match}?",
                    (origins if origins is not None else {}).get(name),
                )
            )
    return errors


def _error_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) if loc else "settings"


def _pydantic_errors(host: str, exc: ValidationError, origins: Mapping[str, str]) -> list[ConfigError]:
    errors = []
    for item in exc.errors(include_input=False, include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        setting = _error_location(item["loc"])
        head, sep, rest = message.partition(": ")
        if item["loc"] == ("assets",) and sep and head in ASSET_SETTING:
            setting, message = f"assets.{head}", rest
        if item["type"] == "missing":
            message = "is required"
        errors.append(ConfigError(host, setting, message, origins.get(setting.split(".")[0])))
    return errors


def _host_input(host: str, variables: Mapping[str, Any]) -> tuple[dict[str, Any], list[ConfigError]]:
    """Our settings out of a host's variables (only ours are read: foreign templates are never rendered)."""
    values: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for name in KNOWN_SETTINGS:
        if name not in variables:
            continue
        try:
            value = variables[name]
        except Exception as exc:  # a template that fails for this host: report it, keep going
            value = UnresolvedValue(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if isinstance(value, UnresolvedValue):
            reason = "is vault-encrypted or templated and could not be resolved"
            if name not in SECRET_SETTINGS:
                reason = f"could not be resolved: {value.reason}"
            errors.append(ConfigError(host, name, reason))
            continue
        values[name] = value
    values.setdefault("ansible_host", host)
    return values, errors


def validate_fleet(
    raw: Mapping[str, Mapping[str, Any]], origins: Mapping[str, Mapping[str, str]] | None = None
) -> FleetSettings:
    """Validate every host of `devservers` (inventory order) and derive the fleet-wide values.

    `raw` maps inventory hostname -> the variables Ansible resolved for it; `origins` optionally maps
    hostname -> {setting: "file:line"} so errors can say where a value was written.
    """
    origins = origins or {}
    errors: list[ConfigError] = []
    parsed: dict[str, Settings] = {}
    if not raw:
        raise FleetValidationError([ConfigError(FLEET, GROUP, f"the group {GROUP} has no hosts")])
    addresses: dict[str, str] = {}
    for host, variables in raw.items():
        host_origins = origins.get(host, {})
        errors.extend(unknown_setting_errors(host, variables.keys(), host_origins))
        values, value_errors = _host_input(host, variables)
        errors.extend(value_errors)
        addresses[host] = values["ansible_host"]
        try:
            parsed[host] = Settings.model_validate(values)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(host, exc, host_origins))
    errors = _collapse_shared(errors, list(raw))
    errors.extend(_cross_host_errors(parsed, addresses))  # over what parsed, so all errors come at once
    if errors or len(parsed) < len(raw):
        raise FleetValidationError(errors)
    fleet, batch_errors = _derive(parsed)
    if fleet is None:
        raise FleetValidationError(batch_errors)
    return fleet


def _collapse_shared(errors: list[ConfigError], hosts: list[str]) -> list[ConfigError]:
    """An error every server shares (a group_vars value) is said once, as `fleet`, not once per server."""
    if len(hosts) < 2:
        return errors
    sharing: dict[tuple[str, str, str | None], set[str]] = {}
    for error in errors:
        sharing.setdefault((error.setting, error.message, error.origin), set()).add(error.host)
    shared = {key for key, names in sharing.items() if names >= set(hosts)}
    result: list[ConfigError] = []
    for error in errors:
        key = (error.setting, error.message, error.origin)
        if key not in shared:
            result.append(error)
        elif error.host == hosts[0]:
            result.append(
                ConfigError(FLEET, error.setting, f"{error.message} (on every server)", error.origin)
            )
    return result


def _cross_host_errors(parsed: dict[str, Settings], addresses: Mapping[str, Any]) -> list[ConfigError]:
    """Rules over several servers: distinct addresses, equal NPU counts, one job.

    Addresses are compared as given (also for servers with other errors); the rest over servers that parsed.
    """
    errors: list[ConfigError] = []

    by_address: dict[str, list[str]] = {}
    for host, address in addresses.items():
        if isinstance(address, str):
            by_address.setdefault(address.lower(), []).append(host)
    for address, sharing in by_address.items():
        if len(sharing) > 1:
            errors.append(
                ConfigError(FLEET, "ansible_host", f"{' and '.join(sharing)} share the address {address}")
            )

    counts = {host: len(s.devices) for host, s in parsed.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{h}: {n}" for h, n in counts.items())
        errors.append(
            ConfigError(
                FLEET, "npu_devices", f"every server of the job needs the same number of NPUs ({detail})"
            )
        )

    for name in JOB_WIDE:
        values = {host: getattr(s, name) for host, s in parsed.items()}
        if len({repr(v) for v in values.values()}) > 1:
            detail = ", ".join(f"{h}: {v}" for h, v in values.items())
            errors.append(ConfigError(FLEET, name, f"must be the same on every server of the job ({detail})"))
    return errors


def _derive(parsed: dict[str, Settings]) -> tuple[FleetSettings | None, list[ConfigError]]:
    """The values that depend on the whole fleet: node ranks, master, world size, batch arithmetic."""
    errors: list[ConfigError] = []
    hosts = list(parsed)
    first = next(iter(parsed.values()))
    nnodes = len(hosts)
    world_size = nnodes * len(first.devices)
    per_step = first.per_device_train_batch_size * world_size
    accumulation = first.gradient_accumulation_steps
    if accumulation is None:
        if first.global_batch_size % per_step:
            errors.append(
                ConfigError(
                    FLEET,
                    "global_batch_size",
                    f"{first.global_batch_size} is not a multiple of per_device_train_batch_size "
                    f"{first.per_device_train_batch_size} x world size {world_size} = {per_step}; "
                    "change one of them or set gradient_accumulation_steps",
                )
            )
            return None, errors
        accumulation = first.global_batch_size // per_step
    elif per_step * accumulation != first.global_batch_size:
        errors.append(
            ConfigError(
                FLEET,
                "global_batch_size",
                f"per_device_train_batch_size {first.per_device_train_batch_size} x "
                f"gradient_accumulation_steps {accumulation} x world size {world_size} = "
                f"{per_step * accumulation}, "
                f"not {first.global_batch_size}",
            )
        )
        return None, errors

    fleet = FleetSettings(
        hosts=[
            HostSettings(
                host=host,
                settings=s,
                node_rank=rank,
                nnodes=nnodes,
                master_addr=first.ansible_host,
                gradient_accumulation_steps=accumulation,
            )
            for rank, (host, s) in enumerate(parsed.items())
        ]
    )
    return fleet, []


def json_schema() -> dict[str, Any]:
    """The JSON schema of one host's settings (`llava-devserver schema`)."""
    return Settings.model_json_schema()
