"""The role accel_check on the shared 3-server simulated fleet (conftest's job_fleet: one card each, the
training container running), through real Ansible over SSH, reading what the fleet report shows
(`report.json`, written by the llava_report callback):

1. all 3 servers: the check passes on each, with figures (3 processes, gloo all_reduce across servers);
2. one server: `--limit devserver-1` (the check spans the servers in the run) and a 1-server inventory of
   the same server (llava.nnodes = 1);
3. faults in one run: rank 1 (devserver-2) fails its device measurement, devserver-3 expects 2 devices:
   each of those fails with its cause named, devserver-1 passes;
4. rank 1 stalls before the all_reduce: every server fails within the bound, naming the timeout and rank 1
   (the rerun by pairs off: accel_check_pair_rounds 0);
5. `accel-slow` on devserver-2 (its fleet link sends slowly, turned on for this run and cleared after) and an
   all_reduce threshold: the fleet-wide all_reduce is below it on every server, the rerun by pairs names
   devserver-2, which fails, while devserver-1 and devserver-3 pass; the report shows the bus bandwidth
   against its threshold.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

import harness
from llava_devserver.sim.faults import apply_fault, clear_fault, parse_fault

pytestmark = pytest.mark.fleet

CONTAINER = "llava-pretrain"
HOSTS = ("devserver-1", "devserver-2", "devserver-3")


@dataclass
class Run:
    """A run of the check, read through its fleet report."""

    play: harness.PlayResult

    @property
    def rc(self) -> int:
        return self.play.rc

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return self.play.recap

    @property
    def seconds(self) -> float:
        return self.play.seconds

    def host(self, name: str) -> dict[str, Any]:
        return self.play.host_report(name)

    def accel(self, name: str) -> dict[str, Any]:
        fact: dict[str, Any] = self.host(name)["facts"]["accel"]
        return fact

    def failure(self, name: str) -> str:
        failed = self.host(name)["failed_task"]
        assert failed, f"{name} did not fail:\n{self.play.tail()}"
        return str(failed["message"])


@pytest.fixture(scope="module")
def fleet(job_fleet: harness.Fleet) -> harness.Fleet:
    return job_fleet


def run_play(fleet: harness.Fleet, *args: Any, **options: Any) -> Run:
    return Run(fleet.run_play("validate", "accel", *args, **options))


def assert_passed(run: Run, host: str, nnodes: int, world_size: int) -> dict[str, Any]:
    """The host passed, and its fact carries the measured figures of the whole check."""
    assert run.recap[host]["failed"] == 0, run.play.tail()
    accel = run.accel(host)
    assert accel["schema"] == 1 and accel["host"] == host
    assert accel["verdict"] == "PASS" and accel["job_verdict"] == "PASS", accel["problems"]
    assert accel["problems"] == [] and accel["exit_code"] == 0
    assert accel["accelerator"] == "cpu"
    assert accel["expected_devices"] == 1 and accel["device_count"] == 1
    # one measured device per process of this server, each with a positive bf16 matmul figure
    assert [d["index"] for d in accel["devices"]] == [0]
    assert all(d["tflops"] > 0 and d["error"] is None and not d["outlier"] for d in accel["devices"])
    assert accel["tflops_median"] > 0
    allreduce = accel["allreduce"]
    if world_size > 1:  # one process alone measures no collective
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
    assert cell.startswith("PASS (cpu x1, matmul "), cell
    assert (f"over {world_size} procs" in cell) if world_size > 1 else ("all_reduce" not in cell), cell
    return accel


def test_passes_on_three_servers_with_figures(fleet: harness.Fleet) -> None:
    run = run_play(fleet, name="three")
    run.play.assert_ok()
    for host in HOSTS:
        accel = assert_passed(run, host, nnodes=3, world_size=3)
        assert accel["node_rank"] == HOSTS.index(host)
        # the copy of accel_check.py into the container and the root-only folder of the last results (the
        # check itself: ok)
        assert run.play.changed[host] == [
            "accel_check : Copy accel_check.py into the training container",
            "accel_check : Create the root-only directory of the last result",
        ], run.play.changed[host]
    first = run.accel("devserver-1")
    assert first["run"]["master_addr"] != "127.0.0.1"  # the servers met at the first one's address
    # every server measured the same collective
    assert len({run.accel(h)["allreduce"]["busbw_gbps"] for h in HOSTS}) == 1
    # the copy in the container belongs to the container's user; the document it wrote is this run's
    owner = fleet.sh("devserver-2", f"docker exec {CONTAINER} stat -c %U:%a /tmp/llava_accel_check.py")
    assert owner.stdout.strip() == "ma-user:644", owner.stderr
    written = fleet.sh("devserver-2", f"docker exec {CONTAINER} cat /tmp/llava_accel_check.json")
    document = json.loads(written.stdout)
    assert document["host"] == "devserver-2" and document["verdict"] == "PASS"
    assert document["allreduce"] == run.accel("devserver-2")["allreduce"]
    md = (run.play.run_dir / "report.md").read_text()
    assert "PASS (cpu x1, matmul" in md


def test_one_server(fleet: harness.Fleet) -> None:
    # --limit: the check spans the servers of the run (one), talking to itself over loopback
    limited = run_play(fleet, limit="devserver-1", name="limit")
    limited.play.assert_ok()
    assert set(limited.recap) == {"devserver-1"}
    assert limited.recap["devserver-1"]["changed"] == 0  # the script is there already: nothing is sent again
    accel = assert_passed(limited, "devserver-1", nnodes=1, world_size=1)
    assert accel["run"]["job_nnodes"] == 3 and accel["run"]["master_addr"] == "127.0.0.1"

    # a fleet of one server: an inventory of devserver-1 alone (the global batch follows the world size)
    per_device = fleet.group_vars()["per_device_train_batch_size"]
    single = fleet.subset(["devserver-1"], "accel-single", global_batch_size=per_device)
    alone = run_play(fleet, inventory=single, name="single")
    alone.play.assert_ok()
    accel = assert_passed(alone, "devserver-1", nnodes=1, world_size=1)
    assert accel["run"]["job_nnodes"] == 1


def test_failed_process_and_wrong_count_fail_their_hosts(fleet: harness.Fleet) -> None:
    fleet.set_host_vars("devserver-3", {"accel_check_expect_devices": 2})
    try:
        # global rank 1 is devserver-2's process
        run = run_play(fleet, extravars={"accel_check_fault": "fail:1"}, name="faults")
    finally:
        fleet.set_host_vars("devserver-3", None)
    assert run.rc != 0
    one = run.accel("devserver-1")
    assert run.recap["devserver-1"]["failed"] == 0 and one["verdict"] == "PASS"
    assert one["job_verdict"] == "FAIL"  # it knows the others failed, but its own stack is fine

    two = run.failure("devserver-2")
    assert two.startswith("devserver-2: accelerator check FAILED (device error) over 3 server(s)"), two
    assert "device 0 (rank 1): RuntimeError: injected fault" in two
    assert re.search(r"bf16 matmul TFLOP/s by device 0: error", two), two
    assert re.search(r"all_reduce \(gloo, 3 processes, 4(\.0)? MiB\) busbw [\d.]+ GB/s", two), two
    assert run.accel("devserver-2")["verdict"] == "FAIL"
    assert run.host("devserver-2")["remedy"]["key"] == "accel_check"

    three = run.failure("devserver-3")
    assert three.startswith("devserver-3: accelerator check FAILED (wrong device count)"), three
    assert "found 1 processes (cpu), expected 2" in three
    assert "1 device(s) (expected 2)" in three
    assert run.accel("devserver-3")["expected_devices"] == 2


def test_stalled_process_fails_within_the_bound(fleet: harness.Fleet) -> None:
    timeout = 45  # the check's bound; its collectives time out at 0.6 x 45 = 27 s
    faults = {"accel_check_fault": "stall:1", "accel_check_timeout": timeout, "accel_check_pair_rounds": 0}
    run = run_play(fleet, extravars=faults, name="stall")
    assert run.rc != 0
    for host in HOSTS:
        message = run.failure(host)
        assert message.startswith(f"{host}: accelerator check FAILED (collective timed out)"), message
        if host == "devserver-2":  # its one process is the stalled rank: its own watchdog names it
            assert f"timed out after {timeout} s in phase 'injected stall' (rank 1 on devserver-2)" in message
        else:
            # the collective's own timeout, or (when the loaded machine started the check late) its watchdog
            assert re.search(
                r"all_reduce \(gloo, 3 processes\) did not complete within 27 s|"
                rf"timed out after {timeout} s in phase 'all_reduce'",
                message,
            ), message
            assert "rank(s) 1 never reached it" in message
        assert "The rerun by pairs of servers is off (accel_check_pair_rounds: 0)." in message
        accel = run.accel(host)
        assert accel["allreduce"]["busbw_gbps"] is None and accel["allreduce"]["ok"] is False
        assert accel["exit_code"] == 3
        # within the launch's bound (rendezvous + check + slack), far below Ansible's async bound
        assert accel["run"]["seconds"] < 90 + timeout + 30, accel["run"]
    assert run.seconds < 90 + timeout + 60, run.seconds


# The simulated fleet's all_reduce runs at 0.1-0.35 GB/s between healthy servers (2 shared cores) and at
# about 0.005 GB/s with a server whose link is slowed by accel-slow: a threshold between them, far from both.
MIN_BUSBW = 0.02


def test_slow_server_is_named_by_the_rerun_by_pairs(fleet: harness.Fleet) -> None:
    slow = parse_fault("accel-slow")
    apply_fault(fleet.container("devserver-2"), slow)
    try:
        run = run_play(fleet, extravars={"accel_check_min_busbw_gbs": MIN_BUSBW}, name="slow")
    finally:
        clear_fault(fleet.container("devserver-2"), slow)
    assert run.rc != 0
    # one figure for every rank of the fleet-wide all_reduce, below the threshold: it cannot say who
    figures = {run.accel(host)["allreduce"]["busbw_gbps"] for host in HOSTS}
    assert len(figures) == 1 and figures.pop() < MIN_BUSBW, figures
    verdicts = {"devserver-1": "healthy", "devserver-2": "slow", "devserver-3": "healthy"}
    for host in ("devserver-1", "devserver-3"):
        assert run.recap[host]["failed"] == 0, run.play.tail()
        accel = run.accel(host)
        assert accel["verdict"] == "PASS" and accel["problems"] == [], accel["problems"]
        assert accel["job_verdict"] == "FAIL"  # the fleet-wide run failed; this server is not the cause
        assert accel["pairs"]["servers"] == verdicts and accel["pairs"]["slow"] == ["devserver-2"]
        cell = run.host(host)["accel"]  # the report's cell: the bus bandwidth against its threshold
        assert cell.startswith("PASS (cpu x1, matmul "), cell
        assert re.search(rf"all_reduce busbw [\d.e-]+ GB/s \(min {MIN_BUSBW:g}\) over 3 procs", cell), cell
        assert cell.endswith("; rerun by pairs: devserver-2 slow)"), cell

    assert run.recap["devserver-2"]["failed"] == 1
    message = run.failure("devserver-2")
    assert message.startswith(
        "devserver-2: accelerator check FAILED (slow server) over 3 server(s): devserver-2 is slow in every "
        "pair it is in: devserver-1+devserver-2 "
    ), message
    assert "pairs without it pass: devserver-1+devserver-3 " in message
    assert (
        f"is below the minimum {MIN_BUSBW:g} GB/s; the rerun by pairs of servers names devserver-2" in message
    )
    accel = run.accel("devserver-2")
    assert accel["verdict"] == "FAIL" and accel["pairs"]["servers"] == verdicts
    # round 1: the first two servers (slow); round 2: devserver-2's partner with the one left (healthy), which
    # clears both and leaves devserver-2 slow in every pair it is in; no third round is needed
    rounds = [(r["round"], r["nodes"], r["passed"]) for r in accel["pairs"]["results"]]
    assert rounds == [(1, ["devserver-1", "devserver-2"], False), (2, ["devserver-1", "devserver-3"], True)]
    slow_pair, fast_pair = accel["pairs"]["results"]
    assert slow_pair["busbw_gbps"] < MIN_BUSBW <= fast_pair["busbw_gbps"], accel["pairs"]["results"]
    md = (run.play.run_dir / "report.md").read_text()
    assert f"(min {MIN_BUSBW:g}) over 3 procs" in md
    # the fault is cleared: the link is fast again for the modules after this one
    qdisc = fleet.sh("devserver-2", "tc qdisc show dev eth0", check=True).stdout
    assert "tbf" not in qdisc, qdisc
