"""Run a playbook of this project through ansible-runner and sum up what happened per host.

`run_playbook` runs `ansible-playbook` with the project's ansible.cfg from the project root (so roles,
plugins and the fact cache resolve as they do for a bare `ansible-playbook site.yml`), hands every event
to `on_event` as it arrives (the live display), keeps the whole stdout in `<run dir>/ansible.log`, and
returns a `RunResult` built from the same events. The run directory is shared with the `llava_report`
callback through the environment variable LLAVA_RUN_DIR, so the report lands next to the log.

The project is the checkout (or editable install) this package lives in, else the copy of the collection a
wheel carries (`packaged_project`): then runs land in ./runs of the current folder and facts in the user's
cache.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOME_ENV = "LLAVA_DEVSERVER_HOME"
RUN_DIR_ENV = "LLAVA_RUN_DIR"
TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
LOG_NAME = "ansible.log"
RUNNER_DIR = "runner"  # ansible-runner's private data dir (artifacts) inside the run dir
_MESSAGE_LIMIT = 400

Event = dict[str, Any]
EventHandler = Callable[[Event], None]


# Inside the package of a wheel install: the collection as Ansible lays one out (pyproject's force-include).
PACKAGED_COLLECTIONS = "collection"
COLLECTION_PATH = ("ansible_collections", "llava", "devserver")


class ProjectNotFoundError(RuntimeError):
    """No directory holding site.yml and ansible.cfg was found."""


def packaged_project() -> Path | None:
    """The collection the installed wheel carries, or None (a checkout or an editable install)."""
    root = Path(__file__).resolve().parent.joinpath(PACKAGED_COLLECTIONS, *COLLECTION_PATH)
    return root if (root / "site.yml").is_file() else None


def is_packaged(root: Path) -> bool:
    return root == packaged_project()


def runs_dir(root: Path) -> Path:
    """Where runs are kept: runs/ of a checkout, ./runs of the current folder for an installed package."""
    return (Path.cwd() if is_packaged(root) else root) / "runs"


def find_project_root(start: Path | None = None) -> Path:
    """The directory holding site.yml: $LLAVA_DEVSERVER_HOME, else the nearest above the package or cwd,
    else the packaged collection."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        root = Path(configured).expanduser().resolve()
        if not (root / "site.yml").is_file():
            raise ProjectNotFoundError(f"{HOME_ENV}={configured}: no site.yml there")
        return root
    starts = [start] if start is not None else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for origin in starts:
        for candidate in (origin, *origin.parents):
            if (candidate / "site.yml").is_file() and (candidate / "ansible.cfg").is_file():
                return candidate
    packaged = packaged_project() if start is None else None
    if packaged is not None:
        return packaged
    raise ProjectNotFoundError(
        f"no site.yml + ansible.cfg above {', '.join(str(s) for s in starts)}; set {HOME_ENV} to the project"
    )


def new_run_dir(root: Path, now: datetime | None = None) -> Path:
    """<runs_dir>/<UTC YYYYmmdd-HHMMSS>; a suffix when two runs share a second."""
    stamp = (now or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)
    base = runs_dir(root) / stamp
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{stamp}-{n}")
    return candidate


@dataclass
class HostStats:
    """Task counts as in Ansible's recap (`ok` includes `changed`)."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
        }


@dataclass
class RunResult:
    """What one playbook run did, per host."""

    rc: int  # ansible-playbook's exit status
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    run_dir: Path
    log_path: Path
    stats: dict[str, HostStats] = field(default_factory=dict)
    changed_tasks: dict[str, list[str]] = field(default_factory=dict)  # host -> names of tasks that changed
    failures: dict[str, list[str]] = field(default_factory=dict)  # host -> "task: message"
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> facts set during the run

    @property
    def failed_hosts(self) -> list[str]:
        return [host for host, s in self.stats.items() if s.failed or s.unreachable]

    @property
    def exit_code(self) -> int:
        """0 only when ansible-playbook succeeded and no host failed or was unreachable."""
        return 0 if self.rc == 0 and not self.failed_hosts and self.status == "successful" else 1


def result_message(res: Mapping[str, Any]) -> str:
    """The one line that says why a task failed (msg, stderr, or the loop item that failed)."""
    for key in ("msg", "stderr", "reason", "module_stderr", "stdout"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:_MESSAGE_LIMIT]
    results = res.get("results")
    if isinstance(results, list):
        for item in results:
            if isinstance(item, Mapping) and item.get("failed"):
                return result_message(item)
    return "failed"


class ResultCollector:
    """Builds a RunResult's per-host data from ansible-runner events (also usable on recorded events)."""

    def __init__(self) -> None:
        self.stats: dict[str, HostStats] = {}
        self.changed_tasks: dict[str, list[str]] = {}
        self.failures: dict[str, list[str]] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self._final_stats = False

    def __call__(self, event: Event) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if kind == "playbook_on_stats":
            self._take_stats(data)
            return
        if not host or not kind.startswith("runner_on_"):
            return
        stats = self.stats.setdefault(host, HostStats())
        res = data.get("res") or {}
        task = data.get("task") or "?"
        if isinstance(res.get("ansible_facts"), Mapping):
            self.facts.setdefault(host, {}).update(res["ansible_facts"])
        if kind == "runner_on_ok":
            stats.ok += 1  # as in Ansible's recap, `ok` counts the changed ones too
            if res.get("changed"):
                stats.changed += 1
                self.changed_tasks.setdefault(host, []).append(task)
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                stats.ok += 1
            else:
                stats.failed += 1
                self.failures.setdefault(host, []).append(f"{task}: {result_message(res)}")
        elif kind == "runner_on_unreachable":
            stats.unreachable += 1
            self.failures.setdefault(host, []).append(f"{task}: unreachable: {result_message(res)}")
        elif kind == "runner_on_skipped":
            stats.skipped += 1

    def _take_stats(self, data: Mapping[str, Any]) -> None:
        """The recap is the authority on counts (it knows rescued blocks, ignored errors)."""
        columns = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable"}
        columns["skipped"] = "skipped"
        hosts: set[str] = set()
        for column in columns:
            hosts.update((data.get(column) or {}).keys())
        for host in hosts:
            stats = HostStats()
            for column, attr in columns.items():
                setattr(stats, attr, int((data.get(column) or {}).get(host, 0)))
            self.stats[host] = stats
        self._final_stats = True


