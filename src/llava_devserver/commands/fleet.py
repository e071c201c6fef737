"""`llava-devserver up|plan|status|logs|down -i INVENTORY`: the whole fleet, one command each.

- `up`: validate the inventory (nothing runs when it is wrong), then run site.yml with a live display;
  the full log and the fleet report land in runs/<timestamp>/.
- `plan`: the same in check mode with diffs, and per host the tasks that would change something.
- `status`: a read-only pass (playbooks/status.yml): NPU health, driver, Docker, container, job, step, loss,
  throughput, elapsed time and the projector; it says which node's log holds the loss (loss_log_node).
- `logs`: the training log of the node that prints the loss (loss_log_node: auto finds it, the last node
  first) over SSH; `--follow` streams it. The job helper (jobstate.py, sent over SSH on stdin) reads it on
  the server without following a link the training container made.
- `down`: stop the job cleanly and remove the training container (playbooks/down.yml); data stays.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llava_devserver import ansible_cli, config, inventory, jobstate, trainlog
from llava_devserver.ansible_cli import add_inventory_options, add_json_option, add_play_options
from llava_devserver.live import LiveDisplay
from llava_devserver.runner import ProjectNotFoundError, RunResult, run_playbook

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
SITE = "site.yml"
STATUS_PLAYBOOK = "playbooks/status.yml"
DOWN_PLAYBOOK = "playbooks/down.yml"
STATUS_FACT = "llava_status"
SERVER_PYTHON = "python3"


# ------------------------------------------------------------------------------------------- parsers


def _common(parser: argparse.ArgumentParser, *, selection: bool = True, tags: bool = False) -> None:
    add_inventory_options(parser)
    if selection:
        add_play_options(parser, tags=tags)
    parser.add_argument("--plain", action="store_true", help="plain line updates even on a terminal")
    parser.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="where the log and report go (default runs/<UTC time>)"
    )


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up", help="validate, then provision the fleet and start training (site.yml, live progress)"
    )
    _common(up, tags=True)
    up.add_argument("-C", "--check", action="store_true", help="check mode: change nothing")
    up.add_argument(
        "--retry",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN_DIR",
        help="only the servers that failed or were unreachable in the latest report.json (or RUN_DIR's)",
    )
    up.add_argument("--playbook", default=SITE, help=f"playbook of the project to run (default {SITE})")
    add_json_option(up, "per-server summary as JSON on stdout (progress on stderr)")
    up.set_defaults(func=cmd_up)

    plan = subparsers.add_parser("plan", help="what `up` would change, per server (check mode + diff)")
    _common(plan, tags=True)
    plan.add_argument("--playbook", default=SITE, help=f"playbook of the project to run (default {SITE})")
    add_json_option(plan, "per-server plan as JSON on stdout (progress on stderr)")
    plan.set_defaults(func=cmd_plan)

    status = subparsers.add_parser("status", help="NPU health, Docker, container and job of every server")
    _common(status)
    add_json_option(status)
    status.set_defaults(func=cmd_status)

    logs = subparsers.add_parser(
        "logs", help="the training log of the node printing the loss (loss_log_node)"
    )
    _common(logs, selection=False)
    logs.add_argument("--host", metavar="H", help="this server instead of the node printing the loss")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines")
    logs.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="last N lines (default 100)")
    logs.set_defaults(func=cmd_logs)

    down = subparsers.add_parser("down", help="stop the job and remove the training container (data stays)")
    _common(down)
    add_json_option(down, "per-server summary as JSON on stdout (progress on stderr)")
    down.set_defaults(func=cmd_down)


# ------------------------------------------------------------------------------------------ validation


@dataclass
class LoadedFleet:
    hosts: dict[str, dict[str, Any]]  # host -> its inventory variables
    settings: dict[str, dict[str, Any]]  # host -> the llava dict


def load_fleet(args: argparse.Namespace) -> LoadedFleet | int:
    """Read and validate the inventory as `validate` does; an exit code when it is unreadable or wrong."""
    try:
        loaded = ansible_cli.load_inventory(args)
    except inventory.InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fleet = config.validate_fleet(loaded.hosts, loaded.origins)
    except config.FleetValidationError as exc:
        for line in ansible_cli.validation_messages(exc.errors, args):
            print(line, file=sys.stderr)
        print("nothing was run: fix the inventory (see `llava-devserver validate`)", file=sys.stderr)
        return EXIT_INVALID
    return LoadedFleet(hosts=loaded.hosts, settings={h.host: h.to_vars() for h in fleet.hosts})


def _play(
    args: argparse.Namespace,
    playbook: str,
    hosts: Sequence[str],
    *,
    check: bool = False,
    diff: bool = False,
    console: Console | None = None,
    summary: bool = True,
) -> RunResult | int:
    console = console or Console()
    # With --limit, hosts appear as Ansible reaches them (the others would only sit there as "not run").
    shown = [] if getattr(args, "limit", None) else hosts
    display = LiveDisplay(shown, console=console, live=False if args.plain else None)
    try:
        with display:
            result = run_playbook(
                playbook,
                args.inventory,
                limit=getattr(args, "limit", None),
                tags=getattr(args, "tags", None),
                skip_tags=getattr(args, "skip_tags", None),
                check=check,
                diff=diff or bool(getattr(args, "diff", None)),
                extravars=args.extra_vars,
                run_dir=getattr(args, "run_dir", None),
                on_event=display.on_event,
                extra_args=ansible_cli.playbook_args(args),
                passwords=ansible_cli.vault_setup(args).prompt_answers,
            )
    except ProjectNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if summary:
        display.print_summary()
    return result


def _print_paths(result: RunResult, *, stream: Any = None) -> None:
    stream = stream or sys.stdout
    if result.rc != 0 and not result.stats:  # ansible-playbook stopped before any host (syntax, missing file)
        tail = result.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(["ansible-playbook failed before reaching any host:", *tail]), file=sys.stderr)
    print(f"Log: {result.log_path}", file=stream)
    report = result.run_dir / "report.md"
    if report.is_file():
        print(f"Report: {report}", file=stream)
    for host, messages in result.failures.items():
        for message in messages:
            print(f"{host}: {message}", file=sys.stderr)


def run_summary(result: RunResult, hosts: Sequence[str]) -> dict[str, Any]:
    """`up`/`down --json`: the run and, per server, its recap counts, changed tasks and failures."""
    report = result.run_dir / "report.json"
    return {
        "rc": result.exit_code,
        "status": result.status,
        "run_dir": str(result.run_dir),
        "log": str(result.log_path),
        "report": str(report) if report.is_file() else None,
        "hosts": {
            host: {
                **(result.stats[host].to_dict() if host in result.stats else {"run": False}),
                "changed_tasks": list(dict.fromkeys(result.changed_tasks.get(host, []))),
                "failures": list(result.failures.get(host, [])),
            }
            for host in hosts
            if host in result.stats or host in result.failures
        },
    }


# -------------------------------------------------------------------------------------------- --retry

RETRY_STATUSES = ("failed", "unreachable")


def hosts_to_retry(report: Mapping[str, Any]) -> list[str]:
    """The servers of a report.json that failed or were unreachable, in report order."""
    return [
        str(entry["host"])
        for entry in report.get("hosts") or []
        if isinstance(entry, Mapping) and entry.get("status") in RETRY_STATUSES
    ]


def retry_report(choice: str, runs: Path) -> Path:
    """report.json of RUN_DIR, or of the latest run under RUNS (`--retry` alone); ValueError if none."""
    from llava_devserver import report

    run_dir = report.latest_run_dir(runs) if choice == "latest" else Path(choice)
    if run_dir is None:
        raise ValueError(f"--retry: {runs}: no run with a report yet")
    path = run_dir / "report.json"
    if not path.is_file():
        raise ValueError(f"--retry: {path}: no such report")
    return path


def retry_limit(args: argparse.Namespace) -> str | int | None:
    """`--retry`: the --limit of the servers to rerun; an exit code when there is nothing to do."""
    if not args.retry:
        return None
    if args.limit:
        print("error: --retry chooses the servers itself: drop --limit", file=sys.stderr)
        return EXIT_USAGE
    from llava_devserver.runner import find_project_root, runs_dir

    try:
        path = retry_report(args.retry, runs_dir(find_project_root()))
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, ProjectNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: --retry: {path}: cannot read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    hosts = hosts_to_retry(report)
    if not hosts:
        print(f"nothing to retry: no server failed or was unreachable in {path}", file=sys.stderr)
        return EXIT_OK
    print(f"retrying {len(hosts)} server(s) of {path}: {', '.join(hosts)}", file=sys.stderr)
    return ",".join(hosts)


# -------------------------------------------------------------------------------------------- commands


def _out_console(args: argparse.Namespace) -> Console:
    """Progress on stderr when stdout carries JSON."""
    return Console(stderr=True) if getattr(args, "json", False) else Console()


def cmd_up(args: argparse.Namespace) -> int:
    limit = retry_limit(args)
    if isinstance(limit, int):
        return limit
    if limit is not None:
        args.limit = limit
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(args, args.playbook, list(fleet.settings), check=args.check, console=_out_console(args))
    if isinstance(result, int):
        return result
    _print_paths(result, stream=sys.stderr if args.json else None)
    if args.json:
        print(json.dumps(run_summary(result, list(fleet.settings)), indent=2))
    return result.exit_code


def plan_entries(result: RunResult, hosts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per host: would it fail, was it run, which tasks would change (in order, each once)."""
    entries: dict[str, dict[str, Any]] = {}
    for host in hosts:
        tasks = list(dict.fromkeys(result.changed_tasks.get(host, [])))
        if host in result.failures:
            state = "would fail"
        elif host not in result.stats:
            state = "not run"
        else:
            state = "changes" if tasks else "no changes"
        entries[host] = {"plan": state, "changes": tasks, "failures": list(result.failures.get(host, []))}
    return entries


