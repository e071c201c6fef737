"""The workspace play (llava_workspace + llava_assets) on the shared 3-server simulated fleet (conftest's
job_fleet: the training container runs on every server, no workspace yet). The tests run in file order, each
building on the state the previous one left, and leave a repaired, verified workspace for test_role_train:

1. From empty servers to a built workspace with verified assets: the package unpacked and built once as
   ma-user, playground/data/LLaVA-Pretrain, ownership, a manifest on every server whose fingerprints equal
   the control node's sources; the control node sent each asset once (to the seed), the seed the others.
2. A rerun changes nothing and stages nothing.
3. Five faults in one run: devserver-2 gets a corrupt package, devserver-3 one whose build.sh fails,
   devserver-1 a truncated LLM shard (source server), a pretrain JSON naming missing images and a tmpfs too
   small for the vision tower. Each host fails with its own clear message; the manifests say what is not
   verified; no build marker is left by the failed build.
4. With the faults removed, check mode changes nothing; the next run repairs everything (build.sh runs
   again) and every server ends with the same verified assets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import harness
from llava_devserver.assets_manifest import fingerprint
from llava_devserver.assets_plan import HASH_SMALL
from llava_devserver.sim.standin import LLAVA_TRAIN_COMMIT, build_package

pytestmark = pytest.mark.fleet

HOSTS = ["devserver-1", "devserver-2", "devserver-3"]
WORK = "/data/llava-devserver"
CONTAINER_STATE = f"{WORK}/.llava-devserver"  # the container's (the job's logs): nothing of root's in it
STATE = "/var/lib/llava-devserver/llava-pretrain"  # llava.host_state_dir: root's markers and manifest
MANIFEST = f"{STATE}/assets-manifest.json"
HELPERS = "/usr/local/lib/llava-devserver"  # root-owned, outside work_dir
COMMIT_DIR = f"{WORK}/multimodal_algorithm/LLAVA/llava-train/{LLAVA_TRAIN_COMMIT}"
CONTAINER = "llava-pretrain"
ASSET_DIR = f"{WORK}/sim-assets"
ASSETS = {
    "llm": f"{ASSET_DIR}/llm",
    "vision_tower": f"{ASSET_DIR}/vision_tower",
    "pretrain_json": f"{ASSET_DIR}/blip_laion_cc_sbu_558k.json",
    "images": f"{ASSET_DIR}/images",
}


BUILD = "Run build.sh inside the training container as the image's user"


@pytest.fixture(scope="module")
def fleet(job_fleet: harness.Fleet) -> harness.Fleet:
    return job_fleet


def manifest(fleet: harness.Fleet, host: str) -> dict[str, Any]:
    result = fleet.sh(host, f"cat {MANIFEST}")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["assets"])


def control_sources(fleet: harness.Fleet) -> dict[str, Any]:
    return {name: spec["path"] for name, spec in fleet.group_vars()["assets"].items()}


def assert_workspace(fleet: harness.Fleet, host: str) -> None:
    pretrain = f"{COMMIT_DIR.replace(WORK, '/home/ma-user/ws')}/LLaVA/playground/data/LLaVA-Pretrain"
    tree = fleet.sh(host,
        f"docker exec {CONTAINER} stat -c '%U:%G' {pretrain}"
        f" && test -f {COMMIT_DIR}/LLaVA/llava/train/train_mem.py"
        f" && cat {STATE}/build-{LLAVA_TRAIN_COMMIT}.ok && find {WORK} ! -uid 1000 -print -quit",
    )  # fmt: skip
    assert tree.returncode == 0, f"{host}: {tree.stderr}"
    lines = tree.stdout.splitlines()
    assert lines[0] == "ma-user:ma-group", lines
    assert len(lines) == 2, f"{host}: files not owned by ma-user: {lines[2:]}"
    # root's markers and manifest: root-only, outside work_dir; none in the container's state folder
    owners = fleet.sh(host,
        f"stat -c '%n %u %a' {STATE} {STATE}/package.json {STATE}/build-{LLAVA_TRAIN_COMMIT}.ok {MANIFEST}"
        f" && ls -A {CONTAINER_STATE} 2>/dev/null | grep -v '^logs$' || true",
    )  # fmt: skip
    assert owners.stdout.splitlines() == [
        f"{STATE} 0 700",
        f"{STATE}/package.json 0 600",
        f"{STATE}/build-{LLAVA_TRAIN_COMMIT}.ok 0 600",
        f"{MANIFEST} 0 600",
    ], f"{host}: {owners.stdout}{owners.stderr}"


def assert_assets_verified(fleet: harness.Fleet, host: str) -> None:
    """The manifest says every asset is verified, for exactly the fingerprint of the control node's source."""
    entries = manifest(fleet, host)
    sources = control_sources(fleet)
    for name, path in ASSETS.items():
        entry = entries[name]
        assert entry["ok"] and entry["path"] == path and not entry["errors"], (host, name, entry)
        expected = fingerprint(sources[name], HASH_SMALL[name])
        assert expected is not None
        assert entry["fingerprint"]["digest"] == expected["digest"], (host, name)
        # and the server's files really are what the manifest says (the same helper, on the server)
        check = fleet.sh(host,
            f"python3 {HELPERS}/assets_manifest.py fingerprint {path} --hash-small {HASH_SMALL[name]}",
        )  # fmt: skip
        assert json.loads(check.stdout)["fingerprint"]["digest"] == expected["digest"], (host, name)


