"""Read an inventory exactly as Ansible does (INI/YAML + group_vars + host_vars) and hand our settings out.

Ansible's own InventoryManager/VariableManager/DataLoader do the reading, so precedence, `children`,
INI value parsing and vars plugins behave as in `ansible-playbook`. Only play-adjacent group_vars (next to a
playbook) are not seen: there is no playbook here. Values of our settings that are templates are rendered
with the host's variables, as Ansible would when a task reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_devserver.ansible_private import origin_of, strict_inventory_parsing
from llava_devserver.config import GROUP, KNOWN_SETTINGS, UnresolvedValue, is_ansible_variable


class InventoryError(Exception):
    """The inventory could not be read (missing file, broken INI/YAML, no `devservers` group)."""


@dataclass
class FleetInventory:
    """Per host of `devservers` (inventory order): its variables, and where our settings were written."""

    sources: list[str]
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[str, dict[str, str]] = field(default_factory=dict)


def plain(value: Any) -> Any:
    """Ansible's tagged values (2.19 data tagging) as plain JSON-able Python; tuples from INI become lists.

    A tagged value is an instance of a subclass of str, int or float: the base type's constructor gives the
    plain value (public Python, no ansible-core internals).
    """
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    return str(value)  # e.g. a vaulted string: decrypting may fail, the caller turns that into an error


def _may_be_template(value: Any) -> bool:
    """Cheap pre-check: most values are plain, and building a templar per host costs more than the rest."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(_may_be_template(k) or _may_be_template(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_may_be_template(v) for v in value)
    return False


