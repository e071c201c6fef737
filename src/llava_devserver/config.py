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

from llava_devserver import pathrules, proxy
from llava_devserver.npu_devices import parse_device_ids

GROUP = "devservers"
FLEET = "fleet"  # the "host" of errors that concern several hosts

GUIDE_IMAGE = (
    "swr.cn-southwest-2.myhuaweicloud.com/atelier/pytorch_2_1_ascend:"
    "pytorch_2.1.0-cann_8.0.rc2-py_3.9-hce_2.0.2312-aarch64-snt9b-20240606190017-b881580"
)
LLAVA_TRAIN_COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
HCCN_TOOL = "/usr/local/Ascend/driver/tools/hccn_tool"  # the driver's tool for the NPUs' RoCE ports
# The vendor image's user and group (ModelArts images: ma-user, uid 1000, in ma-group): the defaults of the
# settings container_user / container_group.
CONTAINER_USER = "ma-user"
CONTAINER_GROUP = "ma-group"
# Our state folder under work_dir on each server: the container's side (its user writes the job's logs there,
# so the host side treats it as hostile); roles get its path as llava.state_dir, server-side helpers as an
# argument.
STATE_DIR_NAME = ".llava-devserver"
# What root on the host keeps for itself (the job record and its lock, the workspace markers, the assets
# manifest, the last accelerator check, fetched logs): a root-only (0700) folder per training container,
# outside every bind mount, which the container can neither read nor replace. Roles get its path as
# llava.host_state_dir (HOST_STATE_ROOT/<container_name>); jobstate.py keeps the same default for its CLI.
HOST_STATE_ROOT = "/var/lib/llava-devserver"
# Tests on one machine only: another root (the same variable as jobstate.STATE_ROOT_ENV).
HOST_STATE_ROOT_ENV = "LLAVA_DEVSERVER_STATE_ROOT"
DEFAULT_TRAIN_ENV: dict[str, str] = {
    "HCCL_CONNECT_TIMEOUT": "1200",
    "TASK_QUEUE_ENABLE": "1",
    "CPU_AFFINITY_CONF": "1",
}

# The deny lists of system directories (SYSTEM_DIRS, SYSTEM_TREES) and the path rules: pathrules.py.

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

# Every pattern is used with fullmatch: `$` would also accept a trailing newline.
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
# docker/distribution reference grammar: [domain[:port]/]path[:tag][@digest]
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([kKmMgGtTpP]?)[iI]?[bB]?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_REPO = re.compile(
    r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*"
)  # assets.*.repo_id: `name` or `org/name`
_COMMIT = re.compile(r"[0-9a-f]{40}")
_POSIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")
_URL = re.compile(r"https?://[^\s/]+(?:/\S*)?")
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.zip")
_IFNAME_ITEM = re.compile(r"(?:\^?=)?[A-Za-z0-9_.:-]{1,15}")


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


def parse_rolling_batch(value: Any) -> int | str:
    """Ansible's `serial` as one value: a positive number of servers (`2`) or a percentage (`25%`)."""
    text = str(value).strip()
    if isinstance(value, bool):
        raise ValueError("must be a number of servers (2) or a percentage (25%)")
    if text.endswith("%") and text[:-1].strip().isdigit() and 1 <= int(text[:-1]) <= 100:
        return f"{int(text[:-1])}%"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"must be a number of servers >= 1 (2) or a percentage 1%..100% (25%), got {value!r}")


def check_address(value: str) -> str:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is neither an IP address nor a valid host name")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"{value!r} is not a valid IP address")
    return value


def home_of(user: str) -> str:
    return f"/home/{user}"


# The guide's mount point of work_dir (under ma-user's home, never the home itself).
CONTAINER_WORK_DIR = f"{home_of(CONTAINER_USER)}/ws"


def host_state_root() -> str:
    """The root of the root-only folders on the servers (HOST_STATE_ROOT; another one in tests)."""
    return pathrules.normalize(os.environ.get(HOST_STATE_ROOT_ENV) or HOST_STATE_ROOT)


def host_state_dir(container_name: str) -> str:
    """llava.host_state_dir: the root-only folder of the training container `container_name`."""
    return f"{host_state_root()}/{container_name}"


