"""`sim up --bastion` (sim/bastion.py, files/npu-sim-front): the inventory reaches the servers through the
jump host with a ProxyCommand that Ansible's ssh splits into one option; the servers refuse the control node
by a file applied at boot. (The Molecule default scenario runs the whole site.yml, status and logs through
it.)"""

from __future__ import annotations

import configparser
import shlex
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from llava_devserver.cli import main
from llava_devserver.sim import bastion, image
from llava_devserver.sim.inventory import SimHost, render_ini
from sim_fakes import FakeServer

FILES = resources.files("llava_devserver.sim") / "files"
JUMP = bastion.SimBastion("llava-sim-x-net-bastion", "172.30.0.9")


def _common_args(ini: str) -> list[str]:
    """ansible_ssh_common_args as the ini inventory gives it and Ansible's ssh plugin splits it."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.read_string(ini.replace("devserver-1 ansible_host=", "devserver-1=ansible_host="))
    value = parser["devservers:vars"]["ansible_ssh_common_args"]
    return shlex.split(value.strip("'"))


def test_the_inventory_reaches_the_servers_through_the_bastion(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    via = bastion.proxy_option(JUMP, key)
    args = _common_args(render_ini([SimHost("devserver-1", "172.30.0.2")], key, "x", via))
    assert args[-2:] == ["-o", via]  # one option for ssh, after the host-key settings
    proxy = shlex.split(via.removeprefix("ProxyCommand="))
    assert proxy[:3] == ["ssh", "-i", str(key)]  # the jump takes the fleet's key itself
    assert proxy[-3:] == ["-W", "%h:%p", "root@172.30.0.9"]
    # without a bastion: the host-key settings only
    assert _common_args(render_ini([SimHost("devserver-1", "172.30.0.2")], key, "x")) == [
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    ]  # fmt: skip


def test_a_server_refuses_the_control_node_by_a_file_its_boot_applies() -> None:
    server: Any = FakeServer()
    bastion.put_behind(server, "172.30.0.1")
    bastion.put_behind(server, None)
    assert server.commands == [
        ["bash", "-c", f"printf '%s\\n' 172.30.0.1 > {bastion.REFUSE_FILE} && {bastion.FRONT_SCRIPT}"],
        ["bash", "-c", f"rm -f {bastion.REFUSE_FILE} && {bastion.FRONT_SCRIPT}"],
    ]
    failing: Any = FakeServer(1, b"iptables: No chain/target/match by that name.")
    with pytest.raises(bastion.BastionError, match="llava-sim-x-devserver-1: putting the server behind"):
        bastion.put_behind(failing, "172.30.0.1")


def test_every_server_image_has_the_script_and_its_boot_runs_it() -> None:
    assert image.SERVER_FILES["npu-sim-front"] == bastion.FRONT_SCRIPT
    script = (FILES / "npu-sim-front").read_text()
    assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0
    assert bastion.REFUSE_FILE in script and "--ctstate NEW -j DROP" in script  # replies still arrive
    assert f"{bastion.FRONT_SCRIPT} ||" in (FILES / "npu-sim-boot").read_text()


def test_sim_up_takes_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim", "up", "--help"])
    assert exited.value.code == 0
    assert "--bastion" in capsys.readouterr().out
