"""llava_devserver.accel_launch (what the accel_check role launches, how it reads the result), on plain data.

The documents are built by accel_check.py's own `build_host_document`, so the role reads what the checker
writes; the launch script runs for real under bash with stand-ins for torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.llava.devserver.plugins.filter import accel_check as accel_filter

from llava_devserver import accel_launch
from llava_devserver.config import validate_fleet
from llava_devserver.payloads import accel_check
from llava_devserver.report import verdict_cell

HOSTS = ("devserver-1", "devserver-2", "devserver-3")
PLAN_OPTIONS: dict[str, Any] = {
    "script": "/tmp/llava_accel_check.py",
    "json_out": "/tmp/llava_accel_check.json",
    "expect_accelerator": "npu",
}


@pytest.fixture(autouse=True)
def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """validate_fleet checks that the AscendCloud package exists on the control node."""
    package = tmp_path / "AscendCloud-6.3.906.zip"
    package.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setenv("ACCEL_TEST_PACKAGE", str(package))


def _fleet(n: int = 3, **extra: Any) -> list[dict[str, Any]]:
    settings = {
        "ascendcloud_package": os.environ["ACCEL_TEST_PACKAGE"],
        "npu_devices": "0-7",
        "global_batch_size": 8 * n,
        "per_device_train_batch_size": 1,
        **extra,
    }
    raw = {HOSTS[i]: {**settings, "ansible_host": f"192.168.0.{10 + i}"} for i in range(n)}
    return [host.to_vars() for host in validate_fleet(raw).hosts]


def _arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _torchrun(plan: dict[str, Any]) -> list[str]:
    script = plan["argv"][-1]
    line = next(line for line in script.splitlines() if line.startswith("timeout "))
    import shlex

    return shlex.split(line.rstrip(" &"))


def test_plan_launches_torchrun_per_server_like_the_job() -> None:
    fleet = _fleet()
    plan = accel_launch.check_plan(fleet[1], fleet, **PLAN_OPTIONS)
    argv = plan["argv"]
    assert argv[:2] == ["docker", "exec"] and argv[-4:-1] == ["llava-pretrain", "bash", "-c"]
    env = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--env")
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"  # the job's environment
    assert env["TASK_QUEUE_ENABLE"] == "1"
    assert env["HCCL_CONNECT_TIMEOUT"] == "180"  # 0.6 x 300, not the job's 1200
    assert "ACCEL_CHECK_FAULT" not in env
    torchrun = _torchrun(plan)
    assert torchrun[:4] == ["timeout", "--kill-after=10", str(120 + 300 + 30), "torchrun"]
    assert _arg(torchrun, "--nnodes") == "3" and _arg(torchrun, "--node_rank") == "1"
    assert _arg(torchrun, "--nproc_per_node") == "8"
    assert _arg(torchrun, "--master_addr") == "192.168.0.10"  # the first server, as the job
    assert _arg(torchrun, "--master_port") == "29501"  # next to the job's 29500
    assert _arg(torchrun, "--rdzv-conf") == "timeout=120"
    assert _arg(torchrun, "--expect-devices") == "8" and _arg(torchrun, "--expect-accelerator") == "npu"
    assert _arg(torchrun, "--host-name") == "devserver-2"
    assert _arg(torchrun, "--json-out") == "/tmp/llava_accel_check.json"
    assert "--matmul-size" not in torchrun and "--collective-timeout" not in torchrun
    assert plan["nnodes"] == 3 and plan["node_rank"] == 1 and plan["nodes"] == list(HOSTS)
    assert plan["async_s"] > plan["wrapper_timeout_s"] == 450
    assert ". /usr/local/Ascend/ascend-toolkit/set_env.sh" in argv[-1]
    subprocess.run(["bash", "-n", "-c", argv[-1]], check=True)


def test_plan_knobs_and_fault() -> None:
    fleet = _fleet(1)
    plan = accel_launch.check_plan(
        fleet[0], fleet, **{**PLAN_OPTIONS, "expect_accelerator": "cpu"}, expect_devices=3, timeout_s=60,
        collective_timeout_s=20, master_port=30000, matmul_size=256, fault="stall:1",
    )  # fmt: skip
    torchrun = _torchrun(plan)
    assert _arg(torchrun, "--master_addr") == "127.0.0.1"  # one server talks to itself, as the job
    assert _arg(torchrun, "--master_port") == "30000"
    assert _arg(torchrun, "--expect-devices") == "3" and _arg(torchrun, "--expect-accelerator") == "cpu"
    assert _arg(torchrun, "--matmul-size") == "256" and _arg(torchrun, "--collective-timeout") == "20"
    assert "--env" in plan["argv"] and "ACCEL_CHECK_FAULT=stall:1" in plan["argv"]
    assert "HCCL_CONNECT_TIMEOUT=20" in plan["argv"]


def test_plan_spans_the_servers_in_the_run() -> None:
    """--limit, or a server that failed an earlier play: the check spans the servers that are here."""
    fleet = _fleet()
    plan = accel_launch.check_plan(fleet[1], [fleet[1], fleet[2]], **PLAN_OPTIONS)
    torchrun = _torchrun(plan)
    assert plan["nnodes"] == 2 and plan["job_nnodes"] == 3 and plan["nodes"] == ["devserver-2", "devserver-3"]
    assert _arg(torchrun, "--node_rank") == "0"
    assert _arg(torchrun, "--master_addr") == "192.168.0.11"  # devserver-2 is the first one here
    alone = accel_launch.check_plan(fleet[2], [], **PLAN_OPTIONS)
    assert alone["nnodes"] == 1 and _arg(_torchrun(alone), "--master_addr") == "127.0.0.1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expect_accelerator": "gpu"}, "accel_check_expect_accelerator: 'gpu' is not one of npu, cuda, cpu"),
        ({"expect_devices": -1}, "accel_check_expect_devices: must be at least 1"),
        ({"timeout_s": 5}, "accel_check_timeout must be >= 10 s"),
        ({"collective_timeout_s": 300}, "accel_check_collective_timeout (300) must be below"),
        ({"master_port": 70000}, "accel_check_master_port: 70000 is not a port"),
    ],
)
def test_plan_rejects_bad_knobs(options: dict[str, Any], message: str) -> None:
    fleet = _fleet(1)
    with pytest.raises(accel_launch.AccelPlanError, match="devserver-1: ") as raised:
        accel_launch.check_plan(fleet[0], fleet, **{**PLAN_OPTIONS, **options})
    assert message in str(raised.value)


# ---- the launch script, for real under bash ----------------------------------------------------------------


def _script(tmp_path: Path, command: str, wrapper_s: int = 60, grace_s: int = 1) -> tuple[str, Path]:
    json_out = tmp_path / "doc.json"
    script = accel_launch.launch_script(
        str(tmp_path / "no-set_env.sh"), str(json_out), wrapper_s, ["sh", "-c", command], grace_s=grace_s
    )
    return script, json_out


def test_script_stops_a_launcher_left_waiting_after_the_document(tmp_path: Path) -> None:
    """A healthy server's torchrun waits in its exit barrier for a failed server: stopped after the grace."""
    script, json_out = _script(tmp_path, f"echo '{{}}' > {tmp_path}/doc.json.tmp; mv {tmp_path}/doc.json.tmp "
                                         f"{tmp_path}/doc.json; exec sleep 60")  # fmt: skip
    json_out.write_text("stale")
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert time.monotonic() - started < 10
    assert result.returncode == 0
    assert "still running 1 s after this server's document" in result.stderr
    assert json_out.read_text().strip() == "{}"  # the stale document was removed before the launch


