"""Images of the simulated fleet, built locally and cached by the hash of their recipe.

Nothing can be pulled from a registry here, so the base is a Debian bookworm rootfs made by `debootstrap`
and `docker import`ed. On top of it:

- `llava-devserver/sim-base:<hash12>`: the plain Debian base (also the base of the training image);
- `llava-devserver/sim-server:<hash12>`: base + the fake Ascend hardware (npu-smi, init scripts, sshd config);
- `llava-devserver/sim-server-docker:<hash12>`: sim-server with docker.io already installed, used by the
  `docker-preinstalled` and `device-bound` faults so they need no apt install each time.

Each tag's hash covers everything that goes into the image, so a changed recipe builds a new image and an
unchanged one is reused (a lookup, well under a second).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import docker
import docker.errors

from llava_devserver.sim import image_cache
from llava_devserver.sim.image_cache import build_lock as _build_lock
from llava_devserver.sim.image_cache import has_image as _find_image
from llava_devserver.sim.image_cache import recipe_hash as _hash

# Bump when the build steps change in a way the recipe below does not capture.
BASE_SCRIPT_VERSION = "1"
SERVER_SCRIPT_VERSION = "1"
DOCKER_SCRIPT_VERSION = "1"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# What the roles need on a fresh DevServer: python3 (+python3-apt for ansible.builtin.apt) for Ansible,
# sshd, iptables for the metadata guard, rsync for fan-out, unzip for the AscendCloud package,
# kmod/procps/iproute2 for checks, tini as PID 1. Not docker: roles install docker.io with apt.
BASE_PACKAGES = (
    "ca-certificates",
    "curl",
    "iproute2",
    "iptables",
    "iputils-ping",
    "kmod",
    "less",
    "netbase",
    "openssh-server",
    "procps",
    "python3",
    "python3-apt",
    "rsync",
    "sudo",
    "tini",
    "unzip",
    "xz-utils",
)

APT_SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY_MIRROR}
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_REPOSITORY = "llava-devserver/sim-base"
SERVER_REPOSITORY = "llava-devserver/sim-server"
DOCKER_SERVER_REPOSITORY = "llava-devserver/sim-server-docker"
LABEL = "llava-devserver.sim.image"

# Files of sim/files/ that go into the sim-server image, and where.
SERVER_FILES = {
    "npu-smi": "/usr/local/lib/npu-sim/npu-smi",
    "npu-sim-init": "/usr/local/sbin/npu-sim-init",
    "npu-sim-sync": "/usr/local/sbin/npu-sim-sync",
    "sshd_config": "/etc/ssh/sshd_config.d/llava-sim.conf",
}

CACHE_DIR = image_cache.CACHE_DIR


class SimImageError(RuntimeError):
    """An image of the simulated fleet could not be built."""


def base_recipe() -> dict[str, Any]:
    return {
        "version": BASE_SCRIPT_VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": sorted(BASE_PACKAGES),
        "apt_sources": APT_SOURCES,
    }


def base_image_tag() -> str:
    return f"{BASE_REPOSITORY}:{_hash(base_recipe())}"


def ensure_base_image(client: docker.DockerClient) -> str:
    """Return the tag of the Debian base image, building it with debootstrap if it is not there yet."""
    tag = base_image_tag()
    if _find_image(client, tag):
        return tag
    with _build_lock("sim-base"):
        if _find_image(client, tag):  # another process built it while we waited
            return tag
        _build_base_image(client, tag)
    return tag


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise SimImageError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:3])} ...\n{tail}")


def _build_base_image(client: docker.DockerClient, tag: str) -> None:
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise SimImageError(
            "debootstrap is not installed on this machine; it builds the simulated fleet's base image. "
            "Run scripts/ensure-host-tools.sh (as root) and retry."
        )
    if os.geteuid() != 0:
        raise SimImageError("building the simulated fleet's base image with debootstrap needs root")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="llava-sim-base-", dir="/var/tmp"))
    try:
        rootfs = workdir / "rootfs"
        debs = CACHE_DIR / "debootstrap-debs"
        debs.mkdir(parents=True, exist_ok=True)
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--cache-dir={debs}",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            "debootstrap of the simulated fleet's base image",
        )
        _finish_rootfs(rootfs)
        archive = workdir / "rootfs.tar"
        _run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(archive), "."],
            "tar of the base rootfs",
        )
        repository, version = tag.split(":", 1)
        client.api.import_image_from_file(
            str(archive),
            repository=repository,
            tag=version,
            changes=[
                f"ENV PATH={DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
                f"LABEL {LABEL}=base",
            ],
        )
        if not _find_image(client, tag):
            raise SimImageError(f"docker import did not produce {tag}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"sim: built {tag} in {time.monotonic() - started:.0f} s", flush=True)


def _finish_rootfs(rootfs: Path) -> None:
    """Make the debootstrapped tree a usable image: apt sources, no baked host keys, no caches."""
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(APT_SOURCES)
    # Containers have no init system to start services from package scripts; a real server does,
    # so leave policy-rc.d out and let roles start what they install.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every server generates its own at boot
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
    (rootfs / "etc/hostname").write_text("localhost\n")


# --- sim-server: base + fake hardware -------------------------------------------------------------------


def _server_file_bytes() -> dict[str, bytes]:
    files = resources.files("llava_devserver.sim") / "files"
    out: dict[str, bytes] = {}
    for name in SERVER_FILES:
        entry = files / name
        if not entry.is_file():
            raise SimImageError(f"missing simulated-server file llava_devserver/sim/files/{name}")
        out[name] = entry.read_bytes()
    return out


def _server_dockerfile(base_tag: str) -> str:
    lines = [f"FROM {base_tag}"]
    for name, dest in SERVER_FILES.items():
        lines.append(f"COPY {name} {dest}")
    lines += [
        "RUN chmod 0755 /usr/local/lib/npu-sim/npu-smi /usr/local/sbin/npu-sim-init"
        " /usr/local/sbin/npu-sim-sync && chmod 0644 /etc/ssh/sshd_config.d/llava-sim.conf"
        " && mkdir -p /etc/npu-sim /root/.ssh && chmod 0700 /root/.ssh",
        f"LABEL {LABEL}=server",
        "STOPSIGNAL SIGTERM",
        'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/sbin/npu-sim-init"]',
        "CMD []",
    ]
    return "\n".join(lines) + "\n"


def _prune_older(client: docker.DockerClient, tag: str) -> None:
    """Remove earlier builds of the same repository (other hashes) that no container uses any more."""
    repository = tag.split(":", 1)[0]
    for old in client.images.list(name=repository):
        for old_tag in old.tags:
            if old_tag.split(":", 1)[0] == repository and old_tag != tag:
                # Still used by a container or a child image: Docker refuses, and we keep it.
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(old_tag)


def _build_from_context(client: docker.DockerClient, tag: str, files: dict[str, bytes]) -> None:
    dockerfile = files["Dockerfile"].decode()
    others = {name: data for name, data in files.items() if name != "Dockerfile"}
    try:
        image_cache.build(client, tag, image_cache.build_context(dockerfile, others))
    except image_cache.ImageBuildError as exc:
        raise SimImageError(str(exc)) from exc
    _prune_older(client, tag)


def ensure_server_image(client: docker.DockerClient) -> str:
    """Return the tag of the simulated-server image (base + fake Ascend hardware), building it if needed."""
    base = ensure_base_image(client)
    files = _server_file_bytes()
    dockerfile = _server_dockerfile(base)
    recipe = {
        "version": SERVER_SCRIPT_VERSION,
        "base": base,
        "dockerfile": dockerfile,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    tag = f"{SERVER_REPOSITORY}:{_hash(recipe)}"
    if _find_image(client, tag):
        return tag
    with _build_lock("sim-server"):
        if not _find_image(client, tag):
            _build_from_context(client, tag, {"Dockerfile": dockerfile.encode(), **files})
    return tag


# --- sim-server-docker: docker.io preinstalled ------------------------------------------------------------

DOCKER_PACKAGES = ("docker.io",)


def ensure_docker_server_image(client: docker.DockerClient) -> str:
    """Return the tag of a simulated-server image with docker.io installed (not started), building it once.

    Installing with apt in a RUN step keeps the build cached; the engine is started per server by the
    `docker-preinstalled` fault.
    """
    server = ensure_server_image(client)
    dockerfile = "\n".join(
        [
            f"FROM {server}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive"
            f" apt-get install -y -qq --no-install-recommends {' '.join(DOCKER_PACKAGES)} >/dev/null"
            " && apt-get clean && rm -rf /var/lib/apt/lists/*",
            f"LABEL {LABEL}=server-docker",
        ]
    )
    tag = f"{DOCKER_SERVER_REPOSITORY}:{_hash({'version': DOCKER_SCRIPT_VERSION, 'dockerfile': dockerfile})}"
    if _find_image(client, tag):
        return tag
    with _build_lock("sim-server-docker"):
        if not _find_image(client, tag):
            _build_from_context(client, tag, {"Dockerfile": dockerfile.encode()})
    return tag
