"""How the `accel_check` role launches `accel_check.py` in the training container, and what it makes of it.

The role stays thin: `check_plan` builds the launch (one `torchrun` per server, inside the training
container, the way the training job is launched), `parse_document` finds the check's JSON on stdout, and
`check_result` turns the document (or its absence) into the `llava_report_accel` fact and ONE failure
message naming the cause with the measured figures. Pure functions on plain data: unit-tested in
tests/unit/test_accel_launch.py. The schema of the document is in docs/accel_check.md.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from llava_devserver.render import job_environment

ACCELERATORS = ("npu", "cuda", "cpu")
# Seconds the wrapper gives the launcher beyond the check's own bound (interpreter start, torchrun teardown).
LAUNCH_SLACK_S = 30
KILL_AFTER_S = 10
# Seconds torchrun may take to end once this server's document is written.
DOCUMENT_GRACE_S = 10
# Exit status of coreutils `timeout` when it had to stop the command.
TIMEOUT_EXIT = 124
_NAMED_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("collective timed out", re.compile(r"did not complete within|timed out after", re.IGNORECASE)),
    ("collective failed", re.compile(r"^(all_reduce|init_process_group|gather|matmul turn)", re.IGNORECASE)),
    ("process stopped", re.compile(r"was stopped by|never reached", re.IGNORECASE)),
    ("slow collective", re.compile(r"bus bandwidth [\d.e+-]+ GB/s .*is below the minimum", re.IGNORECASE)),
    (
        "wrong device count",
        re.compile(r"\bfound \d+ .*expected \d+|processes per node but only", re.IGNORECASE),
    ),
    ("device outlier", re.compile(r"below [\d.]+ x the peer median", re.IGNORECASE)),
    ("slow device", re.compile(r"TFLOP/s is below the minimum", re.IGNORECASE)),
    ("DeepSpeed does not see the accelerator", re.compile(r"deepspeed", re.IGNORECASE)),
    ("wrong accelerator", re.compile(r"accelerator is '\w+', expected", re.IGNORECASE)),
    ("torch_npu does not match torch", re.compile(r"torch_npu", re.IGNORECASE)),
    ("device error", re.compile(r"device \d+ \(rank \d+\)", re.IGNORECASE)),
)
_FIXES = {
    "collective timed out": "a process or a server stalled: look at the stderr of the check (below) and at "
    "the network between the servers (HCCL_IF_IP/HCCL_SOCKET_IFNAME in train_env, the security group, "
    "master_port+1)",
    "collective failed": "the collective library could not connect all processes: check HCCL_IF_IP/"
    "HCCL_SOCKET_IFNAME in train_env and that the servers reach each other on the check's port",
    "process stopped": "one process of the check died; its error is in the stderr below",
    "slow collective": "the collective is slower than accel_check_min_busbw_gbs: look at the device network "
    "(`hccn_tool -i N -link -g`, `-net_health -g`, `-link_stat -g`), at HCCL_IF_IP/HCCL_SOCKET_IFNAME in "
    "train_env, or lower the threshold if this fleet's network is slower by design",
    "slow server": "every collective with this server is slow: check its NPUs' network ports "
    "(`hccn_tool -i N -link -g`, `-net_health -g`, `-link_stat -g` for flaps, the port speed), its cabling "
    "and switch port, or leave it out of the inventory until it is repaired",
    "broken server": "every collective with this server fails: read the problems of its pair runs "
    "(report.json, facts.accel.pairs), check its NPUs' network ports (`hccn_tool -i N -link -g`, "
    "`-net_health -g`) and that the other servers reach it on the check's port, or leave it out of the "
    "inventory",
    "wrong device count": "set npu_devices to the cards this server has, or have the missing card repaired "
    "(`npu-smi info` on the server)",
    "device outlier": "this card is far slower than its peers: check `npu-smi info -t health -i <card>`, "
    "leave it out of npu_devices or request a repair",
    "slow device": "this card computes below accel_check_min_tflops: check `npu-smi info -t health -i "
    "<card>` and its power and temperature (`npu-smi info -t power`/`-t temp`), leave it out of npu_devices "
    "or request a repair",
    "DeepSpeed does not see the accelerator": "the image's DeepSpeed would not use the NPU (set "
    "DS_ACCELERATOR=npu in train_env, or use an image whose deepspeed has the NPU accelerator)",
    "wrong accelerator": "torch in the container does not see the expected accelerator: is torch_npu "
    "installed and the CANN environment (cann_set_env) present in the image?",
    "torch_npu does not match torch": "use an image whose torch_npu release matches its torch",
    "device error": "a device failed to compute: check `npu-smi info` and the driver",
    "launcher": "the check did not start or ended without a result: read the stderr below",
    "rendezvous": "not every server of the run reached the check's rendezvous in time: the other servers "
    "failed earlier or cannot reach the first server on the check's port",
}


class AccelPlanError(ValueError):
    """The check cannot be launched from these settings (names the host and the setting)."""


def _int(llava: Mapping[str, Any], key: str) -> int:
    value = llava.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AccelPlanError(f"{llava.get('host', '?')}: llava.{key}: expected an integer, got {value!r}")
    return value


def run_nodes(llava: Mapping[str, Any], peers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The servers that take part in this run's check, by node rank: `peers` (the llava dicts of the hosts
    still in the play) plus this one. Under --limit or after a server failed an earlier play, fewer than
    `llava.nnodes`: the check then spans the servers that are here (ranks renumbered 0..n-1)."""
    by_host: dict[str, Mapping[str, Any]] = {}
    for peer in [*peers, llava]:
        if isinstance(peer, Mapping) and peer.get("host"):
            by_host[str(peer["host"])] = peer
    return sorted(by_host.values(), key=lambda p: (_int(p, "node_rank"), str(p["host"])))


