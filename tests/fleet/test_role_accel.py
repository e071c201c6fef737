"""The role accel_check on a 3-server simulated fleet (2 devices each), through real Ansible over SSH.

One fleet for the module (2 cores): every server starts with Docker preinstalled; the fixture runs validate,
host and container (the workspace play is not needed: the check only needs the running training container).
Then, reading what the fleet report shows (`report.json`, written by the llava_report callback):

1. all 3 servers: the check passes on each, with figures (6 processes, gloo all_reduce across servers);
2. one server: `--limit devserver-1` (the check spans the servers in the run) and a 1-server inventory of
   the same server (llava.nnodes = 1);
3. faults in one run: rank 3 (devserver-2) fails its device measurement, devserver-3 expects 3 devices:
   each of those fails with its cause named, devserver-1 passes;
4. rank 3 stalls before the all_reduce: every server fails within the bound, naming the timeout and rank 3.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
FLEET = f"acc-{os.getpid()}"
CONTAINER = "llava-pretrain"
HOSTS = ("devserver-1", "devserver-2", "devserver-3")


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]
    report: dict[str, Any]  # report.json of the run
    seconds: float

    def host(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = next(h for h in self.report["hosts"] if h["host"] == name)
        return entry

    def accel(self, name: str) -> dict[str, Any]:
        fact: dict[str, Any] = self.host(name)["facts"]["accel"]
        return fact

    def failure(self, name: str) -> str:
        failed = self.host(name)["failed_task"]
        assert failed, f"{name} did not fail:\n{self.output[-3000:]}"
        return str(failed["message"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from llava_devserver.sim import fleet as sim_fleet
    from llava_devserver.sim.faults import parse_fault

    out = tmp_path_factory.mktemp("accel")
    try:
        sim_fleet.fleet_up(
            FLEET,
            len(HOSTS),
            out,
            faults={host: [parse_fault("docker-preinstalled")] for host in HOSTS},
            devices_per_host=2,
            job=True,
            log=lambda _: None,
        )
        setup = run_play(out, ("validate", "host", "container"))
        assert setup.rc == 0, setup.output[-4000:]
        yield out
    finally:
        sim_fleet.fleet_down(FLEET, log=lambda _: None)


def _playbook(directory: Path, plays: tuple[str, ...]) -> Path:
    path = directory / f"play-{'-'.join(plays)}.yml"
    path.write_text(
        yaml.safe_dump(
            [{"ansible.builtin.import_playbook": str(REPO / "playbooks" / f"{p}.yml")} for p in plays]
        )
    )
    return path


def run_play(
    directory: Path, plays: tuple[str, ...], *args: str, inventory: Path | None = None, name: str = "run"
) -> Run:
    run_dir = directory / "runs" / f"{name}-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CALLBACKS_ENABLED": "llava_report,ansible.posix.profile_tasks",
        "ANSIBLE_FORCE_COLOR": "0",
        "LLAVA_RUN_DIR": str(run_dir),
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inventory or directory / "devserver.ini"),
         str(_playbook(directory, plays)), *args],
        capture_output=True, text=True, timeout=900, check=False, cwd=REPO, env=env,
    )  # fmt: skip
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"hosts": []}
    return Run(result.returncode, output, recap, report, seconds)


def ssh(directory: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    ini = (directory / "devserver.ini").read_text()
    match = re.search(rf"^{host} ansible_host=(\S+)", ini, re.MULTILINE)
    assert match, f"{host} not in the inventory"
    return subprocess.run(
        [
            "ssh", "-i", str(directory / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"root@{match.group(1)}", command,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_passed(run: Run, host: str, nnodes: int, world_size: int) -> dict[str, Any]:
    """The host passed, and its fact carries the measured figures of the whole check."""
    assert run.recap[host]["failed"] == 0, run.output[-4000:]
    accel = run.accel(host)
    assert accel["schema"] == 1 and accel["host"] == host
    assert accel["verdict"] == "PASS" and accel["job_verdict"] == "PASS", accel["problems"]
    assert accel["problems"] == [] and accel["exit_code"] == 0
    assert accel["accelerator"] == "cpu"
    assert accel["expected_devices"] == 2 and accel["device_count"] == 2
    # one measured device per process of this server, each with a positive bf16 matmul figure
    assert [d["index"] for d in accel["devices"]] == [0, 1]
    assert all(d["tflops"] > 0 and d["error"] is None and not d["outlier"] for d in accel["devices"])
    assert accel["tflops_median"] > 0
    allreduce = accel["allreduce"]
    assert allreduce["backend"] == "gloo" and allreduce["ok"] is True
    assert allreduce["world_size"] == world_size and allreduce["busbw_gbps"] > 0
    # versions come from inside the training image: DeepSpeed sees the accelerator torch sees
    versions = accel["versions"]
    assert versions["torch"].endswith("+cpu") and versions["deepspeed"]
    assert versions["deepspeed_accelerator"] == "cpu"
    assert versions["cann"] == "8.0.RC2"  # the image's stand-in toolkit
    assert accel["launch"]["launcher"] == "torchrun" and accel["launch"]["nnodes"] == nnodes
    assert [h["host"] for h in accel["hosts"]] == list(HOSTS[:nnodes])
    assert accel["run"]["nnodes"] == nnodes and accel["run"]["rc"] == 0
    assert accel["run"]["master_port"] == 29501  # master_port + 1, next to the job's
    # the report's cell: verdict and the figures
    cell = run.host(host)["accel"]
    assert cell.startswith("PASS (cpu x2, matmul ") and f"over {world_size} procs" in cell, cell
    return accel


def test_passes_on_three_servers_with_figures(fleet: Path) -> None:
    run = run_play(fleet, ("validate", "accel"), name="three")
    assert run.rc == 0, run.output[-4000:]
    for host in HOSTS:
        accel = assert_passed(run, host, nnodes=3, world_size=6)
        assert accel["node_rank"] == HOSTS.index(host)
        assert run.recap[host]["changed"] == 1  # the copy of accel_check.py into the container; the check: ok
    first = run.accel("devserver-1")
    assert first["run"]["master_addr"] != "127.0.0.1"  # the servers met at the first one's address
    # every server measured the same collective
    assert len({run.accel(h)["allreduce"]["busbw_gbps"] for h in HOSTS}) == 1
    # the copy in the container belongs to the container's user; the document it wrote is this run's
    owner = ssh(fleet, "devserver-2", f"docker exec {CONTAINER} stat -c %U:%a /tmp/llava_accel_check.py")
    assert owner.stdout.strip() == "ma-user:644", owner.stderr
    written = ssh(fleet, "devserver-2", f"docker exec {CONTAINER} cat /tmp/llava_accel_check.json")
    document = json.loads(written.stdout)
    assert document["host"] == "devserver-2" and document["verdict"] == "PASS"
    assert document["allreduce"] == run.accel("devserver-2")["allreduce"]
    md = (Path(run.report["run_dir"]) / "report.md").read_text()
    assert "PASS (cpu x2, matmul" in md


def test_one_server(fleet: Path) -> None:
    # --limit: the check spans the servers of the run (one), talking to itself over loopback
    limited = run_play(fleet, ("validate", "accel"), "--limit", "devserver-1", name="limit")
    assert limited.rc == 0, limited.output[-4000:]
    assert set(limited.recap) == {"devserver-1"}
    assert limited.recap["devserver-1"]["changed"] == 0  # the script is there already: nothing is sent again
    accel = assert_passed(limited, "devserver-1", nnodes=1, world_size=2)
    assert accel["run"]["job_nnodes"] == 3 and accel["run"]["master_addr"] == "127.0.0.1"

    # a fleet of one server: an inventory of devserver-1 alone (the global batch follows the world size)
    single = fleet / "single"
    (single / "group_vars").mkdir(parents=True, exist_ok=True)
    ini = (fleet / "devserver.ini").read_text()
    ini = re.sub(r"^devserver-[23] .*\n", "", ini, flags=re.MULTILINE)
    (single / "devserver.ini").write_text(ini)
    all_yml = yaml.safe_load((fleet / "group_vars" / "all.yml").read_text())
    all_yml["global_batch_size"] = all_yml["per_device_train_batch_size"] * 2
    (single / "group_vars" / "all.yml").write_text(yaml.safe_dump(all_yml))
    alone = run_play(fleet, ("validate", "accel"), inventory=single / "devserver.ini", name="single")
    assert alone.rc == 0, alone.output[-4000:]
    accel = assert_passed(alone, "devserver-1", nnodes=1, world_size=2)
    assert accel["run"]["job_nnodes"] == 1


def test_failed_process_and_wrong_count_fail_their_hosts(fleet: Path) -> None:
    host_vars = fleet / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / "devserver-3.yml").write_text("accel_check_expect_devices: 3\n")
    try:
        # global rank 3 is devserver-2's second process
        run = run_play(fleet, ("validate", "accel"), "-e", "accel_check_fault=fail:3", name="faults")
    finally:
        (host_vars / "devserver-3.yml").unlink()
    assert run.rc != 0
    one = run.accel("devserver-1")
    assert run.recap["devserver-1"]["failed"] == 0 and one["verdict"] == "PASS"
    assert one["job_verdict"] == "FAIL"  # it knows the others failed, but its own stack is fine

    two = run.failure("devserver-2")
    assert two.startswith("devserver-2: accelerator check FAILED (device error) over 3 server(s)"), two
    assert "device 1 (rank 3): RuntimeError: injected fault" in two
    assert re.search(r"bf16 matmul TFLOP/s by device 0: [\d.]+, 1: error", two), two
    assert re.search(r"all_reduce \(gloo, 6 processes, 4(\.0)? MiB\) busbw [\d.]+ GB/s", two), two
    assert run.accel("devserver-2")["verdict"] == "FAIL"
    assert run.host("devserver-2")["remedy"]["key"] == "accel_check"

    three = run.failure("devserver-3")
    assert three.startswith("devserver-3: accelerator check FAILED (wrong device count)"), three
    assert "found 2 processes (cpu), expected 3" in three
    assert "2 device(s) (expected 3)" in three
    assert run.accel("devserver-3")["expected_devices"] == 3


def test_stalled_process_fails_within_the_bound(fleet: Path) -> None:
    timeout = 45  # the check's bound; its collectives time out at 0.6 x 45 = 27 s
    run = run_play(
        fleet, ("validate", "accel"), "-e", "accel_check_fault=stall:3",
        "-e", f"accel_check_timeout={timeout}", name="stall",
    )  # fmt: skip
    assert run.rc != 0
    for host in HOSTS:
        message = run.failure(host)
        assert message.startswith(f"{host}: accelerator check FAILED (collective timed out)"), message
        # the collective's own timeout, or (when the loaded machine started the check late) its watchdog
        assert re.search(
            r"all_reduce \(gloo, 6 processes\) did not complete within 27 s|"
            rf"timed out after {timeout} s in phase 'all_reduce'",
            message,
        ), message
        assert "rank(s) 3 never reached it" in message
        accel = run.accel(host)
        assert accel["allreduce"]["busbw_gbps"] is None and accel["allreduce"]["ok"] is False
        assert accel["exit_code"] == 3
        # within the launch's bound (rendezvous + check + slack), far below Ansible's async bound
        assert accel["run"]["seconds"] < 90 + timeout + 30, accel["run"]
    assert run.seconds < 90 + timeout + 60, run.seconds
