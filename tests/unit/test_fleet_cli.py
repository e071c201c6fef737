"""`llava-devserver up|plan|status|logs|down`: exit codes, plan and status output, logs, and the live display
in a real terminal (tmux). Runs against a local-connection inventory: no Docker, no SSH."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from llava_devserver import jobstate
from llava_devserver.cli import main
from llava_devserver.commands.fleet import host_status, plan_lines, remote_log_command, ssh_argv
from llava_devserver.runner import HostStats, RunResult
from test_runner import PLAYBOOK, local_inventory, write_playbook

CLI = str(Path(sys.executable).parent / "llava-devserver")


def test_up_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    run_dir = tmp_path / "run"
    args = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(run_dir)]
    assert main([*args, "-e", f"out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    # Plain updates (pytest's stdout is no terminal), the summary, and where the log is.
    assert "node-a running [Record the run dir]" in out
    assert "node-b changed [Test play] ok=2 changed=1 failed=0" in out
    assert f"Log: {run_dir / 'ansible.log'}" in out
    assert (run_dir / "ansible.log").is_file()


def test_up_host_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    args = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "-e", f"out={tmp_path}", "-e", "break_b=true"]) == 1
    captured = capsys.readouterr()
    assert "node-b failed Fail on node-b: node-b: card 3 is broken; replace it" in captured.out
    assert "node-b: Fail on node-b: node-b: card 3 is broken; replace it" in captured.err


def test_up_invalid_inventory_exits_1_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = local_inventory(tmp_path)
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    settings |= {"launcher": "mpirun", "container_name": "not a name!"}
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings))
    playbook = write_playbook(tmp_path, PLAYBOOK)
    run_dir = tmp_path / "run"
    args = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(run_dir)]
    assert main([*args, "-e", f"out={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "fleet: launcher:" in err and "fleet: container_name:" in err
    assert "nothing was run" in err
    assert not run_dir.exists()
    assert not (tmp_path / "node-a.run_dir").exists()


def test_up_unreadable_inventory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "-i", str(tmp_path / "missing.ini")]) == 2
    assert "missing.ini: no such inventory file" in capsys.readouterr().err
    broken = tmp_path / "broken.yml"
    broken.write_text("devservers: [unclosed\n")
    assert main(["up", "-i", str(broken)]) == 2


def test_plan_lists_what_would_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    args = ["plan", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "-e", f"out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "  node-a: 1 change(s): Record the run dir" in out
    assert "  node-b: 1 change(s): Record the run dir" in out
    assert not (tmp_path / "node-a.run_dir").exists()  # check mode wrote nothing


def test_plan_lines() -> None:
    result = RunResult(rc=2, status="failed", run_dir=Path("r"), log_path=Path("r/ansible.log"))
    result.stats = {"a": HostStats(ok=3), "b": HostStats(failed=1), "c": HostStats(ok=2)}
    result.changed_tasks = {"a": ["Install Docker", "Write daemon.json", "Install Docker"]}
    result.failures = {"b": ["Check NPUs: NPU 3 Critical"]}
    assert plan_lines(result, ["a", "b", "c", "d"]) == [
        "a: 2 change(s): Install Docker; Write daemon.json",
        "b: would fail: Check NPUs: NPU 3 Critical",
        "c: no changes",
        "d: not run",
    ]


LOG_NAME = "train-20261130T110000Z.log"


def write_job(tmp_path: Path, container: str = "llava-pretrain", **job: object) -> Path:
    """A job record where the job helper keeps it (a root-only folder; here under tmp_path, through
    jobstate.STATE_ROOT_ENV, which the caller sets) and its log in the work_dir's state folder."""
    logs = tmp_path / "work" / ".llava-devserver" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    paths = jobstate.Paths(str(tmp_path / "work"), "/home/ma-user/ws", str(logs.parent), container)
    jobstate.write_job(paths, {"log": str(logs / LOG_NAME), **job})
    return Path(paths.state_file)


@pytest.fixture(autouse=True)
def _state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jobstate.STATE_ROOT_ENV, str(tmp_path / "state"))


