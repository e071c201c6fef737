"""The training container of one DevServer, computed from the validated settings (the llava dict).

Step 2 of the guide is a hand-typed `docker run -itd --net=host --device=/dev/davinciN ... --shm-size=32g
-v ... --name NAME IMAGE /bin/bash`. `container_spec` turns the llava dict into the parameters of
`community.docker.docker_container` that mean exactly that; the other functions judge what the role reads
back from the server (mount sources, containers that hold NPUs, npu-smi inside the container) and return
sentences that name the host's file, card or setting and say what to do. The role's filter plugin
`training_container` is a thin adapter over this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from llava_devserver.npu_devices import held_npu_problem, npus_held_elsewhere

# The three management devices every NPU container needs besides its /dev/davinciN.
MANAGER_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
# The guide's keep-alive command (`docker run -itd ... /bin/bash`: an interactive shell on a tty).
KEEPALIVE_COMMAND = "/bin/bash"

MountKind = Literal["directory", "file"]


@dataclass(frozen=True)
class Mount:
    """One bind mount of the guide, with the type its source must have on the server."""

    source: str
    target: str
    kind: MountKind
    why: str

    def as_module(self) -> dict[str, Any]:
        """The entry of docker_container's `mounts` (type bind: Docker refuses a missing source)."""
        return {"source": self.source, "target": self.target, "type": "bind", "read_only": False}


def driver_mounts() -> list[Mount]:
    """The guide's four driver mounts (driver and npu-smi must be mounted together)."""
    return [
        Mount("/usr/local/dcmi", "/usr/local/dcmi", "directory", "the DCMI library of the NPU driver"),
        Mount("/usr/local/Ascend/driver", "/usr/local/Ascend/driver", "directory", "the Ascend driver"),
        Mount("/var/log/npu", "/usr/slog", "directory", "the NPU log directory"),
        Mount("/usr/local/bin/npu-smi", "/usr/local/bin/npu-smi", "file", "the npu-smi tool"),
    ]


def _devices(npu_devices: Iterable[Any]) -> list[int]:
    devices = [int(npu) for npu in npu_devices]
    if not devices:
        raise ValueError("npu_devices is empty: the container needs at least one NPU")
    return devices


