"""The job on the guide's log layout, then a hostile training container (conftest's job_fleet, after
test_role_train; two of its servers as a 2-node job through an inventory subset).

1. A 2-node job whose stand-in trainer logs in the Megatron/MindSpeed style (`sim up --log-style megatron`:
   the train_env LLAVA_SIM_LOG_STYLE), so only the LAST global rank prints the loss, as the guide says:
   loss_log_node auto reads node 1 for the report (its loss curve and last loss, the throughput), `logs`
   prints node 1's lines, `status` shows node 1's step and loss and marks its log.
2. As ma-user inside the training container, every file and folder of the state folder
   work_dir/.llava-devserver is replaced by a symlink to a root-owned victim on the server (on devserver-1 the
   folder's entries, plus the temporary names the host side used to use and a job.json whose log names a
   victim; on devserver-2 the state folder itself). Then train, status, logs, train_stop and down run: no
   victim changes owner, mode or content, none is printed or fetched, and each run works or fails saying
   the state folder was tampered with. The workspace (llava_workspace, llava_assets: site.yml's workspace
   play) runs first and works: root's markers and the assets manifest live in the root-only
   llava.host_state_dir, so links in place of their old names (package.json, build-<commit>.ok,
   assets-manifest.json) or of the whole state folder are never followed. On devserver-1 the package is
   unpacked again over a tree the container rigged: links where older versions uploaded and unzipped the
   package in work_dir, and a file and a folder of the package's tree replaced by links to victims. Root
   unzips only in its own folder and rsync writes into work_dir as ma-user: the links become the package's
   files, the victims stay as they were.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from llava_devserver.sim.standin import LLAVA_TRAIN_COMMIT, LLAVA_TRAIN_DIR, package_name

pytestmark = pytest.mark.fleet

HOSTS = ("devserver-1", "devserver-2")
CONTAINER = "llava-pretrain"
WORK_DIR = "/data/llava-devserver"
STATE = f"{WORK_DIR}/.llava-devserver"
STATE_IN_CONTAINER = "/home/ma-user/ws/.llava-devserver"
HOST_STATE = f"/var/lib/llava-devserver/{CONTAINER}"  # llava.host_state_dir: root's own, root-only
# Where the workspace and assets roles used to keep root's markers and manifest (in the state folder).
OLD_MARKERS = f"package.json build-{LLAVA_TRAIN_COMMIT}.ok assets-manifest.json"
VICTIMS = "/root/llava-victims"  # on the server (host), root-only
SECRET = "SECRET-VICTIM-"
TAMPERED = "was tampered with"
WAIT = {"train_wait": True, "llava_pretrain_poll_interval": 3}
STEPS = 10
TIMINGS: dict[str, float] = {}


@dataclass
class Job:
    sim: harness.Fleet
    inventory: Path  # devserver-1 and devserver-2 as a 2-node job

    def play(self, *plays: str, **options: object) -> harness.PlayResult:
        result = self.sim.run_play(*plays, inventory=self.inventory, **options)  # type: ignore[arg-type]
        TIMINGS[str(options.get("name") or "-".join(plays))] = round(result.seconds, 1)
        return result

    def cli(self, *args: str) -> tuple[int, str, str]:
        started = time.monotonic()
        done = self.sim.llava(*args[:1], "-i", str(self.inventory), *args[1:])
        TIMINGS[f"llava {' '.join(args)}"] = round(time.monotonic() - started, 1)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def job(job_fleet: harness.Fleet) -> Iterator[Job]:
    settings = job_fleet.group_vars()
    inventory = job_fleet.subset(
        list(HOSTS),
        "megatron",
        global_batch_size=settings["per_device_train_batch_size"] * len(HOSTS),  # 1 card a server
        output_dir="./checkpoints/llava-sim-megatron",
        max_steps=STEPS,
        save_steps=5,
        train_env={"LLAVA_SIM_LOG_STYLE": "megatron"},
    )
    # The workspace: earlier modules built it; alone, this module builds it here.
    job_fleet.run_play("validate", "workspace", name="workspace").assert_ok()
    started = time.monotonic()
    yield Job(job_fleet, inventory)
    TIMINGS["module"] = round(time.monotonic() - started, 1)
    print(f"\ntest_job_hostile timings (s): {json.dumps(TIMINGS)}")


def test_megatron_style_job_reads_the_last_node(job: Job) -> None:
    run = job.play("validate", "train", extravars=WAIT, name="megatron")
    run.assert_ok(*HOSTS)
    report = run.report()
    training = report["training"]
    assert training["loss_log"] == {
        "host": "devserver-2",
        "node_rank": 1,
        "log": "logs/devserver-2/train.log",
    }
    assert training["last_step"] == STEPS and training["last_loss"] is not None
    assert training["throughput"]["source"] == "megatron_iterations"
    assert training["throughput"]["samples_per_second"] > 0 and training["throughput"]["world_size"] == 2
    assert training["projector"]["host"] == "devserver-1" and training["projector"]["bytes"] > 0
    node1 = run.host_report("devserver-2")
    assert node1["loss"]["summary"]["family"] == "megatron" and node1["loss"]["summary"]["steps"] == STEPS
    assert node1["last_loss"] == training["last_loss"] and node1["step"] == STEPS
    assert not (run.run_dir / "logs" / "devserver-1").exists()  # node 0 prints no loss: not fetched
    assert report["loss_png"] == "loss.png"
    assert "Loss read from the log of **devserver-2** (node 1)" in (run.run_dir / "report.md").read_text()

    rc, out, err = job.cli("logs", "-n", "40")
    assert rc == 0 and "logs: devserver-2 (node 1; loss_log_node=auto)" in err, err
    assert f" iteration {STEPS:8d}/{STEPS:8d} |" in out and "lm loss:" in out, out
    assert "using world size" not in out  # node 0's banner: not its log

    rc, out, err = job.cli("status", "--json")
    assert rc == 0, err
    rows = {row["host"]: row for row in json.loads(out)}
    assert rows["devserver-2"]["loss_log"] and not rows["devserver-1"]["loss_log"]
    assert rows["devserver-2"]["step"] == STEPS and rows["devserver-2"]["loss"] is not None
    assert rows["devserver-2"]["samples_per_s"] and rows["devserver-2"]["samples_per_s_per_npu"]
    assert rows["devserver-1"]["projector"]["bytes"] == training["projector"]["bytes"]
    assert rows["devserver-1"]["loss"] is None  # node 0's log has no loss lines in this style


# --- the hostile container ------------------------------------------------------------------------------

VICTIM_SETUP = f"""
set -e
mkdir -p {VICTIMS}; chmod 0700 {VICTIMS}
for n in 1 2 3 4 5 6 7 8; do
  printf '{SECRET}%s-do-not-show\\n' "$n" >{VICTIMS}/v$n; chmod 0600 {VICTIMS}/v$n