def _cmdline(
    check: bool,
    diff: bool,
    extravars: Mapping[str, Any] | Sequence[str] | None,
    vault_password_file: str | Path | None = None,
) -> str:
    args: list[str] = []
    if vault_password_file is not None:
        args += ["--vault-password-file", str(Path(vault_password_file).resolve())]
    if check:
        args.append("--check")
    if diff:
        args.append("--diff")
    if isinstance(extravars, Mapping):
        if extravars:
            args += ["-e", json.dumps(dict(extravars))]
    elif extravars:
        for item in extravars:  # as ansible-playbook takes them: key=value, YAML/JSON, @file
            args += ["-e", item]
    return " ".join(shlex.quote(a) for a in args)


def runner_env(root: Path, run_dir: Path) -> dict[str, str]:
    """Environment of the ansible-playbook process."""
    bin_dir = str(Path(sys.executable).parent)  # ansible-playbook of this venv even when not activated
    env = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        RUN_DIR_ENV: str(run_dir),
    }
    if is_packaged(root):
        # ansible.cfg's collections_path names the checkout's link (collections/): here the collection is
        # the package's own copy; the fact cache goes to the user's cache, never into site-packages.
        collections = root.parents[len(COLLECTION_PATH) - 1]
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(
            (str(collections), "~/.ansible/collections", "/usr/share/ansible/collections")
        )
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-devserver" / "facts"
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(cache)
    return env


def run_playbook(
    playbook: str | Path,
    inventory: str | Path | Sequence[str | Path],
    *,
    limit: str | None = None,
    tags: str | None = None,
    skip_tags: str | None = None,
    check: bool = False,
    diff: bool = False,
    extravars: Mapping[str, Any] | Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    on_event: EventHandler | None = None,
    root: Path | None = None,
    vault_password_file: str | Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    passwords: Mapping[str, str] | None = None,
) -> RunResult:
    """Run PLAYBOOK (relative to the project root, or absolute) against INVENTORY; see the module doc.

    extra_args: more ansible-playbook arguments (e.g. `--forks 4`); env: more environment variables of the
    ansible-playbook process, over the project's own (e.g. a fact cache of one's own); passwords: answers
    to ansible-playbook's prompts (regex -> text, e.g. the vault password of `--ask-vault-pass`), given
    through ansible-runner's terminal, never a file or the command line.
    """
    import ansible_runner

    root = root or find_project_root()
    run_path = Path(run_dir).resolve() if run_dir is not None else new_run_dir(root)
    (run_path / RUNNER_DIR).mkdir(parents=True, exist_ok=True)
    playbook_path = Path(playbook)
    if not playbook_path.is_absolute():
        playbook_path = root / playbook_path
    sources = [inventory] if isinstance(inventory, str | Path) else list(inventory)
    log_path = run_path / LOG_NAME
    collector = ResultCollector()

    with log_path.open("w", encoding="utf-8") as log:

        def handle(event: Event) -> bool:
            text = event.get("stdout")
            if text:
                log.write(text + "\n")
                log.flush()  # `tail -f ansible.log` follows the run
            collector(event)
            if on_event is not None:
                on_event(event)
            return True

        runner = ansible_runner.run(
            private_data_dir=str(run_path / RUNNER_DIR),
            project_dir=str(root),
            playbook=str(playbook_path),
            inventory=[str(Path(s).resolve()) for s in sources],
            limit=limit,
            tags=tags,
            skip_tags=skip_tags,
            cmdline=" ".join(
                part
                for part in (
                    _cmdline(check, diff, extravars, vault_password_file),
                    " ".join(shlex.quote(a) for a in extra_args),
                )
                if part
            )
            or None,
            envvars=runner_env(root, run_path) | dict(env or {}),
            event_handler=handle,
            quiet=True,
            ident="ansible",
            suppress_env_files=True,
            # ansible-runner would point the fact cache at this run's artifacts (empty every run), so a
            # `--tags` run that skips fact gathering would find no facts: keep ansible.cfg's cache.
            fact_cache_type="ansible.cfg",
            passwords=dict(passwords or {}),
        )

    # The artifact holds every byte ansible-playbook printed, also what came outside events.
    stdout_artifact = Path(runner.config.artifact_dir) / "stdout"
    if stdout_artifact.is_file():
        shutil.copyfile(stdout_artifact, log_path)
    return RunResult(
        rc=int(runner.rc if runner.rc is not None else 1),
        status=str(runner.status),
        run_dir=run_path,
        log_path=log_path,
        stats=collector.stats,
        changed_tasks=collector.changed_tasks,
        failures=collector.failures,
        facts=collector.facts,
    )
