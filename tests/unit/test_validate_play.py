"""The first play (playbooks/validate.yml) stops a bad inventory before any server is contacted.

The test inventories point at TEST-NET-1 addresses (192.0.2.0/24) where nothing answers: a play that tried
to connect would report the hosts UNREACHABLE.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the tools of the running environment
GOOD = ROOT / "tests/inventories/good/devserver.ini"
BAD = ROOT / "tests/inventories/bad/devserver.ini"

PLAYBOOK = f"""\
---
- name: Validate
  ansible.builtin.import_playbook: {ROOT}/playbooks/validate.yml

- name: What comes after validation
  hosts: devservers
  gather_facts: false
  tasks:
    - name: Show llava
      ansible.builtin.debug:
        msg: "LLAVA {{{{ inventory_hostname }}}} rank={{{{ llava.node_rank }}}}
          master={{{{ llava.master_addr }}}} world={{{{ llava.world_size }}}}
          devices={{{{ llava.npu_devices | join(',') }}}}"

    - name: Contact the server
      ansible.builtin.ping:
"""


def play(tmp_path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bad_inventory_stops_before_any_connection(tmp_path: Path) -> None:
    result = play(tmp_path, BAD)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Invalid inventory:" in output
    assert (
        "fleet: container_imgae: unknown setting; did you mean container_image? (on every server) "
        "[tests/inventories/bad/group_vars/all.yml:5]"
    ) in output
    assert "ds-b: npu_devices: lists NPU 1 more than once" in output
    assert "fleet: work_dir: /etc is a system directory" in output
    assert "fleet: ansible_host: ds-a and ds-b share the address 192.0.2.20" in output
    assert "UNREACHABLE" not in output
    assert "unreachable=1" not in output and "unreachable=0" in output
    assert "TASK [Contact the server]" not in output and "TASK [Show llava]" not in output
    assert "s3cr3t-do-not-print" not in output


LLAVA_LINE = re.compile(r"LLAVA (\S+) rank=(\d+) master=(\S+) world=(\d+) devices=([\d,]+)")


def test_good_inventory_gives_every_server_its_llava(tmp_path: Path) -> None:
    result = play(tmp_path, GOOD)
    output = result.stdout + result.stderr
    assert sorted(LLAVA_LINE.findall(output)) == [
        ("ds-a", "0", "192.0.2.10", "8", "0,1,2,3"),
        ("ds-b", "1", "192.0.2.10", "8", "0,1,2,3"),
    ], output
    # the control: the same play does contact the (unreachable) servers once validation has passed
    assert "UNREACHABLE" in output and result.returncode != 0


def test_limit_keeps_the_whole_group_in_view(tmp_path: Path) -> None:
    result = play(tmp_path, GOOD, "--limit", "ds-b")
    output = result.stdout + result.stderr
    # only ds-b runs, but it is validated with the whole group, so it keeps rank 1 and ds-a as master
    assert LLAVA_LINE.findall(output) == [("ds-b", "1", "192.0.2.10", "8", "0,1,2,3")], output


def test_validation_runs_whatever_the_tags(tmp_path: Path) -> None:
    result = play(tmp_path, GOOD, "--tags", "no-such-tag")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "TASK [Validate the settings of every server of devservers]" in output
    assert "TASK [Set the normalized settings of each server (llava)]" in output
    assert "TASK [Show llava]" not in output