def parse_extra_vars(items: Sequence[str], loader: Any | None = None) -> dict[str, Any]:
    """`-e` as ansible-playbook takes it: `key=value ...`, a YAML/JSON mapping, or `@file`."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.splitter import parse_kv

    loader = loader or DataLoader()
    extra: dict[str, Any] = {}
    for item in items:
        text = item.strip()
        try:
            if text.startswith("@"):
                data = loader.load_from_file(text[1:])
            elif text.startswith(("{", "[")):
                data = loader.load(text)
            else:
                data = parse_kv(text)
        except Exception as exc:
            raise InventoryError(f"extra vars {item!r}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InventoryError(f"extra vars {item!r}: not a mapping of variables")
        extra.update(data)
    return extra


def load_inventory(
    sources: str | Path | Sequence[str | Path],
    extra_vars: Mapping[str, Any] | None = None,
    vault_password_file: str | Path | None = None,
    vault_secrets: Sequence[tuple[str, Any]] | None = None,
) -> FleetInventory:
    """The variables of every host of `devservers`, resolved by Ansible, in inventory order.

    vault_secrets: Ansible's (vault id, secret) pairs as `ansible.cli.CLI.setup_vault_secrets` returns
    them (the CLI's -J/--vault-id/--vault-password-file); vault_password_file: one password file.
    Raises InventoryError when the inventory cannot be read.
    """
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    paths = [str(sources)] if isinstance(sources, str | Path) else [str(s) for s in sources]
    for path in paths:
        if not os.path.exists(path):
            raise InventoryError(f"{path}: no such inventory file or directory")
        if not os.access(path, os.R_OK):
            raise InventoryError(f"{path}: not readable")

    loader = DataLoader()
    secrets: list[tuple[str, Any]] = list(vault_secrets or [])
    if vault_password_file is not None:
        from ansible.parsing.vault import get_file_vault_secret

        try:
            secret = get_file_vault_secret(filename=str(vault_password_file), loader=loader)
            secret.load()
        except AnsibleError as exc:
            raise InventoryError(f"{vault_password_file}: {exc.message}") from exc
        secrets.append(("default", secret))
    loader.set_vault_secrets(secrets)
    _use_vault_secrets(secrets)

    result = FleetInventory(sources=paths)
    failures: list[str] = []
    try:
        try:
            with strict_inventory_parsing(failures):
                inventory = InventoryManager(loader=loader, sources=paths)
        except AnsibleError as exc:
            raise InventoryError("; ".join([str(exc.message), *failures])) from exc
        if GROUP not in inventory.groups:
            raise InventoryError(f"{', '.join(paths)}: no group [{GROUP}] (the servers must be in it)")
        manager = VariableManager(loader=loader, inventory=inventory)
        renderer = _Renderer(Templar(loader=loader))
        for host in inventory.groups[GROUP].get_hosts():
            variables = manager.get_vars(host=host, include_hostvars=False)
            variables.update(extra_vars or {})
            result.hosts[host.name], result.origins[host.name] = _our_settings(variables, renderer)
    except AnsibleError as exc:  # broken INI/YAML in the inventory, group_vars or host_vars
        raise InventoryError(str(exc).strip()) from exc
    return result


def _use_vault_secrets(secrets: list[tuple[str, Any]]) -> None:
    """Vaulted values decrypt lazily through a process-wide context (ansible-core 2.19) that Ansible sets
    once; here each load sets its own secrets (none: a vaulted value is reported, never decrypted)."""
    from ansible.parsing.vault import VaultSecretsContext

    current = VaultSecretsContext.current(optional=True)
    if current is None:
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))
    else:
        current.secrets = secrets


class _Renderer:
    """Renders our settings' templates with one host's variables, as a task would see them.

    Most fleets write one template in group_vars (`{{ inventory_dir }}/files/x.zip`) that every host
    renders to the same text; Ansible compiles a template on each call, so results are reused when the
    template and the values of the variables it names are the same (values that are templates themselves
    are never reused).
    """

    _UNCACHEABLE = frozenset({"lookup", "query", "q", "now"})  # may differ from one call to the next

    def __init__(self, templar: Any) -> None:
        import jinja2

        self._templar = templar
        self._env = jinja2.Environment()
        self._names: dict[str, frozenset[str] | None] = {}
        self._results: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._current: int | None = None

    def _referenced(self, source: str) -> frozenset[str] | None:
        if source not in self._names:
            import jinja2.meta

            try:
                names = frozenset(jinja2.meta.find_undeclared_variables(self._env.parse(source)))
            except Exception:  # Ansible's own parse will say what is wrong
                names = None
            self._names[source] = None if names is None or names & self._UNCACHEABLE else names
        return self._names[source]

    def render(self, raw: Any, variables: dict[str, Any]) -> Any:
        key = None
        names = self._referenced(raw) if isinstance(raw, str) else None
        if names is not None and not any(_may_be_template(variables.get(n)) for n in names):
            key = (str(raw), tuple((n, repr(variables.get(n, Ellipsis))) for n in sorted(names)))
            if key in self._results:
                return self._results[key]
        if self._current != id(variables):
            self._templar.available_variables = variables
            self._current = id(variables)
        value = plain(self._templar.template(raw))
        if key is not None:
            self._results[key] = value
        return value


def _our_settings(variables: dict[str, Any], renderer: _Renderer) -> tuple[dict[str, Any], dict[str, str]]:
    """Our settings rendered and made plain; other variables kept as they are (only their names matter)."""
    from ansible.errors import AnsibleError

    values: dict[str, Any] = dict(variables)
    origins: dict[str, str] = {}
    for name, raw in variables.items():  # where our settings and look-alikes (typos) were written
        if not is_ansible_variable(name):
            origin = origin_of(raw)
            if origin:
                origins[name] = origin
    for name in KNOWN_SETTINGS:
        if name not in variables:
            continue
        raw = variables[name]
        try:
            values[name] = renderer.render(raw, variables) if _may_be_template(raw) else plain(raw)
        except AnsibleError as exc:  # an undefined variable in a template, an undecryptable vault value
            values[name] = UnresolvedValue(exc.message.splitlines()[0] if exc.message else type(exc).__name__)
    return values, origins