def test_script_passes_the_launcher_exit_and_stdout(tmp_path: Path) -> None:
    script, json_out = _script(tmp_path, "echo out; exit 3")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3 and result.stdout == "out\n"
    assert not json_out.exists()


def test_script_bounds_a_hung_launcher(tmp_path: Path) -> None:
    script, _ = _script(tmp_path, "exec sleep 60", wrapper_s=1)
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == accel_launch.TIMEOUT_EXIT
    assert time.monotonic() - started < 10


# ---- reading the result ------------------------------------------------------------------------------------


def _rank(rank: int, host: str, node: int, tflops: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "rank": rank, "local_rank": rank % 2, "node_rank": node, "host": host, "accelerator": "npu",
        "versions": {"torch": "2.1.0", "torch_npu": "2.1.0.post3", "cann": "8.0.RC2", "deepspeed": "0.12.6",
                     "deepspeed_accelerator": "npu"},
        "launch": {"rank": rank, "world_size": 4, "local_rank": rank % 2, "local_world_size": 2,
                   "node_rank": node, "nnodes": 2, "launcher": "torchrun"},
        "device_count": extra.pop("device_count", 2),
        "devices": [{"index": rank % 2, "rank": rank, "host": host, "node_rank": node, "tflops": tflops,
                     "mem_free_mb": 60000, "mem_total_mb": 65536, "outlier": False, "error": None}],
        "problems": extra.pop("problems", []), "warnings": [],
    }  # fmt: skip