def check_workspace_path(value: str, *, container_user: str | None = None) -> str:
    """work_dir, or with container_user container_work_dir, normalized: absolute, no `..`, no system
    directory, in the container not that user's home (pathrules); work_dir never near the root-only state."""
    if container_user is None:
        path = pathrules.check_workspace_path(value)
        root = host_state_root()
        if pathrules.overlap(path, root):
            raise ValueError(
                f"{pathrules.shown(value, path)} overlaps {root}, where llava-devserver keeps its root-only "
                "state on the server (the training container must not reach it); use a directory of its own "
                "such as /data/llava"
            )
        return path
    return pathrules.check_workspace_path(value, home=home_of(container_user), user=container_user)


def check_control_file(value: str, *, what: str) -> str:
    """A readable file on the control node (where validate and ansible-playbook run), normalized."""
    pathrules.check_path_text(value)
    path = Path(pathrules.normalize(os.path.expanduser(value)))
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path on the control node")
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist on the control node (or is not a file)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path} is not readable")
    return str(path)


def check_container_path(value: str, *, hub_allowed: bool) -> str:
    """A launch-script path: a hub id (model, vision tower) as it is, else normalized, no `..`, no system
    directory; relative ones (to the LLaVA tree) start with `./`."""
    pathrules.check_path_text(value)
    if hub_allowed and is_hub_id(value):
        return value
    path = pathrules.normalized_path(value)
    if path.startswith("/"):
        reason = pathrules.protected_reason(path, container=True)
        if reason:
            raise ValueError(f"{pathrules.shown(value, path)} {reason}")
    return path


def size_in_bytes(value: str) -> int:
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a Docker size such as 32g or 512m")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    return int(float(match.group(1)) * scale[match.group(2).lower()])


def is_env_name(value: str) -> bool:
    return bool(_ENV_NAME.fullmatch(value))


def is_hub_id(value: str) -> bool:
    """`org/name` is a Hugging Face id; write `./org/name` for a directory relative to the LLaVA tree."""
    return bool(_HUB_ID.fullmatch(value)) and not {".", ".."} & set(value.split("/"))


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

    @field_validator("path")
    @classmethod
    def _path_text(cls, value: str | None) -> str | None:
        return None if value is None else pathrules.check_path_text(value)

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and (not _HUB_REPO.fullmatch(value) or ".." in value):
            raise ValueError(f"repo_id {value!a} is not a Hugging Face repository such as org/name")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        pathrules.check_name_text(value)
        if not value or ".." in value:
            raise ValueError(f"revision {value!r} is not a branch, tag or commit")
        return value

    @model_validator(mode="after")
    def _source_needs(self) -> AssetSource:
        if self.source == "hub" and not self.repo_id:
            raise ValueError("source hub needs repo_id")
        if self.source in ("control", "server") and not self.path:
            raise ValueError(f"source {self.source} needs path")
        if self.source == "server" and self.path:
            if not self.path.startswith("/"):
                raise ValueError(f"path {self.path!r} must be an absolute path on the server")
            path = pathrules.normalized_path(self.path)
            reason = pathrules.protected_reason(path, container=False)
            if reason:
                raise ValueError(f"path {pathrules.shown(self.path, path)} {reason}")
            object.__setattr__(self, "path", path)  # frozen model: the normalized path is what is used
        if self.source == "control" and self.path:
            local = Path(pathrules.normalize(os.path.expanduser(self.path)))
            if not local.is_absolute():
                raise ValueError(f"path {self.path!r} must be an absolute path on the control node")
            reason = pathrules.protected_reason(str(local), container=False)
            if reason:
                raise ValueError(f"path {pathrules.shown(self.path, str(local))} {reason}")
            if not local.exists():
                raise ValueError(f"path {local} does not exist on the control node")
            if not os.access(local, os.R_OK):
                raise ValueError(f"path {local} is not readable")
            object.__setattr__(self, "path", str(local))
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


