"""`llava-devserver validate` (every mistake of an inventory at once) and `llava-devserver schema`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llava_devserver.ansible_cli import add_inventory_options, add_json_option

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check an inventory: every error at once, as HOST: SETTING: message",
        description="Read the inventory as Ansible does and check every setting of the group devservers. "
        "Exit 0: valid; 1: invalid; 2: unreadable inventory or wrong command line.",
    )
    add_inventory_options(validate)
    add_json_option(validate, "print {valid, unreadable, errors, hosts} as JSON")
    validate.add_argument(
        "--format", choices=("text", "json"), default=None, help=argparse.SUPPRESS
    )  # deprecated spelling of --json
    validate.add_argument(
        "--show", action="store_true", help="text format: also print the normalized settings (no secrets)"
    )
    validate.set_defaults(func=run_validate)

    schema = subparsers.add_parser("schema", help="print the JSON schema of the settings")
    add_json_option(schema, "JSON (the only format; accepted for uniformity)")
    schema.set_defaults(func=run_schema)


def wants_json(args: argparse.Namespace) -> bool:
    if args.format is not None:
        print("warning: --format is deprecated: use --json (or nothing for text)", file=sys.stderr)
    return bool(args.json) or args.format == "json"


def run_validate(args: argparse.Namespace) -> int:
    # Imported here: building the CLI parser should not pay for pydantic and Ansible.
    from llava_devserver import ansible_cli
    from llava_devserver.config import FleetValidationError, validate_fleet
    from llava_devserver.inventory import InventoryError

    as_json = wants_json(args)
    try:
        inventory = ansible_cli.load_inventory(args)
    except InventoryError as exc:
        if as_json:
            print(json.dumps({"valid": False, "unreadable": str(exc), "errors": [], "hosts": {}}, indent=2))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fleet = validate_fleet(inventory.hosts, inventory.origins)
    except FleetValidationError as exc:
        lines = ansible_cli.validation_messages(exc.errors, args)
        if as_json:
            errors = [e.as_dict() for e in exc.errors]
            hint = lines[len(exc.errors) :]
            report: dict[str, Any] = {"valid": False, "unreadable": None, "errors": errors, "hosts": {}}
            print(json.dumps(report | ({"hint": hint[0]} if hint else {}), indent=2))
        else:
            for line in lines[: len(exc.errors)]:
                print(line)
            for line in lines[len(exc.errors) :]:
                print(line, file=sys.stderr)
            print(f"{len(exc.errors)} error(s) in {', '.join(inventory.sources)}", file=sys.stderr)
        return EXIT_INVALID
    llava = fleet.to_vars()
    if as_json:
        print(json.dumps({"valid": True, "unreadable": None, "errors": [], "hosts": llava}, indent=2))
    else:
        first = fleet.hosts[0]
        print(
            f"valid: {len(fleet.hosts)} server(s), {first.nproc_per_node} NPU(s) each, world size "
            f"{first.world_size}, master {first.master_addr}:{first.settings.master_port}, "
            f"global batch {first.settings.global_batch_size} = {first.settings.per_device_train_batch_size} "
            f"x {first.gradient_accumulation_steps} x {first.world_size}"
        )
        if args.show:
            print(json.dumps(llava, indent=2))
    return EXIT_OK


def run_schema(args: argparse.Namespace) -> int:
    from llava_devserver.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