def check_plan(
    llava: Mapping[str, Any],
    peers: Sequence[Mapping[str, Any]],
    *,
    script: str,
    json_out: str,
    expect_accelerator: str,
    expect_devices: int | None = None,
    timeout_s: int = 300,
    rdzv_timeout_s: int = 120,
    collective_timeout_s: int = 0,
    master_port: int | None = None,
    matmul_size: int = 0,
    matmul_seconds: float = 0.2,
    outlier_ratio: float = 0.5,
    allreduce_mb: float = 64.0,
    allreduce_iters: int = 5,
    min_tflops: float = 0.0,
    min_busbw_gbs: float = 0.0,
    fault: str = "",
) -> dict[str, Any]:
    """The `docker exec` argv that runs the check on this server, and the numbers the role bounds it by.

    One torchrun per server (`--nnodes/--node_rank/--master_addr/--master_port`, no SSH between servers),
    on a port next to the job's (master_port + 1 unless given), the CANN environment sourced and the job's
    environment (`render.job_environment`, device visibility and train_env) set, as the training job runs.
    """
    host = str(llava.get("host", "?"))
    if expect_accelerator not in ACCELERATORS:
        raise AccelPlanError(
            f"{host}: accel_check_expect_accelerator: {expect_accelerator!r} is not one of "
            f"{', '.join(ACCELERATORS)}"
        )
    nproc = _int(llava, "nproc_per_node")
    expected = nproc if expect_devices in (None, "", 0) else int(expect_devices)
    if expected < 1:
        raise AccelPlanError(f"{host}: accel_check_expect_devices: must be at least 1, got {expected}")
    if timeout_s < 10 or rdzv_timeout_s < 5:
        raise AccelPlanError(
            f"{host}: accel_check_timeout must be >= 10 s and accel_check_rdzv_timeout >= 5 s"
        )
    if min_tflops < 0 or min_busbw_gbs < 0:
        raise AccelPlanError(
            f"{host}: accel_check_min_tflops and accel_check_min_busbw_gbs must be positive (0: no threshold)"
        )
    if collective_timeout_s and not 0 < collective_timeout_s < timeout_s:
        raise AccelPlanError(
            f"{host}: accel_check_collective_timeout ({collective_timeout_s}) must be below "
            f"accel_check_timeout ({timeout_s})"
        )
    port = _int(llava, "master_port") + 1 if master_port in (None, "", 0) else int(master_port)
    if not 1 <= port <= 65535:
        raise AccelPlanError(f"{host}: accel_check_master_port: {port} is not a port")
    nodes = run_nodes(llava, peers)
    names = [str(n["host"]) for n in nodes]
    node_rank = names.index(host)
    nnodes = len(nodes)
    # One node talks to itself over loopback (as the job does); several meet at the first one's address.
    first = nodes[0]
    master_addr = (
        "127.0.0.1"
        if nnodes == 1
        else str(first["master_addr"] if _int(first, "node_rank") == 0 else first["ansible_host"])
    )
    env = job_environment(llava)
    # The job's HCCL connect timeout (1200 s) would outlast the check: bound it by the collective timeout.
    collective = collective_timeout_s or max(1, int(0.6 * timeout_s))
    env["HCCL_CONNECT_TIMEOUT"] = str(min(collective, int(env.get("HCCL_CONNECT_TIMEOUT", collective))))
    if fault:
        env["ACCEL_CHECK_FAULT"] = fault
    check_args = [
        "--expect-devices", str(expected),
        "--expect-accelerator", expect_accelerator,
        "--timeout", str(timeout_s),
        "--host-name", host,
        "--json-out", json_out,
        "--outlier-ratio", f"{outlier_ratio:g}",
        "--allreduce-mb", f"{allreduce_mb:g}",
        "--allreduce-iters", str(allreduce_iters),
        "--matmul-seconds", f"{matmul_seconds:g}",
    ]  # fmt: skip
    if matmul_size:
        check_args += ["--matmul-size", str(matmul_size)]
    if collective_timeout_s:
        check_args += ["--collective-timeout", str(collective_timeout_s)]
    if min_tflops:
        check_args += ["--min-tflops", f"{min_tflops:g}"]
    if min_busbw_gbs:
        check_args += ["--min-busbw", f"{min_busbw_gbs:g}"]
    torchrun = [
        "torchrun",
        "--nnodes", str(nnodes),
        "--node_rank", str(node_rank),
        "--nproc_per_node", str(nproc),
        "--master_addr", master_addr,
        "--master_port", str(port),
        # Static rendezvous waits 600 s for missing servers by default.
        "--rdzv-conf", f"timeout={rdzv_timeout_s}",
        script,
        *check_args,
    ]  # fmt: skip
    wrapper_s = rdzv_timeout_s + timeout_s + LAUNCH_SLACK_S
    shell = launch_script(str(llava.get("cann_set_env") or ""), json_out, wrapper_s, torchrun)
    argv = ["docker", "exec"]
    for name, value in sorted(env.items()):
        argv += ["--env", f"{name}={value}"]
    argv += [str(llava["container_name"]), "bash", "-c", shell]
    return {
        "argv": argv,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "nodes": names,
        "job_nnodes": _int(llava, "nnodes"),
        "master_addr": master_addr,
        "master_port": port,
        "nproc_per_node": nproc,
        "expected_devices": expected,
        "expect_accelerator": expect_accelerator,
        "min_busbw_gbs": min_busbw_gbs or None,
        "wrapper_timeout_s": wrapper_s,
        # What Ansible's async bound must exceed, so that the in-container bound always fires first.
        "async_s": wrapper_s + KILL_AFTER_S + LAUNCH_SLACK_S,
    }