done
chown -R root:root {VICTIMS}
"""
# Owner, mode and content of every victim, the server's own npu-smi (which preflight runs as root) included.
VICTIM_STATE = (
    'npu=$(readlink -f "$(command -v npu-smi)"); '
    f'stat -c \'%n %u:%g %a\' {VICTIMS} {VICTIMS}/* "$npu" && sha256sum {VICTIMS}/* "$npu"'
)

# As ma-user in the training container (container paths; the link targets are host paths, which is what
# root on the host would follow). Devserver-1: the state folder's entries (the folder moved aside, a new one
# holding a link for every name it had, every temporary name the host side used, and a job.json naming a
# victim as its log). Devserver-2: the state folder itself.
TAMPER_ENTRIES = f"""
set -e
cd /home/ma-user/ws
mv .llava-devserver .llava-devserver.real
mkdir .llava-devserver
i=1
for name in $(ls -A .llava-devserver.real) job.lock job.json.tmp fetched-train.log {OLD_MARKERS}; do
  [ -e ".llava-devserver/$name" ] || [ -L ".llava-devserver/$name" ] && continue
  if [ -d ".llava-devserver.real/$name" ]; then ln -s {VICTIMS} ".llava-devserver/$name"
  else ln -s "{VICTIMS}/v$(( (i % 6) + 1 ))" ".llava-devserver/$name"; fi
  i=$((i + 1))
