"""`llava-devserver hccn parse [FILE|-] [--json]`: read one `hccn_tool -i N ...` output.

The kind (`-ip -g`, `-link -g`, `-net_health -g`, `-tls -g`, `-ping -g address A`, `-link_stat -g`) is
detected from the text. `--json` prints one object: `{"kind": "ip", "ipaddr": "10.0.0.5" or null,
"netmask": ...}`, `{"kind": "link", "status": "UP"}`, `{"kind": "net_health", "status": "Success"}`,
`{"kind": "tls", "switch": 0}`, `{"kind": "ping", "transmitted": 3, "received": 3, "loss_pct": 0.0}` or
`{"kind": "link_stat", "up_count": 2, "down_count": 1, "records": [...]}`; without it, one line. Text it
cannot read exits 1 with what it expected; a file that cannot be read exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llava_devserver import hccn
from llava_devserver.commands.tool_output import EXIT_INVALID, EXIT_OK, EXIT_USAGE, read_input, register_parse


def register(subparsers: Any) -> None:
    register_parse(
        subparsers, "hccn", tool="hccn_tool", doc=__doc__, run=run_parse,
        help="parse hccn_tool output (the NPUs' own network: device IP, link, health, TLS, ping)",
        parse_help="parse one hccn_tool -i N output (kind auto-detected)",
    )  # fmt: skip


def run_parse(args: argparse.Namespace) -> int:
    name, text = read_input("hccn", args.file)
    if text is None:
        return EXIT_USAGE
    try:
        result = hccn.parse_hccn(text)
    except hccn.HccnParseError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return EXIT_OK


def summary(result: dict[str, Any]) -> str:
    """One human line for a parsed output."""
    kind = result["kind"]
    if kind == "ip":
        if result["ipaddr"] is None:
            return "device IP: none set"
        return f"device IP: {result['ipaddr']} netmask {result['netmask'] or '?'}"
    if kind in ("link", "net_health"):
        return f"{'link' if kind == 'link' else 'net health'}: {result['status']}"
    if kind == "tls":
        return f"TLS switch: {result['switch']} ({'enabled' if result['switch'] else 'disabled'})"
    if kind == "ping":
        return (
            f"ping: {result['received']}/{result['transmitted']} received, "
            f"{result['loss_pct']:g}% packet loss"
        )
    return f"link: {result['up_count']} up, {result['down_count']} down, {len(result['records'])} records"