ALLREDUCE = {
    "backend": "hccl", "world_size": 4, "size_mb": 64.0, "iterations": 5, "algbw_gbps": 80.0,
    "busbw_gbps": 120.0, "ok": True,
}  # fmt: skip
PLAN = {
    "nnodes": 2, "job_nnodes": 2, "node_rank": 1, "nodes": ["devserver-1", "devserver-2"],
    "master_addr": "192.168.0.10", "master_port": 29501, "nproc_per_node": 2, "wrapper_timeout_s": 450,
}  # fmt: skip


def _doc(ranks: list[dict[str, Any]], host: str = "devserver-2", **kwargs: Any) -> dict[str, Any]:
    node = 0 if host == "devserver-1" else 1
    doc = accel_check.build_host_document(
        ranks, (node, host), kwargs.pop("allreduce", ALLREDUCE), kwargs.pop("job_problems", []),
        kwargs.pop("expected", 2), 0.5,
    )  # fmt: skip
    doc["exit_code"] = 0 if doc["verdict"] == "PASS" else 1
    return doc


def _ranks(**node2: Any) -> list[dict[str, Any]]:
    tflops = node2.pop("tflops", (290.0, 291.0))
    return [
        _rank(0, "devserver-1", 0, 289.0),
        _rank(1, "devserver-1", 0, 292.0),
        _rank(2, "devserver-2", 1, tflops[0], **dict(node2)),
        _rank(3, "devserver-2", 1, tflops[1]),
    ]


