#!/usr/bin/env python3
"""How long validating an inventory takes as the fleet grows (a benchmark, not a test).

For 10, 100 and 500 servers it writes an inventory (INI + group_vars + a few host_vars, one template),
then times load (Ansible's InventoryManager/VariableManager) + validate (the Pydantic model), in process
and as the `llava-devserver validate` command (a fresh Python, imports included), best of 3 each
(the machine may be shared).
The goal: under 2 s for 500 servers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llava_devserver.config import validate_fleet
from llava_devserver.inventory import load_inventory

SIZES = (10, 100, 500)
GOAL_S = 2.0


def write_inventory(root: Path, hosts: int) -> Path:
    (root / "group_vars").mkdir(parents=True)
    (root / "host_vars").mkdir()
    (root / "files").mkdir()
    (root / "files/AscendCloud-6.3.906-20240618153000.zip").write_bytes(b"PK")
    lines = ["[devservers]"]
    lines += [
        f"ds-{i:04d} ansible_host=10.{i // 65536}.{i // 250 % 256}.{i % 250 + 1} npu_devices=0-7"
        for i in range(hosts)
    ]
    (root / "devserver.ini").write_text("\n".join(lines) + "\n\n[devservers:vars]\nansible_user=root\n")
    (root / "group_vars/all.yml").write_text(
        "---\n"
        "work_dir: /data/llava-devserver\n"
        'ascendcloud_package: "{{ inventory_dir }}/files/AscendCloud-6.3.906-20240618153000.zip"\n'
        f"global_batch_size: {256 * hosts}\n"
        "train_env: {HCCL_CONNECT_TIMEOUT: 1200}\n"
        "assets: {llm: {source: none}}\n"
    )
    for i in range(0, hosts, 10):  # every tenth server has host_vars
        (root / f"host_vars/ds-{i:04d}.yml").write_text("---\nnpu_devices: [0, 1, 2, 3, 4, 5, 6, 7]\n")
    return root / "devserver.ini"


def in_process(inventory: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        loaded = load_inventory(inventory)
        validate_fleet(loaded.hosts, loaded.origins)
        best = min(best, time.perf_counter() - start)
    return best


def command(inventory: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "llava_devserver.cli", "validate", "-i", str(inventory)],
            capture_output=True,
            text=True,
            check=False,
        )
        best = min(best, time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"validate failed:\n{result.stdout}{result.stderr}")
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        for hosts in SIZES:
            inventory = write_inventory(Path(tmp) / str(hosts), hosts)
            rows.append((hosts, in_process(inventory, args.repeat), command(inventory, args.repeat)))
    base = rows[0][1]
    print(f"{'hosts':>6} {'load+validate s':>16} {'ms/host':>8} {'ratio':>6} {'CLI wall s':>11}")
    for hosts, seconds, wall in rows:
        print(
            f"{hosts:>6} {seconds:>16.3f} {seconds / hosts * 1000:>8.2f} {seconds / base:>6.1f} {wall:>11.3f}"
        )
    worst = rows[-1][2]
    verdict = "met" if worst < GOAL_S else "MISSED"
    print(
        f"goal: {SIZES[-1]} hosts under {GOAL_S:.0f} s (CLI wall, imports included): "
        f"{verdict} ({worst:.2f} s)"
    )
    return 0 if worst < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
