"""jobstate: the job's state logic, and its launch/stop shell code run for real (locally, without Docker).

The container is stood in for by a runner that runs `docker exec [-u U] [-w W] NAME bash -c SCRIPT ARGS`
as `bash -c SCRIPT ARGS` in W on this machine, with container_work_dir == work_dir; so the setsid wrapper,
its exit file, the process group and the stop are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.llava.devserver.plugins.filter import llava_pretrain as filters

from llava_devserver import jobstate
from llava_devserver.render import render_job

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]

TQDM_LOG = (
    "***** Running training *****\n"
    "  Total optimization steps = 20\n"
    "\r  0%|          | 0/20 [00:00<?, ?it/s]"
    "\r  5%|▌         | 1/20 [00:01<00:19,  1.02s/it]"
    "{'loss': 4.4775, 'learning_rate': 0.001, 'epoch': 0.05}\n"
    "\r 10%|█         | 2/20 [00:02<00:18,  1.00it/s]{'loss': 4.31, 'learning_rate': 0.001, 'epoch': 0.1}\n"
    "\r 15%|█▌        | 3/20 [00:02<00:12,  2.00it/s]"
)


# --- pure functions -------------------------------------------------------------------------------------


def test_host_and_container_paths() -> None:
    assert jobstate.host_path("/data/w", "/home/ma-user/ws", "/home/ma-user/ws/a/b") == "/data/w/a/b"
    assert jobstate.host_path("/data/w/", "/home/ma-user/ws/", "/home/ma-user/ws") == "/data/w"
    assert jobstate.container_path("/data/w", "/home/ma-user/ws", "/data/w/.llava-devserver/x.log") == (
        "/home/ma-user/ws/.llava-devserver/x.log"
    )
    with pytest.raises(ValueError, match="not under container_work_dir"):
        jobstate.host_path("/data/w", "/home/ma-user/ws", "/home/ma-user/wsx/a")
    with pytest.raises(ValueError, match="not under work_dir"):
        jobstate.container_path("/data/w", "/c", "/etc/passwd")


def test_progress_from_a_tqdm_log() -> None:
    progress = jobstate.parse_progress(TQDM_LOG, global_batch=6)
    assert progress == {"loss": 4.31, "total_steps": 20, "step": 3, "samples_per_s": 12.0}
    # s/it: batch / seconds per step
    assert jobstate.parse_progress("| 1/20 [00:01<00:19,  2.00s/it]", 6)["samples_per_s"] == 3.0
    # the trainer's final metrics win over the bar's rate
    final = TQDM_LOG + "\n{'train_runtime': 9.0, 'train_samples_per_second': 17.5, 'epoch': 1.0}\n"
    assert jobstate.parse_progress(final, 6)["samples_per_s"] == 17.5


def test_progress_nan_and_megatron() -> None:
    assert jobstate.parse_progress("{'loss': nan, 'learning_rate': 0.1}")["loss"] is None
    line = " iteration  7/ 100 | consumed samples: 56 | lm loss: 1.303225E+00 | samples per second: 9.5"
    assert jobstate.parse_progress(line) == {
        "step": 7,
        "total_steps": 100,
        "loss": 1.303225,
        "samples_per_s": 9.5,
    }
    assert jobstate.parse_progress("nothing to see\n") == {}


def test_reconcile_running_job() -> None:
    job = {"state": "running", "pid": 7, "log": "/x.log"}
    alive = jobstate.reconcile(job, True, None, {"step": 3}, NOW)
    assert (
        alive["state"] == "running" and alive["step"] == 3 and alive["updated_at"] == "2026-11-30T12:00:00Z"
    )
    done = jobstate.reconcile(job, False, 0, {}, NOW)
    assert (
        done["state"] == "finished"
        and done["exit_code"] == 0
        and done["finished_at"] == "2026-11-30T12:00:00Z"
    )
    failed = jobstate.reconcile(job, False, 1, {}, NOW)
    assert failed["state"] == "failed" and "status 1" in failed["message"]
    vanished = jobstate.reconcile(job, False, None, {}, NOW)
    assert vanished["state"] == "failed" and vanished["exit_code"] is None
    assert "without an exit status" in vanished["message"]
    stopped = {"state": "stopped", "exit_code": 143}
    assert jobstate.reconcile(stopped, False, 143, {}, NOW)["state"] == "stopped"
    assert jobstate.reconcile({}, False, None, {}, NOW) == {}


@pytest.mark.parametrize(
    ("state", "projector", "checkpoints", "foreign", "restart", "action"),
    [
        ("running", True, [10], [], False, "running"),
        (None, False, [], [], False, "start"),
        (None, False, [], ["12 python llava/train/train_mem.py"], False, "refuse"),
        ("failed", False, [10], [], False, "resume"),
        ("stopped", False, [], [], False, "start"),
        ("finished", True, [20], [], False, "done"),
        (None, True, [20], [], False, "done"),
        ("finished", True, [20], [], True, "resume"),
        ("stopped", True, [20], [], False, "resume"),  # a later job in the same output_dir was stopped
    ],
)
def test_host_action(
    state: str | None, projector: bool, checkpoints: list[int], foreign: list[str], restart: bool, action: str
) -> None:
    assert jobstate.host_action(state, projector, checkpoints, foreign, restart) == action


def _plan(state: str | None, rank: int, projector: bool = False, checkpoints: Sequence[int] = ()) -> Any:
    return {"state": state, "node_rank": rank, "projector": projector, "checkpoints": list(checkpoints)}


HOSTS = ["a", "b", "c"]


def test_fleet_plan_all_or_nothing() -> None:
    running = {h: _plan("running", i) for i, h in enumerate(HOSTS)}
    assert {v["action"] for v in jobstate.fleet_plan(running, HOSTS).values()} == {"running"}

    some = {**running, "c": _plan("failed", 2, checkpoints=[10])}
    out = jobstate.fleet_plan(some, HOSTS)
    assert {v["action"] for v in out.values()} == {"refuse"}
    assert "runs on a, b but not on c" in out["a"]["message"] and "train_stop" in out["a"]["message"]

    # node 0 holds the projector, the others only checkpoints: the job is done
    done = {
        "a": _plan("finished", 0, True, [20]),
        "b": _plan("finished", 1, False, [20]),
        "c": _plan(None, 2),
    }
    assert {v["action"] for v in jobstate.fleet_plan(done, HOSTS).values()} == {"done"}
    restarted = jobstate.fleet_plan(done, HOSTS, restart=True)
    assert [restarted[h]["action"] for h in HOSTS] == ["resume", "resume", "start"]

    crashed = {h: _plan("failed", i, checkpoints=[10]) for i, h in enumerate(HOSTS)}
    assert {v["action"] for v in jobstate.fleet_plan(crashed, HOSTS).values()} == {"resume"}

    # a node missing from the run (--limit, or failed earlier): nobody starts
    partial = jobstate.fleet_plan({"a": _plan(None, 0), "b": _plan(None, 1)}, HOSTS)
    assert {v["action"] for v in partial.values()} == {"refuse"}
    assert "c not in this run" in partial["a"]["message"]
    # a job running on a only, b and c not in this run: refused too (it cannot be judged complete)
    assert jobstate.fleet_plan({"a": _plan("running", 0)}, HOSTS)["a"]["action"] == "refuse"
    # one server alone
    assert jobstate.fleet_plan({"a": _plan("running", 0)}, ["a"])["a"]["action"] == "running"
    with pytest.raises(ValueError, match="outside the job"):
        jobstate.fleet_plan({"z": _plan(None, 0)}, ["a"])


def test_fleet_plan_refuses_beside_a_stray_process() -> None:
    plans = {
        "a": {**_plan(None, 0), "foreign": ["12 torchrun llava/train/train_mem.py"]},
        "b": _plan(None, 1),
    }
    out = jobstate.fleet_plan(plans, ["a", "b"])
    assert out["a"]["action"] == "refuse" and "12 torchrun" in out["a"]["message"]
    assert out["b"] == {"action": "refuse", "message": "not started: a cannot start"}


def test_foreign_processes_and_outputs() -> None:
    lines = [
        "1\t/bin/bash",
        "40\tbash -c for d in /proc/[0-9]*; do ... llava/train/train_mem.py",  # the scanner itself
        "41\ttorchrun --nnodes 1 llava/train/train_mem.py --deepspeed ./scripts/zero2.json",
        "42\tpython3 -u llava/train/train_mem.py --local_rank=0",
    ]
    assert jobstate.foreign_processes(lines) == [
        "41 torchrun --nnodes 1 llava/train/train_mem.py --deepspeed ./scripts/zero2.json",
        "42 python3 -u llava/train/train_mem.py --local_rank=0",
    ]
    assert jobstate.foreign_processes(lines, own_pid=41)[0].startswith("42 ")
    assert jobstate.output_state(["checkpoint-20", "checkpoint-3", "checkpoint-x", "mm_projector.bin"]) == {
        "projector": True,
        "checkpoints": [3, 20],
    }
    assert jobstate.output_state(None) == {"projector": False, "checkpoints": []}


def test_damaged_state_file(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text("{not json")
    with pytest.raises(jobstate.JobError, match=f"{path}: not JSON"):
        jobstate.read_job(str(path))
    path.write_text("[1]")
    with pytest.raises(jobstate.JobError, match="expected a JSON object"):
        jobstate.read_job(str(path))
    assert jobstate.read_job(str(tmp_path / "absent.json")) == {}


# --- the real wrapper, launched and stopped on this machine ---------------------------------------------


def _local_runner(calls: list[list[str]], scope: str) -> Any:
    """`docker exec [-u U] [-w W] NAME bash -c ...` run here (user ignored: the test's own user); the process
    list is cut down to the processes whose command line names `scope` (the test's directory)."""

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        calls.append(argv)
        assert argv[:2] == ["docker", "exec"], argv
        rest, workdir = argv[2:], None
        while rest[0] in ("-u", "-w"):
            if rest[0] == "-w":
                workdir = rest[1]
            rest = rest[2:]
        result = subprocess.run(
            rest[1:], capture_output=True, text=True, cwd=workdir, check=False, timeout=60
        )
        if rest[3] == jobstate.PROCESSES:  # this machine's other processes (other fleets' jobs) are not ours
            mine = [line for line in result.stdout.splitlines() if scope in line]
            result.stdout = "".join(f"{line}\n" for line in mine)
        return result

    return run


SCRIPT = """#!/bin/bash
echo "  Total optimization steps = 5"
trap 'echo "got TERM"; exit 143' TERM
for i in 1 2 3 4 5; do
  printf '\\r%3d%%| | %d/5 [00:01<00:02,  2.00it/s]' $((i * 20)) "$i" >&2
  echo "{'loss': $((10 - i)).5, 'learning_rate': 0.001, 'epoch': 0.2}"
  sleep "${STEP_SECONDS:-0.05}"
done
exit "${EXIT_STATUS:-0}"
"""


@pytest.fixture
def workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[jobstate.Paths, jobstate.Container, Path, list[list[str]]]:
    tree = tmp_path / "ws" / "LLaVA"
    (tree / "scripts").mkdir(parents=True)
    (tree / "scripts" / "run.sh").write_text(SCRIPT)
    monkeypatch.setenv(jobstate.STATE_ROOT_ENV, str(tmp_path / "state"))
    paths = jobstate.Paths(
        str(tmp_path / "ws"), str(tmp_path / "ws"), str(tmp_path / "ws" / ".llava-devserver"), "c"
    )
    os.makedirs(paths.log_dir)
    calls: list[list[str]] = []
    return paths, jobstate.Container("c", runner=_local_runner(calls, str(tmp_path))), tree, calls


def _wait_until_ended(paths: jobstate.Paths, container: jobstate.Container, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = jobstate.probe(paths, container, datetime.now(UTC), global_batch=4)
        if out["job"]["state"] != "running":
            return out
        time.sleep(0.1)
    pytest.fail("the job did not end")


def test_start_runs_detached_records_and_finishes(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, container, tree, _ = workspace
    started = jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW, extra={"nnodes": 1})
    job = started["job"]
    assert started["started"] and job["state"] == "running" and job["nnodes"] == 1 and job["launches"] == 1
    assert job["log"].startswith(paths.log_dir) and job["log"].endswith(".log")
    # the wrapper leads its own process group (what down.yml and stop signal)
    stat = Path(f"/proc/{job['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[2]) == job["pid"], "the recorded pid is not the leader of its process group"
    on_disk = json.loads(Path(paths.state_file).read_text())
    assert on_disk["pid"] == job["pid"] and on_disk["state"] == "running"

    # a second start while it runs starts nothing
    again = jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW)
    assert again["started"] is False and again["job"]["pid"] == job["pid"]

    ended = _wait_until_ended(paths, container)
    assert ended["job"]["state"] == "finished" and ended["job"]["exit_code"] == 0
    assert ended["llava_progress"] == {
        "state": "finished",
        "step": 5,
        "total_steps": 5,
        "loss": 5.5,
        "samples_per_s": 8.0,
    }
    log = Path(job["log"]).read_text()
    assert "scripts/run.sh exited with status 0" in log
    assert json.loads(Path(paths.state_file).read_text())["state"] == "finished"


def test_failed_job_and_its_last_lines(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, container, tree, _ = workspace
    monkeypatch.setenv("EXIT_STATUS", "3")
    jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW)
    ended = _wait_until_ended(paths, container)
    assert ended["job"]["state"] == "failed" and ended["job"]["exit_code"] == 3
    assert "status 3" in ended["job"]["message"]
    assert ended["log_tail"][-1].endswith("scripts/run.sh exited with status 3")
    assert "{'loss': 5.5" in " ".join(ended["log_tail"])


def test_stop_signals_the_group_and_marks_stopped(workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, container, tree, _ = workspace
    monkeypatch.setenv("STEP_SECONDS", "5")
    job = jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW)["job"]
    time.sleep(0.5)
    assert jobstate.stop(paths, container, NOW, check=True)["stopped"] is True  # check mode: nothing sent
    assert jobstate.probe(paths, container, NOW)["job"]["state"] == "running"
    out = jobstate.stop(paths, container, NOW, grace=10)
    assert out["stopped"] and out["job"]["state"] == "stopped" and out["job"]["exit_code"] == 143
    assert not Path(f"/proc/{job['pid']}").exists() or not Path(f"/proc/{job['pid']}/cmdline").read_bytes()
    assert "got TERM" in Path(job["log"]).read_text()
    # stopping again does nothing; a later start is a new launch with a new log
    assert jobstate.stop(paths, container, NOW)["stopped"] is False
    later = datetime(2026, 11, 30, 12, 5, 0, tzinfo=UTC)
    monkeypatch.setenv("STEP_SECONDS", "0.01")
    second = jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, later, action="resume")["job"]
    assert second["launches"] == 2 and second["previous_log"] == job["log"] and second["log"] != job["log"]
    assert _wait_until_ended(paths, container)["job"]["state"] == "finished"


def test_a_vanished_launcher_is_failed(workspace: Any) -> None:
    paths, container, _, _ = workspace
    jobstate.write_job(paths, {"state": "running", "pid": 999999, "log": paths.log_dir + "/x.log"})
    out = jobstate.probe(paths, container, NOW)
    assert out["job"]["state"] == "failed" and out["job"]["exit_code"] is None


def test_check_mode_changes_nothing(workspace: Any) -> None:
    paths, container, tree, calls = workspace
    out = jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW, check=True)
    assert out["started"] and out["check"]
    assert not Path(paths.state_file).exists() and os.listdir(paths.log_dir) == []
    assert not any("setsid" in " ".join(c) for c in calls)


def test_command_line_prints_one_json_object(workspace: Any) -> None:
    paths, _, _, _ = workspace
    result = subprocess.run(
        [sys.executable, jobstate.__file__, "probe", "--work-dir", paths.work_dir, "--container-work-dir",
         paths.container_work_dir, "--state-dir", paths.state_dir, "--container", "c"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"job": {}, "llava_progress": {}}
    Path(paths.state_file).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.state_file).write_text("{broken")
    result = subprocess.run(
        [sys.executable, jobstate.__file__, "probe", "--work-dir", paths.work_dir, "--container-work-dir",
         paths.container_work_dir, "--state-dir", paths.state_dir, "--container", "c"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "not JSON" in json.loads(result.stdout)["error"]


# --- the filter plugin ----------------------------------------------------------------------------------


def test_render_filter_is_the_renderer() -> None:
    from test_render import llava_vars  # the llava dict of the renderer's own tests

    llava = llava_vars(node_rank=1, nnodes=2, launcher="deepspeed")
    rendered = filters.llava_pretrain_render(llava)
    assert rendered == render_job(llava) and set(rendered) == {
        "scripts/v1_5/pretrain_new.sh",
        "scripts/zero2.json",
    }
    llava_dir = llava["llava_dir"]
    assert filters.llava_pretrain_host_path(llava_dir, llava) == (
        "/data/llava-devserver" + llava_dir[len("/home/ma-user/ws") :]
    )


def test_fleet_plan_filter_reads_registered_results() -> None:
    def registered(rc: int, plan: Any) -> dict[str, Any]:
        return {"rc": rc, "stdout": json.dumps({"job": {}, "plan": plan})}

    hostvars = {
        "a": {"llava_pretrain_planned": registered(0, _plan(None, 0))},
        "b": {"llava_pretrain_planned": registered(0, _plan(None, 1))},
    }
    assert filters.llava_pretrain_fleet_plan(hostvars, ["a", "b"], ["a", "b"])["b"]["action"] == "start"
    hostvars["b"] = {"llava_pretrain_planned": registered(1, None)}  # b could not look: counts as missing
    assert filters.llava_pretrain_fleet_plan(hostvars, ["a", "b"], ["a", "b"])["a"]["action"] == "refuse"


def test_report_filter_and_loss_summary(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(TQDM_LOG)
    summary = filters.llava_pretrain_loss_summary(str(log))
    assert summary is not None and summary["first"] == 4.4775 and summary["last"] == 4.31
    assert filters.llava_pretrain_loss_summary(str(tmp_path / "absent.log")) is None
    job = {"state": "finished", "pid": 5, "log": "/x", "node_rank": 0, "exit_code": 0, "total_steps": 20}
    report = filters.llava_pretrain_report(job, "start", summary)
    assert report["state"] == "finished" and report["step"] == 2 and report["loss"] == 4.31
    assert report["loss_summary"]["steps"] == 2 and report["action"] == "start"


def test_start_refuses_beside_a_stray_training_process(workspace: Any, tmp_path: Path) -> None:
    paths, container, tree, _ = workspace
    stray = subprocess.Popen(
        ["bash", "-c", f'exec -a "python llava/train/train_mem.py {tmp_path}" sleep 30'],
        start_new_session=True,
    )
    try:
        time.sleep(0.3)
        with pytest.raises(jobstate.JobError, match=rf"{stray.pid} python llava/train/train_mem.py"):
            jobstate.start(paths, container, str(tree), "scripts/run.sh", 0, NOW)
        assert not Path(paths.state_file).exists()
    finally:
        stray.kill()
        stray.wait()