def test_empty_servers_to_verified_workspace_with_fanout(fleet: harness.Fleet) -> None:
    run = fleet.run_play("validate", "workspace")
    assert run.rc == 0, run.output[-5000:]
    for host in HOSTS:
        assert run.recap[host]["failed"] == 0
        assert_workspace(fleet, host)
        assert_assets_verified(fleet, host)
    # build.sh ran once per server, inside the container as ma-user
    build = run.outcomes(BUILD)
    assert build == dict.fromkeys(HOSTS, "changed"), build

    # fan-out: the control node sent each asset to devserver-1 only; the others got it from devserver-1
    report = {entry["host"]: entry["facts"] for entry in run.report()["hosts"]}
    total = sum(report["devserver-1"]["assets"]["assets"][a]["bytes"] for a in ASSETS)
    seed = report["devserver-1"]["assets"]
    assert all(seed["assets"][a]["via"] == "control" for a in ASSETS), seed
    for host in HOSTS[1:]:
        facts = report[host]["assets"]
        assert facts["bytes_from_control"] == 0, facts
        assert all(facts["assets"][a]["via"] == "seed:devserver-1" for a in ASSETS), facts
        assert all(facts["assets"][a]["state"] == "verified" for a in ASSETS), facts
    from_control = sum(report[h]["assets"]["bytes_from_control"] for h in HOSTS)
    from_seed = [report[h]["assets"]["bytes_transferred"] for h in HOSTS[1:]]
    # rsync's bytes on the wire: synchronize compresses (-z; the JPEGs hardly), the fan-out does not (a LAN):
    # the control node sent about one copy, not three; the seed one full copy to each other server
    assert 0.3 * total <= from_control <= 1.1 * total, (from_control, total)
    assert all(0.95 * total <= sent <= 1.2 * total for sent in from_seed), (from_seed, total)
    assert report["devserver-1"]["workspace"]["inner_zip"].startswith("AscendCloud-AIGC-6.3.906-")
    # the temporary fan-out key is gone everywhere
    for host in HOSTS:
        keys = fleet.sh(host, "cat /root/.ssh/authorized_keys; ls /root/.ssh")
        assert "llava-devserver-fanout" not in keys.stdout, (host, keys.stdout)


def test_rerun_changes_nothing(fleet: harness.Fleet) -> None:
    run = fleet.run_play("validate", "workspace")
    assert run.rc == 0, run.output[-5000:]
    for host in HOSTS:
        assert run.recap[host]["changed"] == 0, run.output[-6000:]
    assert run.changed == {}, run.changed
    build = run.outcomes(BUILD)
    assert build == dict.fromkeys(HOSTS, "skipped"), build
    report = {entry["host"]: entry["facts"] for entry in run.report()["hosts"]}
    for host in HOSTS:
        assert report[host]["assets"]["bytes_transferred"] == 0
        assert {a["state"] for a in report[host]["assets"]["assets"].values()} == {"unchanged"}
        assert report[host]["workspace"]["build"] == "skipped (built before)"


