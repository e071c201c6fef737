"""`llava-devserver npu-smi parse [FILE|-] [--json]`: read `npu-smi info`, `info -l` or `info -t board`.

Which of the three outputs it is is detected from the text. `--json` prints the dict of
`llava_devserver.npu_smi.npu_smi_to_dict` (`cards`, and `total_count` for `-l`); without it, a short
table. An npu-smi failure (e.g. `dcmi module initialize failed. ret is -8005`) or unknown text exits 1
with what it means and what to do; a file that cannot be read exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llava_devserver import npu_smi

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "npu-smi",
        help="parse npu-smi output (info, info -l, info -t board)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="npu_smi_command", metavar="ACTION")
    parse = actions.add_parser(
        "parse",
        help="parse one npu-smi output (kind auto-detected)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument("file", nargs="?", default="-", metavar="FILE", help="npu-smi output; - for stdin")
    parse.add_argument("--json", action="store_true", help="print the parsed result as JSON")
    parse.set_defaults(func=run_parse)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    with open(source, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def run_parse(args: argparse.Namespace) -> int:
    name = "stdin" if args.file == "-" else args.file
    try:
        text = _read(args.file)
    except OSError as exc:
        print(f"npu-smi parse: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = npu_smi.parse_npu_smi(text)
    except npu_smi.NpuSmiToolError as exc:
        if args.json:
            print(json.dumps({"error": exc.to_dict()}, indent=2))
        print(f"{name}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except npu_smi.NpuSmiParseError as exc:
        if args.json:
            print(json.dumps({"error": {"code": None, "message": exc.message}}, indent=2))
        print(f"{name}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render_table(result))
    return EXIT_OK


def render_table(result: npu_smi.NpuSmiOutput) -> str:
    """A short human summary of a parsed output."""
    if isinstance(result, npu_smi.NpuSmiInfo):
        lines = [
            f"npu-smi {result.version or '?'}, driver {result.driver_version or '?'}: "
            f"{len(result.npu_ids)} NPUs, {len(result.cards)} chips, "
            f"{sum(card.health == 'OK' for card in result.cards)} OK",
            f"{'NPU':>4} {'Chip':>4} {'Phy':>4}  {'Name':<10} {'Health':<8} {'Power(W)':>8} {'Temp(C)':>7} "
            f"{'HBM used/total (MB)':>20}  Bus-Id",
        ]
        for card in result.cards:
            hbm = (
                f"{card.hbm_used_mb}/{card.hbm_total_mb}"
                if card.hbm_total_mb is not None
                else (f"{card.memory_used_mb}/{card.memory_total_mb}" if card.memory_total_mb else "-")
            )
            lines.append(
                f"{card.npu:>4} {card.chip:>4} {_dash(card.phy_id):>4}  {card.name:<10} {card.health:<8} "
                f"{_dash(card.power_w):>8} {_dash(card.temp_c):>7} {hbm:>20}  {card.bus_id or '-'}"
            )
        lines += [
            f"process {p.pid} ({p.name}) on NPU {p.npu} chip {p.chip}: {p.memory_mb} MB"
            for p in result.processes
        ]
        lines += [f"warning: {warning}" for warning in result.warnings]
        return "\n".join(lines)
    if isinstance(result, npu_smi.NpuSmiList):
        lines = [f"Total Count: {result.total_count}", f"{'NPU':>4} {'Chips':>5}"]
        lines += [f"{entry.npu:>4} {_dash(entry.chip_count):>5}" for entry in result.cards]
        return "\n".join(lines)
    width = max((len(key) for key in result.fields), default=0)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in result.fields.items())


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