def container_spec(llava: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of community.docker.docker_container for this host, plus what the checks need.

    Keys: name, image, command, interactive, tty, network_mode, shm_size, devices (docker_container's
    `HOST:CONTAINER:rwm` strings), mounts (docker_container's dicts), and for the role's checks
    `mount_checks` (source, kind, why; the work directory is left out: the role creates it) and `npus`.
    """
    npus = _devices(llava["npu_devices"])
    mounts = [
        *driver_mounts(),
        Mount(llava["work_dir"], llava["container_work_dir"], "directory", "work_dir"),
    ]
    device_paths = [f"/dev/davinci{npu}" for npu in npus] + list(MANAGER_DEVICES)
    return {
        "name": str(llava["container_name"]),
        "image": str(llava["container_image"]),
        "command": KEEPALIVE_COMMAND,
        "interactive": True,
        "tty": True,
        "network_mode": "host",
        "shm_size": str(llava["container_shm_size"]),
        "devices": [f"{path}:{path}:rwm" for path in device_paths],
        "mounts": [mount.as_module() for mount in mounts],
        "mount_checks": [asdict(mount) for mount in mounts if mount.why != "work_dir"],
        "npus": npus,
    }


# --------------------------------------------------------------------------------------- mount sources


def mount_problems(
    host: str, checks: Sequence[Mapping[str, Any]], stats: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Mount sources that are missing or of the wrong type (Docker would mount an empty directory).

    `checks` are the spec's `mount_checks`; `stats` the `stat` dicts of ansible.builtin.stat for the same
    paths, in the same order (follow: true, so a symlink to the right type is fine).
    """
    if len(checks) != len(stats):
        raise ValueError(f"{len(checks)} mount checks but {len(stats)} stat results")
    problems = []
    for check, stat in zip(checks, stats, strict=True):
        source, kind, why = check["source"], check["kind"], check["why"]
        if not stat.get("exists"):
            problems.append(
                f"{host}: mount source {source} ({why}) does not exist; Docker would create an empty "
                "directory in its place. Install the Ascend driver and firmware (the guide's prerequisite), "
                "then rerun"
            )
            continue
        is_dir, is_file = bool(stat.get("isdir")), bool(stat.get("isreg"))
        if kind == "directory" and not is_dir:
            problems.append(f"{host}: mount source {source} ({why}) must be a directory but is not")
        elif kind == "file" and not is_file:
            found = "a directory" if is_dir else "not a regular file"
            problems.append(
                f"{host}: mount source {source} ({why}) must be a file but is {found}; "
                "reinstall the driver's npu-smi there, then rerun"
            )
    return problems


# ------------------------------------------------------------------------------- NPUs held elsewhere


def bound_npu_problems(
    host: str,
    inspect_output: str | Sequence[Mapping[str, Any]] | None,
    npu_devices: Iterable[Any],
    own_container: str,
) -> list[str]:
    """One sentence per running container (not ours) that holds one of our NPUs (the guide's rule, in
    llava_devserver.npu_devices: the same as npu_check's preflight)."""
    return [
        f"{host}: {held_npu_problem(held)}"
        for held in npus_held_elsewhere(inspect_output, npu_devices, own_container)
    ]


# ----------------------------------------------------------------------------------------- the image


def registry_of(image: str) -> str:
    """The registry an image reference is pulled from (`docker.io` when the first part is no host)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def redact(text: Any, secrets: Iterable[Any]) -> str:
    """The text with every non-empty secret replaced (for error messages built from a module's answer)."""
    result = str(text if text is not None else "")
    for secret in secrets:
        if secret:
            result = result.replace(str(secret), "********")
    return result


def pull_problem(host: str, image: str, message: str) -> str:
    """A clear sentence for a failed pull: not found vs. refused vs. unreachable."""
    registry = registry_of(image)
    lowered = message.lower()
    if any(word in lowered for word in ("manifest unknown", "not found", "does not exist", "404")):
        return (
            f"{host}: container_image {image} was not found in the registry {registry}; check the "
            f"repository and tag (or set container_image_archive to load a `docker save` archive instead). "
            f"Registry said: {message}"
        )
    if any(word in lowered for word in ("unauthorized", "authentication required", "denied", "401", "403")):
        return (
            f"{host}: the registry {registry} refused to serve {image}; check container_registry_username "
            f"and container_registry_password (Vault). Registry said: {message}"
        )
    return f"{host}: pulling {image} from {registry} failed: {message}"


def login_problem(host: str, registry: str, username: str | None, message: str) -> str:
    return (
        f"{host}: login to the registry {registry} as {username!r} failed: check container_registry_username "
        f"and container_registry_password (keep it in Ansible Vault). Registry said: {message}"
    )


def loaded_problem(host: str, image: str, archive: str, loaded: Iterable[str]) -> str | None:
    """None when the archive brought `image`; else a sentence naming what it holds."""
    names = [str(name) for name in loaded]
    if image in names or f"docker.io/library/{image}" in names or any(n.endswith("/" + image) for n in names):
        return None
    held = ", ".join(names) or "no tagged image"
    return (
        f"{host}: container_image_archive {archive} holds {held}, not container_image {image}; "
        "make the two settings agree"
    )


# ------------------------------------------------------------------------------------ after the start


def visible_npu_problems(host: str, name: str, npu_smi: Mapping[str, Any], npus: Iterable[Any]) -> list[str]:
    """npu-smi inside the container must show exactly the assigned NPUs (parsed by npu_smi_info)."""
    expected = sorted(int(npu) for npu in npus)
    seen = sorted(int(card["npu"]) for card in npu_smi.get("cards") or [])
    if seen == expected:
        return []
    return [
        f"{host}: npu-smi inside the container {name!r} shows NPU {seen or 'none'}, expected {expected} "
        "(npu_devices); check the --device list and the Ascend runtime's ASCEND_VISIBLE_DEVICES"
    ]


def container_report(
    inspect: Mapping[str, Any], image_inspect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The report's `llava_report_container` from the container's (and its image's) docker inspect."""
    host_config = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    image = image_inspect or {}
    return {
        "id": inspect.get("Id"),
        "name": str(inspect.get("Name", "")).lstrip("/"),
        "image": config.get("Image"),
        "image_id": inspect.get("Image"),
        "image_digests": list(image.get("RepoDigests") or []),
        "user": config.get("User") or "root",
        "status": (inspect.get("State") or {}).get("Status"),
        "devices": [d.get("PathOnHost") for d in host_config.get("Devices") or []],
        "mounts": [
            f"{m.get('Source')}:{m.get('Destination')}"
            for m in inspect.get("Mounts") or []
            if m.get("Type") == "bind"
        ],
        "shm_size": host_config.get("ShmSize"),
        "network_mode": host_config.get("NetworkMode"),
    }
