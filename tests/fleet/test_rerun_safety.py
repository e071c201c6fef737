"""Secrets, the fan-out key, reruns under a running job and the metadata guard, on the shared job fleet
(conftest's job_fleet: 3 servers, the real training image; this module runs after test_role_train, whose
workspace and finished jobs it finds). In file order:

1. The metadata guard on host networking: a listener on 169.254.169.254 (and fd00:ec2::254 where IPv6 can
   be turned on) inside a server; the server's root reaches it, the training container's user does not
   (OUTPUT -m owner), root inside the container does (the limit the report states).
2. A hub download (vision_tower from a stand-in `huggingface_hub` on each server, which checks the token it
   is handed) while every process command line of the servers is sampled: the token is on none of them,
   and the stand-in got it.
3. The preflight with another tenant's container whose environment holds a secret: the holder check still
   sees that container, but the secret is in no file of the run (events, report, log).
4. A one-server job running (devserver-1): host.yml with a changed daemon.json leaves the job (same
   processes) and dockerd (same pid) alone, leaves daemon.json as it is and says what waits; accel.yml skips
   the check and reports the last result; accel_check_force does not override a running job.
5. An interrupted fan-out: workspace.yml killed (SIGKILL, the control process) while the seed copies to
   the others; the key it left works for nothing but rsync into the asset folders; the next run removes it
   everywhere (receivers and seed), after which it opens nothing, and repairs the assets.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import harness
from cmdline_sampler import CmdlineSampler
from llava_devserver.sections import probe_results

pytestmark = pytest.mark.fleet

HOSTS = ("devserver-1", "devserver-2", "devserver-3")
CONTAINER = "llava-pretrain"
WORK_DIR = "/data/llava-devserver"
MANIFEST = f"/var/lib/llava-devserver/{CONTAINER}/assets-manifest.json"  # llava.host_state_dir, root-only
METADATA = "169.254.169.254"
METADATA_V6 = "fd00:ec2::254"
TOKEN = "hf_SecrolesFleetToken0123456789abcdef"
TENANT_SECRET = "tenant-Secret-4711-do-not-leak"
FANOUT_KEY = "/root/.ssh/llava-devserver-fanout"
VISION_REPO = "openai/clip-vit-large-patch14-336"
TIMINGS: dict[str, float] = {}


def run(fleet: harness.Fleet, *plays: str, **options: Any) -> harness.PlayResult:
    result = fleet.run_play(*plays, **options)
    TIMINGS[options.get("name") or "-".join(plays)] = round(result.seconds, 1)
    return result


@pytest.fixture(scope="module")
def fleet(job_fleet: harness.Fleet) -> Iterator[harness.Fleet]:
    # The workspace: test_role_workspace/test_role_train built it when they ran first; alone, build it here.
    run(job_fleet, "validate", "workspace", name="workspace").assert_ok()
    yield job_fleet
    print(f"\ntest_rerun_safety timings (s): {json.dumps(TIMINGS)}")


def asset_paths(fleet: harness.Fleet, host: str) -> dict[str, str]:
    """name -> server path of each asset, from the server's manifest."""
    entries = json.loads(fleet.read(host, MANIFEST))["assets"]
    return {name: str(entry["path"]) for name, entry in entries.items()}