done
rm -f .llava-devserver/job.json
printf '{{"state": "running", "pid": 1, "log": "{VICTIMS}/v7"}}' >.llava-devserver/job.json
ls -la .llava-devserver
"""
TAMPER_FOLDER = f"""
set -e
cd /home/ma-user/ws
mv .llava-devserver .llava-devserver.real
ln -s {VICTIMS} .llava-devserver
"""
# Devserver-1, the package's tree: links where older versions put the zip and its contents in work_dir, and
# a file and a folder the next sync of the package writes, each a link to a victim.
PACKAGE = package_name()
TAMPER_PACKAGE = f"""
set -e
cd /home/ma-user/ws
ln -sfn {VICTIMS}/v8 {PACKAGE}
ln -sfn {VICTIMS} {PACKAGE.removesuffix(".zip")}
rm -f multimodal_algorithm/README.md && ln -s {VICTIMS}/v8 multimodal_algorithm/README.md
rm -rf {LLAVA_TRAIN_DIR}/npu_patch && ln -s {VICTIMS} {LLAVA_TRAIN_DIR}/npu_patch
"""
RESTORE = (
    f"cd {WORK_DIR} && rm -rf .llava-devserver && mv .llava-devserver.real .llava-devserver"
    f" && rm -f {PACKAGE} {PACKAGE.removesuffix('.zip')}"
)


def _as_ma_user(job: Job, host: str, script: str) -> str:
    done = job.sim.sh(host, f"docker exec -u ma-user {CONTAINER} bash -c {shlex.quote(script)}")
    assert done.returncode == 0, f"{host}: {done.stdout}{done.stderr}"
    return done.stdout


def _run_texts(run: harness.PlayResult) -> list[str]:
    """Everything a run showed or brought back: its output and every file of its run directory."""
    texts = [run.output]
    files = [p for p in run.run_dir.rglob("*") if p.is_file() and p.suffix != ".png"]
    texts += [p.read_text(errors="replace") for p in files]
    return texts


@pytest.fixture
def hostile(job: Job) -> Iterator[dict[str, str]]:
    before = {}
    for host in HOSTS:
        job.sim.sh(host, VICTIM_SETUP, check=True)
        before[host] = job.sim.sh(host, VICTIM_STATE, check=True).stdout
    _as_ma_user(job, "devserver-1", TAMPER_ENTRIES)
    _as_ma_user(job, "devserver-1", TAMPER_PACKAGE)
    job.sim.sh("devserver-1", f"rm {HOST_STATE}/package.json", check=True)  # the package is unpacked again
    _as_ma_user(job, "devserver-2", TAMPER_FOLDER)
    # What the container made: links owned by ma-user, pointing at the victims.
    listing = job.sim.sh("devserver-1", f"find {STATE} -maxdepth 1 -type l -printf '%u %p -> %l\\n'").stdout
    assert f"-> {VICTIMS}" in listing and listing.count("\n") >= 4, listing
    assert job.sim.sh("devserver-2", f"readlink {STATE}").stdout.strip() == VICTIMS
    try:
        yield before
    finally:
        for host in HOSTS:
            job.sim.sh(host, RESTORE)


def test_a_hostile_container_reaches_no_root_file(job: Job, hostile: dict[str, str]) -> None:
    shown: list[str] = []
    markers = job.sim.sh("devserver-1", f"cd {STATE} && stat -c '%N' {OLD_MARKERS}").stdout
    assert markers.count(f"-> '{VICTIMS}/v") == 3, markers  # the old names are links to victims

    # The workspace play (llava_workspace, llava_assets) reads and writes only root's own folder: it works,
    # changes nothing on devserver-2, unpacks the package again on devserver-1, and follows no link of the
    # container's.
    workspace = job.play("validate", "workspace", name="hostile-workspace")
    shown += _run_texts(workspace)
    workspace.assert_ok(*HOSTS)
    assert "devserver-2" not in workspace.changed, workspace.changed
    assert "llava_workspace : Put the package's directories into work_dir" in workspace.changed["devserver-1"]
    synced = job.sim.sh(
        "devserver-1",
        f"cd {WORK_DIR} && stat -c '%F %u' multimodal_algorithm/README.md {LLAVA_TRAIN_DIR}/npu_patch",
        check=True,
    ).stdout.splitlines()
    assert synced == ["regular file 1000", "directory 1000"], synced  # the package's, ma-user's
    for host in HOSTS:
        assert job.sim.sh(host, VICTIM_STATE, check=True).stdout == hostile[host], f"{host}: a victim changed"
        owners = job.sim.sh(host, f"stat -c '%u %a' {HOST_STATE} {HOST_STATE}/package.json").stdout
        assert owners.split() == ["0", "700", "0", "600"], (host, owners)

    train = job.play("validate", "train", extravars=WAIT, name="hostile-train")
    shown += _run_texts(train)
    for host in HOSTS:
        assert host in train.failed and TAMPERED in train.messages[host], train.tail()
    assert (
        f"state folder {STATE} {TAMPERED}: .llava-devserver/logs is a symbolic link"
        in train.messages["devserver-1"]
    )
    assert (
        f"state folder {STATE} {TAMPERED}: .llava-devserver is a symbolic link"
        in train.messages["devserver-2"]
    )

    rc, out, err = job.cli("status", "--json")
    shown += [out, err]
    assert rc == 0, err
    rows = {row["host"]: row for row in json.loads(out)}
    for host in HOSTS:
        assert rows[host]["job"] == "unreadable" and TAMPERED in rows[host]["error"], rows[host]

    for host in (None, *HOSTS):
        rc, out, err = job.cli("logs", "-n", "50", *(["--host", host] if host else []))
        shown += [out, err]
        assert rc == 1 and TAMPERED in err and out == "", (host, out, err)

    stop = job.play("validate", "train_stop", name="hostile-train_stop")
    shown += _run_texts(stop)
    for host in HOSTS:
        assert host in stop.failed and TAMPERED in stop.messages[host], stop.tail()

    down = job.play("validate", "down", name="hostile-down")
    shown += _run_texts(down)
    for host in HOSTS:
        assert host in down.failed and TAMPERED in down.messages[host], down.tail()
        # the container stays: down stopped at the tampered state, before removing anything
        assert (
            job.sim.sh(host, f"docker inspect -f '{{{{.State.Running}}}}' {CONTAINER}").stdout.strip()
            == "true"
        )

    for host in HOSTS:
        assert job.sim.sh(host, VICTIM_STATE, check=True).stdout == hostile[host], f"{host}: a victim changed"
    leaked = [text[:200] for text in shown if SECRET in text]
    assert not leaked, f"a victim's content was printed or fetched: {leaked}"
    # the root-only record is the host's own: the finished Megatron job, not the container's job.json
    record = json.loads(job.sim.read("devserver-1", f"/var/lib/llava-devserver/{CONTAINER}/job.json"))
    assert record["state"] == "finished" and record["log"].startswith(f"{STATE}/logs/train-")


def test_after_the_repair_everything_works_again(job: Job) -> None:
    """The hostile fixture put the state folders back: status reads the job again, down removes the
    containers (the last test on this fleet)."""
    rc, out, err = job.cli("status", "--json")
    assert rc == 0, err
    rows = {row["host"]: row for row in json.loads(out)}
    assert rows["devserver-2"]["loss_log"] and rows["devserver-2"]["step"] == STEPS
    for host in HOSTS:  # read through community.docker (docker_host_info, docker_container_info)
        assert rows[host]["docker"].startswith("running "), rows[host]
        assert rows[host]["container"] == "running", rows[host]
    down = job.play("validate", "down", name="down")
    down.assert_ok(*HOSTS)
    for host in HOSTS:
        assert job.sim.sh(host, f"docker inspect {CONTAINER}").returncode != 0
