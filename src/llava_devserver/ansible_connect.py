"""Connect to a server exactly as ansible-playbook does, for the commands that talk to one directly (`logs`).

The ssh command line is built by Ansible's own ssh connection plugin from the host's variables (as the
inventory loader returns them: templates from the inventory are rendered, as in a task) and the project's
ansible.cfg, as the task executor sets it up: `ansible_host`/`ansible_port`/`ansible_user`,
`ansible_ssh_private_key_file`, `ansible_ssh_common_args` (a ProxyJump/bastion), `ansible_ssh_extra_args`,
ansible.cfg's `ssh_args`, `host_key_checking` and `timeout`, and the same ControlPath (an open master
connection of a run is reused). Privilege escalation (`ansible_become`) wraps the remote command in
`sudo -n`, as the sudo become plugin would without a password.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any


class ConnectionSettingsError(ValueError):
    """The host's connection cannot be used for a direct command (password login, unsupported plugin)."""


SSH_NAMES = frozenset({"ssh", "ansible.builtin.ssh", "smart", "paramiko", "ansible.builtin.paramiko_ssh"})
LOCAL_NAMES = frozenset({"local", "ansible.builtin.local"})


def _templated(variables: Mapping[str, Any]) -> Any:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    return Templar(loader=DataLoader(), variables=dict(variables))


def remote_argv(variables: Mapping[str, Any], host: str, remote: str) -> list[str]:
    """argv that runs the shell command REMOTE on HOST (inventory name) with its inventory VARIABLES."""
    from ansible import constants as C
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    variables = {"inventory_hostname": host, **dict(variables)}
    templar = _templated(variables)
    connection = str(templar.template(variables.get("ansible_connection") or C.DEFAULT_TRANSPORT))
    if connection in LOCAL_NAMES:
        return ["bash", "-c", _become(remote, variables, templar)]
    if connection not in SSH_NAMES:
        raise ConnectionSettingsError(
            f"{host}: ansible_connection={connection}: only ssh and local servers can be reached directly"
        )
    if not AnsibleCollectionConfig.collection_finder:  # once per process, as ansible's own CLI does
        init_plugin_loader()
    plugin = connection_loader.get("ssh", PlayContext())
    options = {
        name: templar.template(variables[name])
        for name in C.config.get_plugin_vars("connection", "ssh")
        if name in variables
    }
    plugin.set_options(var_options=options)
    if plugin.get_option("password"):
        raise ConnectionSettingsError(
            f"{host}: ansible_password is set: a direct command needs key-based SSH (or an ssh-agent)"
        )
    address = str(plugin.get_option("host") or host)
    plugin.host = address  # as exec_command sets it: the ControlPath is a hash of host, port and user
    command = plugin._build_command(
        plugin.get_option("ssh_executable"), "ssh", address, _become(remote, variables, templar)
    )
    return [part.decode("utf-8", "surrogateescape") if isinstance(part, bytes) else part for part in command]


def _become(remote: str, variables: Mapping[str, Any], templar: Any) -> str:
    from ansible import constants as C
    from ansible.module_utils.parsing.convert_bool import boolean

    become = variables.get("ansible_become", C.DEFAULT_BECOME)
    if not boolean(templar.template(become), strict=False):
        return remote
    method = str(templar.template(variables.get("ansible_become_method") or C.DEFAULT_BECOME_METHOD))
    if method not in ("sudo", "ansible.builtin.sudo"):
        raise ConnectionSettingsError(f"ansible_become_method={method}: only sudo is supported here")
    user = str(templar.template(variables.get("ansible_become_user") or C.DEFAULT_BECOME_USER or "root"))
    return f"sudo -n -H -u {shlex.quote(user)} /bin/sh -c {shlex.quote(remote)}"
