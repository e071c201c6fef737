"""`llava-devserver render -i INVENTORY [--host H] -o DIR`: the launch files each server will run.

Writes DIR/<host>/pretrain_new.sh and DIR/<host>/zero2.json for every server of `devservers` (or one),
from the same renderer the llava_pretrain role uses: what you read here is byte-for-byte what runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from llava_devserver import ansible_cli, config, inventory, pathrules
from llava_devserver.ansible_cli import add_inventory_options, add_json_option
from llava_devserver.render import RenderError, render_job

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="write each server's pretrain_new.sh and zero2.json for review",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_inventory_options(parser)
    parser.add_argument("--host", metavar="H", help="only this server (inventory hostname)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output directory")
    add_json_option(parser, "print {host: [written files]} as JSON")
    parser.set_defaults(func=run)


def render_fleet(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """host -> {relative path under llava_dir: content}, for every server in inventory order.

    Raises InventoryError, FleetValidationError or RenderError.
    """
    loaded = ansible_cli.load_inventory(args)
    fleet = config.validate_fleet(loaded.hosts, loaded.origins)
    return {host.host: render_job(host.to_vars()) for host in fleet.hosts}


def write_host_files(out_dir: Path, host: str, files: dict[str, str]) -> list[Path]:
    """DIR/<host>/<file name>; the script executable, as the role installs it.

    Never writes outside DIR, whatever the host name (validation refuses `..` and `/` already; this is
    the second guard): the name must be one plain path component, DIR/<host> a real directory (not a
    symlink), and each file is opened without following a symlink. Raises RenderError otherwise.
    """
    try:
        pathrules.check_host_name(host)
    except ValueError as exc:
        raise RenderError(f"{host!a}: not written: {exc}") from exc
    if host in ("", ".", "..") or "/" in host:  # check_host_name's promise, kept here as well
        raise RenderError(f"{host!a}: not written: the host name is no plain file name")
    out_dir.mkdir(parents=True, exist_ok=True)
    host_dir = out_dir / host
    if not host_dir.is_symlink():
        host_dir.mkdir(exist_ok=True)
    if host_dir.is_symlink() or not host_dir.is_dir() or host_dir.resolve().parent != out_dir.resolve():
        raise RenderError(f"{host}: not written: {host_dir} is not a directory of its own inside {out_dir}")
    written = []
    for relpath, content in files.items():
        path = host_dir / PurePosixPath(relpath).name
        mode = 0o755 if path.suffix == ".sh" else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, mode)
        except OSError as exc:
            if path.is_symlink():
                raise RenderError(f"{host}: not written: {path} is a symlink") from exc
            raise
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            os.fchmod(handle.fileno(), mode)
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    try:
        rendered = render_fleet(args)
    except inventory.InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except config.FleetValidationError as exc:
        for line in ansible_cli.validation_messages(exc.errors, args):
            print(line if line.startswith("hint:") else f"error: {line}", file=sys.stderr)
        print("nothing rendered: fix the inventory (see `llava-devserver validate`)", file=sys.stderr)
        return EXIT_INVALID
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.host is not None:
        if args.host not in rendered:
            known = ", ".join(rendered)
            print(
                f"error: --host {args.host}: not a server of devservers (servers: {known})", file=sys.stderr
            )
            return EXIT_USAGE
        rendered = {args.host: rendered[args.host]}
    written: dict[str, list[str]] = {}
    try:
        for host, files in rendered.items():
            written[host] = [str(path) for path in write_host_files(args.output, host, files)]
            if not args.json:
                print("\n".join(written[host]))
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc.filename}: cannot write: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(written, indent=2))
    return EXIT_OK
