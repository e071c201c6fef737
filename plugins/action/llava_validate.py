"""Action `llava_validate`: validate the whole group `devservers` from hostvars, on the control node.

A thin adapter over `llava_devserver.config.validate_fleet`, the same code as `llava-devserver validate`.
Run it once (`run_once: true`); it never connects to a server. It returns `hosts`, the llava dict of every
server, or fails with every error as `HOST: SETTING: message`.

Options: `group` (default `devservers`); `play_hosts` (default: the group), the hosts that get an entry in
the returned `play_hosts` list ([{host, llava}], for the play's hosts under --limit).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ansible.plugins.action import ActionBase

from llava_devserver.ansible_private import origin_of
from llava_devserver.config import (
    GROUP,
    KNOWN_SETTINGS,
    FleetValidationError,
    UnresolvedValue,
    validate_fleet,
)
from llava_devserver.inventory import plain


class _Origins(dict[str, str]):
    """file:line of our settings (filled as they are read) and, on demand, of a look-alike (a typo)."""

    def __init__(self, hostvars: Any) -> None:
        super().__init__()
        self._raw = getattr(hostvars, "_vars", {})  # the untemplated values; best effort, private in 2.19

    def get(self, name: str, default: Any = None) -> Any:
        if name in self:
            return self[name]
        raw = self._raw.get(name) if isinstance(self._raw, Mapping) else None
        return (origin_of(raw) if raw is not None else None) or default


class _OurSettings(Mapping[str, Any]):
    """One host's hostvars as validate_fleet reads them: only our settings are templated (lazily, by
    Ansible's HostVarsVars) and made plain; the other names are listed but never rendered."""

    def __init__(self, hostvars: Mapping[str, Any]) -> None:
        self._hostvars = hostvars
        self.origins = _Origins(hostvars)

    def __getitem__(self, name: str) -> Any:
        if name not in KNOWN_SETTINGS:
            return None  # only the name of a foreign variable matters (the did-you-mean check)
        try:
            value = self._hostvars[name]
        except Exception as exc:  # an undefined variable in a template, an undecryptable vault value
            return UnresolvedValue(str(getattr(exc, "message", exc)).splitlines()[0])
        origin = origin_of(value)
        if origin:
            self.origins[name] = origin
        return plain(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._hostvars)

    def __len__(self) -> int:
        return len(self._hostvars)

    def __contains__(self, name: object) -> bool:
        return name in self._hostvars


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False  # all it needs is on the control node
    _VALID_ARGS = frozenset({"group", "play_hosts"})

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        group = self._task.args.get("group", GROUP)
        hostnames = list(task_vars.get("groups", {}).get(group, []))
        if not hostnames:
            return {
                **result,
                "failed": True,
                "msg": f"fleet: {group}: the inventory has no hosts in [{group}]",
            }
        hostvars = task_vars["hostvars"]
        views = {name: _OurSettings(hostvars[name]) for name in hostnames}
        try:
            fleet = validate_fleet(views, {name: view.origins for name, view in views.items()})
        except FleetValidationError as exc:
            return {
                **result,
                "failed": True,
                "msg": "Invalid inventory:\n" + "\n".join(str(e) for e in exc.errors),
            }
        first = fleet.hosts[0]
        llava = fleet.to_vars()
        play_hosts = self._task.args.get("play_hosts") or hostnames
        return {
            **result,
            "changed": False,
            "msg": f"{len(fleet.hosts)} server(s) valid; world size {first.world_size}",
            "hosts": llava,
            # what the play's hosts need, as a list a loop can walk without indexing a large dict per item
            "play_hosts": [{"host": name, "llava": llava[name]} for name in play_hosts if name in llava],
        }
