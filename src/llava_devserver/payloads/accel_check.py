#!/usr/bin/env python3
"""Accelerator readiness check: proves the training stack works before the long job starts.

Runs inside the training container (Python 3.9 in the vendor image) with nothing beyond the standard
library, torch, torch_npu and deepspeed; the `accel_check` role copies this one file in. Launch it alone
(`python3 accel_check.py`) or the way the training job is launched (`torchrun ... accel_check.py`, or
the `deepspeed` launcher). It reports versions, the device count, a bf16 matmul figure per device, an
`all_reduce` bus bandwidth across every process of every node, and one JSON document plus a one-line
verdict per host. It is bounded: a stalled peer fails the check within `--timeout` seconds.

The schema of the JSON document and the exit codes are described in docs/accel_check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

SCHEMA_VERSION = 1
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

FAULT_ENV = "ACCEL_CHECK_FAULT"
FAULT_KINDS = ("fail", "stall", "slow", "exit")
# Default square matmul size: big enough to load an accelerator, small enough for a CPU.
DEFAULT_MATMUL_SIZE = {"npu": 4096, "cuda": 4096, "cpu": 512}
# Phases in which every process takes part; a timeout there names the ranks that never arrived.
COLLECTIVE_PHASES = (
    "matmul turn barrier",
    "gather per-rank results",
    "all_reduce",
    "gather all_reduce results",
)
BACKEND_FOR = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
CANN_HOME_DEFAULT = "/usr/local/Ascend/ascend-toolkit/latest"


# ----------------------------------------------------------------------------------------------------------
# Launch environment and options
# ----------------------------------------------------------------------------------------------------------


class LaunchEnv:
    """Where this process sits in the job, read from what torchrun or the deepspeed launcher set."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        node_rank: int = 0,
        nnodes: int = 1,
        launcher: str = "none",
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.local_world_size = local_world_size
        self.node_rank = node_rank
        self.nnodes = nnodes
        self.launcher = launcher

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _env_int(env: dict[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError as exc:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc
    return default


def launch_env_from(env: dict[str, str], local_rank_arg: int | None = None) -> LaunchEnv:
    """torchrun sets GROUP_RANK/LOCAL_WORLD_SIZE; the deepspeed launcher CROSS_RANK/CROSS_SIZE/LOCAL_SIZE
    and passes --local_rank."""
    world_size = _env_int(env, ("WORLD_SIZE",), 1)
    rank = _env_int(env, ("RANK",), 0)
    local_rank = _env_int(env, ("LOCAL_RANK",), local_rank_arg if local_rank_arg is not None else 0)
    local_world_size = _env_int(env, ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"), world_size)
    node_rank = _env_int(env, ("GROUP_RANK", "CROSS_RANK", "NODE_RANK"), 0)
    nnodes = _env_int(env, ("CROSS_SIZE", "NNODES"), max(1, world_size // max(1, local_world_size)))
    if "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    elif "CROSS_RANK" in env:
        launcher = "deepspeed"
    elif "WORLD_SIZE" in env:
        launcher = "env"
    else:
        launcher = "none"
    return LaunchEnv(rank, world_size, local_rank, local_world_size, node_rank, nnodes, launcher)


def parse_fault(spec: str) -> tuple[str, int] | None:
    """`ACCEL_CHECK_FAULT=KIND:RANK` (fail, stall, slow, exit) for tests; empty means none."""
    spec = spec.strip()
    if not spec:
        return None
    kind, _, rank = spec.partition(":")
    if kind not in FAULT_KINDS or not rank.strip().isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected one of {', '.join(FAULT_KINDS)} then ':RANK'")
    return kind, int(rank)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accel_check.py",
        description="Accelerator readiness check (versions, device count, bf16 matmul, all_reduce busbw).",
    )
    parser.add_argument(
        "--expect-devices",
        type=int,
        default=None,
        metavar="N",
        help="devices each host must show (on CPU: processes per host)",
    )
    parser.add_argument(
        "--expect-accelerator",
        choices=("npu", "cuda", "cpu"),
        default=None,
        help="fail unless this accelerator is detected (npu on a DevServer)",
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=0,
        metavar="N",
        help="square bf16 matmul size (0: 4096 on npu/cuda, 512 on cpu)",
    )
    parser.add_argument(
        "--matmul-seconds",
        type=float,
        default=0.2,
        metavar="S",
        help="time spent measuring matmul per device (default 0.2)",
    )
    parser.add_argument(
        "--outlier-ratio",
        type=float,
        default=0.5,
        metavar="R",
        help="flag a device below R x the median of its peers (default 0.5)",
    )
    parser.add_argument(
        "--min-tflops",
        type=float,
        default=0.0,
        metavar="T",
        help="fail a device whose bf16 matmul figure is below T TFLOP/s (0: no threshold)",
    )
    parser.add_argument(
        "--min-busbw",
        type=float,
        default=0.0,
        metavar="G",
        help="fail the job when the all_reduce bus bandwidth is below G GB/s (0: no threshold)",
    )
    parser.add_argument(
        "--allreduce-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="all_reduce message size in MiB (default 64)",
    )
    parser.add_argument(
        "--allreduce-iters", type=int, default=5, metavar="N", help="timed all_reduce iterations (default 5)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="hard bound on the whole check; exit 3 when reached (default 600)",
    )
    parser.add_argument(
        "--collective-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="process-group timeout for each collective (0: 0.6 x --timeout)",
    )
    parser.add_argument(
        "--allow-missing-deepspeed",
        action="store_true",
        help="report a missing deepspeed as a warning rather than a failure",
    )
    parser.add_argument(
        "--host-name",
        default=None,
        help="name this host in the report (default: env ACCEL_CHECK_HOST or hostname)",
    )
    parser.add_argument(
        "--json-out",
        default=None,
        metavar="PATH",
        help="also write the host document here ({host} and {node_rank} are filled in)",
    )
    parser.add_argument("--no-stdout-json", action="store_true", help="do not print the JSON on stdout")
    # The deepspeed launcher appends --local_rank=N unless told not to.
    parser.add_argument(
        "--local_rank", "--local-rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.timeout <= 0:
        parser.error("--timeout must be positive")
    if opts.collective_timeout <= 0:
        opts.collective_timeout = max(1.0, 0.6 * opts.timeout)
    if opts.collective_timeout >= opts.timeout:
        parser.error("--collective-timeout must be below --timeout so a stalled collective is reported")
    if opts.expect_devices is not None and opts.expect_devices < 1:
        parser.error("--expect-devices must be at least 1")
    if not 0 < opts.outlier_ratio < 1:
        parser.error("--outlier-ratio must be between 0 and 1")
    if opts.min_tflops < 0 or opts.min_busbw < 0:
        parser.error("--min-tflops and --min-busbw must be positive (0: no threshold)")
    if opts.allreduce_mb <= 0 or opts.allreduce_iters < 1 or opts.matmul_seconds <= 0 or opts.matmul_size < 0:
        parser.error("--allreduce-mb, --allreduce-iters and --matmul-seconds must be positive")
    return opts


# ----------------------------------------------------------------------------------------------------------
# Versions
# ----------------------------------------------------------------------------------------------------------


def release_triplet(version: str | None) -> tuple[int, ...] | None:
    """`2.1.0+cpu` and `2.1.0.post3` -> (2, 1, 0); None when there is no leading number."""
    if not version:
        return None
    numbers = re.match(r"^\s*v?(\d+(?:\.\d+){0,2})", version)
    if not numbers:
        return None
    parts = [int(p) for p in numbers.group(1).split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def torch_npu_mismatch(torch_version: str | None, torch_npu_version: str | None) -> str | None:
    """torch_npu releases track torch releases one to one (torch_npu 2.1.0.postN for torch 2.1.0)."""
    torch_rel = release_triplet(torch_version)
    npu_rel = release_triplet(torch_npu_version)
    if torch_rel is None or npu_rel is None or torch_rel == npu_rel:
        return None
    return (
        f"torch_npu {torch_npu_version} is built for torch {'.'.join(map(str, npu_rel))}, "
        f"but torch is {torch_version}"
    )


def read_cann_version(env: dict[str, str]) -> tuple[str | None, str | None]:
    """The CANN toolkit version and the file it came from, where the image shows it."""
    homes = []
    for name in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        if env.get(name):
            homes.append(env[name])
    homes.append(CANN_HOME_DEFAULT)
    for home in homes:
        candidates = sorted(glob.glob(os.path.join(home, "*", "ascend_toolkit_install.info")))
        candidates += [
            os.path.join(home, "version.cfg"),
            os.path.join(home, "compiler", "version.info"),
            os.path.join(home, "runtime", "version.info"),
        ]
        for path in candidates:
            version = _version_from_file(path)
            if version:
                return version, path
    return None, None


def _version_from_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except OSError:
        return None
    # ascend_toolkit_install.info and version.info: `version=8.0.RC2`;
    # version.cfg: `toolkit_running_version=[8.0.RC2:...]`.
    match = re.search(r"^\s*version\s*[=:]\s*\"?([0-9][^\s\"]*)", text, re.IGNORECASE | re.MULTILINE)
    if match:
        return match.group(1)
    match = re.search(r"running_version\s*=\s*\[\s*([0-9][^:\]\s]*)", text)
    return match.group(1) if match else None


# ----------------------------------------------------------------------------------------------------------
# Analysis of gathered figures (pure functions: unit-tested without torch)
# ----------------------------------------------------------------------------------------------------------


def bus_bandwidth(algbw: float, world_size: int) -> float:
    """nccl-tests' all_reduce bus bandwidth: algbw x 2(n-1)/n."""
    if world_size < 2:
        return 0.0
    return algbw * 2.0 * (world_size - 1) / world_size


def flag_outliers(devices: list[dict[str, Any]], ratio: float) -> list[tuple[dict[str, Any], str]]:
    """Mark devices whose matmul figure is below `ratio` x the median of the other devices' figures.

    Peers are all measured devices of the job (every host has the same cards), so a server with one
    process still has peers. Returns (device, problem) for each outlier.
    """
    flagged = []
    measured = [d for d in devices if isinstance(d.get("tflops"), (int, float))]
    for device in devices:
        device["outlier"] = False
    for device in measured:
        peers = [d["tflops"] for d in measured if d is not device]
        if not peers:
            continue
        peer_median = statistics.median(peers)
        if device["tflops"] < ratio * peer_median:
            device["outlier"] = True
            flagged.append(
                (
                    device,
                    f"{device.get('host')} device {device.get('index')} (rank {device.get('rank')}): bf16 "
                    f"matmul {device['tflops']:.3g} TFLOP/s is below {ratio:g} x the peer median "
                    f"{peer_median:.3g} TFLOP/s",
                )
            )
    return flagged


def below_min_tflops(
    devices: list[dict[str, Any]], min_tflops: float | None
) -> list[tuple[dict[str, Any], str]]:
    """Devices whose matmul figure is below the absolute threshold (None or 0: no threshold)."""
    if not min_tflops:
        return []
    flagged = []
    for device in devices:
        tflops = device.get("tflops")
        if isinstance(tflops, (int, float)) and tflops < min_tflops:
            device["below_min"] = True
            flagged.append(
                (
                    device,
                    f"{device.get('host')} device {device.get('index')} (rank {device.get('rank')}): bf16 "
                    f"matmul {tflops:.3g} TFLOP/s is below the minimum {min_tflops:g} TFLOP/s",
                )
            )
    return flagged


def busbw_problem(allreduce: dict[str, Any] | None, min_busbw: float | None) -> str | None:
    """The job problem of an all_reduce that completed below the bus bandwidth threshold, if any."""
    if not min_busbw or not allreduce or allreduce.get("busbw_gbps") is None:
        return None
    busbw = float(allreduce["busbw_gbps"])
    if busbw >= min_busbw:
        return None
    return (
        f"the all_reduce bus bandwidth {busbw:.3g} GB/s ({allreduce.get('backend')}, "
        f"{allreduce.get('world_size')} processes) is below the minimum {min_busbw:g} GB/s"
    )


def host_key(report: dict[str, Any]) -> tuple[int, str]:
    return int(report.get("node_rank", 0)), str(report.get("host"))


def _fmt_tflops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def build_host_document(
    rank_reports: list[dict[str, Any]],
    key: tuple[int, str],
    allreduce: dict[str, Any] | None,
    job_problems: list[str],
    expected_devices: int | None,
    outlier_ratio: float,
    extra: dict[str, Any] | None = None,
    min_tflops: float | None = None,
) -> dict[str, Any]:
    """The JSON document for one host, from the per-rank reports of the whole job (or what is known)."""
    reports = sorted(rank_reports, key=lambda r: int(r.get("rank", 0)))
    all_devices = [dict(d) for r in reports for d in r.get("devices", [])]
    outliers = flag_outliers(all_devices, outlier_ratio) + below_min_tflops(all_devices, min_tflops)
    docs_by_host = {}
    keys = sorted({host_key(r) for r in reports})
    for k in keys:
        docs_by_host[k] = _host_part(reports, k, all_devices, outliers, expected_devices)
    if key not in docs_by_host:
        docs_by_host[key] = _host_part(reports, key, all_devices, outliers, expected_devices)
    own = docs_by_host[key]
    problems = own["problems"] + list(job_problems)
    verdict = "FAIL" if problems else "PASS"
    hosts = []
    for k in keys:
        part = docs_by_host[k]
        host_problems = part["problems"] + list(job_problems)
        hosts.append(
            {
                "host": k[1],
                "node_rank": k[0],
                "device_count": part["device_count"],
                "tflops_median": part["tflops_median"],
                "verdict": "FAIL" if host_problems else "PASS",
                "problems": host_problems,
            }
        )
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "host": key[1],
        "node_rank": key[0],
        "accelerator": own["accelerator"],
        "versions": own["versions"],
        "launch": own["launch"],
        "expected_devices": expected_devices,
        "device_count": own["device_count"],
        "devices": own["devices"],
        "tflops_median": own["tflops_median"],
        "min_tflops": min_tflops or None,
        "allreduce": allreduce,
        "problems": problems,
        # The problems of the whole job (a collective that failed, timed out or was too slow), also in
        # `problems`: the role's rerun by pairs of servers attributes them to the server that causes them.
        "job_problems": list(job_problems),
        "warnings": own["warnings"],
        "hosts": hosts,
        "job_verdict": "FAIL" if any(h["verdict"] == "FAIL" for h in hosts) else "PASS",
        "verdict": verdict,
    }
    if extra:
        doc.update(extra)
    doc["summary"] = summary_line(doc)
    return doc


def _host_part(
    reports: list[dict[str, Any]],
    key: tuple[int, str],
    all_devices: list[dict[str, Any]],
    outliers: list[tuple[dict[str, Any], str]],
    expected_devices: int | None,
) -> dict[str, Any]:
    mine = [r for r in reports if host_key(r) == key]
    lead = min(mine, key=lambda r: int(r.get("local_rank", 0))) if mine else {}
    devices = sorted(
        (d for d in all_devices if (int(d.get("node_rank", 0)), str(d.get("host"))) == key),
        key=lambda d: (int(d.get("index", 0)), int(d.get("rank", 0))),
    )
    problems: list[str] = []
    warnings: list[str] = []
    for report in mine:
        prefix = f"rank {report.get('rank')}: " if len(mine) > 1 else ""
        problems.extend(prefix + p for p in report.get("problems", []))
        warnings.extend(prefix + w for w in report.get("warnings", []))
    accelerator = lead.get("accelerator")
    # On a CPU each process of this host stands for a device (the launcher's processes per node).
    device_count = lead.get("device_count")
    if expected_devices is not None and device_count != expected_devices:
        unit = "processes (cpu)" if accelerator == "cpu" else f"{accelerator} devices"
        problems.append(f"{key[1]}: found {device_count} {unit}, expected {expected_devices}")
    launch = lead.get("launch") or {}
    local_procs = int(launch.get("local_world_size", len(mine) or 1))
    if accelerator not in (None, "cpu") and isinstance(device_count, int) and local_procs > device_count:
        problems.append(f"{key[1]}: {local_procs} processes per node but only {device_count} devices visible")
    host_devices = {id(d) for d in devices}
    for device, problem in outliers:
        if id(device) in host_devices:
            problems.append(problem)
    measured = [d["tflops"] for d in devices if isinstance(d.get("tflops"), (int, float))]
    return {
        "accelerator": accelerator,
        "versions": lead.get("versions", {}),
        "launch": launch,
        "device_count": device_count,
        "devices": devices,
        "tflops_median": round(statistics.median(measured), 4) if measured else None,
        "problems": problems,
        "warnings": warnings,
    }


def summary_line(doc: dict[str, Any]) -> str:
    """`accel-check PASS host: cpu x2, matmul 0.05 TFLOP/s median, all_reduce busbw 1.2 GB/s`."""
    parts = [
        f"{doc.get('accelerator')} x{doc.get('device_count')}",
        f"matmul {_fmt_tflops(doc.get('tflops_median'))} TFLOP/s median",
    ]
    allreduce = doc.get("allreduce")
    if allreduce and allreduce.get("busbw_gbps") is not None:
        floor = allreduce.get("min_busbw_gbps")
        against = f" (min {floor:g})" if floor else ""
        busbw, procs = allreduce["busbw_gbps"], allreduce["world_size"]
        parts.append(f"all_reduce busbw {busbw:.3g} GB/s{against} over {procs} procs")
    elif allreduce:
        parts.append("all_reduce failed")
    line = f"accel-check {doc.get('verdict')} {doc.get('host')}: " + ", ".join(parts)
    problems = doc.get("problems") or []
    if problems:
        line += f"; {len(problems)} problem(s): {problems[0]}"
    return line


# ----------------------------------------------------------------------------------------------------------
# The check itself (torch imported lazily so that the pure parts above import anywhere)
# ----------------------------------------------------------------------------------------------------------


class CheckState:
    """What this process knows so far; the watchdog and the SIGTERM handler report from it."""

    def __init__(self, opts: argparse.Namespace, launch: LaunchEnv, host: str) -> None:
        self.opts = opts
        self.launch = launch
        self.host = host
        self.phase = "start"
        self.phase_started = time.monotonic()
        self.report: dict[str, Any] = {
            "rank": launch.rank,
            "local_rank": launch.local_rank,
            "node_rank": launch.node_rank,
            "host": host,
            "accelerator": None,
            "versions": {},
            "launch": launch.as_dict(),
            "device_count": None,
            "devices": [],
            "problems": [],
            "warnings": [],
        }
        self.rank_reports: list[dict[str, Any]] | None = None
        self.allreduce: dict[str, Any] | None = None
        self.job_problems: list[str] = []
        self.timed_out = False
        self.store: Any = None
        self.fault: tuple[str, int] | None = None
        self.output: Output | None = None
        self.measured_index = 0
        self.emit_lock = threading.Lock()
        self.emitted = False

    def fault_kind_here(self) -> str | None:
        """The injected fault (ACCEL_CHECK_FAULT) aimed at this rank, if any."""
        if self.fault and self.fault[1] == self.launch.rank:
            return self.fault[0]
        return None

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()
        if self.store is not None:
            # Lets a peer that times out name the processes that never reached this phase.
            try:
                self.store.set(f"accel_check/{phase}/{self.launch.rank}", "1")
            except Exception:
                self.store = None

    def missing_ranks(self, phase: str) -> list[int]:
        """Ranks that never entered `phase` (collective phases only; others are this rank's own)."""
        if self.store is None or phase not in COLLECTIVE_PHASES:
            return []
        missing = []
        try:
            for rank in range(self.launch.world_size):
                if not self.store.check([f"accel_check/{phase}/{rank}"]):
                    missing.append(rank)
        except Exception:
            return []
        return missing

    def problem(self, message: str) -> None:
        self.report["problems"].append(message)


def detect_accelerator(state: CheckState) -> tuple[str, Any]:
    """torch_npu importable -> npu, else CUDA -> cuda, else cpu. Returns (name, torch module)."""
    import torch

    if importlib.util.find_spec("torch_npu") is not None:
        try:
            importlib.import_module("torch_npu")
        except Exception as exc:
            state.problem(
                f"torch_npu is installed but does not import ({type(exc).__name__}: {exc}); "
                "is the CANN environment sourced (set_env.sh)?"
            )
            return "npu", torch
        return "npu", torch
    if torch.cuda.is_available():
        return "cuda", torch
    return "cpu", torch


def device_module(torch: Any, accelerator: str) -> Any:
    return getattr(torch, accelerator) if accelerator in ("npu", "cuda") else None


def collect_versions(state: CheckState, torch: Any, accelerator: str) -> None:
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "torch_npu": None,
        "cann": None,
        "cann_source": None,
        "deepspeed": None,
        "deepspeed_accelerator": None,
    }
    if "torch_npu" in sys.modules:
        versions["torch_npu"] = getattr(sys.modules["torch_npu"], "__version__", None)
        mismatch = torch_npu_mismatch(versions["torch"], versions["torch_npu"])
        if mismatch:
            state.problem(mismatch)
    cann, source = read_cann_version(dict(os.environ))
    versions["cann"], versions["cann_source"] = cann, source
    if accelerator == "npu" and cann is None:
        state.report["warnings"].append(
            f"CANN version not found under $ASCEND_TOOLKIT_HOME or {CANN_HOME_DEFAULT}"
        )
    try:
        deepspeed = importlib.import_module("deepspeed")
        versions["deepspeed"] = getattr(deepspeed, "__version__", None)
        from deepspeed.accelerator import get_accelerator

        ds_name = getattr(get_accelerator(), "_name", None)
        versions["deepspeed_accelerator"] = ds_name
        if ds_name != accelerator:
            state.problem(
                f"DeepSpeed picks accelerator {ds_name!r} but this process sees {accelerator!r}"
                + (
                    f" (DS_ACCELERATOR={os.environ['DS_ACCELERATOR']})"
                    if os.environ.get("DS_ACCELERATOR")
                    else ""
                )
            )
    except Exception as exc:
        message = f"deepspeed does not import: {type(exc).__name__}: {exc}"
        if state.opts.allow_missing_deepspeed:
            state.report["warnings"].append(message)
        else:
            state.problem(message)
    state.report["versions"] = versions


def measure_device(state: CheckState, torch: Any, accelerator: str, index: int, slow: bool) -> dict[str, Any]:
    """One device: free/total memory where the backend tells, and a bf16 matmul TFLOP/s figure."""
    entry: dict[str, Any] = {
        "index": index,
        "rank": state.launch.rank,
        "host": state.host,
        "node_rank": state.launch.node_rank,
        "tflops": None,
        "mem_free_mb": None,
        "mem_total_mb": None,
        "outlier": False,
        "error": None,
    }
    module = device_module(torch, accelerator)
    try:
        if module is not None:
            module.set_device(index)
            try:
                free, total = module.mem_get_info(index)
                entry["mem_free_mb"] = round(free / 2**20)
                entry["mem_total_mb"] = round(total / 2**20)
            except Exception as exc:
                state.report["warnings"].append(f"device {index}: memory info unavailable ({exc})")
        fault = state.fault_kind_here()
        if fault == "fail":
            raise RuntimeError(f"injected fault ({FAULT_ENV}=fail:{state.launch.rank})")
        if fault == "exit":
            sys.stderr.write(f"accel-check[rank {state.launch.rank}] injected hard exit\n")
            sys.stderr.flush()
            os._exit(EXIT_FAIL)
        tflops = matmul_tflops(torch, accelerator, index, state.opts.matmul_size, state.opts.matmul_seconds)
        if slow:
            tflops /= 10.0
        entry["tflops"] = round(tflops, 4)
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        state.problem(f"{state.host} device {index} (rank {state.launch.rank}): {entry['error']}")
    return entry


def matmul_tflops(torch: Any, accelerator: str, index: int, size: int, seconds: float) -> float:
    size = size or DEFAULT_MATMUL_SIZE[accelerator]
    device = torch.device(accelerator, index) if accelerator != "cpu" else torch.device("cpu")
    module = device_module(torch, accelerator)

    def sync() -> None:
        if module is not None:
            module.synchronize()

    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    out = torch.empty(size, size, dtype=torch.bfloat16, device=device)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    sync()
    start = time.perf_counter()
    torch.matmul(a, b, out=out)
    sync()
    single = max(time.perf_counter() - start, 1e-7)
    # Batch enough matmuls per sample (~10 ms) that the sync overhead does not count.
    per_sample = max(1, int(0.01 / single))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 200):
        start = time.perf_counter()
        for _ in range(per_sample):
            torch.matmul(a, b, out=out)
        sync()
        samples.append((time.perf_counter() - start) / per_sample)
    # The best sample: what the device can do; a slow card is slow in every sample, while a
    # preempted process (shared CPU, a busy host) is slow in only some.
    return 2.0 * size**3 / min(samples) / 1e12


def _stall_forever(state: CheckState) -> None:
    sys.stderr.write(f"accel-check[rank {state.launch.rank}] injected stall (phase {state.phase!r})\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)


class CollectiveFailed(Exception):
    pass


def run_collective(state: CheckState, phase: str, action: Callable[[], Any]) -> Any:
    """Run one collective; on error name the phase, who never arrived and whether it timed out."""
    state.enter(phase)
    started = time.monotonic()
    try:
        return action()
    except Exception as exc:
        elapsed = time.monotonic() - started
        timed_out = (
            elapsed >= 0.9 * state.opts.collective_timeout
            or "timeout" in str(exc).lower()
            or ("timed out" in str(exc).lower())
        )
        state.timed_out = state.timed_out or timed_out
        missing = state.missing_ranks(phase)
        who = f"; rank(s) {', '.join(map(str, missing))} never reached it" if missing else ""
        cause = (
            f"did not complete within {state.opts.collective_timeout:g} s "
            f"(a peer process stalled or died{who})"
            if timed_out
            else f"failed after {elapsed:.1f} s{who}"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        backend = BACKEND_FOR.get(state.report["accelerator"] or "cpu")
        message = (
            f"{phase} ({backend}, {state.launch.world_size} processes) {cause}: "
            f"{type(exc).__name__}: {first_line[:300]}"
        )
        state.job_problems.append(message)
        raise CollectiveFailed(message) from exc


def measure_allreduce(state: CheckState, torch: Any, dist: Any, accelerator: str) -> dict[str, Any]:
    """nccl-tests style: algbw = bytes / time per op, busbw = algbw x 2(n-1)/n; plus a correctness check."""
    n = state.launch.world_size
    numel = max(1, int(state.opts.allreduce_mb * 2**20 / 4))
    index = state.measured_index
    device = torch.device(accelerator, index) if accelerator != "cpu" else torch.device("cpu")
    module = device_module(torch, accelerator)

    def sync() -> None:
        if module is not None:
            module.synchronize()

    pattern = (torch.arange(numel, dtype=torch.float32, device=device) % 251) + 1
    tensor = pattern * (state.launch.rank + 1)
    dist.all_reduce(tensor)
    sync()
    expected = pattern * (n * (n + 1) / 2.0)
    ok = bool(torch.allclose(tensor, expected, rtol=1e-5, atol=0.0))
    dist.barrier()
    start = time.perf_counter()
    for _ in range(state.opts.allreduce_iters):
        dist.all_reduce(tensor)
    sync()
    elapsed = time.perf_counter() - start
    return {"ok": ok, "seconds_per_op": elapsed / state.opts.allreduce_iters, "bytes": numel * 4}


def run_check(state: CheckState) -> int:
    opts = state.opts
    launch = state.launch
    state.enter("import torch")
    accelerator, torch = detect_accelerator(state)
    state.report["accelerator"] = accelerator
    if opts.expect_accelerator and accelerator != opts.expect_accelerator:
        state.problem(f"{state.host}: accelerator is {accelerator!r}, expected {opts.expect_accelerator!r}")
    if launch.local_rank == 0:
        state.enter("versions")
        collect_versions(state, torch, accelerator)
    module = device_module(torch, accelerator)
    if module is not None:
        try:
            state.report["device_count"] = int(module.device_count())
        except Exception as exc:
            state.problem(f"{state.host}: {accelerator} device_count failed: {exc}")
            state.report["device_count"] = 0
    else:
        state.report["device_count"] = launch.local_world_size if launch.distributed else 1

    dist = None
    if launch.distributed:
        import torch.distributed as dist_module

        dist = dist_module
        backend = BACKEND_FOR[accelerator]
        if module is not None and (state.report["device_count"] or 0) > 0:
            module.set_device(launch.local_rank % state.report["device_count"])
        state.enter("init_process_group")
        try:
            dist.init_process_group(
                backend=backend, timeout=datetime.timedelta(seconds=opts.collective_timeout)
            )
        except Exception as exc:
            state.timed_out = "timeout" in str(exc).lower() or "timed out" in str(exc).lower()
            state.job_problems.append(
                f"init_process_group ({backend}, {launch.world_size} processes) failed: "
                f"{type(exc).__name__}: {exc}"
            )
            return finish(state)
        try:
            from torch.distributed import distributed_c10d

            state.store = distributed_c10d._get_default_store()
        except Exception:
            state.store = None

    slow = state.fault_kind_here() == "slow"
    try:
        if module is None:
            if dist is not None:
                # CPU processes share the cores: measure one at a time so each figure is the whole CPU's.
                for turn in range(launch.world_size):
                    run_collective(state, "matmul turn barrier", dist.barrier)
                    if turn == launch.rank:
                        state.enter("matmul")
                        state.report["devices"].append(
                            measure_device(state, torch, accelerator, launch.local_rank, slow)
                        )
            else:
                state.enter("matmul")
                state.report["devices"].append(measure_device(state, torch, accelerator, 0, slow))
        elif (state.report["device_count"] or 0) < 1:
            state.problem(f"{state.host}: no {accelerator} device visible")
        elif dist is None:
            state.enter("matmul")
            for index in range(state.report["device_count"]):
                state.report["devices"].append(measure_device(state, torch, accelerator, index, slow))
        else:
            index = launch.local_rank % state.report["device_count"]
            state.measured_index = index
            state.enter("matmul")
            state.report["devices"].append(measure_device(state, torch, accelerator, index, slow))

        if dist is None:
            state.rank_reports = [state.report]
            if state.fault_kind_here() == "stall":
                # Alone there is no collective to stall in: this exercises the watchdog itself.
                state.enter("injected stall")
                _stall_forever(state)
            return finish(state)

        gathered: list[Any] = [None] * launch.world_size
        run_collective(
            state, "gather per-rank results", lambda: dist.all_gather_object(gathered, state.report)
        )
        state.rank_reports = [r for r in gathered if r is not None]

        if state.fault_kind_here() == "stall":
            state.enter("injected stall")
            _stall_forever(state)
        ar_raw = run_collective(
            state, "all_reduce", lambda: measure_allreduce(state, torch, dist, accelerator)
        )
        outcomes: list[Any] = [None] * launch.world_size
        run_collective(state, "gather all_reduce results", lambda: dist.all_gather_object(outcomes, ar_raw))
        state.allreduce = summarise_allreduce(state, outcomes)
    except CollectiveFailed:
        state.allreduce = state.allreduce or failed_allreduce(state)
        return finish(state)
    code = finish(state)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return code


def failed_allreduce(state: CheckState) -> dict[str, Any]:
    return {
        "backend": BACKEND_FOR.get(state.report["accelerator"] or "cpu"),
        "world_size": state.launch.world_size,
        "size_mb": state.opts.allreduce_mb,
        "iterations": state.opts.allreduce_iters,
        "algbw_gbps": None,
        "busbw_gbps": None,
        "min_busbw_gbps": state.opts.min_busbw or None,
        "ok": False,
    }


def summarise_allreduce(state: CheckState, outcomes: list[Any]) -> dict[str, Any]:
    n = state.launch.world_size
    valid = [o for o in outcomes if isinstance(o, dict)]
    slowest = max(o["seconds_per_op"] for o in valid)
    algbw = valid[0]["bytes"] / slowest / 1e9
    bad = [rank for rank, o in enumerate(outcomes) if not (isinstance(o, dict) and o.get("ok"))]
    if bad:
        state.job_problems.append(
            f"all_reduce returned wrong values on rank(s) {', '.join(map(str, bad))} "
            f"(backend {BACKEND_FOR[state.report['accelerator']]})"
        )
    summary = {
        "backend": BACKEND_FOR[state.report["accelerator"]],
        "world_size": n,
        "size_mb": state.opts.allreduce_mb,
        "iterations": state.opts.allreduce_iters,
        "algbw_gbps": round(algbw, 4),
        "busbw_gbps": round(bus_bandwidth(algbw, n), 4),
        "min_busbw_gbps": state.opts.min_busbw or None,
        "ok": not bad,
    }
    slow = busbw_problem(summary, state.opts.min_busbw)
    if slow:
        state.job_problems.append(slow)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------


class Output:
    """The real stdout, kept for the JSON; fd 1 is pointed at stderr so library chatter cannot corrupt it."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.json_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)


def finish(state: CheckState, extra_problem: str | None = None, reason: str | None = None) -> int:
    """Write this host's document (local rank 0 only) and the verdict line; return the exit code."""
    with state.emit_lock:
        if state.emitted:
            return EXIT_FAIL
        state.emitted = True
        job_problems = list(state.job_problems)
        if extra_problem:
            job_problems.append(extra_problem)
        reports = state.rank_reports or [state.report]
        if not any(r.get("rank") == state.report["rank"] for r in reports):
            reports = [*reports, state.report]
        if reason and state.launch.distributed and state.allreduce is None:
            state.allreduce = failed_allreduce(state)
        extra: dict[str, Any] = {"phase": state.phase} if reason else {}
        if reason:
            extra["aborted"] = reason
        doc = build_host_document(
            reports,
            (state.launch.node_rank, state.host),
            state.allreduce,
            job_problems,
            state.opts.expect_devices,
            state.opts.outlier_ratio,
            extra,
            min_tflops=state.opts.min_tflops or None,
        )
        if doc["verdict"] == "PASS":
            code = EXIT_PASS
        elif state.timed_out or reason == "timeout":
            code = EXIT_TIMEOUT
        else:
            code = EXIT_FAIL
        doc["exit_code"] = code
        if state.launch.local_rank == 0:
            write_document(state, doc)
            sys.stderr.write(doc["summary"] + "\n")
        else:
            # The host's verdict comes from its local rank 0; other ranks only say what they saw themselves.
            seen = state.report["problems"] + ([extra_problem] if extra_problem else [])
            for problem in seen:
                sys.stderr.write(f"accel-check[rank {state.launch.rank}] {state.host}: {problem}\n")
        sys.stderr.flush()
        return code


def write_document(state: CheckState, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False)
    if state.opts.json_out:
        path = state.opts.json_out.replace("{host}", state.host).replace(
            "{node_rank}", str(state.launch.node_rank)
        )
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            sys.stderr.write(f"accel-check: cannot write --json-out {path}: {exc}\n")
    output = state.output
    if output is not None and not state.opts.no_stdout_json:
        output.json_stream.write(text + "\n")
        output.json_stream.flush()


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        fault = parse_fault(os.environ.get(FAULT_ENV, ""))
        launch = launch_env_from(dict(os.environ), opts.local_rank)
    except ValueError as exc:
        sys.stderr.write(f"accel-check: {exc}\n")
        return EXIT_USAGE
    host = opts.host_name or os.environ.get("ACCEL_CHECK_HOST") or socket.gethostname()
    state = CheckState(opts, launch, host)
    state.fault = fault
    state.output = Output()
    outcome: dict[str, int] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["code"] = run_check(state)
        except BaseException as exc:
            state.problem(f"{host} rank {launch.rank}: unexpected error in phase {state.phase!r}: {exc!r}")
            sys.stderr.write(traceback.format_exc())
            outcome["code"] = finish(state)
        finally:
            done.set()

    signal.signal(signal.SIGTERM, _on_sigterm)
    # Python runs signal handlers in the main thread only: the check runs in a worker thread so that the
    # main thread, waiting here, can report a stall or a launcher's SIGTERM even while a collective blocks.
    worker = threading.Thread(target=work, name="accel-check", daemon=True)
    worker.start()
    try:
        finished = done.wait(opts.timeout)
    except _Terminated as term:
        missing = state.missing_ranks(state.phase)
        who = f"; rank(s) {', '.join(map(str, missing))} never reached it" if missing else ""
        finish(
            state,
            f"rank {launch.rank} was stopped by {term} in phase {state.phase!r} (the launcher stops every "
            f"process when one exits){who}",
            reason="terminated",
        )
        return EXIT_FAIL
    if not finished:
        missing = state.missing_ranks(state.phase)
        who = f"; rank(s) {', '.join(map(str, missing))} never reached it" if missing else ""
        finish(
            state,
            f"timed out after {opts.timeout:g} s in phase {state.phase!r} "
            f"(rank {launch.rank} on {host}){who}",
            reason="timeout",
        )
        return EXIT_TIMEOUT
    return outcome.get("code", EXIT_FAIL)


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a backend's atexit hook must not be able to hang a finished check.
    os._exit(exit_code)
