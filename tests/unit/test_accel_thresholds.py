"""The readiness check's pass/fail thresholds (accel_check --min-tflops/--min-busbw, the role's
accel_check_min_tflops/accel_check_min_busbw_gbs), the all_reduce status that starts the rerun by pairs, and
the simulated fleet's `accel-slow` fault that exercises them."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llava_devserver import accel_launch
from llava_devserver.cli import main as cli_main
from llava_devserver.payloads import accel_check
from llava_devserver.sim import faults, link
from llava_devserver.sim.inventory import SIM_ACCEL_CHECK

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(accel_check.__file__).resolve()
BIN = Path(sys.executable).parent


def _device(index: int, host: str, tflops: float | None) -> dict[str, Any]:
    return {"index": index, "rank": index, "host": host, "node_rank": 0, "tflops": tflops}


def test_devices_below_the_minimum_are_flagged() -> None:
    devices = [_device(0, "a", 290.0), _device(1, "a", 95.5), _device(2, "a", None)]
    flagged = accel_check.below_min_tflops(devices, 128.0)
    assert [(d["index"], problem) for d, problem in flagged] == [
        (1, "a device 1 (rank 1): bf16 matmul 95.5 TFLOP/s is below the minimum 128 TFLOP/s")
    ]
    assert devices[1]["below_min"] is True and "below_min" not in devices[0]
    assert (
        accel_check.below_min_tflops(devices, 0) == [] and accel_check.below_min_tflops(devices, None) == []
    )


def test_busbw_problem_against_the_minimum() -> None:
    allreduce = {"backend": "hccl", "world_size": 16, "busbw_gbps": 7.25}
    assert accel_check.busbw_problem(allreduce, 10.0) == (
        "the all_reduce bus bandwidth 7.25 GB/s (hccl, 16 processes) is below the minimum 10 GB/s"
    )
    assert accel_check.busbw_problem(allreduce, 7.25) is None  # at the minimum passes
    assert accel_check.busbw_problem(allreduce, 0) is None
    assert (
        accel_check.busbw_problem({**allreduce, "busbw_gbps": None}, 10.0) is None
    )  # failed: its own problem
    assert accel_check.busbw_problem(None, 10.0) is None


def _rank(rank: int, host: str, tflops: float) -> dict[str, Any]:
    return {
        "rank": rank, "local_rank": 0, "node_rank": rank, "host": host, "accelerator": "npu",
        "versions": {"torch": "2.1.0"},
        "launch": {"rank": rank, "world_size": 2, "local_rank": 0, "local_world_size": 1, "node_rank": rank,
                   "nnodes": 2, "launcher": "torchrun"},
        "device_count": 1, "devices": [{**_device(0, host, tflops), "rank": rank, "node_rank": rank}],
        "problems": [], "warnings": [],
    }  # fmt: skip


PLAN = {
    "nnodes": 2, "job_nnodes": 2, "node_rank": 1, "nodes": ["a", "b"], "master_addr": "10.0.0.1",
    "master_port": 29501, "nproc_per_node": 1, "wrapper_timeout_s": 450,
}  # fmt: skip


def _result(doc: dict[str, Any]) -> dict[str, Any]:
    doc["exit_code"] = 0 if doc["verdict"] == "PASS" else 1
    return accel_launch.check_result("b", json.dumps(doc) + "\n", "", doc["exit_code"], PLAN, 10.0)


def test_a_device_below_the_minimum_fails_only_its_server() -> None:
    ranks = [_rank(0, "a", 290.0), _rank(1, "b", 100.0)]
    allreduce = {"backend": "hccl", "world_size": 2, "busbw_gbps": 20.0, "ok": True, "min_busbw_gbps": 10.0}
    doc_b = accel_check.build_host_document(ranks, (1, "b"), allreduce, [], 1, 0.2, min_tflops=128.0)
    assert doc_b["verdict"] == "FAIL" and doc_b["min_tflops"] == 128.0 and doc_b["job_problems"] == []
    doc_a = accel_check.build_host_document(ranks, (0, "a"), allreduce, [], 1, 0.2, min_tflops=128.0)
    assert doc_a["verdict"] == "PASS" and doc_a["job_verdict"] == "FAIL"
    outcome = _result(doc_b)
    assert outcome["cause"] == "slow device" and outcome["collective"] == "ok"
    assert (
        "b device 0 (rank 1): bf16 matmul 100 TFLOP/s is below the minimum 128 TFLOP/s" in outcome["message"]
    )
    assert "by device 0: 100 (below the minimum); median 100.0 (minimum 128)" in outcome["message"]
    assert "What to do: this card computes below accel_check_min_tflops" in outcome["message"]


def test_a_slow_all_reduce_fails_the_job_and_shows_its_minimum() -> None:
    ranks = [_rank(0, "a", 290.0), _rank(1, "b", 290.0)]
    allreduce = {"backend": "hccl", "world_size": 2, "busbw_gbps": 4.0, "ok": True, "min_busbw_gbps": 10.0}
    job = [accel_check.busbw_problem(allreduce, 10.0)]
    doc = accel_check.build_host_document(ranks, (1, "b"), allreduce, job, 1, 0.5)
    assert doc["verdict"] == "FAIL" and doc["job_problems"] == job
    assert doc["summary"].startswith(
        "accel-check FAIL b: npu x1, matmul 290 TFLOP/s median, all_reduce busbw 4 GB/s (min 10) over 2 procs"
    )
    outcome = _result(doc)
    assert outcome["cause"] == "slow collective" and outcome["collective"] == "slow"
    assert "all_reduce (hccl, 2 processes, None MiB) busbw 4.0 GB/s (minimum 10 GB/s)" in outcome["message"]


@pytest.mark.parametrize(
    ("allreduce", "nnodes", "status"),
    [
        ({"busbw_gbps": 20.0, "ok": True, "min_busbw_gbps": 10.0}, 2, "ok"),
        ({"busbw_gbps": 20.0, "ok": True, "min_busbw_gbps": None}, 2, "ok"),
        ({"busbw_gbps": 9.9, "ok": True, "min_busbw_gbps": 10.0}, 2, "slow"),
        ({"busbw_gbps": None, "ok": False, "min_busbw_gbps": 10.0}, 2, "failed"),
        ({"busbw_gbps": 20.0, "ok": False}, 2, "failed"),  # wrong values
        (None, 1, "none"),
    ],
)
def test_collective_status(allreduce: dict[str, Any] | None, nnodes: int, status: str) -> None:
    assert accel_launch.collective_status({"allreduce": allreduce}, nnodes) == status


def test_collective_status_without_a_document() -> None:
    assert accel_launch.collective_status(None, 3) == "failed"
    assert accel_launch.collective_status(None, 1) == "none"
    rendezvous = accel_launch.check_result("b", "", "DistStoreError: 1/2 clients joined", 1, PLAN, 95)
    assert rendezvous["collective"] == "failed" and rendezvous["report"]["job_problems"]


def _plan(**options: Any) -> list[str]:
    llava = {
        "host": "a", "nproc_per_node": 1, "nnodes": 1, "node_rank": 0, "master_addr": "10.0.0.1",
        "master_port": 29500, "ansible_host": "10.0.0.1", "container_name": "c", "npu_devices": [0],
        "train_env": {}, "cann_set_env": "/x",
    }  # fmt: skip
    plan = accel_launch.check_plan(
        llava, [], script="/s.py", json_out="/s.json", expect_accelerator="npu", **options
    )
    line = next(line for line in plan["argv"][-1].splitlines() if line.startswith("timeout "))
    return shlex.split(line.rstrip(" &"))


def test_the_plan_passes_the_thresholds() -> None:
    argv = _plan(min_tflops=128.0, min_busbw_gbs=10.0)
    assert argv[argv.index("--min-tflops") + 1] == "128" and argv[argv.index("--min-busbw") + 1] == "10"
    assert "--min-tflops" not in _plan() and "--min-busbw" not in _plan()
    with pytest.raises(accel_launch.AccelPlanError, match="accel_check_min_busbw_gbs must be positive"):
        _plan(min_busbw_gbs=-1.0)


def test_option_validation() -> None:
    with pytest.raises(SystemExit):
        accel_check.parse_args(["--min-busbw", "-1"])
    opts = accel_check.parse_args(["--min-tflops", "128", "--min-busbw", "10"])
    assert (opts.min_tflops, opts.min_busbw) == (128.0, 10.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_torchrun_below_both_thresholds_fails_naming_them() -> None:
    """The real check on two CPU processes: figures no CPU reaches fail the device and the all_reduce."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACCEL_CHECK_FAULT", "WORLD_SIZE", "RANK")}
    cmd = [
        str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(SCRIPT),
        "--allreduce-mb", "1", "--allreduce-iters", "2", "--matmul-size", "128", "--matmul-seconds", "0.05",
        "--outlier-ratio", "0.01", "--expect-devices", "2", "--timeout", "60",
        "--min-tflops", "1000", "--min-busbw", "1000",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=90, cwd="/tmp")
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "FAIL" and doc["min_tflops"] == 1000.0, proc.stderr
    assert doc["allreduce"]["min_busbw_gbps"] == 1000.0 and doc["allreduce"]["ok"] is True
    assert any("is below the minimum 1000 GB/s" in p for p in doc["job_problems"]), doc["problems"]
    assert sum("TFLOP/s is below the minimum 1000 TFLOP/s" in p for p in doc["problems"]) == 2
    assert all(d["below_min"] for d in doc["devices"])
    assert "(min 1000) over 2 procs" in doc["summary"]


