"""The one renderer of the training job: templates/ + the llava dict -> file contents.

`render_job` is what both the `llava_pretrain` role and `llava-devserver render` call, so what a user
previews is byte-for-byte what runs. Output is deterministic: no timestamps, environment sorted.
Launch choices (launchers, multi-node, device ids) are explained in docs/launch.md.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from llava_devserver import pathrules
from llava_devserver.config import DEFAULT_TRAIN_ENV, is_env_name

# Relative paths under `llava_dir` -> the template that renders each (Contract 2).
JOB_FILES: dict[str, str] = {
    "scripts/v1_5/pretrain_new.sh": "pretrain_new.sh.j2",
    "scripts/zero2.json": "zero2.json.j2",
}

LAUNCHERS = ("deepspeed", "torchrun")

# The settings the templates read, with the Python types they must have (bool is excluded from int).
REQUIRED_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "llava_dir": str,
    "cann_set_env": str,
    "model_name_or_path": str,
    "vision_tower": str,
    "data_path": str,
    "image_folder": str,
    "output_dir": str,
    "per_device_train_batch_size": int,
    "gradient_accumulation_steps": int,
    "learning_rate": (int, float),
    "num_train_epochs": (int, float),
    "max_steps": int,
    "save_steps": int,
    "model_max_length": int,
    "dataloader_num_workers": int,
    "launcher": str,
    "master_addr": str,
    "master_port": int,
    "node_rank": int,
    "nnodes": int,
    "nproc_per_node": int,
    "npu_devices": list,
    "train_env": dict,
}

# Variables that choose the network card for multi-node traffic; without one, HCCL picks by itself.
NIC_ENV_NAMES = ("HCCL_IF_IP", "HCCL_SOCKET_IFNAME")

_TEMPLATES_ENV_VAR = "LLAVA_DEVSERVER_TEMPLATES"


class RenderError(ValueError):
    """A setting the renderer cannot use; the message names the host and the setting."""


def shquote(value: Any) -> str:
    """Quote one value for bash; booleans as the `True`/`False` that HF's argument parser reads."""
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)  # shortest round-trip form, same on every platform
    else:
        text = str(value)
    return shlex.quote(text)


def shcomment(value: Any) -> str:
    """A value for a `#` comment line: quoting does not help there (a quoted line break still ends the
    comment), so every character that is not printable is written as its escape (`\\n`)."""
    text = str(value)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def template_dirs() -> list[Path]:
    """Where templates/ may be, first match wins.

    An explicit override, then the copy a wheel carries inside the package (pyproject.toml's
    force-include), then the repository root (a checkout or an editable install).
    """
    candidates: list[Path] = []
    if os.environ.get(_TEMPLATES_ENV_VAR):
        candidates.append(Path(os.environ[_TEMPLATES_ENV_VAR]))
    here = Path(__file__).resolve().parent
    candidates += [here / "templates", here.parent.parent / "templates"]
    return [c for c in candidates if (c / "pretrain_new.sh.j2").is_file()]


@cache
def _environment(search_path: tuple[str, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search_path)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell and JSON, not HTML
    )
    env.filters["shquote"] = shquote
    env.filters["shcomment"] = shcomment
    return env


def environment() -> jinja2.Environment:
    dirs = template_dirs()
    if not dirs:
        raise RenderError(
            "templates: pretrain_new.sh.j2 not found (looked in the package and the repository's "
            f"templates/; set {_TEMPLATES_ENV_VAR} to the folder)"
        )
    return _environment(tuple(str(d) for d in dirs))


def _type_names(expected: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))


