"""A simulated fleet ready for the workspace play, shared by tests/test_role_workspace.py and
bench/staging_bench.py (not a test module: no test_ prefix).

The servers run a SMALL stand-in of the training image (the sim base image + ma-user uid 1000 in ma-group
gid 100, as in the real and the sim training image, and empty `torch`/`PIL` packages so that the stand-in
build.sh's import check passes): loading the real 1.2 GB training image on every server would cost minutes
of the CI budget and the workspace roles need only the container, its user and a python3.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE_REPOSITORY = "llava-wstest/train"
DOCKERFILE = """\
FROM {base}
RUN groupmod -n ma-group users && useradd -m -u 1000 -g 100 -s /bin/bash ma-user \\
 && purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \\
 && mkdir -p "$purelib/torch" "$purelib/PIL" \\
 && echo '# stand-in: build.sh only checks that torch imports' >"$purelib/torch/__init__.py" \\
 && echo '# stand-in: build.sh only checks that PIL imports' >"$purelib/PIL/__init__.py"
USER ma-user
WORKDIR /home/ma-user
CMD ["/bin/bash"]
"""


@dataclass
class Fleet:
    name: str
    dir: Path
    hosts: list[str]


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]
    seconds: float
    run_dir: Path

    def report(self) -> dict[str, Any]:
        """report.json of the llava_report callback (the llava_report_* facts per host)."""
        return dict(json.loads((self.run_dir / "report.json").read_text()))


def docker_client() -> Any:
    import docker

    client = docker.from_env(timeout=300)
    client.ping()
    return client


def small_image(client: Any, out: Path) -> tuple[str, Path]:
    """The stand-in training image (built once, cached by the Dockerfile's hash) and its docker save."""
    from llava_devserver.sim.image import ensure_base_image

    dockerfile = DOCKERFILE.format(base=ensure_base_image(client))
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(dockerfile.encode()).hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except Exception:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile.encode()))
        buffer.seek(0)
        client.images.build(fileobj=buffer, custom_context=True, tag=tag, rm=True, pull=False)
    archive = out / "wstest-image.tar"
    if not archive.is_file():
        with archive.open("wb") as handle:
            for chunk in client.images.get(tag).save(named=True):
                handle.write(chunk)
    return tag, archive


def fleet_up(name: str, n_hosts: int, out: Path) -> Fleet:
    """Servers with Docker preinstalled, the stand-in package and assets (source control) configured."""
    from llava_devserver.sim import fleet as sim_fleet
    from llava_devserver.sim.faults import parse_fault

    client = docker_client()
    hosts = [sim_fleet.host_name(i) for i in range(1, n_hosts + 1)]
    sim_fleet.fleet_up(
        name, n_hosts, out, faults={h: [parse_fault("docker-preinstalled")] for h in hosts},
        devices_per_host=1, job=True, log=lambda _: None,
    )  # fmt: skip
    image, archive = small_image(client, out)
    all_yml = out / "group_vars" / "all.yml"
    settings = yaml.safe_load(all_yml.read_text())
    settings |= {"container_image": image, "container_image_archive": str(archive)}
    all_yml.write_text(yaml.safe_dump(settings, sort_keys=False))
    return Fleet(name, out, hosts)


def playbook(fleet: Fleet, *plays: str) -> Path:
    path = fleet.dir / f"play-{'-'.join(plays)}.yml"
    path.write_text(
        yaml.safe_dump(
            [{"ansible.builtin.import_playbook": str(REPO / "playbooks" / f"{p}.yml")} for p in plays]
        )
    )
    return path


def run_play(fleet: Fleet, plays: tuple[str, ...], *args: str) -> Run:
    runs = fleet.dir / "runs"
    runs.mkdir(exist_ok=True)
    done = [p for p in runs.iterdir() if p.name != "latest"]
    run_dir = runs / f"{len(done) + 1:02d}-{'-'.join(plays)}"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,llava_report",
        "ANSIBLE_FORCE_COLOR": "0",
        "LLAVA_RUN_DIR": str(run_dir),
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    start = time.monotonic()
    result = subprocess.run(
        [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(fleet.dir / "devserver.ini"),
         str(playbook(fleet, *plays)), *args],
        capture_output=True, text=True, timeout=1500, check=False, cwd=REPO, env=env,
    )  # fmt: skip
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return Run(result.returncode, output, recap, seconds, run_dir)


def address(fleet: Fleet, host: str) -> str:
    ini = (fleet.dir / "devserver.ini").read_text()
    match = re.search(rf"^{host} ansible_host=(\S+)", ini, re.MULTILINE)
    assert match, f"{host} not in the inventory"
    return match.group(1)


def ssh(fleet: Fleet, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh", "-i", str(fleet.dir / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"root@{address(fleet, host)}", command,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def net_counters(fleet: Fleet) -> dict[str, dict[str, int]]:
    """rx/tx bytes of each server's interface on the fleet network (read through the Docker API)."""
    from llava_devserver.sim import fleet as sim_fleet

    counters = {}
    for host in fleet.hosts:
        container = sim_fleet.server(fleet.name, host)
        out = container.exec_run(
            [
                "sh",
                "-c",
                "cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes",
            ]
        ).output.decode()
        rx, tx = (int(v) for v in out.split())
        counters[host] = {"rx": rx, "tx": tx}
    return counters


def set_host_vars(fleet: Fleet, host: str, values: dict[str, Any] | None) -> None:
    path = fleet.dir / "host_vars" / f"{host}.yml"
    path.parent.mkdir(exist_ok=True)
    if values is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(yaml.safe_dump(values, sort_keys=False))


def group_vars(fleet: Fleet) -> dict[str, Any]:
    return dict(yaml.safe_load((fleet.dir / "group_vars" / "all.yml").read_text()))