# ---- the role's knobs and the simulated fleet -------------------------------------------------------------


def test_snt9b_defaults_and_none_on_the_simulated_fleet() -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "accel_check" / "defaults" / "main.yml").read_text())
    assert defaults["accel_check_min_tflops"] > 0 and defaults["accel_check_min_busbw_gbs"] > 0
    assert defaults["accel_check_pair_rounds"] == 3
    assert (
        SIM_ACCEL_CHECK["accel_check_min_tflops"] == 0 and SIM_ACCEL_CHECK["accel_check_min_busbw_gbs"] == 0
    )
    docs = (ROOT / "docs" / "accel_check.md").read_text()
    assert f"`accel_check_min_tflops` | {defaults['accel_check_min_tflops']:g}" in docs
    assert f"`accel_check_min_busbw_gbs` | {defaults['accel_check_min_busbw_gbs']:g}" in docs


def test_accel_slow_parses_without_a_value_and_is_clearable() -> None:
    assert faults.parse_fault("accel-slow") == faults.Fault("accel-slow")
    with pytest.raises(faults.FaultError, match="takes no value"):
        faults.parse_fault("accel-slow=3")
    assert faults.parse_host_fault("2:accel-slow", ["devserver-1", "devserver-2"]) == [
        ("devserver-2", faults.Fault("accel-slow"))
    ]
    assert "accel-slow" in faults.CLEARABLE and "accel-slow" not in faults.STATE_FAULTS


