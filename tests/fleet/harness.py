"""The one harness of the fleet tests: simulated fleets that always come down, plays run through
ansible-runner with a structured result, one way to run a command on a server, one cached test image.

A fleet test module asks for a fleet through `fleet_up(...)` (a context manager; module or session scoped
fixtures in tests/fleet/conftest.py wrap it) and drives it with `Fleet.run_play(...)` and `Fleet.sh(...)`.
Nothing here parses the play recap from stdout: results come from ansible-runner's events
(`llava_devserver.runner`), the same code the CLI's `up` uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from llava_devserver import runner
from llava_devserver.sim import fleet as sim_fleet
from llava_devserver.sim.faults import Fault, parse_fault

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent  # the tools of the interpreter running the tests, then PATH

# Every play of the session (test, label, hosts, tasks, seconds), for conftest's summary of the slowest.
PLAY_LOG: list[dict[str, Any]] = []


def tool(name: str) -> str:
    """A command-line tool of this environment (beside the running Python, else on PATH)."""
    beside = BIN / name
    if beside.is_file():
        return str(beside)
    from shutil import which

    found = which(name)
    if found is None:
        pytest.fail(f"{name} not found beside {sys.executable} nor on PATH")
    return found


def docker_client() -> Any:
    """The Docker engine the simulated fleets run on; a clear failure when none answers."""
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"fleet tests need a Docker engine (run scripts/ensure-docker.sh): {exc}")
    return client


# ------------------------------------------------------------------------------------------------ results


@dataclass
class TaskResult:
    """One task's outcome on one host, as ansible-runner reported it."""

    task: str
    event: str  # runner_on_ok, runner_on_failed, runner_on_skipped, runner_on_unreachable
    res: dict[str, Any]
    ignored: bool = False  # failed under ignore_errors
    role: str = ""

    @property
    def label(self) -> str:
        """`role : task` as Ansible prints it (the task name alone outside roles)."""
        return f"{self.role} : {self.task}" if self.role else self.task

    @property
    def failed(self) -> bool:
        return self.event in ("runner_on_failed", "runner_on_unreachable") and not self.ignored


@dataclass
class PlayResult:
    """One ansible-playbook run: exit status, recap per host, failures, changes, facts, the report."""

    run: runner.RunResult
    seconds: float
    results: dict[str, list[TaskResult]] = field(default_factory=dict)  # host -> in order

    @property
    def rc(self) -> int:
        return self.run.rc

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def output(self) -> str:
        """The whole stdout of ansible-playbook (for messages in assertions, not for parsing)."""
        path = self.run.log_path
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {host: stats.to_dict() for host, stats in self.run.stats.items()}

    @property
    def failed(self) -> dict[str, list[str]]:
        """host -> ["task: message", ...] for every failed or unreachable task not ignored."""
        return self.run.failures

    @property
    def messages(self) -> dict[str, str]:
        """host -> the whole messages of its failed tasks (not ignored), one a line, for hosts that failed."""
        out: dict[str, str] = {}
        for host, results in self.results.items():
            lines = [str(r.res.get("msg") or r.res.get("stderr") or "") for r in results if r.failed]
            if lines and host in self.failed:
                out[host] = "\n".join(lines)
        return out

    @property
    def changed(self) -> dict[str, list[str]]:
        """host -> `role : task` of every task that changed something, in order."""
        out: dict[str, list[str]] = {}
        for host, results in self.results.items():
            names = [r.label for r in results if r.event == "runner_on_ok" and r.res.get("changed")]
            if names:
                out[host] = names
        return out

    @property
    def facts(self) -> dict[str, dict[str, Any]]:
        return self.run.facts

    def fact(self, host: str, name: str) -> Any:
        facts = self.run.facts.get(host, {})
        assert name in facts, f"{host} never set {name}; it set {sorted(facts)}\n{self.tail()}"
        return facts[name]

    def task(self, host: str, name: str) -> TaskResult:
        """The last result of the task called `name` (or ending in `: name`, as roles prefix) on host."""
        found = [r for r in self.results.get(host, []) if name in (r.task, r.label)]
        assert found, f"{host} ran no task {name!r}\n{self.tail()}"
        return found[-1]

    def outcome(self, host: str, name: str) -> str | None:
        """changed, ok, skipped, failed or unreachable: the last result of task `name` on host, or None."""
        found = [r for r in self.results.get(host, []) if name in (r.task, r.label)]
        if not found:
            return None
        last = found[-1]
        if last.event == "runner_on_ok":
            return "changed" if last.res.get("changed") else "ok"
        return last.event.removeprefix("runner_on_")

    def outcomes(self, name: str) -> dict[str, str | None]:
        """host -> outcome of task `name`, for every host of the run."""
        return {host: self.outcome(host, name) for host in self.recap}

    def report(self) -> dict[str, Any]:
        """report.json of the llava_report callback."""
        return dict(json.loads((self.run_dir / "report.json").read_text()))

    def host_report(self, host: str) -> dict[str, Any]:
        for row in self.report().get("hosts", []):
            if row.get("host") == host:
                return dict(row)
        raise AssertionError(f"{host} not in {self.run_dir / 'report.json'}")

    def tail(self, chars: int = 4000) -> str:
        return self.output[-chars:]

    def assert_ok(self, *hosts: str) -> None:
        """ansible-playbook succeeded and none of `hosts` (default: every host) failed or was unreachable."""
        wanted = hosts or tuple(self.recap)
        bad = {h: self.failed.get(h, []) for h in wanted if h not in self.recap or h in self.run.failed_hosts}
        assert self.rc == 0 and not bad, f"rc={self.rc}, failed: {bad}\n{self.tail()}"

    def changed_count(self, host: str) -> int:
        return self.recap.get(host, {}).get("changed", 0)