def plan_lines(result: RunResult, hosts: Sequence[str]) -> list[str]:
    """Per host: how many tasks would change and which (in order, each once), or that it would fail."""
    lines = []
    for host, entry in plan_entries(result, hosts).items():
        if entry["plan"] == "would fail":
            lines.append(f"{host}: would fail: {entry['failures'][0]}")
        elif entry["plan"] == "changes":
            lines.append(f"{host}: {len(entry['changes'])} change(s): " + "; ".join(entry["changes"]))
        else:
            lines.append(f"{host}: {entry['plan']}")
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(
        args,
        args.playbook,
        list(fleet.settings),
        check=True,
        diff=True,
        summary=False,
        console=_out_console(args),
    )
    if isinstance(result, int):
        return result
    hosts = list(fleet.settings)
    if args.limit:
        hosts = [h for h in hosts if h in result.stats or h in result.failures]
    if args.json:
        _print_paths(result, stream=sys.stderr)
        summary = run_summary(result, hosts)
        summary["check"] = True
        for host, entry in plan_entries(result, hosts).items():
            summary["hosts"].setdefault(host, {}).update(entry)
        print(json.dumps(summary, indent=2))
        return result.exit_code
    print(f"Plan (check mode, nothing changed; the diffs are in {result.log_path}):")
    for line in plan_lines(result, hosts):
        print(f"  {line}")
    _print_paths(result)
    return result.exit_code