def test_faults_fail_their_host_and_leave_the_manifest_honest(fleet: harness.Fleet) -> None:
    faults = fleet.dir / "faults"
    corrupt = build_package(faults / "corrupt", fault="corrupt-zip")
    broken = build_package(faults / "broken", timestamp="20240613100000", fault="build-fails")
    sources = control_sources(fleet)
    records = json.loads(Path(sources["pretrain_json"]).read_text())
    missing = [{**records[i], "id": f"missing-{i}", "image": f"99999/{i:09d}.jpg"} for i in range(40)]
    bad_json = faults / "blip_laion_cc_sbu_558k.json"
    bad_json.write_text(json.dumps(records + missing))
    prepared = fleet.sh("devserver-1",
        f"mkdir -p /srv/shared && cp -a {ASSETS['llm']} /srv/shared/llm"
        " && f=/srv/shared/llm/model-00002-of-00002.safetensors"
        " && truncate -s $(( $(stat -c %s $f) - 100 )) $f"
        f" && mount -t tmpfs -o size=16k tmpfs {ASSETS['vision_tower']}",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    assets = fleet.group_vars()["assets"]
    try:
        fleet.set_host_vars("devserver-1",
            {"assets": {**assets, "llm": {"source": "server", "path": "/srv/shared/llm"},
                        "pretrain_json": {"source": "control", "path": str(bad_json)}}},
        )  # fmt: skip
        fleet.set_host_vars("devserver-2", {"ascendcloud_package": str(corrupt)})
        fleet.set_host_vars("devserver-3", {"ascendcloud_package": str(broken)})
        run = fleet.run_play("validate", "workspace")
        assert run.rc != 0
        assert all(run.recap[h]["failed"] == 1 for h in HOSTS), run.output[-6000:]
        out = "\n".join(run.messages.values())
        assert f"devserver-2: ascendcloud_package {corrupt} is not a valid zip" in out
        assert "devserver-3: build.sh in /home/ma-user/ws/multimodal_algorithm/LLAVA/llava-train/" in out
        assert "missing upstream/LLaVA/llava/train/train.py: the package is incomplete" in out
        assert "devserver-1: assets.vision_tower: not enough free space for" in out
        assert "devserver-1: assets.llm (server /srv/shared/llm) failed verification:" in out
        assert "model-00002-of-00002.safetensors: 194964 bytes" not in out or "(truncated)" in out
        assert "(truncated)" in out
        assert "devserver-1: assets.pretrain_json (control " in out and "sampled images missing" in out

        # the manifest says exactly what is not verified, and why
        entries = manifest(fleet, "devserver-1")
        assert not entries["llm"]["ok"] and "(truncated)" in entries["llm"]["errors"][0]
        assert not entries["pretrain_json"]["ok"] and "missing" in entries["pretrain_json"]["errors"][0]
        assert not entries["vision_tower"]["ok"] and "needed" in entries["vision_tower"]["errors"][0]
        assert entries["images"]["ok"]
        # the failed build left no marker (it runs again next time); the corrupt zip changed no tree
        assert fleet.sh("devserver-3", f"test -e {STATE}/build-{LLAVA_TRAIN_COMMIT}.ok").returncode != 0
        assert fleet.sh("devserver-2", f"test -f {STATE}/build-{LLAVA_TRAIN_COMMIT}.ok").returncode == 0
    finally:
        fleet.sh("devserver-1", f"umount {ASSETS['vision_tower']}")
        for host in HOSTS:
            fleet.set_host_vars(host, None)


def test_check_mode_then_the_next_run_repairs_everything(fleet: harness.Fleet) -> None:
    before = {h: manifest(fleet, h) for h in HOSTS}
    check = fleet.run_play("validate", "workspace", check=True)
    assert check.rc == 0, check.output[-5000:]
    # check mode builds, copies, verifies and records nothing
    assert {h: manifest(fleet, h) for h in HOSTS} == before
    assert fleet.sh("devserver-3", f"test -e {STATE}/build-{LLAVA_TRAIN_COMMIT}.ok").returncode != 0

    run = fleet.run_play("validate", "workspace")
    assert run.rc == 0, run.output[-5000:]
    # devserver-3 unpacked the good package again and ran build.sh again; the others did not
    build = run.outcomes(BUILD)
    assert build == {"devserver-1": "skipped", "devserver-2": "skipped", "devserver-3": "changed"}, build
    for host in HOSTS:
        assert_workspace(fleet, host)
        assert_assets_verified(fleet, host)
