"""Asset staging benchmark (llava_assets fan-out) on the simulated fleet: prints a table.

For each fleet size N (default 1 and 3): fresh simulated servers with the training container running
(validate, host, container; not timed) and the workspace built (llava_workspace; not timed), then:
- staging: `--tags llava_assets` (the validate play runs too: it is tagged always) on servers without
  assets: the control node sends each asset to the seed, the seed pushes it to the others;
- no-op: the same again (everything verified: must stage nothing); staging minus no-op is the time spent
  staging beyond Ansible's fixed cost.

Bytes are measured twice: rsync's own `Total bytes sent` (from the llava_report_assets facts of the run:
control node -> seed, seed -> each other server) and each server's interface counters on the fleet network
(rx/tx bytes around the staging run, which include Ansible's own SSH traffic).

The synthetic assets are tiny (~1 MB); `--pad-mb` adds a blob of random bytes to the image folder (a
copy of the assets, default 64 MB) so that the asset traffic dominates Ansible's.

`--link-mbps M` gives every simulated server a real port's limit (`sim up --link-mbps`): then the time is
bound by bandwidth as on a real fleet, and the table shows the ratio to the physical limit of any
distribution, the payload over one link (payload bytes * 8 / M Mbit/s). `--json` also prints one JSON
object per line and measurement:
`{"servers": N, "mode": "star", "wall_s": ..., "control_bytes": ..., "payload_bytes": ...}` (mode: today's
star, the seed pushing to every other server). The table is also written to docs/staging-benchmark.md.

    python bench/staging_bench.py [--sizes 1 3] [--pad-mb 64] [--link-mbps M] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "staging-benchmark.md"
sys.path.insert(0, str(REPO / "tests" / "fleet"))

import harness  # noqa: E402  (the fleet tests' harness: the same fleets and runs)
from llava_devserver.assets_manifest import fingerprint  # noqa: E402


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def padded_assets(fleet: harness.Fleet, pad_mb: int) -> int:
    """Point the fleet's assets at a copy whose image folder carries `pad_mb` MB more; returns the total
    asset bytes."""
    settings = fleet.group_vars()
    assets = settings["assets"]
    root = Path(assets["images"]["path"]).parent
    copy = fleet.dir / "bench-assets"
    if not copy.exists():
        shutil.copytree(root, copy, copy_function=shutil.copy2)
        if pad_mb:
            (copy / "images" / "pad").mkdir()
            with (copy / "images" / "pad" / "blob.bin").open("wb") as handle:
                for _ in range(pad_mb):
                    handle.write(os.urandom(1 << 20))
    for spec in assets.values():
        spec["path"] = str(copy / Path(spec["path"]).name)
    fleet.set_group_vars(assets=assets)
    total = 0
    for spec in assets.values():
        fp = fingerprint(spec["path"])
        assert fp is not None
        total += fp["bytes"]
    return total


def measure(n: int, pad_mb: int, keep: bool, link_mbps: int | None) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"staging-bench-{n}-"))
    stack = contextlib.ExitStack()
    try:
        fleet = stack.enter_context(
            harness.fleet_up(f"stgb{n}", n, out, docker=True, devices_per_host=1, link_mbps=link_mbps)
        )
        if keep:
            stack.pop_all()  # leave the fleet up (remove it with `llava-devserver sim down`)
        harness.use_small_training_image(fleet)
        total = padded_assets(fleet, pad_mb)
        fleet.run_play("validate", "host", "container").assert_ok()
        fleet.run_play("validate", "workspace", tags="llava_workspace").assert_ok()
        before = fleet.net_counters()
        staging = fleet.run_play("validate", "workspace", tags="llava_assets")
        after = fleet.net_counters()
        staging.assert_ok()
        noop = fleet.run_play("validate", "workspace", tags="llava_assets")
        noop.assert_ok()
        assert all(r["changed"] == 0 for r in noop.recap.values()), noop.changed
        facts = {h["host"]: h["facts"]["assets"] for h in staging.report()["hosts"]}
        from_control = sum(f["bytes_from_control"] for f in facts.values())
        from_seed = sum(f["bytes_transferred"] - f["bytes_from_control"] for f in facts.values())
        rx = {h: after[h]["rx"] - before[h]["rx"] for h in fleet.hosts}
        tx = {h: after[h]["tx"] - before[h]["tx"] for h in fleet.hosts}
        return {
            "servers": n,
            "mode": "star",
            "link_mbps": link_mbps,
            "asset_bytes": total,
            "from_control": from_control,
            "from_seed": from_seed,
            "seed_rx": rx[fleet.hosts[0]],
            "seed_tx": tx[fleet.hosts[0]],
            "others_rx": sum(rx[h] for h in fleet.hosts[1:]),
            "staging_s": staging.seconds,
            "noop_s": noop.seconds,
        }
    finally:
        stack.close()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)


def physical_limit_s(row: dict[str, Any]) -> float | None:
    """The payload over one link: no distribution to any number of servers can be faster."""
    return row["asset_bytes"] * 8 / (row["link_mbps"] * 1e6) if row["link_mbps"] else None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| servers | mode | link Mbit/s | assets MB | rsync from control MB | rsync seed->others MB "
        "| seed rx MB | seed tx MB | others rx MB | staging s | no-op s | staging - no-op s | limit s "
        "| staging / limit |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        limit = physical_limit_s(r)
        ratio = f"{r['staging_s'] / limit:.2f}" if limit else "-"
        lines.append(
            f"| {r['servers']} | {r['mode']} | {r['link_mbps'] or '-'} | {_mb(r['asset_bytes'])} "
            f"| {_mb(r['from_control'])} | {_mb(r['from_seed'])} | {_mb(r['seed_rx'])} | {_mb(r['seed_tx'])} "
            f"| {_mb(r['others_rx'])} | {r['staging_s']:.1f} | {r['noop_s']:.1f} "
            f"| {r['staging_s'] - r['noop_s']:.1f} | {f'{limit:.1f}' if limit else '-'} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def write_doc(rows: list[dict[str, Any]], command: str) -> None:
    """docs/staging-benchmark.md from this run's rows (rewritten after every size)."""
    load = os.getloadavg()
    DOC.write_text(
        "# Asset staging benchmark\n\n"
        "Generated by `bench/staging_bench.py`; do not edit by hand. Measured with\n"
        f"`{command}` on {os.cpu_count()} cores (load average {load[0]:.1f} at the end), simulated\n"
        "DevServers.\n"
        "`limit s` is the payload over one link (its bytes * 8 / the link's Mbit/s): no distribution to any\n"
        "number of servers can be faster; `staging / limit` is how far from it a mode is.\n\n"
        f"{table(rows)}\n"
    )


def json_line(row: dict[str, Any]) -> str:
    """One measurement for others to check: wall time, bytes the control node sent, payload bytes."""
    return json.dumps(
        {
            "servers": row["servers"],
            "mode": row["mode"],
            "link_mbps": row["link_mbps"],
            "wall_s": round(row["staging_s"], 2),
            "control_bytes": row["from_control"],
            "payload_bytes": row["asset_bytes"],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--pad-mb", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="leave the fleets up (remove with sim down)")
    parser.add_argument(
        "--link-mbps", type=int, help="every server's link limit, Mbit/s (sim up --link-mbps)"
    )
    parser.add_argument("--json", action="store_true", help="also one JSON object per line and measurement")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args.pad_mb, args.keep, args.link_mbps))
        print(table(rows), flush=True)
        write_doc(rows, "python bench/staging_bench.py " + " ".join(sys.argv[1:]))
    if args.json:
        for row in rows:
            print(json_line(row))
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