def launch_script(
    cann_set_env: str,
    json_out: str,
    wrapper_s: int,
    torchrun: Sequence[str],
    grace_s: int = DOCUMENT_GRACE_S,
) -> str:
    """The bash script `docker exec` runs in the container.

    torchrun runs under `timeout` (which leads its own process group and signals all of it: torchrun and
    every worker). Once this server's document is written (`--json-out`, atomically), torchrun gets
    `grace_s` to end: a healthy server's torchrun otherwise waits in its exit barrier (300 s, not
    configurable) for the torchrun of a server whose check failed. It is then stopped and the script
    exits 0: the verdict is the document's.
    """
    q = shlex.quote
    command = " ".join(q(a) for a in torchrun)
    return "\n".join(
        [
            f"json={q(json_out)}",
            'rm -f "$json"',
            f"if [ -f {q(cann_set_env)} ]; then set +u; . {q(cann_set_env)}; fi",
            f"timeout --kill-after={KILL_AFTER_S} {wrapper_s} {command} &",
            "pid=$!",
            'while kill -0 "$pid" 2>/dev/null; do',
            '  if [ -s "$json" ]; then',
            "    n=0",
            f'    while kill -0 "$pid" 2>/dev/null && [ "$n" -lt {grace_s} ]; do',
            "      sleep 1; n=$((n + 1))",
            "    done",
            '    if kill -0 "$pid" 2>/dev/null; then',
            f'      echo "accel-check launch: torchrun still running {grace_s} s after this '
            "server's "
            'document (its exit barrier waits for the other servers): stopped" >&2',
            '      kill -TERM "$pid"; wait "$pid"; exit 0',
            "    fi",
            "    break",
            "  fi",
            "  sleep 1",
            "done",
            'wait "$pid"',
        ]
    )


