"""Tests of the accelerator readiness check (src/llava_devserver/payloads/accel_check.py).

The pure parts run in-process; the check itself runs the way the role runs it: `python3 accel_check.py`
alone, or under torchrun / the deepspeed launcher on the CPU (gloo), with faults injected through
ACCEL_CHECK_FAULT.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llava_devserver.payloads import accel_check

SCRIPT = Path(accel_check.__file__).resolve()
BIN = Path(sys.executable).parent
# Small figures: these runs share two cores with everything else. That sharing makes CPU matmul figures
# noisy, so the outlier bound is loosened from 0.5 to 0.25; the injected slow rank is 10x slower.
FAST = [
    "--allreduce-mb", "2", "--allreduce-iters", "3", "--matmul-size", "256", "--matmul-seconds", "0.1",
    "--outlier-ratio", "0.25",
]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Runs as a subprocess
# ----------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ACCEL_CHECK_FAULT", "ACCEL_CHECK_HOST")}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    if fault:
        env["ACCEL_CHECK_FAULT"] = fault
    return env


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds

    @property
    def doc(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stdout))
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"stdout is not one JSON document ({exc}):\n{self.stdout}\n{self.stderr}"
            ) from exc

    @property
    def verdict_line(self) -> str:
        lines = [
            line
            for line in self.stderr.splitlines()
            if line.startswith(("accel-check PASS ", "accel-check FAIL "))
        ]
        assert lines, self.stderr
        return lines[-1]


def run(cmd: list[str], fault: str | None = None, limit: float = 90) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=check_env(fault), timeout=limit, cwd="/tmp"
    )
    return Run(proc, time.monotonic() - start)


def torchrun(nproc: int, *args: str, fault: str | None = None, limit: float = 90) -> Run:
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    return run([*cmd, str(SCRIPT), *FAST, *args], fault=fault, limit=limit)


def test_single_process_passes_with_figures(tmp_path: Path) -> None:
    out = tmp_path / "res" / "{host}.json"
    result = run(
        [
            sys.executable,
            str(SCRIPT),
            *FAST,
            "--timeout",
            "60",
            "--host-name",
            "dev-a",
            "--json-out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr
    doc = result.doc
    assert doc["schema"] == 1 and doc["verdict"] == "PASS" and doc["problems"] == []
    assert doc["host"] == "dev-a" and doc["accelerator"] == "cpu"
    assert doc["versions"]["torch"] and doc["versions"]["python"]
    assert doc["versions"]["deepspeed_accelerator"] == "cpu"
    assert doc["device_count"] == 1 and len(doc["devices"]) == 1
    assert doc["devices"][0]["tflops"] > 0 and doc["devices"][0]["outlier"] is False
    assert doc["allreduce"] is None
    assert json.loads((tmp_path / "res" / "dev-a.json").read_text()) == doc
    assert result.verdict_line == doc["summary"]
    assert result.verdict_line.startswith("accel-check PASS dev-a: cpu x1, matmul ")


def test_watchdog_bounds_a_stalled_process() -> None:
    result = run([sys.executable, str(SCRIPT), *FAST, "--timeout", "6"], fault="stall:0")
    assert result.returncode == accel_check.EXIT_TIMEOUT, result.stderr
    assert result.seconds < 15
    doc = result.doc
    assert doc["verdict"] == "FAIL" and doc["exit_code"] == 3 and doc["aborted"] == "timeout"
    # The stall comes after the imports, which a heavily loaded machine can stretch past the bound itself.
    assert re.fullmatch(r"timed out after 6 s in phase '([a-z _]+)' \(rank 0 on \S+\)", doc["problems"][0])
    assert doc["phase"] in ("injected stall", "versions", "matmul", "import torch")
    assert result.verdict_line.startswith("accel-check FAIL ")


def test_torchrun_two_processes_pass_with_allreduce_figures() -> None:
    result = torchrun(2, "--timeout", "60", "--expect-devices", "2")
    assert result.returncode == 0, result.stderr
    doc = result.doc
    assert doc["verdict"] == "PASS" and doc["job_verdict"] == "PASS", doc["problems"]
    assert doc["launch"]["launcher"] == "torchrun" and doc["launch"]["world_size"] == 2
    assert [d["rank"] for d in doc["devices"]] == [0, 1]
    assert all(d["tflops"] > 0 for d in doc["devices"])
    allreduce = doc["allreduce"]
    assert allreduce["backend"] == "gloo" and allreduce["world_size"] == 2 and allreduce["ok"] is True
    assert allreduce["busbw_gbps"] > 0
    # nccl-tests: busbw = algbw x 2(n-1)/n, which is algbw itself for two processes.
    assert allreduce["busbw_gbps"] == pytest.approx(allreduce["algbw_gbps"], rel=1e-3)
    assert "all_reduce busbw" in result.verdict_line and "cpu x2" in result.verdict_line


def test_wrong_expected_count_fails_naming_the_count() -> None:
    result = torchrun(2, "--timeout", "60", "--expect-devices", "3", "--host-name", "dev-b")
    assert result.returncode != 0
    doc = result.doc
    assert doc["verdict"] == "FAIL" and doc["exit_code"] == 1
    assert doc["problems"] == ["dev-b: found 2 processes (cpu), expected 3"]
    assert "found 2 processes (cpu), expected 3" in result.verdict_line


def test_failing_rank_fails_the_host_with_its_message() -> None:
    result = torchrun(2, "--timeout", "60", fault="fail:1")
    doc = result.doc
    assert doc["verdict"] == "FAIL"
    assert any("rank 1" in p and "injected fault (ACCEL_CHECK_FAULT=fail:1)" in p for p in doc["problems"])
    assert doc["devices"][1]["error"].startswith("RuntimeError: injected fault")
    assert "injected fault" in result.verdict_line


def test_stalled_rank_fails_within_the_bound_naming_the_collective() -> None:
    # --timeout 20: the collective's own timeout (0.6 x 20 = 12 s after rank 0 reaches it) must come before
    # the stalled rank's watchdog (20 s after it started), else rank 0 sees its peer die (exit 1, not a
    # timeout): with 10 s, rank 0 had only 4 s to get there, too little on a machine busy building images.
    result = torchrun(2, "--timeout", "20", fault="stall:1")
    assert result.seconds < 35, f"took {result.seconds:.1f} s"
    doc = result.doc
    assert doc["verdict"] == "FAIL" and doc["exit_code"] == accel_check.EXIT_TIMEOUT, doc["problems"]
    problem = doc["problems"][0]
    # Normally the gloo timeout (0.6 x --timeout) ends the collective first; on a loaded machine the
    # watchdog may get there first. Either way the message names the collective and the missing rank.
    assert problem.startswith(
        (
            "all_reduce (gloo, 2 processes) did not complete within 12 s",
            "timed out after 20 s in phase 'all_reduce'",
        )
    ), problem
    assert "rank(s) 1 never reached it" in problem
    # The figures gathered before the stall are still reported.
    assert len(doc["devices"]) == 2 and doc["allreduce"]["ok"] is False
    assert "all_reduce failed" in result.verdict_line


def test_crashed_rank_fails_the_host() -> None:
    result = torchrun(2, "--timeout", "30", fault="exit:1")
    assert result.seconds < 30
    doc = result.doc
    assert doc["verdict"] == "FAIL"
    text = " ".join(doc["problems"])
    assert "rank(s) 1 never reached it" in text or "SIGTERM" in text, text


def test_slow_rank_is_flagged_as_outlier() -> None:
    result = torchrun(2, "--timeout", "60", fault="slow:1")
    doc = result.doc
    assert doc["verdict"] == "FAIL"
    outliers = [d["rank"] for d in doc["devices"] if d["outlier"]]
    assert outliers == [1]
    assert any("device 1 (rank 1): bf16 matmul" in p and "peer median" in p for p in doc["problems"])


def test_two_nodes_of_two_processes_write_one_document_per_host(tmp_path: Path) -> None:
    port = str(free_port())
    procs = []
    for node in (0, 1):
        cmd = [
            str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node), "--master_addr", "127.0.0.1",
            "--master_port", port, "--nproc_per_node", "2", str(SCRIPT), *FAST, "--timeout", "60",
            "--expect-devices", "2", "--host-name", f"node-{node}",
            "--json-out", str(tmp_path / "{host}.json"),
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=check_env(), cwd="/tmp", stdout=subprocess.PIPE, text=True))
    for proc in procs:
        proc.communicate(timeout=90)
        assert proc.returncode == 0
    docs = [json.loads((tmp_path / f"node-{node}.json").read_text()) for node in (0, 1)]
    for node, doc in enumerate(docs):
        assert doc["verdict"] == "PASS" and doc["node_rank"] == node and doc["host"] == f"node-{node}"
        assert [d["host"] for d in doc["devices"]] == [f"node-{node}"] * 2
        assert [d["rank"] for d in doc["devices"]] == [2 * node, 2 * node + 1]
        assert doc["allreduce"]["world_size"] == 4 and doc["allreduce"]["ok"] is True
        # busbw = algbw x 2(n-1)/n with n = 4
        assert doc["allreduce"]["busbw_gbps"] == pytest.approx(doc["allreduce"]["algbw_gbps"] * 1.5, rel=1e-3)
        assert [(h["host"], h["verdict"]) for h in doc["hosts"]] == [("node-0", "PASS"), ("node-1", "PASS")]


def test_deepspeed_launcher(tmp_path: Path) -> None:
    out = tmp_path / "ds.json"
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(SCRIPT), *FAST]
    result = run([*cmd, "--timeout", "60", "--expect-devices", "2", "--json-out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "PASS" and doc["launch"]["launcher"] == "deepspeed"
    assert doc["allreduce"]["world_size"] == 2 and doc["device_count"] == 2


# ----------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------


def test_bus_bandwidth_follows_nccl_tests() -> None:
    assert accel_check.bus_bandwidth(10.0, 2) == pytest.approx(10.0)
    assert accel_check.bus_bandwidth(10.0, 8) == pytest.approx(17.5)
    assert accel_check.bus_bandwidth(10.0, 1) == 0.0


def test_outliers_are_measured_against_the_peer_median() -> None:
    devices: list[dict[str, Any]] = [
        {"index": i, "rank": i, "host": "h", "tflops": t} for i, t in enumerate([300.0, 290.0, 310.0, 100.0])
    ]
    devices.append({"index": 4, "rank": 4, "host": "h", "tflops": None})
    flagged = accel_check.flag_outliers(devices, 0.5)
    assert [d["index"] for d, _ in flagged] == [3]
    assert [d["outlier"] for d in devices] == [False, False, False, True, False]
    assert (
        "h device 3 (rank 3): bf16 matmul 100 TFLOP/s is below 0.5 x the peer median 300 TFLOP/s"
        in flagged[0][1]
    )
    assert accel_check.flag_outliers([{"tflops": 1.0}], 0.5) == []


def test_launch_env_from_torchrun_and_deepspeed() -> None:
    torchrun_env = {
        "RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "0",
        "TORCHELASTIC_RUN_ID": "x",
    }  # fmt: skip
    launch = accel_check.launch_env_from(torchrun_env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.node_rank, launch.nnodes) == (
        5,
        16,
        1,
        0,
        2,
    )
    assert launch.launcher == "torchrun" and launch.distributed
    ds_env = {"RANK": "9", "WORLD_SIZE": "16", "CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "8"}
    launch = accel_check.launch_env_from(ds_env, local_rank_arg=1)
    assert (launch.local_rank, launch.local_world_size, launch.node_rank, launch.launcher) == (
        1,
        8,
        1,
        "deepspeed",
    )
    alone = accel_check.launch_env_from({})
    assert (alone.world_size, alone.launcher, alone.distributed) == (1, "none", False)
    with pytest.raises(ValueError, match="RANK='x'"):
        accel_check.launch_env_from({"RANK": "x"})


def test_fault_spec() -> None:
    assert accel_check.parse_fault("") is None
    assert accel_check.parse_fault("stall:3") == ("stall", 3)
    with pytest.raises(ValueError, match="ACCEL_CHECK_FAULT='boom:1'"):
        accel_check.parse_fault("boom:1")


def test_torch_npu_must_match_torch() -> None:
    assert accel_check.torch_npu_mismatch("2.1.0", "2.1.0.post3") is None
    assert accel_check.torch_npu_mismatch("2.1.0+cpu", "2.1.0") is None
    message = accel_check.torch_npu_mismatch("2.2.0", "2.1.0.post3")
    assert message == "torch_npu 2.1.0.post3 is built for torch 2.1.0, but torch is 2.2.0"


def test_cann_version_from_the_toolkit_files(tmp_path: Path) -> None:
    info = tmp_path / "aarch64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC2\ninnerversion=V100R001C18B800\n")
    assert accel_check.read_cann_version({"ASCEND_TOOLKIT_HOME": str(tmp_path)}) == ("8.0.RC2", str(info))
    other = tmp_path / "other"
    other.mkdir()
    (other / "version.cfg").write_text("# version: 1.0\ntoolkit_running_version=[8.0.RC2.alpha003:8.0.RC2]\n")
    assert accel_check.read_cann_version({"ASCEND_TOOLKIT_HOME": str(other)})[0] == "8.0.RC2.alpha003"


def rank_report(rank: int, node: int, host: str, tflops: float, **extra: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "rank": rank, "local_rank": rank % 2, "node_rank": node, "host": host, "accelerator": "npu",
        "versions": {"torch": "2.1.0"}, "launch": {"local_world_size": 2}, "device_count": 2,
        "devices": [{"index": rank % 2, "rank": rank, "host": host, "node_rank": node, "tflops": tflops}],
        "problems": [], "warnings": [],
    }  # fmt: skip
    report.update(extra)
    return report


def test_host_document_takes_its_own_devices_and_the_job_view() -> None:
    reports = [
        rank_report(0, 0, "a", 300.0),
        rank_report(1, 0, "a", 310.0),
        rank_report(2, 1, "b", 20.0),
        rank_report(3, 1, "b", 305.0, problems=["b device 1: ECC error"]),
    ]
    allreduce = {"backend": "hccl", "world_size": 4, "size_mb": 64, "algbw_gbps": 10.0, "busbw_gbps": 15.0}
    doc_a = accel_check.build_host_document(reports, (0, "a"), allreduce, [], 2, 0.5)
    assert doc_a["verdict"] == "PASS" and doc_a["job_verdict"] == "FAIL"
    assert [d["rank"] for d in doc_a["devices"]] == [0, 1] and doc_a["device_count"] == 2
    assert (
        doc_a["summary"]
        == "accel-check PASS a: npu x2, matmul 305 TFLOP/s median, all_reduce busbw 15 GB/s over 4 procs"
    )
    assert [(h["host"], h["verdict"]) for h in doc_a["hosts"]] == [("a", "PASS"), ("b", "FAIL")]
    doc_b = accel_check.build_host_document(reports, (1, "b"), allreduce, [], 4, 0.5)
    assert doc_b["verdict"] == "FAIL"
    assert doc_b["problems"][0] == "rank 3: b device 1: ECC error"
    assert "b: found 2 npu devices, expected 4" in doc_b["problems"]
    assert any(p.startswith("b device 0 (rank 2): bf16 matmul 20 TFLOP/s") for p in doc_b["problems"])
    stalled = accel_check.build_host_document(
        reports[:2], (0, "a"), None, ["all_reduce (hccl) timed out"], 2, 0.5
    )
    assert stalled["verdict"] == "FAIL" and stalled["problems"] == ["all_reduce (hccl) timed out"]


def test_more_processes_than_devices_is_a_problem() -> None:
    report = rank_report(0, 0, "a", 300.0, device_count=1, launch={"local_world_size": 2})
    doc = accel_check.build_host_document([report], (0, "a"), None, [], None, 0.5)
    assert doc["problems"] == ["a: 2 processes per node but only 1 devices visible"]


def test_option_validation() -> None:
    with pytest.raises(SystemExit):
        accel_check.parse_args(["--timeout", "10", "--collective-timeout", "10"])
    opts = accel_check.parse_args(["--timeout", "20", "--local_rank=3"])
    assert opts.collective_timeout == pytest.approx(12.0) and opts.local_rank == 3


# ----------------------------------------------------------------------------------------------------------
# The container's Python is 3.9 and has only torch, torch_npu and deepspeed
# ----------------------------------------------------------------------------------------------------------

ALLOWED_THIRD_PARTY = {"torch", "torch_npu", "deepspeed"}


class Py310Features(ast.NodeVisitor):
    """Python 3.10+ constructs that parse under feature_version=(3, 9) but fail at run time there."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.in_annotation = 0

    def visit_Call(self, node: ast.Call) -> None:
        names = {k.arg for k in node.keywords}
        func = ast.unparse(node.func)
        if func == "zip" and "strict" in names:
            self.found.append(f"line {node.lineno}: zip(strict=)")
        if func in ("dataclass", "dataclasses.dataclass") and names & {"slots", "kw_only", "match_args"}:
            self.found.append(f"line {node.lineno}: dataclass options of 3.10")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if ast.unparse(node) in ("datetime.UTC", "typing.TypeAlias", "typing.ParamSpec"):
            self.found.append(f"line {node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        # `X | None` is fine in postponed annotations, not in expressions evaluated at run time.
        if isinstance(node.op, ast.BitOr) and not self.in_annotation:
            for side in (node.left, node.right):
                if (isinstance(side, ast.Constant) and side.value is None) or (
                    isinstance(side, ast.Name) and side.id in ("str", "int", "float", "dict", "list", "bool")
                ):
                    self.found.append(f"line {node.lineno}: runtime union {ast.unparse(node)}")
                    break
        self.generic_visit(node)

    def _annotation(self, node: ast.AST | None) -> None:
        if node is not None:
            self.in_annotation += 1
            self.visit(node)
            self.in_annotation -= 1

    def visit_arg(self, node: ast.arg) -> None:
        self._annotation(node.annotation)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._annotation(node.annotation)
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._annotation(node.returns)
        for child in [node.args, *node.body, *node.decorator_list]:
            self.visit(child)


def test_runs_on_python_39_with_only_torch_torch_npu_and_deepspeed() -> None:
    source = SCRIPT.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # rejects match, parenthesised with-items, ...
    assert "from __future__ import annotations" in source  # annotations stay strings on 3.9
    checker = Py310Features()
    checker.visit(tree)
    assert checker.found == []
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "importlib.import_module":
            imported.add(ast.literal_eval(node.args[0]).split(".")[0])
    outside = {name for name in imported if name not in sys.stdlib_module_names} - {"__future__"}
    assert outside == ALLOWED_THIRD_PARTY
    assert "llava_devserver" not in source.replace("llava_devserver/accel_check", "")
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    # torch loads lazily so that the pure parts import anywhere (and the role can read the module).
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}


def test_py310_checker_catches_what_it_claims() -> None:
    checker = Py310Features()
    checker.visit(
        ast.parse("def f(x: int | None) -> str | None:\n    return zip(a, b, strict=True) or (int | None)")
    )
    assert len(checker.found) == 2
