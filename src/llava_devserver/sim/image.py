"""Images of the simulated fleet, built locally and cached by the hash of their recipe.

Nothing can be pulled from a registry here, so every base is a Debian rootfs made by `debootstrap` and
`docker import`ed. A server has one of two OS profiles (PROFILES):

- `debian12`: Debian 12 (bookworm), Python 3.11, apt, no init system (tini runs files/npu-sim-init);
- `hce2`: a stand-in for Huawei Cloud EulerOS 2.0, the OS of real Snt9B DevServers: a Debian 11 (bullseye)
  userland for its Python 3.9, HCE 2.0's /etc/os-release, systemd as PID 1 (sshd, the fake hardware's boot
  unit, Docker once installed), dnf with a local RPM repository offering the guide's `docker-engine`,
  `docker-engine-selinux` and `docker-runc` (built with rpmbuild from Debian's Docker binaries by
  files/hce2-setup), and no apt or dpkg.

Per profile (repositories of hce2 end in `-hce2`; debian12 keeps the plain names):

- `llava-devserver/sim-base:<hash12>`: the plain debootstrapped base (debian12's is also the base of the
  training image);
- `llava-devserver/sim-server:<hash12>`: base + the fake Ascend hardware (npu-smi, boot scripts, sshd config)
  and, for hce2, the OS stand-in above;
- `llava-devserver/sim-server-docker:<hash12>`: sim-server with Docker already installed (apt's docker.io, or
  dnf's docker-engine), used by the `docker-preinstalled` and `device-bound` faults.

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
from dataclasses import dataclass
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

SUITE = "bookworm"  # of the debian12 profile (and the training image's base)
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

# hce2: no tini (systemd is PID 1), no python3-apt (no apt); systemd, dnf (+ its Python bindings for
# ansible.builtin.dnf), rpm with rpmbuild and createrepo-c for the local RPM repository.
HCE2_BASE_PACKAGES = (
    *(name for name in BASE_PACKAGES if name not in ("tini", "python3-apt")),
    "createrepo-c",
    "dnf",
    "python3-dnf",
    "rpm",
    "systemd",
    "systemd-sysv",
)


def apt_sources(suite: str) -> str:
    return f"""\
Types: deb
URIs: {MIRROR}
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY_MIRROR}
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


APT_SOURCES = apt_sources(SUITE)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_REPOSITORY = "llava-devserver/sim-base"
SERVER_REPOSITORY = "llava-devserver/sim-server"
DOCKER_SERVER_REPOSITORY = "llava-devserver/sim-server-docker"
LABEL = "llava-devserver.sim.image"

# Files of sim/files/ that go into the sim-server image of every profile, and where.
SERVER_FILES = {
    "npu-smi": "/usr/local/lib/npu-sim/npu-smi",
    "hccn_tool": "/usr/local/lib/npu-sim/hccn_tool",  # npu-sim-sync puts it in the driver's tools/
    "lspci": "/usr/bin/lspci",
    "npu-sim-boot": "/usr/local/sbin/npu-sim-boot",
    "npu-sim-sync": "/usr/local/sbin/npu-sim-sync",
    "npu-sim-link": "/usr/local/sbin/npu-sim-link",
    "npu-sim-front": "/usr/local/sbin/npu-sim-front",
    "sshd_config": "/etc/ssh/sshd_config.d/llava-sim.conf",
}


@dataclass(frozen=True)
class Profile:
    """The operating system of a simulated server."""

    name: str
    description: str
    suite: str  # Debian suite of the debootstrapped userland
    packages: tuple[str, ...]
    init: str  # "tini" (no init system) or "systemd"
    python: str  # major.minor of /usr/bin/python3
    files: dict[str, str]  # sim/files/ that only this profile's server image has, and where
    # Run as root in the server image's build after the files are copied (a script of sim/files/ or "").
    setup: str = ""
    # Package manager command that installs Docker in the sim-server-docker image.
    docker_install: str = ""

    def repository(self, base: str) -> str:
        return base if self.name == DEFAULT_PROFILE else f"{base}-{self.name}"


DEFAULT_PROFILE = "debian12"
PROFILES = {
    "debian12": Profile(
        name="debian12",
        description="Debian 12 (bookworm): Python 3.11, apt, no init system",
        suite=SUITE,
        packages=BASE_PACKAGES,
        init="tini",
        python="3.11",
        files={"npu-sim-init": "/usr/local/sbin/npu-sim-init"},
        docker_install="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
        " --no-install-recommends docker.io >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*",
    ),
    "hce2": Profile(
        name="hce2",
        description="Huawei Cloud EulerOS 2.0 stand-in: Python 3.9, systemd, dnf (docker-engine), no apt",
        suite="bullseye",
        packages=HCE2_BASE_PACKAGES,
        init="systemd",
        python="3.9",
        files={
            "hce2-setup": "/usr/local/lib/npu-sim/hce2-setup",
            "hce2-os-release": "/usr/local/lib/npu-sim/hce2-os-release",
            "docker.service": "/usr/local/lib/npu-sim/docker.service",
            "npu-sim-boot.service": "/etc/systemd/system/npu-sim-boot.service",
        },
        setup="/usr/local/lib/npu-sim/hce2-setup",
        # What the docker_engine role installs there (the guide's step 1), enabled at boot like a real one.
        docker_install="dnf install -y -q docker-engine docker-engine-selinux docker-runc"
        " >/dev/null && dnf clean all >/dev/null && systemctl enable docker.service >/dev/null 2>&1",
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SimImageError(f"unknown OS profile {name!r} (known: {', '.join(PROFILES)})") from None


CACHE_DIR = image_cache.CACHE_DIR


class SimImageError(RuntimeError):
    """An image of the simulated fleet could not be built."""


def base_recipe(profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    spec = get_profile(profile)
    recipe: dict[str, Any] = {
        "version": BASE_SCRIPT_VERSION,
        "suite": spec.suite,
        "mirror": MIRROR,
        "packages": sorted(spec.packages),
        "apt_sources": apt_sources(spec.suite),
    }
    if profile != DEFAULT_PROFILE:  # debian12's recipe (and so its tag and the training image's) as before
        recipe["profile"] = profile
    return recipe


def base_image_tag(profile: str = DEFAULT_PROFILE) -> str:
    return f"{get_profile(profile).repository(BASE_REPOSITORY)}:{_hash(base_recipe(profile))}"


def ensure_base_image(client: docker.DockerClient, profile: str = DEFAULT_PROFILE) -> str:
    """Return the tag of a profile's base image, building it with debootstrap if it is not there yet."""
    tag = base_image_tag(profile)
    if _find_image(client, tag):
        return tag
    with _build_lock(f"sim-base-{profile}"):
        if _find_image(client, tag):  # another process built it while we waited
            return tag
        _build_base_image(client, tag, get_profile(profile))
    return tag


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise SimImageError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:3])} ...\n{tail}")


