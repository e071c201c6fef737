"""jobstate against a hostile training container: the state folder W/.llava-devserver is writable by the
container's user (uid 1000 here, as ma-user), which replaces what is in it by links to root-owned files.
Whatever it does, no victim changes owner, mode or content, none is read into an output, and each command
either works or fails saying the state folder was tampered with."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import jobstate

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
LOG = "train-20261130T110000Z.log"
CONTAINER_UID = 1000  # ma-user in the vendor image
TAMPERED = "was tampered with"


class Victims:
    """Root-owned 0600 files outside work_dir, and a way to prove none of them changed."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "victims"
        self.dir.mkdir()
        self.files = []
        for name in ("shadow", "npu-smi", "authorized_keys", "cron"):
            path = self.dir / name
            path.write_text(f"SECRET-{name}-do-not-show\n")
            path.chmod(0o600)
            self.files.append(path)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int, int, bytes]]:
        out = {}
        for path in [self.dir, *self.files]:
            info = os.lstat(path)
            content = path.read_bytes() if path.is_file() else b""
            out[str(path)] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), content)
        return out

    def assert_untouched(self, *outputs: str) -> None:
        assert self.snapshot() == self.before, "a victim file changed owner, mode or content"
        assert sorted(p.name for p in self.dir.iterdir()) == sorted(p.name for p in self.files)
        for text in outputs:
            assert "SECRET-" not in text, f"a victim's content was read out: {text[:300]}"


def _runner(alive_pid: int | None = None) -> Callable[[Sequence[str]], subprocess.CompletedProcess[str]]:
    """The training container, stood in for: the wrapper `alive_pid` runs with the recorded log, no stray
    process, an empty output_dir, and a launch that reports pid 4321."""

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        script = argv[argv.index("-c") + 1]
        out = ""
        if script == jobstate.LAUNCH:
            out = "4321\n"
        elif "cmdline" in script and alive_pid is not None and argv[-1] == str(alive_pid):
            out = f"bash -c ... {jobstate.WRAPPER_NAME} /home/ma-user/ws/.llava-devserver/logs/{LOG}"
        return subprocess.CompletedProcess(list(argv), 0, out, "")

    return run


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[jobstate.Paths, Victims]:
    monkeypatch.setenv(jobstate.STATE_ROOT_ENV, str(tmp_path / "var-lib"))
    work = tmp_path / "work"
    logs = work / ".llava-devserver" / "logs"
    logs.mkdir(parents=True)
    paths = jobstate.Paths(str(work), "/home/ma-user/ws", str(work / ".llava-devserver"), "llava-pretrain")
    # A real, finished-looking record in the root-only folder, naming a real log.
    jobstate.write_job(
        paths, {"state": "running", "pid": 77, "log": os.path.join(paths.log_dir, LOG), "node_rank": 0}
    )
    (logs / LOG).write_text("{'loss': 2.5, 'learning_rate': 0.001, 'epoch': 0.5}\n")
    victims = Victims(tmp_path)
    if os.geteuid() == 0:  # as on a server: work_dir and all in it belong to the container's user
        for path in [work, *work.rglob("*")]:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
    return paths, victims