def test_accel_slow_shells_add_and_remove_only_our_qdisc() -> None:
    add = faults.slow_link_script()
    assert f'tc qdisc replace dev "$dev" root handle {faults.SLOW_LINK_HANDLE} tbf rate 40mbit' in add
    clear = faults.slow_link_script(clear=True)
    # then the link's own speed again (sim/link.py; nothing when the fleet has none)
    assert clear.endswith(f'then tc qdisc del dev "$dev" root; fi; {link.SCRIPT}')
    assert f"grep -q '^qdisc tbf {faults.SLOW_LINK_HANDLE} root'" in clear  # never another qdisc
    for script in (add, clear):
        assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0


class _Server:
    def __init__(self, host: str) -> None:
        self.labels = {"llava-devserver.sim.host": host}


def test_clear_fault_refuses_a_fault_it_cannot_take_back() -> None:
    with pytest.raises(faults.FaultError, match="cannot be cleared on a running server"):
        faults.clear_fault(_Server("devserver-1"), faults.Fault("card-critical"))  # type: ignore[arg-type]


def test_cli_clear(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import llava_devserver.commands.sim as sim_commands
    import llava_devserver.sim.fleet as sim_fleet

    servers = [_Server("devserver-1"), _Server("devserver-2")]
    cleared: list[tuple[str, str]] = []
    monkeypatch.setattr(sim_fleet, "fleet_containers", lambda name: servers)
    monkeypatch.setattr(
        sim_commands,
        "clear_fault",
        lambda c, f: cleared.append((c.labels["llava-devserver.sim.host"], str(f))),
    )
    assert cli_main(["sim", "fault", "--name", "t", "--clear", "2:accel-slow"]) == 0
    assert cleared == [("devserver-2", "accel-slow")]
    assert "sim: devserver-2: accel-slow cleared" in capsys.readouterr().out
    # a fault that cannot be taken back: a usage error, nothing touched
    assert cli_main(["sim", "fault", "--name", "t", "--clear", "2:accel-slow", "1:card-critical"]) == 2
    assert cleared == [("devserver-2", "accel-slow")]
    assert "--clear: card-critical cannot be cleared (only accel-slow)" in capsys.readouterr().err
