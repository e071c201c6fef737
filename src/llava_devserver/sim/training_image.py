"""The training image of the simulated fleet, standing in for the vendor's PyTorch/CANN image.

Built locally FROM the sim base image (nothing can be pulled here): user `ma-user` (uid 1000) in
`ma-group` (gid 100) with passwordless sudo as the default user, HOME /home/ma-user, python3 with torch
(CPU) + DeepSpeed + Pillow installed offline from wheels placed in the build context, and a stand-in CANN
toolkit (`/usr/local/Ascend/ascend-toolkit/set_env.sh`, version 8.0.RC2).

The tag `llava-devserver/train:<hash12>` hashes everything that goes in (base tag, Dockerfile, files, the
pinned requirements), so an unchanged recipe is a lookup and a changed one builds a new image. The image is
`docker save`d once per tag to `~/.cache/llava-devserver/images/`, the archive the container role loads on
each simulated server.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from llava_devserver.sim import image_cache
from llava_devserver.sim.image import CACHE_DIR, LABEL, ensure_base_image

# Bump when the build changes in a way the recipe below does not capture.
TRAIN_SCRIPT_VERSION = "1"
REPOSITORY = "llava-devserver/train"

# What the stand-in trainer needs, pinned to the versions of the project's venv. torch is the CPU build
# (found in PIP_FIND_LINKS, /opt/wheels); the plain PyPI torch would pull the CUDA stack.
REQUIREMENTS = (
    "torch==2.13.0+cpu",
    "deepspeed==0.19.8",
    "pillow==13.0.0",
    "numpy==2.4.6",
    "tqdm==4.70.1",
    # deepspeed's and torch's dependencies, pinned too so a rebuild tomorrow gets the same image
    "einops==0.8.2",
    "hjson==3.1.0",
    "msgpack==1.2.4",
    "ninja==1.13.2",
    "packaging==26.4",
    "psutil==7.2.2",
    "py-cpuinfo==9.0.0",
    "pydantic==2.13.4",
    "pydantic_core==2.46.4",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "filelock==4.3.1",
    "fsspec==2026.9.0",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "sympy==1.14.0",
    "setuptools==84.2.1",
)
PIP_REQUIREMENT = "pip==25.3"  # runs from its wheel inside the build: Debian's python3 has no pip

IMAGES_DIR = CACHE_DIR / "images"
WHEELS_DIR = CACHE_DIR / "wheels"


class TrainingImageError(RuntimeError):
    """The training image could not be built or saved."""


@dataclass(frozen=True)
class TrainingImage:
    tag: str
    archive: Path


def ensure_training_image(client: docker.DockerClient) -> TrainingImage:
    """Return the training image, building it and its `docker save` archive only when the recipe changed."""
    base = ensure_base_image(client)
    files = _context_files()
    dockerfile = render_dockerfile(base)
    tag = f"{REPOSITORY}:{_recipe_hash(base, dockerfile, files)}"
    archive = IMAGES_DIR / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    with image_cache.build_lock("train-image"):
        if not image_cache.has_image(client, tag):
            wheels = ensure_wheelhouse()
            started = time.monotonic()
            _build(client, tag, dockerfile, files, wheels)
            print(f"sim: built {tag} in {time.monotonic() - started:.0f} s", flush=True)
            archive.unlink(missing_ok=True)
        if not archive.is_file():
            try:
                image_cache.save_image(client, tag, archive)
            except image_cache.ImageBuildError as error:
                raise TrainingImageError(str(error)) from error
            # Archives of earlier recipes are 1 GB each and nothing loads them any more.
            for stale in IMAGES_DIR.glob(f"{REPOSITORY.replace('/', '_')}_*.tar"):
                if stale != archive:
                    stale.unlink(missing_ok=True)
    return TrainingImage(tag=tag, archive=archive)


def render_dockerfile(base: str) -> str:
    template = (_files_root() / "Dockerfile.j2").read_text()
    values = {
        "base": base,
        "pip_wheel": _pip_wheel_name(),
        "requirements": " ".join(f"'{r}'" for r in REQUIREMENTS),
        "label": LABEL,
    }
    for key, value in values.items():
        template = template.replace("{{ " + key + " }}", value)
    return template


def ensure_wheelhouse() -> Path:
    """Wheels of REQUIREMENTS (+ pip) for Python 3.11 on Linux, made once on this machine with `pip wheel`
    (deepspeed is an sdist on PyPI; the rest come as wheels from the pip cache, PyPI or /opt/wheels)."""
    key = hashlib.sha256(json.dumps([*REQUIREMENTS, PIP_REQUIREMENT]).encode()).hexdigest()[:12]
    wheelhouse = WHEELS_DIR / f"train-{key}"
    done = wheelhouse / ".complete"
    if done.is_file():
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--wheel-dir",
        str(wheelhouse),
        *REQUIREMENTS,
        PIP_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise TrainingImageError(
            f"pip wheel for the training image failed (exit {result.returncode}):\n{tail}"
        )
    if any("+cu" in p.name or p.name.startswith("nvidia_") for p in wheelhouse.glob("*.whl")):
        raise TrainingImageError(f"{wheelhouse}: a CUDA wheel slipped in; the training image wants torch CPU")
    done.write_text("\n".join(sorted(p.name for p in wheelhouse.glob("*.whl"))) + "\n")
    return wheelhouse


def _pip_wheel_name() -> str:
    version = PIP_REQUIREMENT.split("==")[1]
    return f"pip-{version}-py3-none-any.whl"


def _files_root() -> Path:
    return Path(str(resources.files("llava_devserver.sim") / "training_image_files"))


def _context_files() -> dict[str, bytes]:
    root = _files_root()
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "Dockerfile.j2"
    }


def _recipe_hash(base: str, dockerfile: str, files: dict[str, bytes]) -> str:
    recipe = {
        "version": TRAIN_SCRIPT_VERSION,
        "base": base,
        "dockerfile": dockerfile,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "requirements": [*REQUIREMENTS, PIP_REQUIREMENT],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _build(
    client: docker.DockerClient, tag: str, dockerfile: str, files: dict[str, bytes], wheels: Path
) -> None:
    wheel_files = {f"wheels/{wheel.name}": wheel for wheel in sorted(wheels.glob("*.whl"))}
    context = image_cache.build_context(
        dockerfile, files, extra=wheel_files, executable=lambda name: name.endswith(".sh")
    )
    try:
        image_cache.build(client, tag, context)
    except image_cache.ImageBuildError as error:
        raise TrainingImageError(str(error)) from error