def test_status_is_read_only_and_tolerates_no_npu_no_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = local_inventory(tmp_path, hosts=("node-a",))
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    unique = {"container_name": f"fleetcli-status-{uuid.uuid4().hex[:8]}"}  # surely absent from local Docker
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings | unique))
    job = write_job(tmp_path, container=unique["container_name"], state="running", pid=4242, node_rank=0)
    log = tmp_path / "work" / ".llava-devserver" / "logs" / LOG_NAME
    log.write_text(
        "{'loss': 8.25, 'learning_rate': 0.001, 'epoch': 0.0}\n{'loss': 7.5, 'learning_rate': 0.001}\n"
    )
    record = job.read_bytes()
    before = sorted(p.name for p in (tmp_path / "work").rglob("*"))
    args = ["status", "-i", str(inventory), "--json", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert row["host"] == "node-a"
    assert not row["npu_ok"]  # no npu-smi on this machine: said, not fatal
    assert row["container"] == "absent"
    assert row["job"] == "failed (container absent)"  # the state file says running, its container is gone
    assert row["loss"] == 7.5  # from the end of the log, as the state file has no loss
    assert row["loss_lines"] and row["loss_log"]  # its log prints the loss: the one to read
    assert sorted(p.name for p in (tmp_path / "work").rglob("*")) == before
    assert job.read_bytes() == record


def test_host_status_rows() -> None:
    status = {
        "npu": {"driver_version": "23.0.5", "cards": [{"health": "OK"}, {"health": "OK"}]},
        "npu_problems": [],
        "docker": "running 24.0.7",
        "container": "running",
        "job": {"state": "running", "step": 120, "loss": 1.25},
        "log_tail": "",
    }
    row = host_status("ds-1", status, None)
    assert (row.npu, row.npu_ok, row.driver, row.job, row.step, row.loss) == (
        "2/2 OK",
        True,
        "23.0.5",
        "running",
        120,
        1.25,
    )
    status |= {"npu_problems": ["NPU 1: health Critical"], "job": {"state": "failed", "exit_code": 1}}
    row = host_status("ds-1", status, None)
    assert (row.npu, row.npu_ok, row.job) == ("NPU 1: health Critical", False, "failed (exit 1)")
    row = host_status("ds-2", None, "Gather: unreachable: ssh: connect timed out")
    assert row.npu == "Gather: unreachable: ssh: connect timed out" and row.job == "-"


def test_logs_tails_the_loss_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    job = write_job(tmp_path, state="running")
    log = tmp_path / "work" / ".llava-devserver" / "logs" / LOG_NAME
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert main(["logs", "-i", str(inventory), "-n", "3"]) == 0
    captured = capfd.readouterr()
    assert captured.out == "line 7\nline 8\nline 9\n"
    # no loss lines anywhere yet: auto takes the last node, as the guide says
    assert "logs: node-b (node 1; loss_log_node=auto)" in captured.err
    assert main(["logs", "-i", str(inventory), "--host", "node-x"]) == 2
    # a link the container put in place of the log is not followed
    log.unlink()
    log.symlink_to(tmp_path / "devserver.ini")
    assert main(["logs", "-i", str(inventory), "--host", "node-a"]) == 1
    captured = capfd.readouterr()
    assert "was tampered with" in captured.err and "devservers" not in captured.out
    job.unlink()
    assert main(["logs", "-i", str(inventory)]) == 1
    assert "no job on this server" in capfd.readouterr().err


def test_logs_auto_finds_the_node_with_loss_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Two servers with their own work_dir: node 0 prints the loss (HF), node 1 does not."""
    inventory = local_inventory(tmp_path)
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    node_b = {"work_dir": str(tmp_path / "work-b"), "container_name": "llava-b"}
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "node-b.yml").write_text(json.dumps(node_b))
    assert settings["work_dir"] == str(tmp_path / "work")
    write_job(tmp_path, state="running")
    (tmp_path / "work" / ".llava-devserver" / "logs" / LOG_NAME).write_text("{'loss': 3.25, 'epoch': 0.1}\n")
    # node-b: its own work_dir, container and record; a log without loss lines
    paths_b = jobstate.Paths(
        node_b["work_dir"], "/home/ma-user/ws", node_b["work_dir"] + "/.llava-devserver", "llava-b"
    )
    os.makedirs(paths_b.log_dir)
    jobstate.write_job(paths_b, {"state": "running", "log": os.path.join(paths_b.log_dir, LOG_NAME)})
    Path(paths_b.log_dir, LOG_NAME).write_text("rank 1 says nothing\n")
    assert main(["logs", "-i", str(inventory), "-n", "5"]) == 0
    captured = capfd.readouterr()
    assert "logs: node-a (node 0; loss_log_node=auto)" in captured.err
    assert captured.out == "{'loss': 3.25, 'epoch': 0.1}\n"
    assert main(["logs", "-i", str(inventory), "-n", "5", "-e", "loss_log_node=last"]) == 0
    captured = capfd.readouterr()
    assert "logs: node-b (node 1; loss_log_node=last)" in captured.err
    assert captured.out == "rank 1 says nothing\n"


def test_ssh_argv_uses_the_inventory_connection() -> None:
    variables = {
        "ansible_host": "10.0.0.5",
        "ansible_user": "root",
        "ansible_port": 2222,
        "ansible_ssh_private_key_file": "/keys/id",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no",
    }
    argv = ssh_argv(variables, "ds-1", "tail x")  # Ansible's ssh plugin builds it: test_ansible_connect.py
    assert argv[0] == "ssh" and argv[-2:] == ["10.0.0.5", "tail x"]
    assert {"Port=2222", 'User="root"', 'IdentityFile="/keys/id"', "StrictHostKeyChecking=no"} <= set(argv)
    settings = {
        "work_dir": "/data/w",
        "container_work_dir": "/home/ma-user/ws",
        "state_dir": "/data/w/.llava-devserver",
        "container_name": "c",
        "host_state_dir": "/var/lib/llava-devserver/c",
    }
    assert remote_log_command(settings, 5, follow=True) == (
        "python3 - log --work-dir /data/w --container-work-dir /home/ma-user/ws"
        " --state-dir /data/w/.llava-devserver --container c --host-state-dir /var/lib/llava-devserver/c"
        " -n 5 --follow"
    )


TMUX_PLAYBOOK = """\
    - name: Slow play
      hosts: devservers
      gather_facts: false
      tasks:
        - name: Take a moment
          ansible.builtin.command: sleep 4
          changed_when: false
        - name: Report progress
          ansible.builtin.set_fact:
            llava_progress: {step: 5, loss: 2.125, state: running}
        - name: Fail on node-b
          ansible.builtin.fail:
            msg: "node-b: broken on purpose"
          when: inventory_hostname == 'node-b'
"""


def _capture(tmux: list[str]) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", "-t", "cli"], capture_output=True, text=True).stdout


def _wait_for(tmux: list[str], predicate: Callable[[str], bool], timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _capture(tmux)
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{what} did not appear on the screen:\n{screen}")


def _both_running(screen: str) -> bool:
    lines = screen.splitlines()
    return all(
        any(line.startswith(host) and "running" in line and "Take a moment" in line for line in lines)
        for host in ("node-a", "node-b")
    )


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)")
def test_live_display_in_a_real_terminal(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, TMUX_PLAYBOOK)
    command = (
        # Sizes from the terminal, as for a user (the test process may carry COLUMNS from its own).
        f"env -u COLUMNS -u LINES {CLI} up -i {inventory} --playbook {playbook} "
        f"--run-dir {tmp_path / 'run'}; "
        "echo EXIT-CODE-$?; sleep 60"
    )
    tmux = ["tmux", "-L", f"llava-fleet-test-{uuid.uuid4().hex[:8]}"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "cli", "-x", "140", "-y", "40", command], check=True)
    try:
        # While the 4-second task runs: a line per host with its task, and the overall line.
        live = _wait_for(tmux, _both_running, timeout=60, what="both hosts running 'Take a moment'")
        assert any(line.startswith("play 1: Slow play | ") for line in live.splitlines())
        final = _wait_for(tmux, lambda screen: "EXIT-CODE-" in screen, timeout=60, what="the exit code")
        (tmp_path / "screen.txt").write_text(final)
        assert "EXIT-CODE-1" in final  # node-b failed
        assert "Fleet summary" in final
        rows = [line for line in final.splitlines() if "node-a" in line or "node-b" in line]
        assert any(
            "node-a" in row and "ok" in row and "step 5" in row and "loss 2.1250" in row for row in rows
        )
        assert any("node-b" in row and "failed" in row and "broken on purpose" in row for row in rows)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.fleet
def test_down_stops_the_job_and_removes_the_container_keeping_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real container with a process group standing in for the job; `down` through the local Docker."""
    import docker

    from llava_devserver.sim.image import ensure_server_image

    client = docker.from_env()
    name = f"fleetcli-down-{uuid.uuid4().hex[:8]}"
    inventory = local_inventory(tmp_path, hosts=("node-a",))
    settings = json.loads((tmp_path / "group_vars" / "all.yml").read_text())
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings | {"container_name": name}))
    container = client.containers.run(
        ensure_server_image(client), ["sleep", "infinity"], name=name, detach=True, entrypoint=[]
    )
    try:
        # What the job helper's wrapper looks like: its command line names itself and its log.
        log = f"/home/ma-user/ws/.llava-devserver/logs/{LOG_NAME}"
        wrapper = ["setsid", "bash", "-c", "sleep 1000 & sleep 1001; wait", jobstate.WRAPPER_NAME, log]
        container.exec_run(wrapper, detach=True)
        time.sleep(1)
        pid = int(container.exec_run(["pgrep", "-f", "^bash -c sleep 1000"]).output.split()[0])
        job = write_job(tmp_path, container=name, state="running", pid=pid, node_rank=0)
        (tmp_path / "work" / "data.bin").write_bytes(b"keep me")
        assert main(["down", "-i", str(inventory), "--run-dir", str(tmp_path / "run")]) == 0
        out = capsys.readouterr().out
        assert "node-a changed" in out
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(name)
        assert json.loads(job.read_text())["state"] == "stopped"
        assert (tmp_path / "work" / "data.bin").read_bytes() == b"keep me"
        # Again: nothing left to do, still fine.
        assert main(["down", "-i", str(inventory), "--run-dir", str(tmp_path / "run2")]) == 0
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)