@dataclass
class HostStatus:
    host: str
    npu: str
    npu_ok: bool
    driver: str
    docker: str
    container: str
    job: str
    step: int | None
    loss: float | None
    loss_lines: bool = False  # this node's log prints the loss
    loss_log: bool = False  # the node whose log is read for the loss (loss_log_node)
    samples_per_s: float | None = None
    samples_per_s_per_npu: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    projector: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("extra")
        return out


def _seconds_between(start: Any, end: Any) -> float | None:
    def parse(value: Any) -> datetime | None:
        if not isinstance(value, str) or not value:
            return None
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None

    began = parse(start)
    if began is None:
        return None
    ended = parse(end) or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


def _npu_summary(status: Mapping[str, Any]) -> str:
    problems = [str(p) for p in status.get("npu_problems") or []]
    npu = status.get("npu") or {}
    cards = npu.get("cards") or []
    healths = [str(card.get("health")) for card in cards]
    if problems:
        return "; ".join(problems)
    if not cards:
        return "unknown"
    ok = sum(1 for h in healths if h == "OK")
    return f"{ok}/{len(healths)} OK"


def host_status(host: str, status: Mapping[str, Any] | None, failure: str | None) -> HostStatus:
    """One row of `status` from the fact playbooks/status.yml sets (Contract 6)."""
    if status is None:
        reason = failure or "no answer"
        return HostStatus(host, reason, False, "-", "-", "-", "-", None, None)
    job = status.get("job") or {}
    step = job.get("step")
    loss = job.get("loss")
    tail = status.get("log_tail") or ""
    summary = None
    if tail:
        try:
            summary = trainlog.parse_lines(tail.splitlines()).summary
        except trainlog.NoLossLinesError:
            summary = None
    if summary is not None:
        step = step if step is not None else summary.last_step
        loss = loss if loss is not None else trainlog.json_float(summary.last)
    throughput = summary.throughput if summary is not None else None
    if throughput is not None:
        throughput = throughput.with_world_size(job.get("world_size") or status.get("world_size"))
    rate = throughput.samples_per_second if throughput is not None else None
    job_state = str(job.get("state") or "none")
    container = str(status.get("container") or "absent")
    if job_state == "running" and container != "running":
        job_state = f"failed (container {container})"
    exit_code = job.get("exit_code")
    if job_state == "failed" and exit_code is not None:
        job_state = f"failed (exit {exit_code})"
    error = str(status.get("job_error") or "") or None
    if error:
        job_state = "unreadable"
    npu = status.get("npu") or {}
    projector = status.get("projector")
    return HostStatus(
        host=host,
        npu=_npu_summary(status),
        npu_ok=not status.get("npu_problems") and bool(npu.get("cards")),
        driver=str(npu.get("driver_version") or "-"),
        docker=str(status.get("docker") or "-"),
        container=container,
        job=job_state,
        step=int(step) if step is not None else None,
        loss=float(loss) if loss is not None else None,
        loss_lines=bool(job.get("loss_lines")) or summary is not None,
        samples_per_s=rate if rate is not None else job.get("samples_per_s"),
        samples_per_s_per_npu=throughput.samples_per_second_per_npu if throughput is not None else None,
        tokens_per_s=throughput.tokens_per_second if throughput is not None else None,
        elapsed_s=_seconds_between(job.get("started_at"), job.get("finished_at")) if job else None,
        projector=dict(projector) if isinstance(projector, Mapping) else None,
        error=error,
        extra={"loss_log_node": status.get("loss_log_node") or "auto", "node_rank": status.get("node_rank")},
    )