def parse_document(stdout: str) -> dict[str, Any] | None:
    """The check's JSON document from the launch's stdout (local rank 0 prints only that); None if absent."""
    text = str(stdout or "")
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and "verdict" in value and "schema" in value:
            return value
    return None


def cause_of(problems: Sequence[str]) -> str:
    """The named cause of the first problem that has one (the order of _NAMED_CAUSES breaks ties)."""
    for name, pattern in _NAMED_CAUSES:
        if any(pattern.search(str(p)) for p in problems):
            return name
    return "check failed"


def _tail(text: str, lines: int = 8, width: int = 300) -> list[str]:
    kept = [line.rstrip()[:width] for line in str(text or "").splitlines() if line.strip()]
    return kept[-lines:]


def _figures(doc: Mapping[str, Any]) -> str:
    devices = [d for d in doc.get("devices") or [] if isinstance(d, Mapping)]
    per_device = ", ".join(
        f"{d.get('index')}: "
        + ("error" if d.get("tflops") is None else f"{d['tflops']:.3g}")
        + (" (outlier)" if d.get("outlier") else "")
        + (" (below the minimum)" if d.get("below_min") else "")
        for d in devices
    )
    parts = [
        f"accelerator {doc.get('accelerator')}",
        f"{doc.get('device_count')} device(s) (expected {doc.get('expected_devices')})",
    ]
    if per_device:
        floor = doc.get("min_tflops")
        parts.append(
            f"bf16 matmul TFLOP/s by device {per_device}; median {doc.get('tflops_median')}"
            + (f" (minimum {floor:g})" if floor else "")
        )
    allreduce = doc.get("allreduce")
    if isinstance(allreduce, Mapping):
        if allreduce.get("busbw_gbps") is not None:
            floor = allreduce.get("min_busbw_gbps")
            parts.append(
                f"all_reduce ({allreduce.get('backend')}, {allreduce.get('world_size')} processes, "
                f"{allreduce.get('size_mb')} MiB) busbw {allreduce['busbw_gbps']} GB/s"
                + (f" (minimum {floor:g} GB/s)" if floor else "")
            )
        else:
            parts.append(
                f"all_reduce ({allreduce.get('backend')}, {allreduce.get('world_size')} processes) failed"
            )
    versions = doc.get("versions") or {}
    if isinstance(versions, Mapping) and versions:
        shown = ", ".join(
            f"{k} {versions.get(k)}" for k in ("torch", "torch_npu", "cann", "deepspeed") if versions.get(k)
        )
        ds = versions.get("deepspeed_accelerator")
        parts.append(shown + (f" (DeepSpeed accelerator {ds})" if ds else ""))
    return "; ".join(p for p in parts if p)


def short_summary(doc: Mapping[str, Any]) -> str:
    """The document's summary without its `accel-check VERDICT HOST: ` prefix (the report shows both)."""
    summary = str(doc.get("summary") or "")
    return re.sub(r"^accel-check \w+ \S+: ", "", summary)


def collective_status(doc: Mapping[str, Any] | None, nnodes: int) -> str:
    """What the check's all_reduce says about the servers' collective: `ok`, `slow` (below its minimum),
    `failed` (no figure: it failed or timed out, or no document came back from a multi-server run) or
    `none` (one process alone measures no collective)."""
    if doc is None:
        return "failed" if nnodes > 1 else "none"
    allreduce = doc.get("allreduce")
    if not isinstance(allreduce, Mapping):
        return "none"
    busbw = allreduce.get("busbw_gbps")
    if busbw is None or allreduce.get("ok") is False:
        return "failed"
    floor = allreduce.get("min_busbw_gbps")
    if floor and float(busbw) < float(floor):
        return "slow"
    return "ok"


def run_scope(run: Mapping[str, Any]) -> str:
    if run.get("nnodes") != run.get("job_nnodes"):
        return f"{run.get('nnodes')} of {run.get('job_nnodes')} servers"
    return f"{run.get('nnodes')} server(s)"