def _as_container(path: Path, target: Path) -> None:
    """What ma-user does: replace `path` (file or folder) by a symlink to `target`."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(path, CONTAINER_UID, CONTAINER_UID)


def _every_command(paths: jobstate.Paths, pid: int | None = 77) -> list[tuple[str, str]]:
    """Run each command the role and the playbooks run; (command, outcome text) for each."""
    container = jobstate.Container("llava-pretrain", runner=_runner(pid))
    outcomes = []
    calls: dict[str, Callable[[], Any]] = {
        "probe": lambda: jobstate.probe(paths, container, NOW, output_dir="/home/ma-user/ws/out"),
        "status": lambda: jobstate.status(paths, 50, "/home/ma-user/ws/out"),
        "fetch": lambda: jobstate.fetch_copy(paths),
        "plan": lambda: jobstate.plan(paths, container, "/home/ma-user/ws/out", 0, NOW),
        "stop": lambda: jobstate.stop(paths, container, NOW, grace=1),
        "start": lambda: jobstate.start(
            paths, container, "/home/ma-user/ws/LLaVA", "scripts/run.sh", 0, NOW, owner=(1000, 1000)
        ),
    }
    for name, call in calls.items():
        try:
            outcomes.append((name, json.dumps(call(), default=str)))
        except jobstate.TamperError as exc:
            outcomes.append((name, f"TAMPER {exc}"))
    return outcomes


def _fetched(paths: jobstate.Paths) -> str:
    return Path(paths.fetch_file).read_text() if os.path.exists(paths.fetch_file) else ""


def test_the_log_replaced_by_a_link_to_a_root_file(fleet: tuple[jobstate.Paths, Victims]) -> None:
    paths, victims = fleet
    _as_container(Path(paths.log_dir) / LOG, victims.files[0])
    outcomes = dict(_every_command(paths))
    for name in ("probe", "status", "fetch", "plan", "stop"):
        assert outcomes[name].startswith("TAMPER "), (name, outcomes[name])
        assert (
            f"state folder {paths.state_dir} {TAMPERED}: .llava-devserver/logs/{LOG} is a symbolic link"
            in (outcomes[name])
        )
    victims.assert_untouched(*outcomes.values(), _fetched(paths))
    # the record is still the host's own, untouched by the failed looks
    assert jobstate.read_job(paths.state_file)["state"] == "running"


@pytest.mark.parametrize(
    "replaced",
    [".llava-devserver", ".llava-devserver/logs", ".llava-devserver/logs/" + LOG[:-4] + ".exit"],
)
def test_folders_and_the_exit_file_replaced_by_links(
    fleet: tuple[jobstate.Paths, Victims], replaced: str
) -> None:
    paths, victims = fleet
    target = victims.files[1] if replaced.endswith(".exit") else victims.dir
    _as_container(Path(paths.work_dir) / replaced, target)
    outcomes = _every_command(paths, pid=None)  # the wrapper is gone: the host reads the exit file
    texts = [text for _, text in outcomes]
    assert any(text.startswith("TAMPER ") for text in texts)
    for name, text in outcomes:
        if text.startswith("TAMPER "):
            assert f"state folder {paths.state_dir} {TAMPERED}: {replaced} is a symbolic link" in text, name
    victims.assert_untouched(*texts, _fetched(paths))


def test_a_forged_job_file_and_temporary_names_in_the_state_folder_are_never_used(
    fleet: tuple[jobstate.Paths, Victims],
) -> None:
    """The old places of the state (W/.llava-devserver/job.json, job.lock, job.json.tmp) are the container's
    now: links there and a job.json naming a victim as its log change and show nothing."""
    paths, victims = fleet
    state = Path(paths.state_dir)
    for name, victim in (("job.lock", 0), ("job.json.tmp", 1), ("fetched-train.log", 2)):
        _as_container(state / name, victims.files[victim])
    (state / "job.json").write_text(json.dumps({"state": "running", "pid": 1, "log": str(victims.files[3])}))
    outcomes = _every_command(paths)
    assert [name for name, text in outcomes if text.startswith("TAMPER ")] == []
    stopped, started = json.loads(dict(outcomes)["stop"]), json.loads(dict(outcomes)["start"])
    assert stopped["stopped"] is True and stopped["job"]["pid"] == 77  # the host's own record, not pid 1
    assert started["started"] is True and started["job"]["log"].startswith(paths.log_dir + "/train-")
    victims.assert_untouched(*(text for _, text in outcomes), _fetched(paths))
    assert "{'loss': 2.5" in _fetched(paths)  # the real log was fetched, not the victim


def test_hard_links_fifos_and_a_log_swapped_for_a_directory(fleet: tuple[jobstate.Paths, Victims]) -> None:
    paths, victims = fleet
    log = Path(paths.log_dir) / LOG
    log.unlink()
    os.link(victims.files[0], log)  # (protected_hardlinks forbids this to ma-user; root checks anyway)
    outcomes = dict(_every_command(paths))
    assert "with 2 hard links" in outcomes["probe"]
    log.unlink()
    os.mkfifo(log)
    assert "is a device, FIFO or socket" in dict(_every_command(paths))["status"]  # and no hang
    log.unlink()
    log.mkdir()
    assert "is a directory" in dict(_every_command(paths))["fetch"]
    victims.assert_untouched(*outcomes.values())


def test_start_creates_and_chowns_the_log_folder_only_through_its_descriptor(
    fleet: tuple[jobstate.Paths, Victims],
) -> None:
    paths, victims = fleet
    jobstate.write_job(paths, {"state": "stopped", "log": os.path.join(paths.log_dir, LOG)})
    _as_container(Path(paths.log_dir), victims.dir)
    outcome = dict(_every_command(paths, pid=None))["start"]
    assert outcome.startswith("TAMPER ") and ".llava-devserver/logs is a symbolic link" in outcome
    victims.assert_untouched(outcome)
    # a clean state folder: start works, the log folder is the container user's
    os.unlink(paths.log_dir)
    started = json.loads(dict(_every_command(paths, pid=None))["start"])
    assert started["started"] is True and started["job"]["pid"] == 4321
    if os.geteuid() == 0:
        assert os.stat(paths.log_dir).st_uid == CONTAINER_UID


def test_the_private_state_folder_is_root_only(fleet: tuple[jobstate.Paths, Victims]) -> None:
    paths, _ = fleet
    for path in (paths.private_root, paths.private_dir):
        info = os.lstat(path)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid()
    assert not paths.private_dir.startswith(paths.work_dir)
    # a private folder that is a link (or someone else's) is refused, not used
    os.rename(paths.private_dir, paths.private_dir + ".real")
    os.symlink(paths.private_dir + ".real", paths.private_dir)
    with pytest.raises(jobstate.JobError, match="expected a directory owned by uid"):
        jobstate.write_job(paths, {"state": "stopped"})


def test_log_command_streams_only_the_real_log(fleet: tuple[jobstate.Paths, Victims], tmp_path: Path) -> None:
    paths, victims = fleet
    argv = [sys.executable, jobstate.__file__, "log", "--work-dir", paths.work_dir, "--container-work-dir",
            paths.container_work_dir, "--state-dir", paths.state_dir, "--container", "llava-pretrain",
            "-n", "5"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0 and result.stdout == "{'loss': 2.5, 'learning_rate': 0.001, 'epoch': 0.5}\n"
    _as_container(Path(paths.log_dir) / LOG, victims.files[0])
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 1 and TAMPERED in result.stderr and result.stdout == ""
    victims.assert_untouched(result.stdout, result.stderr)


# --- the rendered files written into the (container-writable) LLaVA tree ---------------------------------

TREE = "/home/ma-user/ws/LLaVA"
FILES = {"scripts/v1_5/pretrain_new.sh": "#!/bin/bash\necho ours\n", "scripts/zero2.json": "{}\n"}


@pytest.fixture
def tree(fleet: tuple[jobstate.Paths, Victims]) -> tuple[jobstate.Paths, Victims, Path]:
    paths, victims = fleet
    root = Path(paths.work_dir) / "LLaVA"
    (root / "scripts" / "v1_5").mkdir(parents=True)
    (root / "scripts" / "v1_5" / "pretrain_new.sh").write_text("#!/bin/bash\necho the guide's\n")
    (root / "scripts" / "zero2.json").write_text('{"guide": true}\n')
    if os.geteuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
    return paths, victims, root


def test_install_writes_keeps_the_original_once_and_is_idempotent(
    tree: tuple[jobstate.Paths, Victims, Path],
) -> None:
    paths, _, root = tree
    owner = (CONTAINER_UID, CONTAINER_UID)
    planned = jobstate.install_files(paths, TREE, FILES, owner, check=True)
    assert (
        planned["changed"] == sorted(FILES)
        and (root / "scripts/zero2.json").read_text() == '{"guide": true}\n'
    )
    done = jobstate.install_files(paths, TREE, FILES, owner)
    assert done["changed"] == sorted(FILES)
    assert done["backed_up"] == ["scripts/v1_5/pretrain_new.sh.orig", "scripts/zero2.json.orig"]
    script = root / "scripts/v1_5/pretrain_new.sh"
    assert script.read_text() == FILES["scripts/v1_5/pretrain_new.sh"]
    assert (
        stat.S_IMODE(script.stat().st_mode) == 0o755
        and stat.S_IMODE((root / "scripts/zero2.json").stat().st_mode) == 0o644
    )
    assert (root / "scripts/v1_5/pretrain_new.sh.orig").read_text() == "#!/bin/bash\necho the guide's\n"
    if os.geteuid() == 0:
        assert (script.stat().st_uid, script.stat().st_gid) == owner
    again = jobstate.install_files(paths, TREE, FILES, owner)
    assert again["changed"] == [] and again["backed_up"] == []
    assert sorted(p.name for p in (root / "scripts").iterdir()) == ["v1_5", "zero2.json", "zero2.json.orig"]


@pytest.mark.parametrize("replaced", ["scripts", "scripts/v1_5", "scripts/v1_5/pretrain_new.sh", "hardlink"])
def test_install_follows_no_link_in_the_tree(
    tree: tuple[jobstate.Paths, Victims, Path], replaced: str
) -> None:
    paths, victims, root = tree
    if replaced == "hardlink":
        (root / "scripts/v1_5/pretrain_new.sh").unlink()
        os.link(victims.files[0], root / "scripts/v1_5/pretrain_new.sh")
        expected = f"{root}/scripts/v1_5/pretrain_new.sh is a regular file with 2 hard links"
    else:
        target = victims.files[0] if replaced.endswith(".sh") else victims.dir
        _as_container(root / replaced, target)
        expected = f"{root}/{replaced} is a symbolic link"
    with pytest.raises(jobstate.TamperError) as refused:
        jobstate.install_files(paths, TREE, FILES, (CONTAINER_UID, CONTAINER_UID))
    assert f"the LLaVA tree {root} was tampered with: {expected}" in str(refused.value)
    victims.assert_untouched(str(refused.value))
    # nothing of a victim landed in the tree (the backup of a "guide's file" that was a link to it)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_nlink == 1:  # not the victim itself
            assert "SECRET-" not in path.read_text(errors="replace"), path