def _check_settings(settings: Mapping[str, Any]) -> str:
    """Fail early, naming host and setting, rather than deep inside a template."""
    host = str(settings.get("host", "<unknown host>"))
    try:  # the host name goes into a comment of the script, and `render -o DIR` makes DIR/<host>
        pathrules.check_host_name(host)
    except ValueError as exc:
        raise RenderError(f"{host!a}: host: {exc}") from exc
    missing = sorted(name for name in REQUIRED_SETTINGS if name not in settings)
    if missing:
        raise RenderError(f"{host}: missing setting(s) for the launch script: {', '.join(missing)}")
    for name, expected in REQUIRED_SETTINGS.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise RenderError(f"{host}: {name}: expected {_type_names(expected)}, got {value!r}")
    launcher, nnodes, node_rank = settings["launcher"], settings["nnodes"], settings["node_rank"]
    if launcher not in LAUNCHERS:
        raise RenderError(f"{host}: launcher: must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not all(isinstance(npu, int) and not isinstance(npu, bool) for npu in settings["npu_devices"]):
        raise RenderError(
            f"{host}: npu_devices: expected NPU ids (integers), got {settings['npu_devices']!r}"
        )
    if settings["nproc_per_node"] < 1:
        raise RenderError(f"{host}: nproc_per_node: must be at least 1")
    if nnodes < 1:
        raise RenderError(f"{host}: nnodes: must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise RenderError(f"{host}: node_rank: {node_rank} is outside 0..{nnodes - 1}")
    for key, value in settings["train_env"].items():
        if not isinstance(key, str) or not is_env_name(key):
            raise RenderError(f"{host}: train_env.{shcomment(key)}: not a valid environment variable name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RenderError(f"{host}: train_env.{key}: expected a string or number, got {value!r}")
        problem = pathrules.text_problem(str(value))
        if problem:
            raise RenderError(f"{host}: train_env.{key}: the value {problem}")
    return host


def job_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """The exported environment, sorted: device visibility, hub mirror and proxy, then `train_env` on top.

    `train_env` from the config already holds the NPU defaults (HCCL_CONNECT_TIMEOUT, TASK_QUEUE_ENABLE,
    CPU_AFFINITY_CONF); they are merged in again so that a hand-built settings dict gets them too.
    """
    # Logical ids: the container sees only its cards, numbered 0..k-1 whatever their host ids.
    merged = {"ASCEND_RT_VISIBLE_DEVICES": ",".join(str(i) for i in range(settings["nproc_per_node"]))}
    if settings.get("hf_endpoint"):
        merged["HF_ENDPOINT"] = str(settings["hf_endpoint"])
    # The fleet's proxy: a hub id read at run time is downloaded by the job itself.
    merged.update({k: str(v) for k, v in (settings.get("proxy_env") or {}).items()})
    merged.update(DEFAULT_TRAIN_ENV)
    # The HCCL host NIC settings (validated in the config); HCCL_IF_IP wins in HCCL when both are set.
    if settings.get("hccl_if_ip"):
        merged["HCCL_IF_IP"] = str(settings["hccl_if_ip"])
    elif settings.get("hccl_socket_ifname"):
        merged["HCCL_SOCKET_IFNAME"] = str(settings["hccl_socket_ifname"])
    merged.update({k: str(v) for k, v in settings["train_env"].items()})
    return dict(sorted(merged.items()))


def deepspeed_world(nnodes: int, nproc_per_node: int) -> dict[str, list[int]]:
    """The world DeepSpeed's runner hands each node's `deepspeed.launcher.launch` (as `--world_info`).

    Node names are labels only (the launcher uses their order for global ranks), so `node0..` will do.
    """
    return {f"node{i}": list(range(nproc_per_node)) for i in range(nnodes)}


def launch_plan(settings: Mapping[str, Any]) -> dict[str, Any]:
    """How this node starts its processes; see docs/launch.md for why."""
    nnodes = settings["nnodes"]
    single = nnodes == 1
    mode = settings["launcher"]
    if mode == "deepspeed" and not single:
        mode = "deepspeed-launch"  # per node, no SSH: works with LLaVA's DeepSpeed 0.12.6 (no --no_ssh)
    world = deepspeed_world(nnodes, settings["nproc_per_node"])
    return {
        "mode": mode,
        # One node talks to itself over loopback; no dependence on which address the host is known by.
        "master_addr": "127.0.0.1" if single else settings["master_addr"],
        "world_info": base64.urlsafe_b64encode(json.dumps(world).encode()).decode(),
        "world_info_json": json.dumps(world),
        "nic_given": [name for name in NIC_ENV_NAMES if name in job_environment(settings)],
    }


def render_job(settings: Mapping[str, Any]) -> dict[str, str]:
    """Render the job files for one host: `{path under llava_dir: content}` (Contract 2)."""
    host = _check_settings(settings)
    context = {
        "llava": dict(settings),
        "env": job_environment(settings),
        "launch": launch_plan(settings),
    }
    env = environment()
    rendered: dict[str, str] = {}
    for relpath, template_name in JOB_FILES.items():
        try:
            rendered[relpath] = env.get_template(template_name).render(context)
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{host}: {template_name}: uses a setting that is missing: {exc}") from exc
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"templates: {exc.name} not found") from exc
    try:  # a broken template must fail here, not later inside DeepSpeed
        json.loads(rendered["scripts/zero2.json"])
    except json.JSONDecodeError as exc:
        raise RenderError(f"{host}: zero2.json.j2 rendered invalid JSON: {exc}") from exc
    return rendered