def connect(fleet: harness.Fleet, host: str, address: str, user: str | None) -> str:
    """CONNECTED or the error of a TCP connection to address:80 from the training container (as `user`),
    or from the server itself (user None)."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    code = (
        "import socket\n"
        f"s = socket.socket(socket.{family})\ns.settimeout(3)\n"
        f"try:\n    s.connect(({address!r}, 80))\n    print('CONNECTED')\n"
        "except OSError as e:\n    print(type(e).__name__, e)\n"
    )
    if user is None:
        command = f"python3 -c {shlex.quote(code)}"
    else:
        command = f"docker exec -u {user} {CONTAINER} python3 -c {shlex.quote(code)}"
    done = fleet.sh(host, command)
    return (done.stdout + done.stderr).strip()


# ------------------------------------------------------------------------------------------------ 1


def test_metadata_guard_blocks_the_host_network_container(fleet: harness.Fleet) -> None:
    host = "devserver-1"
    guard = run(fleet, "validate", "host", tags="metadata_guard", limit=host, name="guard")
    guard.assert_ok(host)
    assert guard.changed_count(host) == 0, guard.changed
    facts = guard.fact(host, "llava_report_host")
    covers = " | ".join(facts["metadata_guard_covers"])
    assert f"IPv4 {METADATA} from every process of uid 1000 (OUTPUT, -m owner)" in covers, covers
    assert any(
        "root (uid 0) inside a host-network container" in line for line in facts["metadata_guard_not_covered"]
    )
    rules = fleet.sh(host, "iptables -w -S OUTPUT").stdout
    assert f"-d {METADATA}/32" in rules and "--uid-owner 1000" in rules and "-j REJECT" in rules, rules

    serve = (
        f"ip addr add {METADATA}/32 dev lo && "
        f"(setsid python3 -m http.server 80 --bind {METADATA} </dev/null >/tmp/metadata4.log 2>&1 &) && "
        f"for i in $(seq 50); do (exec 3<>/dev/tcp/{METADATA}/80) 2>/dev/null && exit 0; sleep 0.1; done; "
        "exit 1"
    )
    try:
        assert fleet.sh(host, serve).returncode == 0
        assert connect(fleet, host, METADATA, None) == "CONNECTED"  # the server itself (root)
        blocked = connect(fleet, host, METADATA, "ma-user")  # the training container's user
        assert blocked.startswith("ConnectionRefusedError"), blocked
        # what the report says is not covered: root in a host-network container is the host's root
        assert connect(fleet, host, METADATA, "root") == "CONNECTED"

        # IPv6: the same rule in ip6tables; tried for real where IPv6 can be turned on in the server
        rules6 = fleet.sh(host, "ip6tables -w -S OUTPUT").stdout
        if "IPv6" in covers:
            assert f"-d {METADATA_V6}/128" in rules6 and "--uid-owner 1000" in rules6, rules6
        else:
            assert any("IPv6" in line for line in facts["metadata_guard_not_covered"]), facts
        v6 = fleet.sh(
            host,
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.lo.disable_ipv6=0 && "
            f"ip -6 addr add {METADATA_V6}/128 dev lo && "
            f"(setsid python3 -m http.server 80 --bind {METADATA_V6} </dev/null >/tmp/m6.log 2>&1 &) && "
            "for i in $(seq 50); do python3 -c "
            f"\"import socket; socket.create_connection(('{METADATA_V6}', 80), 1)\" "
            "2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        )
        if v6.returncode == 0 and "IPv6" in covers:
            assert connect(fleet, host, METADATA_V6, None) == "CONNECTED"
            blocked6 = connect(fleet, host, METADATA_V6, "ma-user")
            assert blocked6.startswith("ConnectionRefusedError"), blocked6
    finally:
        fleet.sh(
            host,
            "pkill -f 'http.server 80 --bind' ; "
            f"ip addr del {METADATA}/32 dev lo; ip -6 addr del {METADATA_V6}/128 dev lo; true",
        )


# ------------------------------------------------------------------------------------------------ 2

FAKE_HUB = '''"""Stand-in huggingface_hub for the fleet tests: copies /srv/fakehub/<repo_id>, slowly, notes
whether it was handed the expected token (never the token itself)."""
import hashlib, os, shutil, time

EXPECTED = "{digest}"


def _note(repo_id, token):
    good = token is not None and hashlib.sha256(token.encode()).hexdigest() == EXPECTED
    with open("/tmp/fakehub.log", "a") as log:
        log.write("%s token=%s env=%s\\n" % (repo_id, "ok" if good else "missing", "HF_TOKEN" in os.environ))


def snapshot_download(repo_id, revision=None, repo_type=None, local_dir=None, token=None, **_):
    _note(repo_id, token)
    time.sleep(3)  # a download takes a while: long enough for every sample to see it
    shutil.copytree(os.path.join("/srv/fakehub", repo_id), local_dir, dirs_exist_ok=True)
    return local_dir


def hf_hub_download(repo_id, filename, revision=None, repo_type=None, local_dir=None, token=None, **_):
    _note(repo_id, token)
    time.sleep(3)
    target = os.path.join(local_dir, filename)
    shutil.copy2(os.path.join("/srv/fakehub", repo_id, filename), target)
    return target
'''


def test_hub_download_puts_the_token_on_no_command_line(fleet: harness.Fleet, tmp_path: Path) -> None:
    import hashlib

    settings = fleet.group_vars()
    source = settings["assets"]["vision_tower"]["path"]
    fake = FAKE_HUB.replace("{digest}", hashlib.sha256(TOKEN.encode()).hexdigest())
    (tmp_path / "huggingface_hub.py").write_text(fake)
    for host in HOSTS:
        purelib = fleet.sh(host, "python3 -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
        site = purelib.stdout.strip()
        fleet.sh(host, f"mkdir -p {site} /srv/fakehub/openai && rm -f /tmp/fakehub.log", check=True)
        name = fleet.container_name(host)
        for src, dest in ((tmp_path / "huggingface_hub.py", f"{site}/huggingface_hub.py"),
                          (Path(source), f"/srv/fakehub/{VISION_REPO}")):  # fmt: skip
            done = subprocess.run(
                ["docker", "cp", str(src), f"{name}:{dest}"], capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        # the staged copy goes, so that the hub download must run
        fleet.sh(host, f"rm -rf {shlex.quote(asset_paths(fleet, host)['vision_tower'])}", check=True)

    hub = {"source": "hub", "repo_id": VISION_REPO}
    fleet.set_group_vars(assets={**settings["assets"], "vision_tower": hub}, hf_token=TOKEN)
    try:
        with CmdlineSampler(fleet, list(HOSTS), tmp_path / "cmdlines") as sampler:
            result = run(fleet, "validate", "workspace", name="hub")
        result.assert_ok()
        assert TOKEN not in result.output
        for host in HOSTS:
            seen = sampler.text(host)
            assert "hub-download" in seen and "--token-stdin" in seen, host  # the download was sampled
            assert TOKEN not in seen, f"{host}: the hub token is on a process command line"
            assert "HF_TOKEN=" not in seen, host
            log = fleet.read(host, "/tmp/fakehub.log")
            assert log == f"{VISION_REPO} token=ok env=False\n", (host, log)
            assets = result.fact(host, "llava_report_assets")["assets"]
            assert assets["vision_tower"]["via"] == "hub" and assets["vision_tower"]["state"] == "verified"
        # the run's own files hold no token either
        for path in result.run_dir.rglob("*"):
            if path.is_file():
                assert TOKEN not in path.read_text(errors="replace"), path
    finally:
        fleet.set_group_vars(assets=settings["assets"], hf_token=None)
    # back to the control-node source: the same files, so nothing is copied again
    back = run(fleet, "validate", "workspace", name="hub-back")
    back.assert_ok()
    for host in HOSTS:
        vision = back.fact(host, "llava_report_assets")["assets"]["vision_tower"]
        assert vision["state"] in ("unchanged", "verified"), (host, vision)


# ------------------------------------------------------------------------------------------------ 3


def test_preflight_keeps_other_tenants_environments_out_of_the_run(fleet: harness.Fleet) -> None:
    host = "devserver-2"
    image = fleet.group_vars()["container_image"]
    tenant = fleet.sh(
        host,
        f"docker run -d --rm --name llava-tenant -e TENANT_API_KEY={TENANT_SECRET} "
        f"-e ASCEND_VISIBLE_DEVICES=7 --entrypoint sleep {image} 600",
    )
    assert tenant.returncode == 0, tenant.stderr
    try:
        result = run(fleet, "validate", "preflight", name="preflight-tenant")
        result.assert_ok()  # NPU 7 is not one of ours
        probe = result.task(host, "Read the NPUs, the driver and the device nodes (one probe)").res
        holders = probe_results(str(probe.get("stdout", "")))["containers"]  # npu_check's holder listing
        lines = [json.loads(line) for line in str(holders["stdout"]).splitlines() if line.strip()]
        tenant_line = next(line for line in lines if line["name"] == "/llava-tenant")
        assert tenant_line == {
            "name": "/llava-tenant", "running": True, "devices": [], "visible": "ASCEND_VISIBLE_DEVICES=7",
        }  # fmt: skip
        assert TENANT_SECRET not in result.output
        for path in result.run_dir.rglob("*"):
            if path.is_file():
                assert TENANT_SECRET not in path.read_text(errors="replace"), path
    finally:
        fleet.sh(host, "docker rm -f llava-tenant")


# ------------------------------------------------------------------------------------------------ 4


def training_processes(fleet: harness.Fleet, host: str) -> list[str]:
    done = fleet.sh(host, f"docker exec {CONTAINER} ps -eo pid=,args=")
    assert done.returncode == 0, done.stderr
    return sorted(line.strip() for line in done.stdout.splitlines() if "llava/train/train_mem.py" in line)


def test_rerun_with_a_changed_daemon_json_leaves_the_running_job_alone(fleet: harness.Fleet) -> None:
    host = "devserver-1"
    settings = fleet.group_vars()
    single = fleet.subset(
        [host],
        "secroles-single",
        global_batch_size=settings["per_device_train_batch_size"],
        output_dir="./checkpoints/llava-sim-secroles",
        max_steps=400,
        save_steps=100,
        train_wait=False,
        train_env={**settings.get("train_env", {}), "LLAVA_SIM_STEP_PAUSE": "1.0"},
    )
    started = run(fleet, "validate", "train", inventory=single, name="single-start")
    started.assert_ok(host)
    harness.wait_for(
        lambda: (
            fleet.sh(host, f"docker exec {CONTAINER} pgrep -f -- '-u llava/train/train_mem.py'").returncode
            == 0
        ),
        "the training worker",
    )
    try:
        processes = training_processes(fleet, host)
        dockerd = fleet.sh(host, "pidof dockerd").stdout.strip()
        daemon_json = fleet.read(host, "/etc/docker/daemon.json")
        wanted = [*json.loads(daemon_json).get("insecure-registries", []), "10.254.254.254:5000"]

        rerun = run(
            fleet, "validate", "host", inventory=single,
            extravars={"docker_engine_insecure_registries": wanted},
            name="host-while-training",
        )  # fmt: skip
        rerun.assert_ok(host)
        message = rerun.fact(host, "llava_report_host")["docker_restart_waits"]
        assert message.startswith(
            f"{host}: the change of /etc/docker/daemon.json (insecure-registries) and the restart of dockerd "
            f"it needs wait while the training job in {CONTAINER} (pid "
        ), message
        assert rerun.task(host, "Say what waits for the job").res["msg"] == message
        assert training_processes(fleet, host) == processes
        assert fleet.sh(host, "pidof dockerd").stdout.strip() == dockerd
        assert fleet.read(host, "/etc/docker/daemon.json") == daemon_json
        assert rerun.outcome(host, "Write the merged daemon configuration") == "skipped"
        assert rerun.outcome(host, "Restart the detached dockerd") in (None, "skipped")

        last_file = f"/var/lib/llava-devserver/{CONTAINER}/accel-check.json"  # in llava.host_state_dir
        had_result = fleet.sh(host, f"test -s {last_file}").returncode == 0
        for force in (False, True):
            accel = run(
                fleet, "validate", "accel", inventory=single, extravars={"accel_check_force": force},
                name=f"accel-while-training-{force}",
            )  # fmt: skip
            accel.assert_ok(host)
            report = accel.fact(host, "llava_report_accel")
            assert report["verdict"] == "skipped" and report["skipped"] is True, report
            assert report["skip_reason"].startswith(f"the training job in {CONTAINER} (pid "), report
            said = str(accel.task(host, "Say why the check is skipped").res["msg"])
            assert said.startswith(
                f"{host}: the accelerator check is skipped: the training job in {CONTAINER}"
            )
            assert accel.outcome(host, "Run the check with torchrun on every server at once") is None
            if had_result:
                last = json.loads(fleet.read(host, last_file))
                assert report["last"] == last["report"] and report["last_checked_at"] == last["checked_at"]
            if force:
                assert "(accel_check_force: true does not override that)" in said, said
            assert accel.host_report(host)["accel"].startswith("skipped")
            assert training_processes(fleet, host) == processes
    finally:
        run(fleet, "train_stop", inventory=single, name="single-stop").assert_ok(host)
    assert training_processes(fleet, host) == []


# ------------------------------------------------------------------------------------------------ 5


def authorized_keys(fleet: harness.Fleet, host: str) -> str:
    return fleet.sh(host, "cat /root/.ssh/authorized_keys").stdout


def test_interrupted_fanout_leaves_no_usable_key(fleet: harness.Fleet) -> None:
    seed, receivers = HOSTS[0], HOSTS[1:]
    images = {host: asset_paths(fleet, host)["images"] for host in HOSTS}
    size = int(fleet.sh(seed, f"du -sb {images[seed]} | cut -f1").stdout.split()[0])
    for host in receivers:
        fleet.sh(host, f"rm -rf {shlex.quote(images[host])}", check=True)
    # the seed's uplink slowed so that the copy lasts ~30 s (the control node's copy to it comes in, unshaped)
    kbit = max(64, size * 8 // 1000 // 30)
    fleet.sh(seed, f"tc qdisc replace dev eth0 root tbf rate {kbit}kbit burst 16kbit latency 2s", check=True)
    env = os.environ | fleet.ansible_env | {"LLAVA_RUN_DIR": str(fleet.dir / "runs" / "killed")}
    log = (fleet.dir / "killed-workspace.log").open("w")
    play = subprocess.Popen(
        [harness.tool("ansible-playbook"), "-i", str(fleet.inventory),
         str(fleet.playbook("validate", "workspace"))],
        cwd=harness.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        harness.wait_for(
            lambda: all("llava-devserver-fanout" in authorized_keys(fleet, h) for h in receivers),
            "the fan-out key on the receivers",
            seconds=600,
            interval=0.3,
        )
        time.sleep(1)  # the copies have started
        os.killpg(play.pid, signal.SIGKILL)  # the control process dies: no `always` runs
        play.wait(timeout=30)
    finally:
        if play.poll() is None:
            os.killpg(play.pid, signal.SIGKILL)
        log.close()
        fleet.sh(seed, "tc qdisc del dev eth0 root; true")
        # the copies the killed run started on the seed (their ssh sessions outlive the control process)
        fleet.sh(seed, "pkill -f -- 'ssh -i /root/.ssh/llava-devserver-fanout'; true")

    # what the killed run left: the private key on the seed, the key line on the receivers, restricted
    assert fleet.sh(seed, f"test -s {FANOUT_KEY} && cp {FANOUT_KEY} /root/leftover-key").returncode == 0
    for host in receivers:
        line = next(
            line for line in authorized_keys(fleet, host).splitlines() if "llava-devserver-fanout" in line
        )
        assert line.startswith(
            'command="/usr/bin/python3 /usr/local/lib/llava-devserver/fanout_receive.py '
        ), line
        assert f'from="{fleet.address(seed)}"' in line and ",restrict," in line and 'expiry-time="' in line, (
            line
        )
    ssh = (
        "ssh -i /root/leftover-key -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )
    target = fleet.address(receivers[0])
    # the leftover key opens no shell and writes nowhere but the asset folders
    shell = fleet.sh(seed, f"{ssh} root@{target} id")
    assert shell.returncode != 0 and "uid=" not in shell.stdout, shell.stdout
    assert "refused: only `rsync --server`" in shell.stderr, shell.stderr
    elsewhere = fleet.sh(seed, f"rsync -a -e {shlex.quote(ssh)} /etc/hostname root@{target}:/etc/")
    assert elsewhere.returncode != 0 and "not one of the asset folders" in elsewhere.stderr, elsewhere.stderr

    repaired = run(fleet, "validate", "workspace", name="after-kill")
    repaired.assert_ok()
    for host in HOSTS:
        assert "llava-devserver-fanout" not in authorized_keys(fleet, host), host
        assert fleet.sh(host, f"test -e {FANOUT_KEY}").returncode != 0, host
        assert repaired.fact(host, "llava_report_assets")["assets"]["images"]["state"] in (
            "verified",
            "unchanged",
        )
    for host in receivers:
        # copied again from the seed, or the killed run's copy had completed (same files: nothing to copy)
        assert repaired.fact(host, "llava_report_assets")["assets"]["images"]["via"] in (None, f"seed:{seed}")
    # and the key the killed run left opens nothing any more
    denied = fleet.sh(
        seed, f"{ssh} root@{target} rsync --server -logDtpre.iLsfxCIvu . {images[receivers[0]]}/"
    )
    assert denied.returncode == 255 and "Permission denied" in denied.stderr, denied.stderr
    fleet.sh(seed, "rm -f /root/leftover-key")