def document_failure(
    host: str,
    doc: Mapping[str, Any],
    problems: Sequence[str],
    scope: str,
    stderr: str = "",
    cause: str | None = None,
    notes: Sequence[str] = (),
) -> tuple[str, str]:
    """(cause, the ONE failure message) of a host whose document has problems: the named cause, the first
    problem, the measured figures, every problem, `notes`, what to do, and a collective's stderr tail."""
    cause = cause or cause_of(problems)
    fix = _FIXES.get(cause, "read the problems above")
    first_problem = problems[0] if problems else "no detail"
    lines = [f"{host}: accelerator check FAILED ({cause}) over {scope}: {first_problem}"]
    if "devices" in doc:  # a document of the check (not the stand-in of a run that wrote none)
        lines.append(f"Measured: {_figures(doc)}.")
    if len(problems) > 1:
        lines.append("All problems:")
        lines += [f"  - {p}" for p in problems]
    if doc.get("aborted"):
        lines.append(f"The check was cut short ({doc['aborted']}) in phase {doc.get('phase')!r}.")
    lines += list(notes)
    lines.append(f"What to do: {fix}.")
    if cause in ("collective timed out", "collective failed", "process stopped"):
        tail = _tail(str(stderr or ""), lines=5)
        if tail:
            lines.append("stderr of the check (last lines):")
            lines += [f"  {line}" for line in tail]
    return cause, "\n".join(lines)


def check_result(
    host: str,
    stdout: str,
    stderr: str,
    rc: int | None,
    plan: Mapping[str, Any],
    seconds: float | None = None,
) -> dict[str, Any]:
    """`{failed, cause, message, report, collective}`: `report` is the fact `llava_report_accel` (the check's
    document, schema 1, plus `run`: how it was launched), `message` the ONE failure text (empty when it
    passed), `collective` the all_reduce's status (`collective_status`)."""
    doc = parse_document(stdout)
    run = {
        "nnodes": plan.get("nnodes"),
        "job_nnodes": plan.get("job_nnodes"),
        "node_rank": plan.get("node_rank"),
        "nodes": list(plan.get("nodes") or []),
        "master_addr": plan.get("master_addr"),
        "master_port": plan.get("master_port"),
        "nproc_per_node": plan.get("nproc_per_node"),
        "rc": rc,
        "seconds": None if seconds is None else round(float(seconds), 1),
    }
    scope = run_scope(run)
    collective = collective_status(doc, int(plan.get("nnodes") or 1))
    if doc is None:
        stderr_text = str(stderr or "")
        if rc == TIMEOUT_EXIT:
            problem = (
                f"{host}: the check did not end within {plan.get('wrapper_timeout_s')} s and was killed "
                "(accel_check_timeout + accel_check_rdzv_timeout)"
            )
            cause = "collective timed out"
        elif re.search(r"waiting for clients|rendezvous|DistStoreError|TCPStore", stderr_text, re.IGNORECASE):
            joined = re.search(r"(\d+)/(\d+) clients joined", stderr_text)
            problem = (
                f"{host}: torchrun's rendezvous at {run['master_addr']}:{run['master_port']} did not complete"
                + (f" ({joined.group(1)} of {joined.group(2)} servers joined)" if joined else "")
            )
            cause = "rendezvous"
        else:
            problem = f"{host}: the check ended (exit {rc}) without a result"
            cause = "launcher"
        report: dict[str, Any] = {
            "schema": 1,
            "host": host,
            "verdict": "FAIL",
            "summary": f"accel-check FAIL {host}: {problem}",
            "problems": [problem],
            "job_problems": [problem] if collective == "failed" else [],
            "warnings": [],
            "exit_code": rc,
            "run": run,
        }
        message = "\n".join(
            [
                f"{host}: accelerator check FAILED ({cause}) over {scope}: {problem}.",
                f"What to do: {_FIXES[cause]}.",
                "stderr of the check (last lines):",
                *(f"  {line}" for line in _tail(stderr_text)),
            ]
        )
        return {
            "failed": True,
            "cause": cause,
            "message": message,
            "report": report,
            "collective": collective,
        }

    report = {**doc, "run": run}
    problems = [str(p) for p in doc.get("problems") or []]
    passed = doc.get("verdict") == "PASS" and not problems
    if passed and rc not in (0, None):
        # A PASS document with a failing launcher: another process of this server died after it.
        problems = [f"{host}: the check passed but torchrun exited {rc}"]
        passed = False
    if passed:
        return {"failed": False, "cause": None, "message": "", "report": report, "collective": collective}
    cause, message = document_failure(host, doc, problems, scope, str(stderr or ""))
    return {"failed": True, "cause": cause, "message": message, "report": report, "collective": collective}
