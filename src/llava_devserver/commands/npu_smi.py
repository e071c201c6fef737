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
from llava_devserver.commands.tool_output import EXIT_INVALID, EXIT_OK, EXIT_USAGE, read_input, register_parse


def register(subparsers: Any) -> None:
    register_parse(
        subparsers, "npu-smi", tool="npu-smi", doc=__doc__, run=run_parse,
        help="parse npu-smi output (info, info -l, info -t board)",
        parse_help="parse one npu-smi output (kind auto-detected)",
    )  # fmt: skip


def run_parse(args: argparse.Namespace) -> int:
    name, text = read_input("npu-smi", args.file)
    if text is None:
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