# The settings that may be a Hugging Face id instead of a path.
HUB_SETTINGS = ("model_name_or_path", "vision_tower")
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
    "output_dir", "npu_count", "rolling_batch", "max_fail_percentage",
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
    npu_ecc_errors_max: int = Field(
        0,
        ge=0,
        description="Uncorrectable (double-bit) HBM/DDR ECC errors a card may have counted "
        "(`npu-smi info -t ecc`, where the driver has it); more fails the preflight.",
        json_schema_extra=_scope("fleet"),
    )
    npu_link_flaps_max: int = Field(
        3,
        ge=0,
        description="Link-down events a card's device port may have recorded (`hccn_tool -link_stat -g`) "
        "in a multi-node fleet; more fails the preflight.",
        json_schema_extra=_scope("fleet"),
    )
    hccl_if_ip: str | None = Field(
        None,
        description="HCCL_IF_IP of the job: this server's address for HCCL's host-side traffic; unset (and "
        "no hccl_socket_ifname): the address of the server's route to the master, found at launch.",
        json_schema_extra=_scope("host"),
    )
    hccl_socket_ifname: str | None = Field(
        None,
        description="HCCL_SOCKET_IFNAME of the job: interface name prefixes, comma-separated (`eth`, "
        "`=eth0` exact, `^=docker0` excluded); hccl_if_ip wins when both are set.",
        json_schema_extra=_scope("host"),
    )
    device_ips: list[str] | None = Field(
        None,
        description="Device IPs to set on this server's NPU RoCE ports, one per card of npu_devices in that "
        "order, as ADDRESS/PREFIX (e.g. `10.90.2.11/24`), all in one subnet; unset: from device_ip_cidr, "
        "else the ports are only checked.",
        json_schema_extra=_scope("host"),
    )
    device_ip_cidr: str | None = Field(
        None,
        description="One subnet for the fleet's device IPs, e.g. `10.90.0.0/16`: server R (0-based, "
        "inventory order) gets network + 1 + R x cards + P for its card P; servers with device_ips keep "
        "theirs; unset: not configured.",
        json_schema_extra=_scope("fleet"),
    )
    device_detect_ip: str | None = Field(
        None,
        description="Detect IP every card checks its network against (`hccn_tool -netdetect`), usually the "
        "device network's gateway; unset: not configured.",
        json_schema_extra=_scope("fleet"),
    )
    # --- the container
    work_dir: str = Field(
        "/data/llava-devserver",
        description="Directory on the server mounted into the container (the guide's work_dir); never a "
        "system directory (/, /etc, /usr/local/Ascend, /var/lib/docker, /root, ...; //etc is /etc), nor "
        f"near {HOST_STATE_ROOT}, where the tool keeps its root-only state.",
        json_schema_extra=_scope("fleet"),
    )
    container_user: str = Field(
        CONTAINER_USER,
        description="The image's user in the container: runs build.sh and the job, owns container_work_dir.",
        json_schema_extra=_scope("fleet"),
    )
    container_group: str = Field(
        CONTAINER_GROUP,
        description="The group of container_user inside the container (owner group of container_work_dir).",
        json_schema_extra=_scope("fleet"),
    )
    container_work_dir: str = Field(
        CONTAINER_WORK_DIR,
        description="Mount point of work_dir inside the container; never container_user's home itself.",
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
        description="Where mm_projector.bin is saved (container path; relative: to the LLaVA tree); not "
        "the LLaVA tree itself, the rest of the package's tree or the state folder.",
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
    accel_check_force: bool = Field(
        False,
        description="Run the accelerator check although the job has finished (it is skipped then, and "
        "always while a job runs; `--tags accel_check` does the same).",
        json_schema_extra=_scope("fleet"),
    )
    metadata_guard: bool = Field(
        True,
        description="Block the metadata service 169.254.169.254 (the guide's advice) with iptables: for "
        "bridged containers (DOCKER-USER) and, on host networking like the training container's, for every "
        "process of the container user's uid (OUTPUT, -m owner); the same for IPv6 with ip6tables "
        "(fd00:ec2::254; Huawei Cloud's service is IPv4 only). Root inside a host-network container is not "
        "covered (it is the host's root to iptables).",
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
    http_proxy: str | None = Field(
        None,
        description="Proxy for outbound HTTP, e.g. `http://proxy.example.com:3128`: the package manager, "
        "dockerd (registry login and pull), the hub downloads, build.sh and the job use it; no credentials "
        "in the URL (the servers' files show it).",
        json_schema_extra=_scope("fleet"),
    )
    https_proxy: str | None = Field(
        None,
        description="Proxy for outbound HTTPS (CONNECT), usually the same URL as http_proxy.",
        json_schema_extra=_scope("fleet"),
    )
    no_proxy: str | None = Field(
        None,
        description="Hosts, domains (`.example.com`), addresses and CIDRs reached without the proxy, "
        "comma-separated, e.g. `localhost,127.0.0.1,.internal`.",
        json_schema_extra=_scope("fleet"),
    )
    assets: Assets = Field(
        default_factory=Assets,
        description="Where llm, vision_tower, pretrain_json and images come from: each "
        "{source: control|server|hub|none, path, repo_id, revision, repo_type}. A fetched asset's setting "
        "(e.g. image_folder) must lie strictly inside container_work_dir, apart from the other assets and "
        "output_dir.",
        json_schema_extra=_scope("fleet"),
    )

    rolling_batch: int | str | None = Field(
        None,
        description="Rolling batches of the plays that restart Docker or recreate containers (host, "
        "container): servers per batch, a number (`2`) or a percentage of the play's servers (`25%`); "
        "unset: all at once.",
        json_schema_extra=_scope("fleet"),
    )
    max_fail_percentage: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Stop those plays when more than this percentage of a batch failed (0: at the first "
        "failure); unset: a failed server stops only itself.",
        json_schema_extra=_scope("fleet"),
    )

    @field_validator("rolling_batch", mode="before")
    @classmethod
    def _rolling_batch(cls, value: Any) -> Any:
        return None if value is None else parse_rolling_batch(value)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        """NUL, line breaks and other control characters go into no command, file name or script line."""
        if isinstance(value, str) and info.field_name not in SECRET_SETTINGS:
            pathrules.check_text(value)
        return value

    @field_validator("ansible_host", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return check_address(value) if isinstance(value, str) else value

    @field_validator("device_ips", mode="before")
    @classmethod
    def _device_ips_list(cls, value: Any) -> Any:
        return [item.strip() for item in value.split(",")] if isinstance(value, str) else value

    @field_validator("device_ips")
    @classmethod
    def _device_ips(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        interfaces = []
        for item in value:
            try:
                interface = ipaddress.ip_interface(item)
            except ValueError:
                raise ValueError(f"{item!r} is not ADDRESS/PREFIX, e.g. 10.90.2.11/24") from None
            if "/" not in item or interface.version != 4:
                raise ValueError(f"{item!r}: give an IPv4 address with its prefix, e.g. 10.90.2.11/24")
            interfaces.append(interface)
        devices = info.data.get("npu_devices")
        count = len(devices) if devices is not None else info.data.get("npu_count")
        if count is not None and len(interfaces) != count:
            raise ValueError(f"{len(interfaces)} addresses for {count} cards (one per card of npu_devices)")
        if len({str(i.network) for i in interfaces}) > 1:
            raise ValueError(
                "the cards of a server share one subnet (Atlas 800T A2); these span "
                + ", ".join(sorted({str(i.network) for i in interfaces}))
            )
        if len({i.ip for i in interfaces}) < len(interfaces):
            raise ValueError("an address is given twice")
        return [str(i) for i in interfaces]

    @field_validator("device_ip_cidr")
    @classmethod
    def _device_ip_cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a subnet such as 10.90.0.0/16 (host bits zero)") from None
        if network.version != 4:
            raise ValueError(f"{value!r}: device IPs are IPv4")
        return str(network)

    @field_validator("device_detect_ip")
    @classmethod
    def _device_detect_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None

    @field_validator("hccl_if_ip")
    @classmethod
    def _hccl_if_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (HCCL_IF_IP takes one address)") from None

    @field_validator("hccl_socket_ifname")
    @classmethod
    def _hccl_socket_ifname(cls, value: str | None) -> str | None:
        if value is None:
            return None
        items = [item.strip() for item in value.split(",")]
        if not all(_IFNAME_ITEM.fullmatch(item) for item in items):
            raise ValueError(
                f"{value!r}: expected interface names or prefixes of at most 15 characters, comma-separated, "
                "each optionally starting with = (exact) or ^= (exclude), e.g. eth0 or =eth0,=eth1"
            )
        return ",".join(items)

    @field_validator("npu_devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        return None if value is None else parse_device_ids(value)

    @field_validator("npu_driver_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # an unquoted 23.0 in YAML; 23.10 would already be 23.1, hence "quote it"
        if isinstance(value, str) and not _VERSION.fullmatch(value):
            raise ValueError(f"{value!r} is not a version such as 23.0.5")
        return value

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, value: str) -> str:
        return check_workspace_path(value)

    @field_validator("container_user", "container_group")
    @classmethod
    def _posix_name(cls, value: str) -> str:
        if not _POSIX_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a user or group name ([a-z_][a-z0-9_-]*, at most 32 characters)"
            )
        return value

    @field_validator("container_work_dir")
    @classmethod
    def _container_work_dir(cls, value: str, info: ValidationInfo) -> str:
        return check_workspace_path(value, container_user=info.data.get("container_user", CONTAINER_USER))

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a Docker container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
        return value

    @field_validator("container_image")
    @classmethod
    def _image(cls, value: str) -> str:
        if len(value) > 512 or not _IMAGE_REF.fullmatch(value):
            raise ValueError(f"{value!r} is not a Docker image reference such as registry/repo:tag")
        return value

    @field_validator("container_registry_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else pathrules.check_name_text(value)

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
        # Its name, less .zip, names the folder it is unpacked into (llava_workspace, root-only).
        name = PurePosixPath(pathrules.normalize(value)).name
        if not _PACKAGE_NAME.fullmatch(name):
            raise ValueError(
                f"the file name {name!r} must be the package's own, such as AscendCloud-6.3.906-xxx.zip "
                "(letters, digits, '.', '_', '+', '-'; starting with a letter or digit)"
            )
        return check_control_file(value, what="AscendCloud package")

    @field_validator("llava_train_commit")
    @classmethod
    def _commit(cls, value: str) -> str:
        if not _COMMIT.fullmatch(value):
            raise ValueError(f"{value!r} is not a full 40-character git commit id")
        return value

    @field_validator("data_path", "image_folder", "output_dir", "model_name_or_path", "vision_tower")
    @classmethod
    def _container_path(cls, value: str, info: ValidationInfo) -> str:
        return check_container_path(value, hub_allowed=info.field_name in HUB_SETTINGS)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_place(cls, value: str, info: ValidationInfo) -> str:
        """Checkpoints go where no update of the package and no state of ours can reach them."""
        layout = _layout(info.data)
        if layout is not None:
            problem = layout.problem(container_path(value, layout.llava_dir, hub_allowed=False), "output_dir")
            if problem:
                raise ValueError(problem.removeprefix("output_dir "))
        return value

    @field_validator("train_env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        env: dict[str, str] = {}
        for name, setting in value.items():
            if not isinstance(name, str) or not is_env_name(name):
                raise ValueError(f"{name!a} is not an environment variable name")
            if isinstance(setting, Mapping | list | tuple) or setting is None:
                raise ValueError(f"{name} must be a string or a number")
            text = str(setting).lower() if isinstance(setting, bool) else str(setting)
            problem = pathrules.text_problem(text)
            if problem:  # it becomes one `export` line of the launch script
                raise ValueError(f"{name}: the value {problem}")
            env[name] = text
        return env

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 would train nothing; use -1 (the epochs decide) or a number of steps")
        return value

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return None if value is None else proxy.check_proxy_url(value)

    @field_validator("no_proxy")
    @classmethod
    def _no_proxy(cls, value: str | None) -> str | None:
        return None if value is None else proxy.check_no_proxy(value)

    @field_validator("hf_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _URL.fullmatch(value):
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

    @field_validator("assets")
    @classmethod
    def _asset_destinations(cls, value: Assets, info: ValidationInfo) -> Assets:
        """What is fetched is put (rsync --delete) at a place of its own: strictly inside
        container_work_dir, apart from the others, from output_dir, the package and our state."""
        layout = _layout(info.data)
        if layout is None:
            return value
        output = info.data.get("output_dir")
        taken: dict[str, str] = {}
        if isinstance(output, str):
            taken["output_dir"] = container_path(output, layout.llava_dir, hub_allowed=False)
        for asset, setting in ASSET_SETTING.items():
            target = info.data.get(setting)
            hub_allowed = setting in HUB_SETTINGS
            if getattr(value, asset).source == "none" or not isinstance(target, str):
                continue
            if hub_allowed and is_hub_id(target):
                continue  # _fetched_assets_need_paths says so
            dest = container_path(target, layout.llava_dir, hub_allowed=hub_allowed)
            problem = layout.problem(dest, setting)
            if problem:
                raise ValueError(f"{asset}: its destination {problem}")
            for other, path in taken.items():
                if pathrules.overlap(dest, path):
                    how = "is" if dest == path else "is inside" if pathrules.inside(dest, path) else "holds"
                    raise ValueError(
                        f"{asset}: its destination {setting} {dest} {how} {other} {path}; fetching it "
                        f"(rsync --delete) would delete what is there: give them separate paths"
                    )
            taken[setting] = dest
        return value

    @property
    def devices(self) -> list[int]:
        return list(self.npu_devices) if self.npu_devices is not None else list(range(self.npu_count))


def llava_dir(container_work_dir: str, commit: str) -> str:
    return f"{container_work_dir}/{pathrules.PACKAGE_TREE}/LLAVA/llava-train/{commit}/LLaVA"


def container_path(value: str, base: str, *, hub_allowed: bool) -> str:
    """A launch-script path as the container sees it: hub ids kept, relative paths made absolute."""
    if (hub_allowed and is_hub_id(value)) or value.startswith("/"):
        return value
    return pathrules.normalize(f"{base}/{value}")


@dataclass(frozen=True)
class _Layout:
    """container_work_dir as the tool fills it, for the rules on where output and assets may go."""

    container_work_dir: str
    llava_dir: str
    package: str | None  # the package's file name in work_dir

    def problem(self, path: str, setting: str) -> str | None:
        """Why `setting` (its container path `path`) is a place that the tool itself replaces, or None."""
        base = self.container_work_dir
        tree = f"{base}/{pathrules.PACKAGE_TREE}"
        if not path.startswith("/"):
            return None
        if path == self.llava_dir or pathrules.inside(self.llava_dir, path):
            how = (
                "is the LLaVA tree itself"
                if path == self.llava_dir
                else f"holds the LLaVA tree {self.llava_dir}"
            )
            return (
                f"{setting} {path} {how}; give it a path inside the tree (e.g. ./playground/...) or beside it"
            )
        if not pathrules.inside(path, base):
            if setting == "output_dir":
                return None  # a place of the container's own: allowed (not in work_dir, not kept on the host)
            return (
                f"{setting} {path} is not strictly inside container_work_dir {base}, the only server "
                "directory the container sees; give the setting a path under it (or a relative one)"
            )
        reserved = {f"{base}/{STATE_DIR_NAME}": "llava-devserver's state folder"}
        if self.package:
            reserved[f"{base}/{self.package}"] = "the AscendCloud package"
            reserved[f"{base}/{self.package.removesuffix('.zip')}"] = "the unpacked AscendCloud package"
        for place, what in reserved.items():
            if pathrules.overlap(path, place):
                return f"{setting} {path} overlaps {place}, {what}; give the setting a path of its own"
        if pathrules.overlap(path, tree) and not pathrules.inside(path, self.llava_dir):
            return (
                f"{setting} {path} is in the package's tree {tree}, which a new package replaces "
                f"(only the LLaVA tree {self.llava_dir} is kept); put it inside the LLaVA tree or beside "
                f"{tree}"
            )
        return None


def _layout(data: Mapping[str, Any]) -> _Layout | None:
    """The layout from the settings validated so far (None when one it needs is invalid)."""
    base, commit = data.get("container_work_dir"), data.get("llava_train_commit")
    if not isinstance(base, str) or not isinstance(commit, str):
        return None
    package = data.get("ascendcloud_package")
    name = PurePosixPath(package).name if isinstance(package, str) else None
    return _Layout(base, llava_dir(base, commit), name)


def device_ip_plan(settings: Settings, rank: int) -> list[dict[str, Any]] | None:
    """The device IPs to set on one server's cards (`[{card, address, netmask}]` in npu_devices order):
    its device_ips, else its share of device_ip_cidr, else None (the ports are only checked)."""
    cards = settings.devices
    if settings.device_ips is not None:
        interfaces = [ipaddress.IPv4Interface(item) for item in settings.device_ips]
    elif settings.device_ip_cidr is not None:
        network = ipaddress.IPv4Network(settings.device_ip_cidr)
        first = int(network.network_address) + 1 + rank * len(cards)
        interfaces = [
            ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(first + p)}/{network.prefixlen}")
            for p in range(len(cards))
        ]
    else:
        return None
    return [
        {"card": card, "address": str(i.ip), "netmask": str(i.netmask)}
        for card, i in zip(cards, interfaces, strict=True)
    ]


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
            "npu_ecc_errors_max": s.npu_ecc_errors_max,
            "npu_link_flaps_max": s.npu_link_flaps_max,
            "hccl_if_ip": s.hccl_if_ip,
            "device_ips": device_ip_plan(s, self.node_rank),
            "device_detect_ip": s.device_detect_ip,
            "hccl_socket_ifname": s.hccl_socket_ifname,
            "work_dir": s.work_dir,
            "container_work_dir": s.container_work_dir,
            "container_user": s.container_user,
            "container_group": s.container_group,
            "state_dir": f"{s.work_dir}/{STATE_DIR_NAME}",
            "host_state_dir": host_state_dir(s.container_name),
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
            "accel_check_force": s.accel_check_force,
            "hccn_tool": HCCN_TOOL,
            "metadata_guard": s.metadata_guard,
            "hf_endpoint": s.hf_endpoint,
            "hf_token_set": s.hf_token is not None,
            "proxy_env": proxy.proxy_environment(
                {"http_proxy": s.http_proxy, "https_proxy": s.https_proxy, "no_proxy": s.no_proxy}
            ),
            "assets": assets,
            "rolling_batch": s.rolling_batch,
            "max_fail_percentage": s.max_fail_percentage,
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


def _host_input(
    host: str, variables: Mapping[str, Any], label: str | None = None
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Our settings out of a host's variables (only ours are read: foreign templates are never rendered).

    `label` names the host in errors when its name cannot be shown as it is."""
    label = label or host
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
            errors.append(ConfigError(label, name, reason))
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
        label = host
        try:
            pathrules.check_host_name(host)
        except ValueError as exc:  # the name goes into file names, script comments and messages
            label = ascii(host)
            errors.append(ConfigError(label, "inventory_hostname", str(exc)))
        errors.extend(unknown_setting_errors(label, variables.keys(), host_origins))
        values, value_errors = _host_input(host, variables, label)
        errors.extend(value_errors)
        addresses[label] = values["ansible_host"]
        try:
            settings = Settings.model_validate(values)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(label, exc, host_origins))
        else:
            if label == host:
                parsed[host] = settings
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

    errors += _device_ip_errors(parsed)

    for name in JOB_WIDE:
        values = {host: getattr(s, name) for host, s in parsed.items()}
        if len({repr(v) for v in values.values()}) > 1:
            detail = ", ".join(f"{h}: {v}" for h, v in values.items())
            errors.append(ConfigError(FLEET, name, f"must be the same on every server of the job ({detail})"))
    return errors


def _device_ip_errors(parsed: dict[str, Settings]) -> list[ConfigError]:
    """Device IPs unique across the fleet, and a device_ip_cidr with room for every server's cards."""
    errors: list[ConfigError] = []
    holders: dict[str, list[str]] = {}
    for rank, (host, s) in enumerate(parsed.items()):
        if s.device_ip_cidr is not None and s.device_ips is None:
            network = ipaddress.IPv4Network(s.device_ip_cidr)
            if 1 + (rank + 1) * len(s.devices) > network.num_addresses - 2:
                errors.append(
                    ConfigError(
                        host,
                        "device_ip_cidr",
                        f"{network} has no room for {len(parsed)} servers x {len(s.devices)} cards",
                    )
                )
                continue
        for entry in device_ip_plan(s, rank) or []:
            holders.setdefault(entry["address"], []).append(f"{host} card {entry['card']}")
    for address, sharing in holders.items():
        if len(sharing) > 1:
            errors.append(ConfigError(FLEET, "device_ips", f"{address} is given to {' and '.join(sharing)}"))
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
