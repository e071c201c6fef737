"""Provisioning benchmark on the simulated fleet (`make bench`): writes docs/benchmarks.md and prints it.

For each fleet size N (default 1, 2, 4, 8), on fresh simulated servers (`llava-devserver sim up --no-job`):
- Ansible, full converge: the host-level part of site.yml (validate, preflight, host), all servers in
  parallel, through llava_devserver.runner (as `llava-devserver up` does);
- Ansible, no-op re-run: the same again on the now converged servers (must change nothing);
- baseline, full: the guide's step 1 by hand, one server after another over SSH (npu-smi info,
  npu-smi info -l, docker -v or apt install docker.io, the ip_forward check/fix of /etc/sysctl.conf), on
  fresh servers;
- baseline, re-run: the same commands again (Docker is there now, so no install).

With `--noop-only` the benchmark is the whole `site.yml` instead: for each N, fresh servers with the job
(`sim up` with the stand-in package, assets and training image), one converge that runs the job to its end
(not timed), then the no-op rerun over the healthy fleet with the finished job, timed: wall seconds, control
node CPU seconds (in all and per server), what changed, and whether the accelerator check ran (it must not:
the job has finished). `--json` prints one JSON object per size: `{"servers": N, "noop_wall_s": ...,
"noop_control_cpu_s": ..., "noop_control_cpu_s_per_server": ..., "changed": ..., "accel_check_ran": false}`.
Raw results: .cache/bench/provision-noop.json; the table goes into docs/benchmarks.md beside the other.

    python bench/provision_bench.py [--sizes 1,2,4,8] [--no-baseline] [--keep]
    python bench/provision_bench.py --noop-only [--sizes 1 2] [--json]

Where the time goes is measured, not guessed: per run the control node's CPU seconds (this process and its
children: ansible-playbook, ssh), the simulated servers' CPU seconds (cgroup v1 cpuacct of their
containers), the load average, and for Ansible the slowest tasks (ansible.posix.profile_tasks).
Raw results accumulate in .cache/bench/provision.json; the table is regenerated after every size, so an
interrupted run still leaves a table of what was measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llava_devserver import inventory as inv
from llava_devserver.runner import find_project_root, run_playbook

ROOT = find_project_root()
CLI = str(Path(sys.executable).parent / "llava-devserver")
RESULTS = ROOT / ".cache" / "bench" / "provision.json"
NOOP_RESULTS = ROOT / ".cache" / "bench" / "provision-noop.json"
# The accel_check task that starts processes on the accelerators: it ran when it has an ok or failed event.
ACCEL_RUN_TASK = "Run the check with torchrun on every server at once"
DOC = ROOT / "docs" / "benchmarks.md"
FLEET_PREFIX = "fleetbench"
SIM_DEVICES_PER_HOST = 2  # `sim up` default: cards given to the training container
# The container playbook needs the job stand-ins (training image), which `sim up --no-job` does not build.
HOST_LEVEL = ("validate", "preflight", "host")
CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/docker")

# The guide's step 1 (guide-6.3.906, "检查环境"), on Debian: apt instead of yum, same checks and fixes.
BASELINE_SCRIPT = r"""
set -e
npu-smi info >/dev/null
npu-smi info -l | grep Total
docker -v || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  docker -v
}
if ! sysctl -p 2>/dev/null | grep -q 'net.ipv4.ip_forward *= *1'; then
  sed -i 's/net\.ipv4\.ip_forward=0/net\.ipv4\.ip_forward=1/g' /etc/sysctl.conf
  grep -q '^net.ipv4.ip_forward' /etc/sysctl.conf || echo 'net.ipv4.ip_forward=1' >> /etc/sysctl.conf
  sysctl -p | grep net.ipv4.ip_forward
fi
"""


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# ------------------------------------------------------------------------------------------ measuring


def children_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def server_cpu(fleet: str) -> float | None:
    """CPU seconds used so far by the fleet's server containers (and everything inside them)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"name=llava-sim-{fleet}-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    total = 0
    for cid in ids:
        usage = CGROUP_CPU / cid / "cpuacct.usage"
        if not usage.is_file():
            return None
        total += int(usage.read_text())
    return total / 1e9