def _read_line(fd: int, seconds: float) -> str:
    """One line from a pipe, or what came before the deadline (a follower that streams nothing fails the
    test instead of hanging it)."""
    data = b""
    deadline = time.monotonic() + seconds
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return data.decode()


def test_logs_follow_streams_new_lines(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    write_job(tmp_path, state="running")
    log = tmp_path / "work" / ".llava-devserver" / "logs" / LOG_NAME
    log.write_text("step 1\n")
    follower = subprocess.Popen(
        [CLI, "logs", "-i", str(inventory), "-n", "1", "--follow"], stdout=subprocess.PIPE, bufsize=0
    )
    try:
        assert follower.stdout is not None
        out = follower.stdout.fileno()
        assert _read_line(out, 120) == "step 1\n"
        # at once, as a trainer does: the follower may still be between its tail and its first poll
        with log.open("a") as handle:
            handle.write("{'loss': 1.5, 'epoch': 0.1}\n")
        assert _read_line(out, 30) == "{'loss': 1.5, 'epoch': 0.1}\n"
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_up_limit_shows_only_the_limited_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    args = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "-e", f"out={tmp_path}", "--limit", "node-b", "-e", "break_b=false"]) == 0
    out = capsys.readouterr().out
    assert "node-b changed" in out and "node-a" not in out
    assert not (tmp_path / "node-a.run_dir").exists()


def test_up_playbook_error_before_any_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, "- name: Broken\n  ansible.builtin.import_playbook: missing.yml\n")
    args = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(tmp_path / "run")]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "ansible-playbook failed before reaching any host:" in captured.err
    assert "missing.yml" in captured.err
    assert "node-a not run" in captured.out