def _build_base_image(client: docker.DockerClient, tag: str, profile: Profile) -> None:
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
                f"--include={','.join(profile.packages)}",
                f"--cache-dir={debs}",
                profile.suite,
                str(rootfs),
                MIRROR,
            ],
            "debootstrap of the simulated fleet's base image",
        )
        _finish_rootfs(rootfs, profile.suite)
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


def _finish_rootfs(rootfs: Path, suite: str) -> None:
    """Make the debootstrapped tree a usable image: apt sources, no baked host keys, no caches."""
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(apt_sources(suite))
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


def _server_files(profile: Profile) -> dict[str, str]:
    return {**SERVER_FILES, **profile.files}


def _server_file_bytes(profile: Profile) -> dict[str, bytes]:
    files = resources.files("llava_devserver.sim") / "files"
    out: dict[str, bytes] = {}
    for name in _server_files(profile):
        entry = files / name
        if not entry.is_file():
            raise SimImageError(f"missing simulated-server file llava_devserver/sim/files/{name}")
        out[name] = entry.read_bytes()
    return out


def _server_dockerfile(base_tag: str, profile: Profile) -> str:
    files = _server_files(profile)
    lines = [f"FROM {base_tag}"]
    for name, dest in files.items():
        lines.append(f"COPY {name} {dest}")
    # Programs and scripts; configuration (under /etc, units, os-release) stays 0644.
    executables = " ".join(
        dest
        for dest in files.values()
        if not dest.startswith("/etc/") and not dest.endswith((".service", "os-release"))
    )
    lines += [
        f"RUN chmod 0755 {executables} && chmod 0644 /etc/ssh/sshd_config.d/llava-sim.conf"
        " && mkdir -p /etc/npu-sim /root/.ssh && chmod 0700 /root/.ssh",
    ]
    if profile.setup:
        lines.append(f"RUN {profile.setup}")
    lines.append(f"LABEL {LABEL}=server {LABEL}.profile={profile.name}")
    if profile.init == "systemd":
        # systemd as PID 1: it must know it runs in a container, and halts cleanly on SIGRTMIN+3.
        lines += [
            "ENV container=docker",
            "STOPSIGNAL SIGRTMIN+3",
            'ENTRYPOINT ["/lib/systemd/systemd"]',
        ]
    else:
        lines += [
            "STOPSIGNAL SIGTERM",
            'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/sbin/npu-sim-init"]',
        ]
    lines.append("CMD []")
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


def server_repository(profile: str = DEFAULT_PROFILE) -> str:
    return get_profile(profile).repository(SERVER_REPOSITORY)


def ensure_server_image(client: docker.DockerClient, profile: str = DEFAULT_PROFILE) -> str:
    """Return the tag of a profile's simulated-server image (base + fake Ascend hardware), building it if
    needed."""
    spec = get_profile(profile)
    base = ensure_base_image(client, profile)
    files = _server_file_bytes(spec)
    dockerfile = _server_dockerfile(base, spec)
    recipe = {
        "version": SERVER_SCRIPT_VERSION,
        "base": base,
        "dockerfile": dockerfile,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    tag = f"{server_repository(profile)}:{_hash(recipe)}"
    if _find_image(client, tag):
        return tag
    with _build_lock(f"sim-server-{profile}"):
        if not _find_image(client, tag):
            started = time.monotonic()
            _build_from_context(client, tag, {"Dockerfile": dockerfile.encode(), **files})
            print(f"sim: built {tag} in {time.monotonic() - started:.0f} s", flush=True)
    return tag


# --- sim-server-docker: Docker preinstalled ---------------------------------------------------------------


def ensure_docker_server_image(client: docker.DockerClient, profile: str = DEFAULT_PROFILE) -> str:
    """Return the tag of a simulated-server image with Docker installed (not started), building it once.

    Installing with the profile's package manager in a RUN step keeps the build cached; the engine is
    started per server by the `docker-preinstalled` fault.
    """
    spec = get_profile(profile)
    server = ensure_server_image(client, profile)
    dockerfile = "\n".join([f"FROM {server}", f"RUN {spec.docker_install}", f"LABEL {LABEL}=server-docker"])
    tag = f"{spec.repository(DOCKER_SERVER_REPOSITORY)}:"
    tag += _hash({"version": DOCKER_SCRIPT_VERSION, "dockerfile": dockerfile})
    if _find_image(client, tag):
        return tag
    with _build_lock(f"sim-server-docker-{profile}"):
        if not _find_image(client, tag):
            _build_from_context(client, tag, {"Dockerfile": dockerfile.encode()})
    return tag
