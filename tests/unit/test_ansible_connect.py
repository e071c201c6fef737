"""`logs` connects as ansible-playbook does: the ssh command line of Ansible's own ssh plugin, compared with
the one `ansible -vvv` runs for the same inventory and ansible.cfg; become, local, and what is refused."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llava_devserver.ansible_connect import ConnectionSettingsError, remote_argv
from llava_devserver.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = """\
[devservers]
ds-1 ansible_host=127.0.0.1 ansible_port=1 ansible_ssh_private_key_file=/keys/id_ed25519

[devservers:vars]
ansible_user=ma-admin
ansible_ssh_common_args='-o ProxyJump=jump@bastion.example:2200'
"""


def _ansible_exec_line(inventory: Path) -> list[str]:
    """The ssh argv ansible runs for ds-1 (nothing listens on port 1: it fails at once, after printing it)."""
    ansible = str(Path(sys.executable).parent / "ansible")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    done = subprocess.run(
        [ansible, "ds-1", "-i", str(inventory), "-m", "ansible.builtin.ping", "-vvv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    line = next(line for line in done.stdout.splitlines() if "SSH: EXEC " in line)
    return shlex.split(line.split("SSH: EXEC ", 1)[1])


def test_same_ssh_command_line_as_ansible(tmp_path: Path) -> None:
    inventory = tmp_path / "devserver.ini"
    inventory.write_text(INVENTORY)
    variables = load_inventory(inventory).hosts["ds-1"]
    ours = remote_argv(variables, "ds-1", "tail -n 5 /data/train.log")
    theirs = _ansible_exec_line(inventory)
    assert ours[:-1] == theirs[:-1]  # everything but the remote command
    assert ours[-1] == "tail -n 5 /data/train.log"
    # What that means: ansible.cfg's ssh_args, the inventory's user, port, key and bastion, Ansible's own
    # host key policy (no known_hosts), and the ControlPath a run's master connection uses.
    for option in (
        "ControlMaster=auto",
        "UserKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=no",
        "Port=1",
        'User="ma-admin"',
        'IdentityFile="/keys/id_ed25519"',
        "ProxyJump=jump@bastion.example:2200",
    ):
        assert option in ours
    assert any(part.startswith('ControlPath="/tmp/.llava-devserver-cp/') for part in ours)


def test_become_wraps_the_command_in_sudo() -> None:
    argv = remote_argv({"ansible_host": "10.0.0.5", "ansible_become": "yes"}, "ds-1", "tail -F 'a b'")
    assert argv[-1] == "sudo -n -H -u root /bin/sh -c 'tail -F '\"'\"'a b'\"'\"''"
    local = remote_argv({"ansible_connection": "local", "ansible_become": False}, "ds-1", "tail x")
    assert local == ["bash", "-c", "tail x"]


def test_templated_connection_variables(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "devservers:\n  hosts:\n    ds-1:\n      ansible_host: '{{ base }}.7'\n"
        "  vars:\n    base: 10.0.0\n    ansible_user: \"{{ 'ro' ~ 'ot' }}\"\n"
    )
    argv = remote_argv(load_inventory(inventory).hosts["ds-1"], "ds-1", "true")
    assert argv[-2] == "10.0.0.7" and 'User="root"' in argv


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"ansible_password": "pw"}, "needs key-based SSH"),
        ({"ansible_connection": "community.docker.docker"}, "only ssh and local"),
        ({"ansible_become": True, "ansible_become_method": "su"}, "only sudo"),
    ],
)
def test_refused_connections(variables: dict[str, object], message: str) -> None:
    with pytest.raises(ConnectionSettingsError, match=message):
        remote_argv({"ansible_host": "10.0.0.5", **variables}, "ds-1", "true")