# ------------------------------------------------------------------------------------------------ fleets


@dataclass
class Fleet:
    """A running simulated fleet and its inventory directory."""

    name: str
    dir: Path
    hosts: list[str]
    addresses: dict[str, str]
    runs: int = 0

    @property
    def inventory(self) -> Path:
        return self.dir / "devserver.ini"

    @property
    def ansible_env(self) -> dict[str, str]:
        """The environment of every Ansible command against this fleet: the project's ansible.cfg and the
        fleet's own fact cache (host names repeat across fleets and Molecule scenarios, their OS may not: a
        cached `discovered_interpreter_python` of an hce2 server breaks a debian12 one of the same name)."""
        return {
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(self.dir / ".facts"),
        }

    def address(self, host: str) -> str:
        return self.addresses[host]

    def container(self, host: str) -> Any:
        return sim_fleet.server(self.name, host)

    def net_counters(self) -> dict[str, dict[str, int]]:
        """rx/tx bytes of each server's interface on the fleet network."""
        counters = {}
        for host in self.hosts:
            out = self.read(host, "/sys/class/net/eth0/statistics/rx_bytes") + self.read(
                host, "/sys/class/net/eth0/statistics/tx_bytes"
            )
            rx, tx = (int(v) for v in out.split())
            counters[host] = {"rx": rx, "tx": tx}
        return counters

    def container_name(self, host: str) -> str:
        return sim_fleet.container_name(self.name, self.hosts.index(host) + 1)

    # -- commands on a server: one way, as root in the server (docker exec; SSH is what Ansible tests)

    def sh(
        self, host: str, command: str, timeout: float = 120, check: bool = False, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash command on a simulated server (as root, or as `user`)."""
        argv = ["docker", "exec", *(["-u", user] if user else []), self.container_name(host), "bash", "-c"]
        done = subprocess.run(
            [*argv, command], capture_output=True, text=True, timeout=timeout, check=False
        )  # fmt: skip
        if check:
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"{host}: {command!r} exit {done.returncode}:\n{output}"
        return done

    def read(self, host: str, path: str) -> str:
        return self.sh(host, f"cat {shlex.quote(path)}", check=True).stdout

    def ssh_argv(self, host: str) -> list[str]:
        """SSH to a server the way Ansible connects (the fleet's key, no host key store)."""
        return [
            "ssh", "-i", str(self.dir / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"root@{self.address(host)}",
        ]  # fmt: skip

    # -- settings

    def group_vars(self) -> dict[str, Any]:
        return dict(yaml.safe_load((self.dir / "group_vars" / "all.yml").read_text()))

    def set_group_vars(self, **values: Any) -> None:
        """Merge values into group_vars/all.yml (a value None removes the setting)."""
        settings = self.group_vars()
        for key, value in values.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        (self.dir / "group_vars" / "all.yml").write_text(yaml.safe_dump(settings, sort_keys=False))

    def set_host_vars(self, host: str, values: Mapping[str, Any] | None) -> None:
        path = self.dir / "host_vars" / f"{host}.yml"
        path.parent.mkdir(exist_ok=True)
        if values is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(yaml.safe_dump(dict(values), sort_keys=False))

    def subset(self, hosts: Sequence[str], name: str, **settings: Any) -> Path:
        """An inventory of the same servers whose group holds only `hosts` (e.g. the fleet seen as one
        server), with the fleet's settings and `settings` over them; returns its devserver.ini."""
        target = self.dir / f"subset-{name}"
        (target / "group_vars").mkdir(parents=True, exist_ok=True)
        (target / "group_vars" / "all.yml").write_text(
            yaml.safe_dump(self.group_vars() | settings, sort_keys=False)
        )
        if (self.dir / "host_vars").is_dir() and not (target / "host_vars").exists():
            (target / "host_vars").symlink_to(self.dir / "host_vars")
        lines = [
            line
            for line in self.inventory.read_text().splitlines()
            if not (line.split(" ", 1)[0] in self.hosts and line.split(" ", 1)[0] not in hosts)
        ]
        (target / "devserver.ini").write_text("\n".join(lines) + "\n")
        return target / "devserver.ini"

    # -- plays

    def playbook(self, *plays: str) -> Path:
        """A playbook importing playbooks/<play>.yml for each play, in order."""
        path = self.dir / f"play-{'-'.join(plays)}.yml"
        imports = [{"ansible.builtin.import_playbook": str(PLAYBOOKS / f"{play}.yml")} for play in plays]
        path.write_text(yaml.safe_dump(imports))
        return path

    def run_play(
        self,
        *plays: str,
        args: Sequence[str] = (),
        extravars: Mapping[str, Any] | None = None,
        check: bool = False,
        diff: bool = False,
        limit: str | None = None,
        tags: str | None = None,
        env: Mapping[str, str] | None = None,
        inventory: Path | None = None,
        vault_password_file: Path | None = None,
        name: str = "",
    ) -> PlayResult:
        """ansible-playbook of `plays` (names under playbooks/, or one path) against this fleet."""
        self.runs += 1
        label = name or "-".join(Path(p).stem for p in plays)
        run_dir = self.dir / "runs" / f"{self.runs:02d}-{label}"
        playbook = Path(plays[0]) if len(plays) == 1 and plays[0].endswith(".yml") else self.playbook(*plays)
        results: dict[str, list[TaskResult]] = {}

        def collect(event: dict[str, Any]) -> None:
            kind = str(event.get("event", ""))
            data = event.get("event_data") or {}
            if kind.startswith("runner_on_") and data.get("host"):
                results.setdefault(data["host"], []).append(
                    TaskResult(
                        str(data.get("task", "")),
                        kind,
                        dict(data.get("res") or {}),
                        bool(data.get("ignore_errors")),
                        str(data.get("role") or ""),
                    )
                )

        fleet_env = self.ansible_env | {"ANSIBLE_CALLBACKS_ENABLED": "llava.devserver.llava_report"}
        started = time.monotonic()
        run = runner.run_playbook(
            playbook,
            inventory or self.inventory,
            limit=limit,
            tags=tags,
            check=check,
            diff=diff,
            extravars=extravars,
            run_dir=run_dir,
            on_event=collect,
            root=REPO,
            vault_password_file=vault_password_file,
            extra_args=args,
            env=fleet_env | dict(env or {}),
        )
        result = PlayResult(run, time.monotonic() - started, results)
        PLAY_LOG.append(
            {
                "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                "play": label,
                "hosts": len(results),
                "tasks": sum(len(tasks) for tasks in results.values()),
                "seconds": result.seconds,
            }
        )
        return result

    def llava(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """The llava-devserver CLI, as a user runs it (a subprocess from the repository root)."""
        env = os.environ | self.ansible_env | {"LLAVA_RUN_DIR": ""}
        return subprocess.run(
            [tool("llava-devserver"), *args], capture_output=True, text=True, timeout=timeout, check=False,
            cwd=REPO, env=env,
        )  # fmt: skip


def _faults(faults: Mapping[str, Sequence[str]] | None) -> dict[str, list[Fault]]:
    return {host: [parse_fault(f) for f in specs] for host, specs in (faults or {}).items()}


@contextlib.contextmanager
def fleet_up(
    name: str,
    hosts: int,
    out: Path,
    *,
    faults: Mapping[str, Sequence[str]] | None = None,
    docker: bool = False,
    job: bool = True,
    devices_per_host: int = 2,
    npus: int = 8,
    registry: bool = False,
    **options: Any,
) -> Iterator[Fleet]:
    """Bring a simulated fleet up, yield it, and always take it down.

    docker: every server starts with Docker preinstalled (the `docker-preinstalled` fault; saves the apt
    install where a test is not about it). options: further keyword arguments of sim.fleet.fleet_up (for
    example the server profile, where the simulator has them).
    """
    docker_client()
    fleet_name = sim_fleet.check_fleet_name(f"{name}-{os.getpid() % 100000}")
    host_names = [sim_fleet.host_name(i) for i in range(1, hosts + 1)]
    wanted = _faults(faults)
    if docker:
        for host in host_names:
            kinds = {f.kind for f in wanted.get(host, [])}
            if not kinds & {"docker-preinstalled", "device-bound"}:
                wanted.setdefault(host, []).insert(0, parse_fault("docker-preinstalled"))
    try:
        result = sim_fleet.fleet_up(
            fleet_name, hosts, out, faults=wanted, npus=npus, devices_per_host=devices_per_host, job=job,
            log=lambda _: None, registry=registry, **options,
        )  # fmt: skip
        fleet = Fleet(fleet_name, out, host_names, {h.name: h.address for h in result.hosts})
        if not job:
            # `--no-job` fleets lack the job settings that validation needs; roles before the job use none.
            package = out / "AscendCloud-6.3.906-20250101000000.zip"
            package.touch()
            fleet.set_group_vars(
                ascendcloud_package=str(package),
                per_device_train_batch_size=1,
                global_batch_size=hosts * devices_per_host,
            )
        yield fleet
    finally:
        sim_fleet.fleet_down(fleet_name, log=lambda _: None)


# ------------------------------------------------------------------------------------------------ images

# A small stand-in of the training image for tests of the roles before the job (container, workspace): the
# sim base + ma-user uid 1000 in ma-group gid 100 (as in the real and the sim training image) and empty
# `torch`/`PIL` packages so that the stand-in build.sh's import check passes. Loading the real 1.2 GB
# training image on every server would cost minutes of the CI budget for roles that need only the
# container, its user and a python3.
SMALL_IMAGE_REPOSITORY = "llava-test/small-train"
SMALL_IMAGE_DOCKERFILE = """\
FROM {base}
RUN groupmod -n ma-group users && useradd -m -u 1000 -g 100 -s /bin/bash ma-user \\
 && purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \\
 && mkdir -p "$purelib/torch" "$purelib/PIL" \\
 && echo '# stand-in: build.sh only checks that torch imports' >"$purelib/torch/__init__.py" \\
 && echo '# stand-in: build.sh only checks that PIL imports' >"$purelib/PIL/__init__.py"
USER ma-user
WORKDIR /home/ma-user
CMD ["/bin/bash"]
"""


def small_training_image() -> tuple[str, Path]:
    """The small stand-in training image (built once, cached by recipe) and its `docker save` archive
    (cached beside the image cache, shared by every fleet)."""
    from llava_devserver.sim import image_cache
    from llava_devserver.sim.image import ensure_base_image

    client = docker_client()
    dockerfile = SMALL_IMAGE_DOCKERFILE.format(base=ensure_base_image(client))
    tag = image_cache.ensure_image(client, SMALL_IMAGE_REPOSITORY, dockerfile)
    archive = image_cache.CACHE_DIR / "archives" / f"{tag.replace('/', '_').replace(':', '-')}.tar"
    if not archive.is_file():
        with image_cache.build_lock(f"save-{tag}"):
            if not archive.is_file():
                image_cache.save_image(client, tag, archive)
    return tag, archive


def use_small_training_image(fleet: Fleet) -> str:
    """Point the fleet's inventory at the small stand-in image (loaded from its archive); returns the tag."""
    tag, archive = small_training_image()
    fleet.set_group_vars(container_image=tag, container_image_archive=str(archive))
    return tag


def wait_for(predicate: Any, what: str, seconds: float = 180, interval: float = 1.0) -> Any:
    """Poll predicate() until it returns something true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what} (last: {last!r})")