def mark_loss_log(rows: Sequence[HostStatus]) -> HostStatus | None:
    """Mark the row of the node whose log holds the loss (rows in node_rank order)."""
    answered = [row for row in rows if row.extra]
    if not answered:
        return None
    rule = str(answered[0].extra.get("loss_log_node") or "auto")
    chosen = trainlog.pick_loss_node(
        [row.host for row in answered],
        {row.host: row.loss_lines for row in answered},
        rule,  # type: ignore[arg-type]
    )
    for row in answered:
        row.loss_log = row.host == chosen
    return next((row for row in answered if row.loss_log), None)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _size(size: Any) -> str:
    if not isinstance(size, int):
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def render_status(rows: Sequence[HostStatus]) -> Table:
    table = Table(title="Fleet status")
    columns = ("host", "NPU", "driver", "Docker", "container", "job", "step", "loss", "samples/s", "elapsed")
    for column in (*columns, "projector"):
        table.add_column(column, justify="right" if column in ("step", "loss", "samples/s") else "left")
    for row in rows:
        job_style = {"running": "cyan", "finished": "green"}.get(
            row.job, "red" if "failed" in row.job or row.error else ""
        )
        rate = "-" if row.samples_per_s is None else f"{row.samples_per_s:.1f}"
        if row.samples_per_s_per_npu is not None:
            rate += f" ({row.samples_per_s_per_npu:.2f}/NPU)"
        projector = (
            f"{row.projector.get('path')} ({_size(row.projector.get('bytes'))})" if row.projector else "-"
        )
        table.add_row(
            row.host + (" *" if row.loss_log else ""),
            Text(row.npu, style="green" if row.npu_ok else "red"),
            row.driver,
            row.docker,
            row.container,
            Text(row.job, style=job_style),
            "-" if row.step is None else str(row.step),
            "-" if row.loss is None else f"{row.loss:.4f}",
            rate,
            _duration(row.elapsed_s),
            projector,
        )
    chosen = next((row for row in rows if row.loss_log), None)
    if chosen is not None:
        rule = chosen.extra.get("loss_log_node")
        table.caption = (
            f"* the loss log: {chosen.host} (node {chosen.extra.get('node_rank')}, loss_log_node={rule})"
        )
    return table


