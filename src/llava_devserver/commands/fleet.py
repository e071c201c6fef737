"""`llava-devserver up|plan|status|logs|down -i INVENTORY`: the whole fleet, one command each.

- `up`: validate the inventory (nothing runs when it is wrong), then run site.yml with a live display;
  the full log and the fleet report land in runs/<timestamp>/.
- `plan`: the same in check mode with diffs, and per host the tasks that would change something.
- `status`: a read-only pass (playbooks/status.yml): NPU health, driver, Docker, container, job, step, loss.
- `logs`: the training log of node_rank 0 (the rank that prints the loss) over SSH; `--follow` streams it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llava_devserver import config, inventory, trainlog
from llava_devserver.live import LiveDisplay
from llava_devserver.runner import ProjectNotFoundError, RunResult, run_playbook

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
SITE = "site.yml"
STATUS_PLAYBOOK = "playbooks/status.yml"
DOWN_PLAYBOOK = "playbooks/down.yml"
STATUS_FACT = "llava_status"
JOB_FILE = "job.json"  # under llava.state_dir (Contract 6)


# ------------------------------------------------------------------------------------------- parsers


def _common(parser: argparse.ArgumentParser, *, selection: bool = True) -> None:
    parser.add_argument(
        "-i", "--inventory", action="append", required=True, metavar="INVENTORY", help="inventory file or dir"
    )
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="VARS",
        help="extra variables as ansible-playbook takes them (key=value, YAML/JSON, @file)",
    )
    parser.add_argument("--vault-password-file", metavar="FILE", help="to read vaulted variables")
    if selection:
        parser.add_argument("-l", "--limit", metavar="PATTERN", help="only these servers (Ansible pattern)")
    parser.add_argument("--plain", action="store_true", help="plain line updates even on a terminal")
    parser.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="where the log and report go (default runs/<UTC time>)"
    )


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up", help="validate, then provision the fleet and start training (site.yml, live progress)"
    )
    _common(up)
    up.add_argument("-t", "--tags", metavar="TAGS", help="only these tags (comma list)")
    up.add_argument("--skip-tags", metavar="TAGS", help="skip these tags (comma list)")
    up.add_argument("-C", "--check", action="store_true", help="check mode: change nothing")
    up.add_argument("--playbook", default=SITE, help=f"playbook of the project to run (default {SITE})")
    up.set_defaults(func=cmd_up)

    plan = subparsers.add_parser("plan", help="what `up` would change, per server (check mode + diff)")
    _common(plan)
    plan.add_argument("-t", "--tags", metavar="TAGS", help="only these tags (comma list)")
    plan.add_argument("--skip-tags", metavar="TAGS", help="skip these tags (comma list)")
    plan.add_argument("--playbook", default=SITE, help=f"playbook of the project to run (default {SITE})")
    plan.set_defaults(func=cmd_plan)

    status = subparsers.add_parser("status", help="NPU health, Docker, container and job of every server")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    logs = subparsers.add_parser("logs", help="the training log of node_rank 0 (the rank printing the loss)")
    _common(logs, selection=False)
    logs.add_argument("--host", metavar="H", help="this server instead of node_rank 0")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines")
    logs.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="last N lines (default 100)")
    logs.set_defaults(func=cmd_logs)

    down = subparsers.add_parser("down", help="stop the job and remove the training container (data stays)")
    _common(down)
    down.set_defaults(func=cmd_down)


# ------------------------------------------------------------------------------------------ validation


@dataclass
class LoadedFleet:
    hosts: dict[str, dict[str, Any]]  # host -> its inventory variables
    settings: dict[str, dict[str, Any]]  # host -> the llava dict


def load_fleet(args: argparse.Namespace) -> LoadedFleet | int:
    """Read and validate the inventory as `validate` does; an exit code when it is unreadable or wrong."""
    try:
        loaded = inventory.load_inventory(
            args.inventory,
            extra_vars=inventory.parse_extra_vars(args.extra_vars),
            vault_password_file=args.vault_password_file,
        )
    except inventory.InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fleet = config.validate_fleet(loaded.hosts, loaded.origins)
    except config.FleetValidationError as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
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
                diff=diff,
                extravars=args.extra_vars,
                run_dir=getattr(args, "run_dir", None),
                vault_password_file=args.vault_password_file,
                on_event=display.on_event,
            )
    except ProjectNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if summary:
        display.print_summary()
    return result


def _print_paths(result: RunResult) -> None:
    if result.rc != 0 and not result.stats:  # ansible-playbook stopped before any host (syntax, missing file)
        tail = result.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(["ansible-playbook failed before reaching any host:", *tail]), file=sys.stderr)
    print(f"Log: {result.log_path}")
    report = result.run_dir / "report.md"
    if report.is_file():
        print(f"Report: {report}")
    for host, messages in result.failures.items():
        for message in messages:
            print(f"{host}: {message}", file=sys.stderr)


# -------------------------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(args, args.playbook, list(fleet.settings), check=args.check)
    if isinstance(result, int):
        return result
    _print_paths(result)
    return result.exit_code


def plan_lines(result: RunResult, hosts: Sequence[str]) -> list[str]:
    """Per host: how many tasks would change and which (in order, each once), or that it would fail."""
    lines = []
    for host in hosts:
        tasks = list(dict.fromkeys(result.changed_tasks.get(host, [])))
        if host in result.failures:
            lines.append(f"{host}: would fail: {result.failures[host][0]}")
        elif host not in result.stats:
            lines.append(f"{host}: not run")
        elif tasks:
            lines.append(f"{host}: {len(tasks)} change(s): " + "; ".join(tasks))
        else:
            lines.append(f"{host}: no changes")
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(args, args.playbook, list(fleet.settings), check=True, diff=True, summary=False)
    if isinstance(result, int):
        return result
    hosts = list(fleet.settings)
    if args.limit:
        hosts = [h for h in hosts if h in result.stats or h in result.failures]
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    if tail and (step is None or loss is None):
        try:
            summary = trainlog.parse_lines(tail.splitlines()).summary
        except trainlog.NoLossLinesError:
            summary = None
        if summary is not None:
            step = step if step is not None else summary.last_step
            loss = loss if loss is not None else summary.last
    job_state = str(job.get("state") or "none")
    container = str(status.get("container") or "absent")
    if job_state == "running" and container != "running":
        job_state = f"failed (container {container})"
    exit_code = job.get("exit_code")
    if job_state == "failed" and exit_code is not None:
        job_state = f"failed (exit {exit_code})"
    npu = status.get("npu") or {}
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
    )


def render_status(rows: Sequence[HostStatus]) -> Table:
    table = Table(title="Fleet status")
    for column in ("host", "NPU", "driver", "Docker", "container", "job", "step", "loss"):
        table.add_column(column, justify="right" if column in ("step", "loss") else "left")
    for row in rows:
        job_style = {"running": "cyan", "finished": "green"}.get(
            row.job, "red" if "failed" in row.job else ""
        )
        table.add_row(
            row.host,
            Text(row.npu, style="green" if row.npu_ok else "red"),
            row.driver,
            row.docker,
            row.container,
            Text(row.job, style=job_style),
            "-" if row.step is None else str(row.step),
            "-" if row.loss is None else f"{row.loss:.4f}",
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
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        Console().print(render_status(rows))
        print(f"Log: {result.log_path}")
    return result.exit_code


def cmd_down(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    result = _play(args, DOWN_PLAYBOOK, list(fleet.settings))
    if isinstance(result, int):
        return result
    _print_paths(result)
    return result.exit_code


# ---------------------------------------------------------------------------------------------- logs


def remote_log_command(state_dir: str, lines: int, follow: bool) -> str:
    """Shell run on the server: find the log in the job state file, then tail it."""
    job_file = f"{state_dir.rstrip('/')}/{JOB_FILE}"
    read_log = (
        'python3 -c \'import json,sys; print(json.load(open(sys.argv[1])).get("log") or "")\' '
        + shlex.quote(job_file)
    )
    tail = f"tail -n {int(lines)}" + (" -F" if follow else "")
    return (
        f"test -r {shlex.quote(job_file)} || "
        f"{{ echo 'no job on this server: {job_file} is missing' >&2; exit 3; }}; "
        f'log=$({read_log}) && test -n "$log" || {{ echo "{job_file} names no log" >&2; exit 3; }}; '
        f'exec {tail} "$log"'
    )


def ssh_argv(variables: Mapping[str, Any], host: str, remote: str) -> list[str]:
    """The command that runs REMOTE on HOST with its connection variables (local connection: bash)."""
    if str(variables.get("ansible_connection", "ssh")) == "local":
        return ["bash", "-c", remote]
    argv = ["ssh", "-o", "BatchMode=yes"]
    if variables.get("ansible_port"):
        argv += ["-p", str(variables["ansible_port"])]
    if variables.get("ansible_ssh_private_key_file"):
        argv += ["-i", str(variables["ansible_ssh_private_key_file"])]
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if variables.get(name):
            argv += shlex.split(str(variables[name]))
    address = str(variables.get("ansible_host") or host)
    user = variables.get("ansible_user")
    argv += [f"{user}@{address}" if user else address, remote]
    return argv


def cmd_logs(args: argparse.Namespace) -> int:
    fleet = load_fleet(args)
    if isinstance(fleet, int):
        return fleet
    if args.host is None:
        host = next(name for name, s in fleet.settings.items() if int(s["node_rank"]) == 0)
    elif args.host in fleet.settings:
        host = args.host
    else:
        print(
            f"error: --host {args.host}: not a server of devservers ({', '.join(fleet.settings)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    remote = remote_log_command(str(fleet.settings[host]["state_dir"]), args.lines, args.follow)
    argv = ssh_argv(fleet.hosts[host], host, remote)
    if args.follow:  # become the stream: Ctrl-C or a signal ends ssh/tail, not only this process
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"error: {argv[0]}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        rc = subprocess.call(argv)
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: not found on this machine", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    if rc == 3:
        return EXIT_INVALID
    return EXIT_OK if rc == 0 else EXIT_INVALID