def _stdout(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def test_a_passing_document_is_the_report_fact() -> None:
    doc = _doc(_ranks())
    outcome = accel_launch.check_result("devserver-2", _stdout(doc), "", 0, PLAN, 21.34)
    assert outcome["failed"] is False and outcome["message"] == ""
    report = outcome["report"]
    assert {k: v for k, v in report.items() if k != "run"} == doc
    assert report["run"] == {
        "nnodes": 2, "job_nnodes": 2, "node_rank": 1, "nodes": ["devserver-1", "devserver-2"],
        "master_addr": "192.168.0.10", "master_port": 29501, "nproc_per_node": 2, "rc": 0, "seconds": 21.3,
    }  # fmt: skip
    # what the fleet report shows in its Accel check column
    assert (
        verdict_cell(report)
        == "PASS (npu x2, matmul 290 TFLOP/s median, all_reduce busbw 120 GB/s over 4 procs)"
    )


def test_parse_document_ignores_noise_around_it() -> None:
    doc = _doc(_ranks())
    noisy = "W1130 torchrun warning {not json}\n" + _stdout(doc) + "trailing line\n"
    assert accel_launch.parse_document(noisy) == doc
    assert accel_launch.parse_document('{\n  "other": 1\n}\n') is None
    assert accel_launch.parse_document("") is None


@pytest.mark.parametrize(
    ("ranks", "kwargs", "cause", "names"),
    [
        (_ranks(device_count=1), {}, "wrong device count", "devserver-2: found 1 npu devices, expected 2"),
        (_ranks(tflops=(290.0, 30.0)), {}, "device outlier", "below 0.5 x the peer median"),
        (
            _ranks(problems=["DeepSpeed picks accelerator 'cpu' but this process sees 'npu'"]),
            {},
            "DeepSpeed does not see the accelerator",
            "DeepSpeed picks accelerator 'cpu'",
        ),
        (
            _ranks(),
            {
                "allreduce": {**ALLREDUCE, "algbw_gbps": None, "busbw_gbps": None, "ok": False},
                "job_problems": [
                    "all_reduce (hccl, 4 processes) did not complete within 180 s (a peer process stalled or "
                    "died; rank(s) 3 never reached it): RuntimeError: timeout"
                ],
            },
            "collective timed out",
            "rank(s) 3 never reached it",
        ),
        (
            _ranks(),
            {
                "allreduce": {**ALLREDUCE, "algbw_gbps": None, "busbw_gbps": None, "ok": False},
                "job_problems": [
                    "all_reduce (hccl, 4 processes) failed after 0.3 s: RuntimeError: HCCL error"
                ],
            },
            "collective failed",
            "HCCL error",
        ),
    ],
)
def test_a_failing_document_fails_the_host_naming_the_cause_with_figures(
    ranks: list[dict[str, Any]], kwargs: dict[str, Any], cause: str, names: str
) -> None:
    doc = _doc(ranks, **kwargs)
    assert doc["verdict"] == "FAIL"
    outcome = accel_launch.check_result("devserver-2", _stdout(doc), "some stderr\n", 1, PLAN, 30.0)
    assert outcome["failed"] is True and outcome["cause"] == cause
    message = outcome["message"]
    first, measured = message.splitlines()[:2]
    assert first.startswith(f"devserver-2: accelerator check FAILED ({cause}) over 2 server(s): ")
    assert names in message
    assert measured.startswith("Measured: accelerator npu; ")
    assert "bf16 matmul TFLOP/s by device 0: " in measured
    assert "torch 2.1.0, torch_npu 2.1.0.post3, cann 8.0.RC2, deepspeed 0.12.6" in measured
    assert "What to do: " in message
    assert outcome["report"]["verdict"] == "FAIL"


def test_no_document_names_the_rendezvous_or_the_bound() -> None:
    stderr = "DistStoreError: Timed out after 91 seconds waiting for clients. 1/3 clients joined.\n"
    outcome = accel_launch.check_result(
        "devserver-1", "", stderr, 1, {**PLAN, "nnodes": 3, "job_nnodes": 3}, 95
    )
    assert outcome["failed"] and outcome["cause"] == "rendezvous"
    assert outcome["message"].startswith(
        "devserver-1: accelerator check FAILED (rendezvous) over 3 server(s): devserver-1: torchrun's "
        "rendezvous at 192.168.0.10:29501 did not complete (1 of 3 servers joined)."
    )
    assert "1/3 clients joined" in outcome["message"]  # the stderr tail
    assert outcome["report"]["verdict"] == "FAIL" and outcome["report"]["run"]["rc"] == 1

    killed = accel_launch.check_result("devserver-1", "", "", accel_launch.TIMEOUT_EXIT, PLAN, 450)
    assert killed["cause"] == "collective timed out"
    assert "did not end within 450 s and was killed" in killed["message"]

    silent = accel_launch.check_result("devserver-1", "", "python3: can't open file", 2, PLAN)
    assert silent["cause"] == "launcher" and "ended (exit 2) without a result" in silent["message"]


def test_a_pass_with_a_failing_launcher_fails() -> None:
    doc = _doc(_ranks())
    outcome = accel_launch.check_result("devserver-2", _stdout(doc), "", 1, PLAN)
    assert outcome["failed"] and "the check passed but torchrun exited 1" in outcome["message"]


def test_filters_adapt_ansible_values() -> None:
    fleet = _fleet(1)
    options = {
        "script": "/tmp/s.py", "json_out": "/tmp/s.json", "expect_accelerator": "cpu", "expect_devices": "",
        "timeout_s": "60", "rdzv_timeout_s": "30", "collective_timeout_s": "0", "master_port": "",
        "matmul_size": "0", "allreduce_mb": "4", "min_tflops": "0", "min_busbw_gbs": "", "fault": None,
    }  # fmt: skip
    plan = accel_filter.accel_check_plan(fleet[0], fleet, options)
    assert plan["master_port"] == 29501 and plan["expected_devices"] == 8
    assert "--min-busbw" not in _torchrun(plan) and "--min-tflops" not in _torchrun(plan)
    with pytest.raises(ValueError, match="unknown allreduce_gb"):
        accel_filter.launch_options({**options, "allreduce_gb": "1"})
    registered = {"rc": 0, "stdout": _stdout(_doc(_ranks())), "stderr": "", "delta": "0:01:02.500000"}
    outcome = accel_filter.accel_check_result(registered, "devserver-2", PLAN)
    assert outcome["report"]["run"]["seconds"] == 62.5
    assert Path(accel_filter.llava_module_path("payloads.accel_check")).name == "accel_check.py"
