"""The role llava_pretrain (playbooks/train.yml, playbooks/train_stop.yml) on the shared 3-server simulated
fleet (conftest's job_fleet: one card each, the real training image, the stand-in AscendCloud package and
synthetic assets; the workspace built, by test_role_workspace or by this module's fixture). In file order:

1. the 3-node job (one torchrun per server) with train_wait: finishes on every node, node 0's log is fetched
   and its loss falls, mm_projector.bin is saved, our pretrain_new.sh is byte-for-byte what
   `llava-devserver render` writes and the guide's original is kept beside it; the run report has the job;
   a second run changes nothing; check mode with train_restart says it would start and starts nothing.
2. the same fleet seen as one server (an inventory copy with only devserver-1 in the group, so nnodes=1):
   started without waiting; a second run while it runs starts nothing (same pid, one torchrun); the launcher
   killed mid-run (SIGKILL) and train.yml again resumes from the checkpoint; train_stop stops it cleanly (no
   process left, state stopped); train.yml with train_wait resumes again and finishes; a last run changes
   nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import harness
from llava_devserver import trainlog

pytestmark = pytest.mark.fleet

CONTAINER = "llava-pretrain"
WORK_DIR = "/data/llava-devserver"
JOB_FILE = f"/var/lib/llava-devserver/{CONTAINER}/job.json"  # root-only, outside the container's reach
COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
TREE = f"{WORK_DIR}/multimodal_algorithm/LLAVA/llava-train/{COMMIT}/LLaVA"
MULTI_OUTPUT = f"{TREE}/checkpoints/llava-sim-pretrain"
SINGLE_OUTPUT = f"{TREE}/checkpoints/llava-sim-single"
WAIT = {"train_wait": True, "llava_pretrain_poll_interval": 3}
STEPS = 100  # the one-server job: long enough to be killed, resumed and stopped while it runs
TIMINGS: dict[str, float] = {}


@dataclass
class Fleet:
    sim: harness.Fleet
    single: Path  # the same fleet seen as one server (devserver-1 only): its devserver.ini

    def sh(self, host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.sim.sh(host, command, timeout=timeout)


def run_play(fleet: Fleet, *plays: str, single: bool = False, **options: Any) -> harness.PlayResult:
    inventory = fleet.single if single else None
    result = fleet.sim.run_play(*plays, inventory=inventory, **options)
    TIMINGS[options.get("name") or "-".join(plays)] = round(result.seconds, 1)
    return result


def job(fleet: Fleet, host: str) -> dict[str, Any]:
    result = fleet.sh(host, f"cat {JOB_FILE}")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def training_processes(fleet: Fleet, host: str) -> list[str]:
    """`pid args` of every process of a training job in the container."""
    result = fleet.sh(host, f"docker exec {CONTAINER} ps -eo pid=,args=")
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if "llava/train/train_mem.py" in line]


def read(fleet: Fleet, host: str, path: str) -> str:
    return fleet.sim.read(host, path)


def wait_for(fleet: Fleet, host: str, command: str, what: str, seconds: float = 180) -> None:
    try:
        harness.wait_for(lambda: fleet.sh(host, command).returncode == 0, f"{host}: {what}", seconds)
    except AssertionError as error:
        state = fleet.sh(host, f"cat {JOB_FILE}").stdout
        tail = fleet.sh(
            host, f"tail -n 30 $(ls -t {WORK_DIR}/.llava-devserver/logs/*.log | head -n 1)"
        ).stdout
        pytest.fail(f"{error}\njob.json: {state}\nlog tail:\n{tail}")


@pytest.fixture(scope="module")
def fleet(job_fleet: harness.Fleet) -> Iterator[Fleet]:
    settings = job_fleet.group_vars()
    # The same servers as a one-server job: only devserver-1 in the group, so validate gives nnodes=1.
    single = job_fleet.subset(
        ["devserver-1"],
        "train-single",
        global_batch_size=settings["per_device_train_batch_size"],  # 1 server x 1 card
        output_dir="./checkpoints/llava-sim-single",
        max_steps=STEPS,
        save_steps=10,
        train_wait=False,  # start and return: the tests below look at the running job
        # A known pace (>= 0.3 s a step): the job must still run when the tests below act on it.
        train_env={**settings.get("train_env", {}), "LLAVA_SIM_STEP_PAUSE": "0.3"},
    )
    # The workspace: test_role_workspace built it when it ran first; alone, this module builds it here.
    job_fleet.run_play("validate", "workspace", name="workspace").assert_ok()
    yield Fleet(job_fleet, single)
    print(f"\ntest_role_train timings (s): {json.dumps(TIMINGS)}")


def test_three_node_job_runs_to_completion(fleet: Fleet, tmp_path: Path) -> None:
    hosts = ("devserver-1", "devserver-2", "devserver-3")
    run = run_play(fleet, "validate", "train", extravars=WAIT, name="multi")
    run.assert_ok(*hosts)
    for rank, host in enumerate(hosts):
        state = job(fleet, host)
        assert state["state"] == "finished" and state["exit_code"] == 0, state
        assert state["node_rank"] == rank and state["nnodes"] == 3 and state["container"] == CONTAINER
        assert state["log"].startswith(f"{WORK_DIR}/.llava-devserver/logs/train-")
        assert training_processes(fleet, host) == []
    assert job(fleet, "devserver-1")["step"] == 20 and job(fleet, "devserver-1")["total_steps"] == 20

    # node 0's log, fetched for the report: the loss fell
    log = run.run_dir / "logs" / "devserver-1" / "train.log"
    summary = trainlog.parse_log(log).summary
    assert summary.steps == 20 and summary.nan_count == 0
    assert summary.last < 0.9 * summary.first, summary
    assert not (run.run_dir / "logs" / "devserver-2").exists()  # node 1 prints no loss: not fetched
    entry = run.host_report("devserver-1")
    assert entry["job"] == "finished" and entry["step"] == 20 and entry["loss"]["summary"]["steps"] == 20
    assert entry["facts"]["job"]["loss_summary"]["last"] == summary.last
    # HF style: global rank 0 prints the loss, and loss_log_node auto finds node 0
    training = run.report()["training"]
    assert training["loss_log"] == {"host": "devserver-1", "node_rank": 0, "log": entry["loss"]["log"]}
    assert training["throughput"]["samples_per_second"] > 0
    assert training["projector"]["host"] == "devserver-1"

    # the projector on node 0; the other nodes keep their checkpoints (node-local output_dir)
    assert fleet.sh("devserver-1", f"test -s {MULTI_OUTPUT}/mm_projector.bin").returncode == 0
    assert fleet.sh("devserver-2", f"test -d {MULTI_OUTPUT}/checkpoint-20").returncode == 0

    # what runs is what `llava-devserver render` shows, byte for byte; the guide's original is kept
    rendered = tmp_path / "render"
    preview = fleet.sim.llava(
        "render", "-i", str(fleet.sim.inventory), "--host", "devserver-2", "-o", str(rendered)
    )
    assert preview.returncode == 0, preview.stderr
    script = read(fleet, "devserver-2", f"{TREE}/scripts/v1_5/pretrain_new.sh")
    assert script == (rendered / "devserver-2" / "pretrain_new.sh").read_text()
    assert "--node_rank 1" in script and "--nnodes 3" in script
    original = read(fleet, "devserver-2", f"{TREE}/scripts/v1_5/pretrain_new.sh.orig")
    assert "deepspeed llava/train/train_mem.py" in original and "Generated by llava-devserver" not in original

    again = run_play(fleet, "validate", "train", extravars=WAIT, name="multi-again")
    again.assert_ok(*hosts)
    assert all(again.recap[h]["changed"] == 0 for h in hosts), again.changed
    assert "the job finished at" in again.output and "holds mm_projector.bin" in again.output
    before = job(fleet, "devserver-1")

    check = run_play(
        fleet, "validate", "train", check=True, extravars={"train_restart": True}, name="multi-check"
    )
    check.assert_ok(*hosts)
    assert all(check.recap[h]["changed"] > 0 for h in hosts), check.recap
    assert job(fleet, "devserver-1") == before and training_processes(fleet, "devserver-1") == []


def test_single_server_never_twice_resume_and_stop(fleet: Fleet) -> None:
    host = "devserver-1"
    started = run_play(fleet, "validate", "train", single=True, name="single-start")
    started.assert_ok(host)
    assert started.recap[host]["changed"] > 0
    first = job(fleet, host)
    assert first["state"] == "running" and first["nnodes"] == 1 and first["action"] == "start"
    base = int(first["launches"])  # devserver-1's state file also counted the 3-node job of the test above
    pgid = fleet.sh(host, f"docker exec {CONTAINER} ps -o pgid= -p {first['pid']}").stdout.strip()
    assert pgid == str(first["pid"]), "the recorded launcher does not lead its process group"
    wait_for(fleet, host, f"docker exec {CONTAINER} pgrep -f -- '-u llava/train/train_mem.py'", "the worker")
    processes = training_processes(fleet, host)

    # a second run while the job runs starts nothing
    again = run_play(fleet, "validate", "train", single=True, name="single-again")
    again.assert_ok(host)
    assert again.recap[host]["changed"] == 0, again.changed
    assert "the job runs since" in again.output
    assert job(fleet, host)["pid"] == first["pid"] and job(fleet, host)["started_at"] == first["started_at"]
    now = training_processes(fleet, host)
    assert now == processes and sum("torchrun" in p for p in now) == 1, now

    # a crash after the first checkpoint: the worker killed outright (as the OOM killer would), torchrun fails
    # any checkpoint: with save_total_limit the older ones are removed as newer ones come
    wait_for(fleet, host, f"ls {SINGLE_OUTPUT}/checkpoint-*/trainer_state.json", "a checkpoint")
    killed = fleet.sh(host, f"docker exec {CONTAINER} pkill -KILL -f -- '-u llava/train/train_mem.py'")
    assert killed.returncode == 0, killed.stderr
    wait_for(fleet, host, f"test -f {first['exit_file']}", "the exit status of the crashed launcher", 60)
    assert read(fleet, host, first["exit_file"]).strip() not in ("", "0")
    checkpoint = max(
        int(name.split("-")[1])
        for name in fleet.sh(host, f"ls {SINGLE_OUTPUT}").stdout.split()
        if name.startswith("checkpoint-")
    )
    assert 10 <= checkpoint < STEPS
    assert training_processes(fleet, host) == []

    resumed = run_play(fleet, "validate", "train", single=True, name="single-resume")
    resumed.assert_ok(host)
    assert resumed.recap[host]["changed"] > 0
    second = job(fleet, host)
    assert second["state"] == "running" and second["action"] == "resume" and second["launches"] == base + 1
    assert second["resumed_from"] == checkpoint and second["previous_log"] == first["log"]
    resume_line = f"Continuing training from global step {checkpoint}"
    wait_for(fleet, host, f"grep -q '{resume_line}' {second['log']}", "the resume")

    # train_stop: a clean stop, nothing left running, the container stays
    stopped = run_play(fleet, "train_stop", single=True, name="single-stop")
    stopped.assert_ok(host)
    assert stopped.recap[host]["changed"] == 1, stopped.changed
    third = job(fleet, host)
    assert third["state"] == "stopped" and third["pid"] == second["pid"] and third["finished_at"]
    assert training_processes(fleet, host) == []
    assert fleet.sh(host, f"docker exec {CONTAINER} kill -0 {second['pid']}").returncode != 0
    assert "exited with status" in read(fleet, host, second["log"])
    inspect = fleet.sh(host, f"docker inspect -f '{{{{.State.Running}}}}' {CONTAINER}")
    assert inspect.stdout.strip() == "true"
    again_stop = run_play(fleet, "train_stop", single=True, name="single-stop-again")
    again_stop.assert_ok(host)
    assert again_stop.recap[host]["changed"] == 0

    # train.yml again, waiting: resumes from the newest checkpoint and finishes
    finished = run_play(fleet, "validate", "train", extravars=WAIT, single=True, name="single-end")
    finished.assert_ok(host)
    last = job(fleet, host)
    assert last["state"] == "finished" and last["exit_code"] == 0 and last["launches"] == base + 2
    assert last["action"] == "resume" and last["step"] == STEPS
    log = finished.run_dir / "logs" / host / "train.log"
    text = log.read_text(errors="replace")
    assert f"Continuing training from global step {last['resumed_from']}" in text
    resumed_points = trainlog.parse_log(log).summary
    assert resumed_points.steps == STEPS - last["resumed_from"]  # only the steps after the checkpoint ran
    assert fleet.sh(host, f"test -s {SINGLE_OUTPUT}/mm_projector.bin").returncode == 0
    # the loss over the job: the first launch's first loss, the last launch's last one
    first_log = read(fleet, host, first["log"])
    first_points = trainlog.parse_lines(first_log.splitlines(keepends=True)).summary
    assert resumed_points.last < 0.9 * first_points.first, (first_points, resumed_points)

    done = run_play(fleet, "validate", "train", single=True, name="single-done")
    done.assert_ok(host)
    assert done.recap[host]["changed"] == 0, done.changed
    assert job(fleet, host)["launches"] == base + 2