def measure(fleet: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    cpu0, srv0, t0 = children_cpu(), server_cpu(fleet), time.monotonic()
    outcome = action()
    wall = time.monotonic() - t0
    cpu1, srv1 = children_cpu(), server_cpu(fleet)
    return {
        "wall_s": round(wall, 1),
        "control_cpu_s": round(cpu1 - cpu0, 1),
        "server_cpu_s": round(srv1 - srv0, 1) if srv0 is not None and srv1 is not None else None,
        "load_before": round(load, 2),
        **outcome,
    }


# ------------------------------------------------------------------------------------------ the fleet


def sim_up(fleet: str, hosts: int, out_dir: Path, job: bool = False) -> Path:
    subprocess.run([CLI, "sim", "down", "--name", fleet], check=True, capture_output=True)
    started = time.monotonic()
    subprocess.run(
        [CLI, "sim", "up", "--hosts", str(hosts), "--name", fleet, "-o", str(out_dir)]
        + ([] if job else ["--no-job"]),
        check=True,
        capture_output=True,
    )
    log(f"{fleet}: {hosts} fresh servers in {time.monotonic() - started:.0f} s")
    if not job:
        package = out_dir / "AscendCloud-6.3.906-20240101000000.zip"  # --no-job: a stand-in file to validate
        package.write_bytes(b"PK\x05\x06" + bytes(18))
    return out_dir / "devserver.ini"


def sim_down(fleet: str) -> None:
    subprocess.run([CLI, "sim", "down", "--name", fleet], check=True, capture_output=True)


def host_level_playbook(work: Path) -> tuple[Path, list[str]]:
    """site.yml's host-level playbooks that exist now, imported by absolute path, in site.yml's order."""
    names = [n for n in HOST_LEVEL if (ROOT / "playbooks" / f"{n}.yml").is_file()]
    lines = ["---"]
    for name in names:
        lines += [
            f"- name: {name}",
            f"  ansible.builtin.import_playbook: {ROOT / 'playbooks' / f'{name}.yml'}",
        ]
    path = work / "host-level.yml"
    path.write_text("\n".join(lines) + "\n")
    return path, names


TASK_TIME = re.compile(r"^(?P<task>.+?) -+ (?P<secs>[0-9.]+)s$")  # long names get a single dash


def slowest_tasks(ansible_log: Path, n: int = 5) -> list[tuple[str, float]]:
    """From profile_tasks' TASKS RECAP (slowest first)."""
    text = ansible_log.read_text(errors="replace")
    recap = text.split("TASKS RECAP", 1)[-1] if "TASKS RECAP" in text else ""
    found = [(m["task"].strip(), float(m["secs"])) for m in map(TASK_TIME.match, recap.splitlines()) if m]
    return found[:n]


def ansible_run(inventory: Path, playbook: Path, extravars: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    result = run_playbook(playbook, inventory, extravars=extravars, run_dir=run_dir)
    return {
        "ok": result.exit_code == 0,
        "changed": sum(s.changed for s in result.stats.values()),
        "failures": {h: m[:1] for h, m in result.failures.items()},
        "slowest": slowest_tasks(result.log_path),
        "log": str(result.log_path),
    }


def baseline_run(inventory: Path) -> dict[str, Any]:
    """The guide's commands, one server after another, one SSH session each, as a person would."""
    loaded = inv.load_inventory(inventory)
    per_host = []
    ok = True
    for host, variables in loaded.hosts.items():
        argv = ["ssh", "-o", "BatchMode=yes", "-i", str(variables["ansible_ssh_private_key_file"])]
        argv += shlex.split(str(variables.get("ansible_ssh_common_args", "")))
        argv += [f"{variables['ansible_user']}@{variables['ansible_host']}", BASELINE_SCRIPT]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True)
        per_host.append(round(time.monotonic() - started, 1))
        if done.returncode != 0:
            ok = False
            log(f"baseline {host}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    return {"ok": ok, "per_host_s": per_host}


def site_run(inventory: Path, run_dir: Path) -> dict[str, Any]:
    """The whole site.yml, as `llava-devserver up` runs it; whether the accelerator check started."""
    accel_hosts: set[str] = set()

    def on_event(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task") == ACCEL_RUN_TASK:
            accel_hosts.add(str(data.get("host")))

    result = run_playbook(ROOT / "site.yml", inventory, run_dir=run_dir, on_event=on_event)
    return {
        "ok": result.exit_code == 0,
        "changed": sum(s.changed for s in result.stats.values()),
        "failures": {h: m[:1] for h, m in result.failures.items()},
        "accel_check_ran": bool(accel_hosts),
        "slowest": slowest_tasks(result.log_path),
    }


def bench_noop(size: int, work: Path) -> dict[str, Any]:
    """Fresh servers with the job, one converge (the job runs to its end), then the timed no-op rerun."""
    fleet = f"{FLEET_PREFIX}-noop-{size}"
    try:
        inventory = sim_up(fleet, size, work / fleet, job=True)
        log(f"{size} servers: converge (the job runs to its end; not timed) ...")
        converge = site_run(inventory, NOOP_RESULTS.parent / "runs" / f"noop-{size}-converge")
        if not converge["ok"]:
            return {"servers": size, "ok": False, "failures": converge["failures"]}
        log(f"{size} servers: no-op rerun ...")
        noop = measure(fleet, lambda: site_run(inventory, NOOP_RESULTS.parent / "runs" / f"noop-{size}"))
    finally:
        sim_down(fleet)
    return {
        "servers": size,
        "measured_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "ok": noop["ok"],
        "noop_wall_s": noop["wall_s"],
        "noop_control_cpu_s": noop["control_cpu_s"],
        "noop_control_cpu_s_per_server": round(noop["control_cpu_s"] / size, 1),
        "noop_server_cpu_s": noop["server_cpu_s"],
        "changed": noop["changed"],
        "accel_check_ran": noop["accel_check_ran"],
        "load_before": noop["load_before"],
        "slowest": noop["slowest"],
    }


NOOP_HEADING = "## The whole site.yml, no-op rerun (`--noop-only`)"


def render_noop(rows: list[dict[str, Any]]) -> str:
    lines = [
        NOOP_HEADING,
        "",
        "A healthy fleet whose job has finished: the rerun must change nothing and run no accelerator check.",
        "",
        "| servers | measured | wall s | control CPU s | control CPU s / server | servers CPU s | changed "
        "| accel check ran | load before |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in sorted(rows, key=lambda r: int(r["servers"])):
        if not r.get("ok"):
            lines.append(f"| {r['servers']} | failed: {r.get('failures')} | | | | | | | |")
            continue
        server = "-" if r.get("noop_server_cpu_s") is None else f"{r['noop_server_cpu_s']:.0f}"
        lines.append(
            f"| {r['servers']} | {r['measured_at']} | {r['noop_wall_s']:.0f} | {r['noop_control_cpu_s']:.0f} "
            f"| {r['noop_control_cpu_s_per_server']:.1f} | {server} | {r['changed']} "
            f"| {'yes' if r['accel_check_ran'] else 'no'} | {r['load_before']} |"
        )
    lines += ["", "Slowest tasks of each rerun (profile_tasks):", ""]
    for r in sorted(rows, key=lambda r: int(r["servers"])):
        if r.get("slowest"):
            tasks = "; ".join(f"{task} {secs:.1f} s" for task, secs in r["slowest"])
            lines.append(f"- {_servers(str(r['servers']))}: {tasks}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- report


def load_results() -> dict[str, Any]:
    if RESULTS.is_file():
        return dict(json.loads(RESULTS.read_text()))
    return {"sizes": {}}


def save_results(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def _cell(run: dict[str, Any] | None) -> str:
    if not run:
        return "not run"
    mark = "" if run.get("ok") else " (failed)"
    return f"{run['wall_s']:.0f} s{mark}"


def _cpu(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    server = run.get("server_cpu_s")
    return f"{run['control_cpu_s']:.0f} / {'-' if server is None else f'{server:.0f}'}"


CPU_RUNS = (("ansible_full", "full converge"), ("ansible_noop", "no-op"))


def _cores(run: dict[str, Any] | None) -> str:
    """Average cores busy for this run: (control + servers CPU seconds) / wall seconds."""
    if not run or not run.get("wall_s") or run.get("server_cpu_s") is None:
        return "?"
    return f"{(run['control_cpu_s'] + run['server_cpu_s']) / run['wall_s']:.2f}"


def _floor(run: dict[str, Any] | None) -> str:
    """The shortest wall time the measured CPU seconds allow on this machine's cores."""
    if not run or run.get("server_cpu_s") is None:
        return ""
    cpu = run["control_cpu_s"] + run["server_cpu_s"]
    return f" ({cpu:.0f} CPU s: at least {cpu / (os.cpu_count() or 1):.0f} s on {os.cpu_count()} cores)"


def _servers(size: str) -> str:
    return "1 server" if size == "1" else f"{size} servers"


def render_doc(results: dict[str, Any]) -> str:
    sizes = sorted(results["sizes"], key=int)
    lines = [
        "# Provisioning benchmark",
        "",
        "Generated by `bench/provision_bench.py` (`make bench`); do not edit by hand.",
        f"Measured on {results.get('machine', '?')} (shared with other work: see `load before`), simulated",
        "DevServers (Docker containers reached over SSH; `apt install docker.io` from the Debian mirror",
        "inside each).",
        f"Playbooks: {', '.join(results.get('playbooks', []))} (the host-level part of site.yml).",
        "",
        "| servers | measured | Ansible full converge | Ansible no-op re-run | changed on re-run "
        "| baseline full (sequential SSH) | baseline re-run | CPU s control/servers, converge "
        "| CPU s control/servers, no-op | load before |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        r = results["sizes"][size]
        full, noop = r.get("ansible_full"), r.get("ansible_noop")
        lines.append(
            f"| {size} | {r.get('measured_at', '?')} | {_cell(full)} | {_cell(noop)} | "
            f"{'-' if not noop else noop['changed']} | "
            f"{_cell(r.get('baseline_full'))} | {_cell(r.get('baseline_noop'))} | {_cpu(full)} | "
            f"{_cpu(noop)} | {'-' if not full else full['load_before']} |"
        )
    lines += ["", "## Ratios", ""]
    first = results["sizes"].get("1", {})
    for size in sizes:
        r = results["sizes"][size]
        parts = []
        for key, label in (("ansible_noop", "no-op"), ("ansible_full", "full converge")):
            if size != "1" and r.get(key) and first.get(key):
                parts.append(f"{label} {r[key]['wall_s'] / first[key]['wall_s']:.2f}x of 1 server")
        if r.get("baseline_full") and r.get("ansible_full"):
            ratio = r["baseline_full"]["wall_s"] / r["ansible_full"]["wall_s"]
            parts.append(
                f"sequential baseline / Ansible full converge = {ratio:.2f} (above 1: Ansible faster)"
            )
        parts += [
            f"{label} used {_cores(r.get(key))} cores{_floor(r.get(key))}"
            for key, label in CPU_RUNS
            if r.get(key)
        ]
        if parts:
            lines.append(f"- {_servers(size)}: " + "; ".join(parts) + ".")
    lines += ["", "## Where the time goes (slowest tasks, profile_tasks)", ""]
    for size in sizes:
        for key in ("ansible_full", "ansible_noop"):
            run = results["sizes"][size].get(key)
            if run and run.get("log") and Path(run["log"]).is_file():
                run["slowest"] = slowest_tasks(Path(run["log"]))  # the log is the source; reparse it
            if run and run.get("slowest"):
                tasks = "; ".join(f"{task} {secs:.1f} s" for task, secs in run["slowest"])
                lines.append(f"- {_servers(size)}, {key.replace('ansible_', '')}: {tasks}")
    lines += [
        "",
        "Columns: wall-clock seconds. `CPU s control/servers`: CPU seconds of the control node (this",
        "process, ansible-playbook, ssh) and of all simulated servers together (cgroup cpuacct of their",
        "containers). `cores used` = (control + servers CPU seconds) / wall seconds: near 2 on this 2-core",
        "machine means the CPUs set the pace; well below 2 with a `load before` above 2 means our processes",
        "waited for CPUs busy with other work on the machine (the figures are then upper bounds); well",
        "below 2 with a low load means waiting on the network (apt downloads) or on SSH round trips.",
        "The baseline does less than the roles (no daemon.json merge, no Docker start, no metadata guard,",
        "no report); it is the floor of doing the guide's step 1 by hand, one server after another.",
        "",
    ]
    return "\n".join(lines)


def _doc_noop_section() -> str:
    """The no-op section of the doc as it is (each mode rewrites only its own part of the doc)."""
    text = DOC.read_text() if DOC.is_file() else ""
    _, heading, rest = text.partition(NOOP_HEADING)
    return heading + rest


def write_doc(results: dict[str, Any]) -> str:
    text = render_doc(results)
    noop = _doc_noop_section()
    DOC.write_text(text + ("\n" + noop if noop else ""))
    return text


def write_noop_doc(rows: list[dict[str, Any]]) -> str:
    text = DOC.read_text() if DOC.is_file() else ""
    head = text.partition(NOOP_HEADING)[0].rstrip("\n")
    section = render_noop(rows)
    DOC.write_text((head + "\n\n" if head else "") + section)
    return section


def main_noop(sizes: list[int], as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleetbench-") as tmp:
        for size in sizes:
            row = bench_noop(size, Path(tmp))
            rows.append(row)
            if as_json:
                keys = ("servers", "noop_wall_s", "noop_control_cpu_s", "noop_control_cpu_s_per_server",
                        "changed", "accel_check_ran", "ok")  # fmt: skip
                print(json.dumps({k: row.get(k) for k in keys}), flush=True)
            NOOP_RESULTS.parent.mkdir(parents=True, exist_ok=True)
            NOOP_RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    text = write_noop_doc(rows)
    if not as_json:
        print(text)
    return 0 if all(r.get("ok") and not r.get("accel_check_ran") for r in rows) else 1


# ---------------------------------------------------------------------------------------------- main


def bench_size(size: int, work: Path, playbook: Path, results: dict[str, Any], baseline: bool) -> None:
    fleet = f"{FLEET_PREFIX}-{size}"
    out = work / fleet
    entry: dict[str, Any] = results["sizes"].setdefault(str(size), {})  # --keep: other runs of it stay
    entry["measured_at"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    try:
        inventory = sim_up(fleet, size, out)
        extravars = {
            "ascendcloud_package": str(out / "AscendCloud-6.3.906-20240101000000.zip"),
            # The batch arithmetic must hold for any size (per device x accumulation x world = global).
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "global_batch_size": size * SIM_DEVICES_PER_HOST,
        }
        for key in ("ansible_full", "ansible_noop"):
            log(f"{size} servers: {key} ...")
            run_dir = RESULTS.parent / "runs" / f"{size}-{key}"
            shutil.rmtree(run_dir, ignore_errors=True)
            entry[key] = measure(
                fleet, functools.partial(ansible_run, inventory, playbook, extravars, run_dir)
            )
            log(f"{size} servers: {key} {entry[key]['wall_s']} s, ok={entry[key]['ok']}")
            save_results(results)
        if baseline:
            inventory = sim_up(fleet, size, out)  # fresh servers: the baseline installs Docker too
            for key in ("baseline_full", "baseline_noop"):
                log(f"{size} servers: {key} ...")
                entry[key] = measure(fleet, functools.partial(baseline_run, inventory))
                log(f"{size} servers: {key} {entry[key]['wall_s']} s, ok={entry[key]['ok']}")
                save_results(results)
    finally:
        sim_down(fleet)
        save_results(results)
        write_doc(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="+", default=["1,2,4,8"], help="fleet sizes: `1,2,4,8` or `1 2 4 8` (default)"
    )
    parser.add_argument("--noop-only", action="store_true", help="the whole site.yml's no-op rerun only")
    parser.add_argument("--json", action="store_true", help="with --noop-only: a JSON object per size")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential SSH baseline")
    parser.add_argument("--keep", action="store_true", help="keep earlier sizes' results in the table")
    parser.add_argument("--render-only", action="store_true", help="rewrite the doc from saved results")
    parser.add_argument(
        "--render-noop-only", action="store_true", help="rewrite the doc's no-op section from saved results"
    )
    args = parser.parse_args(argv)
    if args.render_noop_only:
        print(write_noop_doc(json.loads(NOOP_RESULTS.read_text())["rows"]))
        return 0
    results = load_results() if (args.keep or args.render_only) else {"sizes": {}}
    if args.render_only:
        print(write_doc(results))
        return 0
    sizes = [int(s) for text in args.sizes for s in text.split(",") if s.strip()]
    if args.noop_only:
        return main_noop(sizes, args.json)
    with tempfile.TemporaryDirectory(prefix="fleetbench-") as tmp:
        work = Path(tmp)
        playbook, names = host_level_playbook(work)
        results |= {
            "measured_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "machine": f"{os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().release}",
            "playbooks": names,
        }
        for size in sizes:
            bench_size(size, work, playbook, results, baseline=not args.no_baseline)
    text = write_doc(results)
    print(text)
    failed = [
        f"{size}:{key}"
        for size, entry in results["sizes"].items()
        for key, run in entry.items()
        if isinstance(run, dict) and not run.get("ok")
    ]
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
