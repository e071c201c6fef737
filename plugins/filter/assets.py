"""Jinja2 filters over `llava_devserver.assets_plan` for llava_assets and llava_workspace (no logic here).

- `{{ llava | llava_assets_plan(control_fingerprints) }}`: the host's assets, paths and problems.
- `{{ llava_dicts | llava_assets_control_fingerprints }}`: fingerprints of the control-node sources.
- `{{ inventory_hostname | llava_assets_seeds(plans, play_hosts) }}`: asset -> the seed host.
- `{{ asset | llava_assets_fanout_command(key, user, address) }}`,
  `{{ asset | llava_assets_local_copy(owner, helper_dir) }}`,
  `{{ owner | llava_assets_owner_rsync_path(helper_dir, become) }}` (rsync's receiver as the owner UID:GID of
  the container's tree),
  `{{ asset | llava_assets_hub_command(helper_dir, owner, token_set) }}`,
  `{{ endpoint | llava_assets_hub_env }}`.
- `{{ seed_addresses | llava_assets_fanout_key_options(dests, expiry, ssh_version, owner) }}`, `{{ run_id |
  llava_assets_fanout_key_comment }}`, `{{ None | llava_assets_fanout_key_pattern }}`: the fan-out key's
  authorized_keys options, comment, and the pattern of every key line this tool added.
- `{{ plan | llava_assets_status_ops }}`, `..._space_ops(todo, statuses, margin)`,
  `..._verify_ops(names, sample)`, `..._mark_ops(reasons)`: operations of the server-side helper;
  `{{ ops | llava_assets_batch(plan) }}` its command line, `{{ result | llava_assets_batch_results(ops) }}`
  name -> outcome.
- `{{ plan | llava_assets_parent_dirs(names) }}`: container paths of the folders those assets go into.
- `{{ stdout | llava_assets_rsync_bytes }}`, `{{ results | llava_assets_space_problems(host) }}`,
  `{{ results | llava_assets_verify_problems(host) }}`, `{{ plan | llava_assets_report(...) }}`.
- `{{ container_path | llava_host_path(llava) }}`: its server path under work_dir.
- `{{ None | llava_assets_python_files }}`: control-node paths of the standalone helper scripts;
  `{{ dir | llava_assets_helpers_probe }}` a command showing those on a server, `{{ stdout_lines |
  llava_assets_helpers_due }}` the ones to copy.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava_devserver import assets_plan
from llava_devserver.ansible_support import filter_guard as _guard


def llava_assets_plan(
    llava: Mapping[str, Any], fingerprints: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return assets_plan.plan(llava, fingerprints)


def llava_assets_seeds(
    host: str, plans: Mapping[str, Any], play_hosts: Sequence[str], blocked: Mapping[str, Any] | None = None
) -> dict[str, str]:
    return assets_plan.seeds(host, plans, play_hosts, blocked)


def llava_assets_fanout_command(
    asset: Mapping[str, Any], key_file: str, user: str, address: str
) -> list[str]:
    return assets_plan.fanout_command(asset, key_file, user, address)


def llava_assets_hub_command(
    asset: Mapping[str, Any], helper_dir: str, owner: str, token_set: bool = False
) -> list[str]:
    return assets_plan.hub_command(asset, helper_dir, owner, bool(token_set))


def llava_assets_hub_env(endpoint: str | None) -> dict[str, str]:
    return assets_plan.hub_environment(endpoint)


def llava_assets_fanout_key_options(
    seed_addresses: Sequence[str],
    destinations: Sequence[str],
    expiry: str | None,
    ssh_version: str | None,
    owner: str,
) -> str:
    return assets_plan.fanout_key_options(seed_addresses, destinations, expiry, ssh_version, owner)


def llava_assets_owner_rsync_path(owner: str, helper_dir: str, become: bool = False) -> str:
    """synchronize's rsync_path: the receiver on the server as OWNER (through sudo when the play becomes
    root, which synchronize adds itself only when no rsync_path is given)."""
    return ("sudo " if become else "") + assets_plan.owner_receiver(owner, helper_dir)


def llava_assets_local_copy(asset: Mapping[str, Any], owner: str, helper_dir: str) -> list[str]:
    return assets_plan.local_copy_command(asset, owner, helper_dir)


def llava_assets_fanout_key_pattern(_value: Any = None) -> str:
    return assets_plan.fanout_key_line_pattern()


def llava_assets_rsync_bytes(stdout: Any) -> int | None:
    if isinstance(stdout, list):
        stdout = "\n".join(str(line) for line in stdout)
    return assets_plan.parse_rsync_bytes(str(stdout or ""))


def llava_assets_transfer_problems(moved: Mapping[str, Any], host: str) -> list[str]:
    return assets_plan.transfer_problems(host, moved)


def llava_assets_report(
    plan: Mapping[str, Any],
    statuses: Mapping[str, Any],
    staged: Mapping[str, Any],
    verified: Mapping[str, Any],
) -> dict[str, Any]:
    return assets_plan.report(plan, statuses, staged, verified)


def llava_host_path(container_path: str, llava: Mapping[str, Any]) -> str:
    """The server path of a container path under container_work_dir (error when it is outside it)."""
    path = assets_plan.host_path(container_path, llava["container_work_dir"], llava["work_dir"])
    if path is None:
        raise ValueError(f"{container_path} is not under container_work_dir {llava['container_work_dir']}")
    return path


def llava_assets_python_files(_value: Any = None) -> dict[str, str]:
    from llava_devserver import (
        as_owner,
        assets_archive,
        assets_manifest,
        assets_verify,
        fanout_receive,
        hub_fetch,
    )

    return {
        assets_plan.OWNER_RECEIVER: str(as_owner.__file__),
        "assets_archive.py": str(assets_archive.__file__),
        "assets_manifest.py": str(assets_manifest.__file__),
        "assets_verify.py": str(assets_verify.__file__),
        assets_plan.FANOUT_RECEIVER: str(fanout_receive.__file__),
        "hub_fetch.py": str(hub_fetch.__file__),
    }


# Owner, group and mode of every helper script (the copy task's, and what the probe's stat line shows).
HELPER_STAT = "root:root:644"


def llava_assets_helpers_probe(helper_dir: str) -> str:
    """A shell command printing `sha256  name` and `owner:group:mode name` for each helper script there."""
    names = " ".join(shlex.quote(name) for name in llava_assets_python_files())
    return f"cd {shlex.quote(helper_dir)} && sha256sum -- {names}; stat -c '%U:%G:%a %n' -- {names}"


def llava_assets_helpers_due(probe_lines: Sequence[str]) -> dict[str, str]:
    """name -> control-node path of the helper scripts to copy: those the probe shows missing, different or
    with another owner or mode (a link's mode is 777). The others are not sent again."""
    seen = set(probe_lines)
    due = {}
    for name, path in llava_assets_python_files().items():
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if f"{digest}  {name}" not in seen or f"{HELPER_STAT} {name}" not in seen:
            due[name] = path
    return due


FILTERS: dict[str, Callable[..., Any]] = {
    "llava_assets_plan": llava_assets_plan,
    "llava_assets_control_fingerprints": assets_plan.control_fingerprints,
    "llava_assets_seeds": llava_assets_seeds,
    "llava_assets_fanout_command": llava_assets_fanout_command,
    "llava_assets_local_copy": llava_assets_local_copy,
    "llava_assets_owner_rsync_path": llava_assets_owner_rsync_path,
    "llava_assets_batch": assets_plan.batch_command,
    "llava_assets_batch_results": assets_plan.batch_results,
    "llava_assets_status_ops": assets_plan.status_ops,
    "llava_assets_space_ops": assets_plan.space_ops,
    "llava_assets_verify_ops": assets_plan.verify_ops,
    "llava_assets_mark_ops": assets_plan.mark_ops,
    "llava_assets_parent_dirs": assets_plan.parent_dirs,
    "llava_assets_hub_command": llava_assets_hub_command,
    "llava_assets_hub_env": llava_assets_hub_env,
    "llava_assets_fanout_key_options": llava_assets_fanout_key_options,
    "llava_assets_fanout_key_comment": assets_plan.fanout_key_comment,
    "llava_assets_fanout_key_pattern": llava_assets_fanout_key_pattern,
    "llava_assets_rsync_bytes": llava_assets_rsync_bytes,
    "llava_assets_space_problems": assets_plan.space_problems,
    "llava_assets_verify_problems": assets_plan.verify_problems,
    "llava_assets_transfers": assets_plan.transfers,
    "llava_assets_unstaged_reasons": assets_plan.unstaged_reasons,
    "llava_assets_needs_copy": assets_plan.needs_copy,
    "llava_assets_hub_problems": assets_plan.hub_problems,
    "llava_assets_transfer_problems": llava_assets_transfer_problems,
    "llava_assets_report": llava_assets_report,
    "llava_assets_python_files": llava_assets_python_files,
    "llava_assets_helpers_probe": llava_assets_helpers_probe,
    "llava_assets_helpers_due": llava_assets_helpers_due,
    "llava_host_path": llava_host_path,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
