"""The CLI speaks Ansible: the same option spellings, vault secrets, default inventory and config file.

Every command that reads the inventory or runs a playbook takes the options `ansible-playbook` users type
(`-i`, `-e`, `-J/--ask-vault-pass`, `--vault-id`, `--vault-password-file`, `-v`, `-l`, `-t`, `--skip-tags`,
`--diff`, `--forks`); their meaning is Ansible's own:

- vault secrets come from `ansible.cli.CLI.setup_vault_secrets` (so `ANSIBLE_VAULT_PASSWORD_FILE`,
  `vault_password_file` and `vault_identity_list` of ansible.cfg count as for `ansible-playbook`), set up once
  per command: a password typed at the prompt is answered to ansible-playbook's own prompt through
  ansible-runner, never written to a file or put on a command line;
- without `-i`, the inventory is Ansible's default (`ANSIBLE_INVENTORY`, else ansible.cfg's `inventory`);
- the config file is the project's ansible.cfg, the one every playbook run uses (runner.runner_env): the
  command reads what the run will read.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "ANSIBLE_CONFIG"
VAULT_FLAGS = (
    "-J/--ask-vault-pass, --vault-id ID@SOURCE, --vault-password-file FILE or ANSIBLE_VAULT_PASSWORD_FILE"
)
# ansible-playbook's prompts (ansible.cli.CLI.setup_vault_secrets), answered through ansible-runner.
ASK_VAULT_PROMPT = r"^Vault password:\s*?$"


class AnsibleOptionError(Exception):
    """An Ansible option could not be honoured (no inventory, an unreadable vault password file)."""


# -------------------------------------------------------------------------------------------- config


def use_project_config() -> Path | None:
    """Point this process at the project's ansible.cfg before Ansible is imported (its constants are read
    once, at import); the path, or None outside a project (Ansible's own search order then applies)."""
    try:
        from llava_devserver.runner import find_project_root

        config = find_project_root() / "ansible.cfg"
    except (ImportError, RuntimeError):
        return None
    if not config.is_file():
        return None
    configured = os.environ.get(CONFIG_ENV)
    if configured and Path(configured).expanduser().resolve() != config.resolve():
        print(
            f"warning: {CONFIG_ENV}={configured} is not used: playbooks run with the project's {config}; "
            "put Ansible settings there",
            file=sys.stderr,
        )
    os.environ[CONFIG_ENV] = str(config)
    return config


# ------------------------------------------------------------------------------------------- options


def add_inventory_options(parser: argparse.ArgumentParser, *, extra_vars: bool = True) -> None:
    """-i (default: Ansible's), -e, the vault options and -v."""
    parser.add_argument(
        "-i",
        "--inventory",
        "--inventory-file",
        action="append",
        default=None,
        metavar="INVENTORY",
        help="inventory file or dir (repeatable; default: ANSIBLE_INVENTORY, else ansible.cfg's inventory)",
    )
    if extra_vars:
        parser.add_argument(
            "-e",
            "--extra-vars",
            action="append",
            default=[],
            metavar="VARS",
            help="extra variables as ansible-playbook takes them (key=value, YAML/JSON, @file)",
        )
    vault = parser.add_argument_group("vault (as ansible-playbook)")
    vault.add_argument(
        "--vault-id",
        action="append",
        default=[],
        dest="vault_ids",
        metavar="ID",
        help="vault identity (ID@FILE, ID@prompt)",
    )
    vault.add_argument(
        "-J",
        "--ask-vault-password",
        "--ask-vault-pass",
        action="store_true",
        dest="ask_vault_pass",
        default=None,
        help="ask for the vault password (once; the playbook run gets it too)",
    )
    vault.add_argument(
        "--vault-password-file",
        "--vault-pass-file",
        action="append",
        default=[],
        dest="vault_password_files",
        metavar="FILE",
        help="file (or executable script) holding the vault password",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="verbosity",
        help="more Ansible output (-vvv: connections)",
    )


def add_play_options(parser: argparse.ArgumentParser, *, tags: bool = True) -> None:
    """Options that only shape the ansible-playbook run."""
    parser.add_argument("-l", "--limit", metavar="PATTERN", help="only these servers (Ansible pattern)")
    if tags:
        parser.add_argument("-t", "--tags", metavar="TAGS", help="only these tags (comma list)")
        parser.add_argument("--skip-tags", metavar="TAGS", help="skip these tags (comma list)")
    parser.add_argument(
        "-f", "--forks", type=int, metavar="N", help="parallel servers (default: ansible.cfg's forks)"
    )
    parser.add_argument(
        "-D", "--diff", action="store_true", default=None, help="show the changes of files and templates"
    )


def add_json_option(
    parser: argparse.ArgumentParser, help_text: str = "machine-readable output (JSON)"
) -> None:
    parser.add_argument("--json", action="store_true", help=help_text)


# ------------------------------------------------------------------------------------------ inventory


def inventory_sources(args: argparse.Namespace) -> list[str]:
    """`-i` as given, else Ansible's default inventory (ANSIBLE_INVENTORY, ansible.cfg's `inventory`)."""
    if getattr(args, "inventory", None):
        return list(args.inventory)
    from ansible import constants as C

    sources = [str(s) for s in (C.DEFAULT_HOST_LIST or [])]
    existing = [s for s in sources if os.path.exists(s)]
    if not existing:
        origin = "ANSIBLE_INVENTORY" if os.environ.get("ANSIBLE_INVENTORY") else "ansible.cfg's inventory"
        raise AnsibleOptionError(
            f"no inventory: give -i INVENTORY (the default from {origin}, {', '.join(sources) or 'none'}, "
            "does not exist)"
        )
    args.inventory = existing  # the playbook run uses the same sources
    return existing


# ---------------------------------------------------------------------------------------------- vault


@dataclass
class VaultSetup:
    """The secrets of one command, and the answers to ansible-playbook's prompts for the typed ones."""

    secrets: list[tuple[str, Any]] = field(default_factory=list)
    prompt_answers: dict[str, str] = field(default_factory=dict)  # regex of a prompt -> password

    @property
    def given(self) -> bool:
        return bool(self.secrets)


def vault_setup(args: argparse.Namespace, loader: Any | None = None) -> VaultSetup:
    """Ansible's vault secrets for these options, set up once per command (a prompt asks once)."""
    cached = getattr(args, "_vault_setup", None)
    if isinstance(cached, VaultSetup):
        return cached
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import PromptVaultSecret

    password_files = [str(Path(f).expanduser()) for f in getattr(args, "vault_password_files", None) or []]
    vault_ids = list(C.DEFAULT_VAULT_IDENTITY_LIST or []) + list(getattr(args, "vault_ids", None) or [])
    ask = getattr(args, "ask_vault_pass", None)
    if ask is None:
        ask = bool(C.DEFAULT_ASK_VAULT_PASS)
    try:
        secrets = CLI.setup_vault_secrets(
            loader or DataLoader(),
            vault_ids=vault_ids,
            vault_password_files=password_files,
            ask_vault_pass=ask,
            auto_prompt=False,
            initialize_context=False,  # inventory.load_inventory sets the context of each load
        )
    except AnsibleError as exc:
        raise AnsibleOptionError(f"vault password: {exc.message}") from exc
    except EOFError as exc:
        raise AnsibleOptionError("vault password: no answer at the prompt") from exc
    setup = VaultSetup(secrets=list(secrets))
    for vault_id, secret in secrets:
        if isinstance(secret, PromptVaultSecret) and secret.bytes is not None:
            password = secret.bytes.decode("utf-8", "surrogateescape")
            if secret.prompt_formats == ["Vault password: "]:
                setup.prompt_answers[ASK_VAULT_PROMPT] = password
            else:
                setup.prompt_answers[rf"^Vault password \({re.escape(vault_id)}\):\s*?$"] = password
    args._vault_setup = setup
    return setup


def vault_hint(setup: VaultSetup | None) -> str:
    """What to add when a vaulted value could not be decrypted."""
    if setup is None or not setup.given:
        return f"hint: a vault-encrypted value needs its password: give {VAULT_FLAGS}"
    return "hint: a vault-encrypted value could not be decrypted with the given vault password(s)"


# ------------------------------------------------------------------------------------------ playbook


def playbook_args(args: argparse.Namespace) -> list[str]:
    """The ansible-playbook arguments these options stand for (limit/tags/check go through runner's)."""
    argv: list[str] = []
    if getattr(args, "verbosity", 0):
        argv.append("-" + "v" * int(args.verbosity))
    if getattr(args, "forks", None):
        argv += ["--forks", str(int(args.forks))]
    for vault_id in getattr(args, "vault_ids", None) or []:
        argv += ["--vault-id", _absolute_vault_id(vault_id)]
    for password_file in getattr(args, "vault_password_files", None) or []:
        argv += ["--vault-password-file", str(Path(password_file).expanduser().resolve())]
    if getattr(args, "ask_vault_pass", None):
        argv.append("--ask-vault-pass")
    return argv


def _absolute_vault_id(vault_id: str) -> str:
    """ID@FILE with FILE absolute: ansible-playbook runs in the project root, not here."""
    name, _, source = vault_id.partition("@") if "@" in vault_id else ("", "", vault_id)
    if source in ("prompt", "prompt_ask_vault_pass"):
        return vault_id
    source = str(Path(source).expanduser().resolve())
    return f"{name}@{source}" if name else source


# ------------------------------------------------------------------------------------------- loading


def load_inventory(args: argparse.Namespace) -> Any:
    """inventory.load_inventory with these options (sources, -e, vault); InventoryError when unreadable."""
    from ansible.utils.display import Display

    from llava_devserver import inventory

    Display().verbosity = int(getattr(args, "verbosity", 0) or 0)
    try:
        sources = inventory_sources(args)
        extra = inventory.parse_extra_vars(getattr(args, "extra_vars", None) or [])
        setup = vault_setup(args)
    except AnsibleOptionError as exc:
        raise inventory.InventoryError(str(exc)) from exc
    return inventory.load_inventory(sources, extra_vars=extra, vault_secrets=setup.secrets)


def validation_messages(errors: Sequence[Any], args: argparse.Namespace) -> list[str]:
    """The errors, one a line, and the vault flags to use when a vaulted value was the problem."""
    lines = [str(error) for error in errors]
    if any("vault" in line.lower() for line in lines):
        lines.append(vault_hint(getattr(args, "_vault_setup", None)))
    return lines