def cmd_status(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    quiet = Console(stderr=True)
    result = _play(args, STATUS_PLAYBOOK, list(fleet.settings), console=quiet, summary=False)
    if isinstance(result, int):
        return result
    rows = [
        host_status(
            host,
            result.facts.get(host, {}).get(STATUS_FACT),
            next(iter(result.failures.get(host, [])), None),
        )
        for host in fleet.settings
        if host in result.stats or host in result.failures
    ]
    mark_loss_log(rows)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        Console().print(render_status(rows))
        for row in rows:
            if row.error:
                print(f"{row.host}: {row.error}", file=sys.stderr)
        print(f"Log: {result.log_path}")
    return result.exit_code


def cmd_down(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(args, DOWN_PLAYBOOK, list(fleet.settings), console=_out_console(args))
    if isinstance(result, int):
        return result
    _print_paths(result, stream=sys.stderr if args.json else None)
    if args.json:
        print(json.dumps(run_summary(result, list(fleet.settings)), indent=2))
    return result.exit_code


# ---------------------------------------------------------------------------------------------- logs


def remote_log_command(settings: Mapping[str, Any], lines: int, follow: bool, what: str = "log") -> str:
    """Shell run on the server: the job helper, read from stdin, prints the log (or, `status`, the state)."""
    argv = [SERVER_PYTHON, "-", what, "--work-dir", str(settings["work_dir"])]
    argv += ["--container-work-dir", str(settings["container_work_dir"])]
    argv += ["--state-dir", str(settings["state_dir"]), "--container", str(settings["container_name"])]
    argv += ["--host-state-dir", str(settings["host_state_dir"])]
    argv += ["-n", str(int(lines))] + (["--follow"] if follow else []) if what == "log" else ["--lines", "0"]
    return shlex.join(argv)


def _helper_source() -> int:
    """A descriptor of jobstate.py for the remote python's stdin."""
    return os.open(jobstate.__file__, os.O_RDONLY)


def _has_loss_lines(fleet: LoadedFleet, host: str) -> bool:
    remote = remote_log_command(fleet.settings[host], 0, False, what="status")
    fd = _helper_source()
    try:
        result = subprocess.run(
            ssh_argv(fleet.hosts[host], host, remote), stdin=fd, capture_output=True, text=True, timeout=120
        )
    except (OSError, ValueError, subprocess.TimeoutExpired):  # ValueError: a connection ssh cannot use
        return False
    finally:
        os.close(fd)
    try:
        return bool(json.loads(result.stdout).get("job", {}).get("loss_lines"))
    except (ValueError, AttributeError):
        return False


def loss_log_host(fleet: LoadedFleet) -> str:
    """The node whose log holds the loss (loss_log_node; auto asks the servers, the last node first)."""
    ranked = sorted(fleet.settings, key=lambda h: int(fleet.settings[h]["node_rank"]))
    rule = str(fleet.settings[ranked[0]].get("loss_log_node") or "auto")
    if rule != "auto":
        return str(trainlog.pick_loss_node(ranked, {}, rule))  # type: ignore[arg-type]
    for host in reversed(ranked):
        if _has_loss_lines(fleet, host):
            return host
    return ranked[-1]


def ssh_argv(variables: Mapping[str, Any], host: str, remote: str) -> list[str]:
    """The command that runs REMOTE on HOST as ansible-playbook connects (ansible_connect.remote_argv)."""
    from llava_devserver.ansible_connect import remote_argv

    return remote_argv(variables, host, remote)


def cmd_logs(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    if args.host is None:
        host = loss_log_host(fleet)
        rank = fleet.settings[host]["node_rank"]
        rule = fleet.settings[host].get("loss_log_node") or "auto"
        print(f"logs: {host} (node {rank}; loss_log_node={rule})", file=sys.stderr)
    elif args.host in fleet.settings:
        host = args.host
    else:
        print(
            f"error: --host {args.host}: not a server of devservers ({', '.join(fleet.settings)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    remote = remote_log_command(fleet.settings[host], args.lines, args.follow)
    try:
        argv = ssh_argv(fleet.hosts[host], host, remote)
    except ValueError as exc:  # a connection that cannot be used directly (password login, a plugin)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    source = _helper_source()
    if args.follow:  # become the stream: Ctrl-C or a signal ends ssh, not only this process
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.dup2(source, 0)
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"error: {argv[0]}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        rc = subprocess.call(argv, stdin=source)
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: not found on this machine", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        os.close(source)
    return EXIT_OK if rc == 0 else EXIT_INVALID
