"""`llava-devserver sim up|status|fault|down`: the simulated DevServer fleet (llava_devserver.sim)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llava_devserver.sim.faults import (
    CLEARABLE,
    FAULT_KINDS,
    Fault,
    FaultError,
    apply_fault,
    clear_fault,
    parse_host_fault,
)
from llava_devserver.sim.inventory import LOG_STYLES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_FLEET = "default"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="a simulated DevServer fleet in local Docker",
        description="Start, inspect and remove simulated DevServers (Docker containers with fake Ascend "
        "hardware, reached over SSH like real servers).",
    )
    sim = parser.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), EXIT_USAGE)[1])

    # argparse formats help texts with %: a fault's text that says "%" must say "%%"
    fault_help = "HOST:FAULT, HOST = devserver-N, N or all; FAULT one of: " + ", ".join(
        f"{kind} ({text})" for kind, text in FAULT_KINDS.items()
    ).replace("%", "%%")
    up = sim.add_parser("up", help="start a fleet and write its inventory", description=up_description())
    up.add_argument("--hosts", type=int, default=2, help="number of servers (default 2)")
    up.add_argument("--name", default=DEFAULT_FLEET, help=f"fleet name (default {DEFAULT_FLEET})")
    up.add_argument("-o", "--output", type=Path, help="inventory directory (default .sim/NAME)")
    up.add_argument("--fault", action="append", default=[], metavar="HOST:FAULT", help=fault_help)
    up.add_argument(
        "--os",
        action="append",
        default=[],
        metavar="[HOST:]PROFILE",
        help="OS profile of every server, or of one (HOST = devserver-N or N; repeat for a mixed fleet): "
        + "; ".join(f"{name}: {spec.description}" for name, spec in _profiles().items())
        + " (default debian12)",
    )
    up.add_argument("--npus", type=int, default=8, help="cards per server (default 8)")
    up.add_argument(
        "--devices-per-host", type=int, default=2, help="cards given to the training container (default 2)"
    )
    up.add_argument(
        "--no-job",
        action="store_true",
        help="infrastructure only: skip the stand-in package, assets and training image",
    )
    up.add_argument(
        "--registry",
        action="store_true",
        help="also start a stand-in registry (SWR) and make the inventory pull the image with a login",
    )
    up.add_argument(
        "--log-style",
        choices=LOG_STYLES,
        default="hf",
        help="how the stand-in trainer logs: hf (HF Trainer dicts on global rank 0, default) or megatron "
        "(Megatron/MindSpeed iteration lines on the last global rank, as the guide says)",
    )
    up.add_argument(
        "--link-mbps",
        type=int,
        metavar="M",
        help="every server sends and receives at most M Mbit/s on the fleet network (tc), as through a real "
        "port, so that bandwidth-bound distribution shows on one machine (default: no limit)",
    )
    up.add_argument(
        "--bastion",
        action="store_true",
        help="put the servers behind a jump host, as in a VPC: they refuse new connections from this machine "
        "and the inventory reaches them through the bastion (a ProxyCommand in ansible_ssh_common_args)",
    )
    up.add_argument(
        "--proxy",
        action="store_true",
        help="give the servers no way out but a forwarding proxy (tinyproxy), as in a closed network: the "
        "fleet network is internal, the registry of --registry runs outside it, and the inventory sets "
        "http_proxy and https_proxy",
    )
    up.add_argument(
        "--hub",
        action="store_true",
        help="also start a stand-in Hugging Face hub and make the inventory download the vision tower from "
        "it (hf_endpoint, source hub); with --proxy it is outside, reached through the proxy",
    )
    up.set_defaults(func=cmd_up)

    status = sim.add_parser("status", help="list simulated servers")
    status.add_argument("--name", help="only this fleet")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    outbound = sim.add_parser(
        "requests",
        help="what went out of a fleet: the requests its proxy forwarded (sim up --proxy) and its hub "
        "served (--hub)",
    )
    outbound.add_argument("--name", default=DEFAULT_FLEET, help=f"fleet name (default {DEFAULT_FLEET})")
    outbound.add_argument("--json", action="store_true", help='{"proxy": [...], "hub": [...]}')
    outbound.set_defaults(func=cmd_requests)

    fault = sim.add_parser("fault", help="inject faults into running servers")
    fault.add_argument("--name", default=DEFAULT_FLEET, help=f"fleet name (default {DEFAULT_FLEET})")
    fault.add_argument("faults", nargs="+", metavar="HOST:FAULT", help=fault_help)
    fault.add_argument(
        "--clear",
        action="store_true",
        help="take the faults back instead (only " + ", ".join(sorted(CLEARABLE)) + ")",
    )
    fault.set_defaults(func=cmd_fault)

    images = sim.add_parser(
        "images",
        help="build (or find cached) every image the simulated fleets use",
        description="Build once, ahead of time, the images `sim up` would build on first use: the server "
        "image of each OS profile and its Docker-preinstalled variant, the proxy of --proxy, the stand-in "
        "registry and the training image. Cached by recipe: a second run only looks them up.",
    )
    images.add_argument(
        "--os",
        action="append",
        choices=sorted(_profiles()),
        metavar="PROFILE",
        help="only these OS profiles (repeat; default every profile)",
    )
    images.add_argument("--no-job", action="store_true", help="skip the registry and the training image")
    images.set_defaults(func=cmd_images)

    down = sim.add_parser("down", help="remove a fleet (containers, volumes, network)")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--name", default=None, help=f"fleet name (default {DEFAULT_FLEET})")
    which.add_argument("--all", action="store_true", help="remove every simulated fleet")
    down.set_defaults(func=cmd_down)


def _profiles() -> dict[str, Any]:
    from llava_devserver.sim.image import PROFILES

    return dict(PROFILES)


def up_description() -> str:
    return (
        "Start N simulated DevServers on a private Docker network and write DIR/devserver.ini and "
        "DIR/group_vars/all.yml. Running it again with the same name and size reuses the servers."
    )


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"sim: {message}", file=sys.stderr)
    return code


def _parse_faults(texts: list[str], hosts: list[str]) -> dict[str, list[Fault]]:
    faults: dict[str, list[Fault]] = {}
    for text in texts:
        for host, fault in parse_host_fault(text, hosts):
            faults.setdefault(host, []).append(fault)
    return faults


def cmd_up(args: argparse.Namespace) -> int:
    from llava_devserver.sim.fleet import FleetError, fleet_up, host_name, parse_os_choices
    from llava_devserver.sim.image import SimImageError
    from llava_devserver.sim.link import LinkError, check_mbps

    if args.hosts < 1:
        return _fail(f"--hosts must be >= 1, got {args.hosts}", EXIT_USAGE)
    try:
        check_mbps(args.link_mbps)
    except LinkError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.registry and args.no_job:
        return _fail("--registry serves the training image, which --no-job skips", EXIT_USAGE)
    if args.hub and args.no_job:
        return _fail("--hub serves the vision tower, which --no-job skips", EXIT_USAGE)
    hosts = [host_name(i) for i in range(1, args.hosts + 1)]
    try:
        faults = _parse_faults(args.fault, hosts)
        profiles = parse_os_choices(args.os, hosts)
    except (FaultError, FleetError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    output = args.output or Path(".sim") / args.name
    try:
        fleet_up(
            args.name,
            args.hosts,
            output,
            faults=faults,
            npus=args.npus,
            devices_per_host=args.devices_per_host,
            job=not args.no_job,
            registry=args.registry,
            host_profiles=profiles,
            log_style=args.log_style,
            link_mbps=args.link_mbps,
            bastion=args.bastion,
            proxy=args.proxy,
            hub=args.hub,
        )
    except ModuleNotFoundError as exc:
        return _fail(f"the job stand-ins are not available ({exc}); use --no-job for servers only")
    except (FleetError, FaultError, SimImageError) as exc:
        return _fail(str(exc))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from llava_devserver.sim.fleet import FleetError, fleet_status

    try:
        rows = fleet_status(args.name)
    except FleetError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no simulated servers" + (f" in fleet {args.name!r}" if args.name else ""))
        return EXIT_OK
    columns = ("fleet", "host", "os", "status", "address", "link", "faults", "container")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))
    return EXIT_OK


def cmd_requests(args: argparse.Namespace) -> int:
    from llava_devserver.sim import hub as sim_hub
    from llava_devserver.sim import proxy as sim_proxy
    from llava_devserver.sim.fleet import FleetError, docker_client, network_name

    try:
        client = docker_client()
        network = network_name(args.name)
        seen: dict[str, list[str] | None] = {}
        for what, read, error in (
            ("proxy", sim_proxy.requests, sim_proxy.ProxyError),
            ("hub", sim_hub.requests, sim_hub.HubError),
        ):
            try:
                seen[what] = read(client, network)
            except error:  # this fleet has none
                seen[what] = None
    except FleetError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(seen, indent=2))
        return EXIT_OK
    for what, lines in seen.items():
        print(f"# {what}: " + ("none in this fleet" if lines is None else f"{len(lines)} requests"))
        for line in lines or []:
            print(line)
    return EXIT_OK


def cmd_fault(args: argparse.Namespace) -> int:
    from llava_devserver.sim.fleet import HOST_LABEL, FleetError, fleet_containers

    try:
        containers = {c.labels.get(HOST_LABEL): c for c in fleet_containers(args.name)}
        if not containers:
            return _fail(f"no fleet {args.name!r}; start it with `llava-devserver sim up --name {args.name}`")
        faults = _parse_faults(args.faults, sorted(containers, key=lambda h: int(h.rsplit("-", 1)[1])))
        kept = sorted({str(f) for fs in faults.values() for f in fs if f.kind not in CLEARABLE})
        if args.clear and kept:
            clearable = ", ".join(sorted(CLEARABLE))
            raise FaultError(f"--clear: {', '.join(kept)} cannot be cleared (only {clearable})")
    except FaultError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except FleetError as exc:
        return _fail(str(exc))
    try:
        for host, host_faults in faults.items():
            for fault in host_faults:
                if args.clear:
                    clear_fault(containers[host], fault)
                    print(f"sim: {host}: {fault} cleared")
                else:
                    apply_fault(containers[host], fault)
                    print(f"sim: {host}: {fault}")
    except FaultError as exc:
        return _fail(str(exc))
    return EXIT_OK


def cmd_images(args: argparse.Namespace) -> int:
    import time
    from functools import partial

    from llava_devserver.sim import image as sim_image
    from llava_devserver.sim.fleet import FleetError, docker_client
    from llava_devserver.sim.proxy import ProxyError, ensure_proxy_image
    from llava_devserver.sim.registry import ensure_registry_image
    from llava_devserver.sim.training_image import TrainingImageError, ensure_training_image

    builders: list[tuple[str, Any]] = []
    for profile in args.os or sorted(_profiles()):
        builders.append((f"server ({profile})", partial(sim_image.ensure_server_image, profile=profile)))
        builders.append(
            (
                f"server with Docker ({profile})",
                partial(sim_image.ensure_docker_server_image, profile=profile),
            )
        )
    builders.append(("proxy", ensure_proxy_image))
    if not args.no_job:
        builders.append(("registry", ensure_registry_image))
        builders.append(("training", lambda c: ensure_training_image(c).tag))
    try:
        client = docker_client()
        for what, build in builders:
            started = time.monotonic()
            tag = build(client)
            print(f"sim: {what}: {tag} ({time.monotonic() - started:.1f} s)", flush=True)
    except (FleetError, sim_image.SimImageError, TrainingImageError, ProxyError) as exc:
        return _fail(str(exc))
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from llava_devserver.sim.fleet import FleetError, fleet_down

    try:
        fleet_down(None if args.all else (args.name or DEFAULT_FLEET))
    except FleetError as exc:
        return _fail(str(exc))
    return EXIT_OK
