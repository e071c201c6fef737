"""The logic of the llava_assets role: assets_plan (control node) and assets_manifest (server side).

Fingerprints, the manifest's honesty, the free-space check, the seed choice, the commands the role runs
(fan-out rsync, hub download with HF_ENDPOINT and the token only in the environment) and the messages.
The hub download is exercised against a fake `huggingface_hub` module: no hub is reachable here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from llava_devserver import assets_manifest as am
from llava_devserver import assets_plan as ap
from llava_devserver.sim.assets import generate_assets

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_assets(tmp_path_factory.mktemp("pristine"), records=24)


@pytest.fixture
def assets(pristine: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    root = pristine["llm"].parent
    shutil.copytree(root, tmp_path / "a")
    return {key: tmp_path / "a" / path.relative_to(root) for key, path in pristine.items()}


def llava(**assets: dict[str, Any]) -> dict[str, Any]:
    base = "/home/ma-user/ws/sim-assets"
    dests = {
        "llm": f"{base}/llm",
        "vision_tower": f"{base}/vision_tower",
        "pretrain_json": f"{base}/blip_laion_cc_sbu_558k.json",
        "images": f"{base}/images",
    }
    return {
        "host": "devserver-1",
        "ansible_host": "10.0.0.1",
        "work_dir": "/data/llava-devserver",
        "state_dir": "/data/llava-devserver/.llava-devserver",
        "host_state_dir": "/var/lib/llava-devserver/llava-pretrain",
        "container_work_dir": "/home/ma-user/ws",
        "assets": {
            name: {"source": "none", "path": None, "repo_id": None, "revision": "main", "repo_type": "model",
                   **assets.get(name, {}), "dest": dests[name]}
            for name in dests
        },
    }  # fmt: skip


# --- fingerprints and the manifest ----------------------------------------------------------------------


def test_fingerprint_sees_size_mtime_and_small_file_content(assets: dict[str, Path]) -> None:
    llm = str(assets["llm"])
    first = am.fingerprint(llm, hash_small=1 << 20)
    assert first is not None and first["files"] == 8 and first["bytes"] > 0
    assert am.fingerprint(llm, hash_small=1 << 20) == first  # stable
    assert am.fingerprint(str(assets["llm"].parent / "nothing")) is None

    config = assets["llm"] / "config.json"
    stat = config.stat()
    text = config.read_text()
    config.write_text(text.replace('"llama"', '"LLAMA"'))  # same size, same mtime: only the hash tells
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert am.fingerprint(llm, hash_small=1 << 20) != first
    assert am.fingerprint(llm, hash_small=0) == am.fingerprint(llm, hash_small=0)

    config.write_text(text)
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert am.fingerprint(llm, hash_small=1 << 20) == first
    shard = assets["llm"] / "model-00002-of-00002.safetensors"
    os.truncate(shard, shard.stat().st_size - 10)
    assert am.fingerprint(llm, hash_small=1 << 20) != first


def test_copy_with_preserved_times_has_the_same_fingerprint(assets: dict[str, Path], tmp_path: Path) -> None:
    """What rsync -a (synchronize, the fan-out) gives: the server's fingerprint equals the source's."""
    copy = tmp_path / "copy"
    shutil.copytree(assets["images"], copy, copy_function=shutil.copy2)
    assert am.fingerprint(str(copy)) == am.fingerprint(str(assets["images"]))


def test_status_verify_cycle_keeps_the_manifest_honest(assets: dict[str, Path], tmp_path: Path) -> None:
    manifest = str(tmp_path / "m" / "assets-manifest.json")
    llm = str(assets["llm"])
    source = am.fingerprint(llm, 1 << 20)
    assert source is not None
    assert am.status(manifest, "llm", llm, 1 << 20)["state"] == "stale"  # not in the manifest yet
    assert am.status(manifest, "llm", str(tmp_path / "none"))["state"] == "missing"

    ok = am.verify(manifest, "llm", "llm", llm, hash_small=1 << 20, source_digest=source["digest"])
    assert ok["ok"] and ok["fingerprint"] == source
    state = am.status(manifest, "llm", llm, 1 << 20, expect=source["digest"])
    assert state["state"] == "verified", state
    assert (
        am.status(manifest, "llm", llm, 1 << 20, expect="another-source")["reason"]
        == "differs from the source"
    )

    shard = assets["llm"] / "model-00002-of-00002.safetensors"
    os.truncate(shard, shard.stat().st_size - 100)
    assert am.status(manifest, "llm", llm, 1 << 20)["reason"] == "changed since it was verified"
    bad = am.verify(manifest, "llm", "llm", llm, hash_small=1 << 20, source_digest=source["digest"])
    assert not bad["ok"]
    assert any("(truncated)" in e for e in bad["errors"])
    assert any("differs from its source" in e for e in bad["errors"])
    entry = am.read_manifest(manifest)["assets"]["llm"]
    assert entry["ok"] is False and entry["errors"] == bad["errors"]
    # a failed verification is never "verified", even for the same files
    assert am.status(manifest, "llm", llm, 1 << 20)["reason"] == "its last verification failed"

    marked = am.mark(manifest, "vision_tower", str(assets["vision_tower"]), "not staged: 1 KiB free")
    assert not marked["ok"]
    assert am.read_manifest(manifest)["assets"]["vision_tower"]["errors"] == ["not staged: 1 KiB free"]
    assert am.read_manifest(manifest)["assets"]["llm"]["ok"] is False  # other entries kept


def test_verify_kinds(assets: dict[str, Path], tmp_path: Path) -> None:
    manifest = str(tmp_path / "m.json")
    images = str(assets["images"])
    assert am.verify(manifest, "images", "images", images)["details"]["files"] == 24
    records = json.loads(assets["pretrain_json"].read_text())
    records.append({**records[0], "image": "missing/0.jpg"})
    assets["pretrain_json"].write_text(json.dumps(records))
    out = am.verify(
        manifest, "pretrain_json", "pretrain_json", str(assets["pretrain_json"]), images, sample=None
    )
    assert not out["ok"] and "missing/0.jpg" in out["errors"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert am.verify(manifest, "images", "images", str(empty))["errors"] == [
        f"{empty}: image folder is empty"
    ]
    with pytest.raises(ValueError):
        am.verify(manifest, "x", "tokenizer", images)


def test_space(tmp_path: Path) -> None:
    avail = am.space(str(tmp_path), 0)["avail"]
    assert avail > 0
    deep = str(tmp_path / "not" / "yet" / "there")
    fits = am.space(deep, 1000, name="llm")
    assert fits["ok"] and fits["checked"] == str(tmp_path) and fits["name"] == "llm"
    too_big = am.space(deep, avail + (1 << 30))
    assert not too_big["ok"] and too_big["need"] == avail + (1 << 30)
    # what is already there counts; the margin is added
    assert am.space(deep, avail + (1 << 30), present=avail + (1 << 30))["need"] == 0
    assert am.space(deep, 10, present=4, margin=100)["need"] == 106


def test_batch_runs_every_operation_and_names_failures(assets: dict[str, Path], tmp_path: Path) -> None:
    manifest = str(tmp_path / "m.json")
    images = str(assets["images"])
    out = am.batch(
        [
            {"op": "verify", "manifest": manifest, "name": "images", "kind": "images", "path": images},
            {"op": "status", "manifest": manifest, "name": "images", "path": images},
            {"op": "status", "manifest": manifest, "name": "llm", "path": "/x", "bogus": 1},
            {"op": "space", "name": "llm", "path": str(tmp_path), "need_bytes": 1},
        ]
    )  # fmt: skip
    assert out[0]["ok"] and out[1]["state"] == "verified" and out[3]["ok"]
    assert out[2]["state"] == "error" and "bogus" in out[2]["errors"][0]


def test_helper_cli_runs_standalone(assets: dict[str, Path], tmp_path: Path) -> None:
    """As on a server: the two scripts copied side by side, run with a plain python3 (no package)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    from ansible_collections.llava.devserver.plugins.filter.assets import llava_assets_python_files

    for name, path in llava_assets_python_files().items():
        shutil.copy(path, bin_dir / name)
    manifest = str(tmp_path / "m.json")
    ops = [{"op": "verify", "manifest": manifest, "name": "llm", "kind": "llm", "path": str(assets["llm"])}]
    env = {"PATH": os.environ["PATH"]}  # no PYTHONPATH: the package is not importable
    result = subprocess.run(
        [sys.executable, "-S", str(bin_dir / "assets_manifest.py"), "batch", json.dumps(ops)],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["ok"]
    usage = subprocess.run(
        [sys.executable, str(bin_dir / "assets_manifest.py"), "status"], capture_output=True, check=False
    )
    assert usage.returncode == 2


# --- hub downloads (fake huggingface_hub) ---------------------------------------------------------------


def test_hub_download_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def snapshot_download(**kwargs: Any) -> str:
        calls.append(("snapshot", kwargs))
        return str(kwargs["local_dir"])

    def hf_hub_download(**kwargs: Any) -> str:
        calls.append(("file", kwargs))
        path = Path(kwargs["local_dir"]) / kwargs["filename"]
        path.write_text("[]")
        return str(path)

    fake = types.SimpleNamespace(snapshot_download=snapshot_download, hf_hub_download=hf_hub_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    dest = tmp_path / "llm"
    assert am.hub_download("org/model", "abc123", "model", str(dest), None)["ok"]
    assert calls[-1] == (
        "snapshot",
        {"repo_id": "org/model", "revision": "abc123", "repo_type": "model", "local_dir": str(dest)},
    )  # fmt: skip
    json_dest = tmp_path / "data" / "blip_laion_cc_sbu_558k.json"
    assert am.hub_download("liuhaotian/LLaVA-Pretrain", "main", "dataset", str(json_dest), json_dest.name)[
        "ok"
    ]
    assert calls[-1][0] == "file" and calls[-1][1]["repo_type"] == "dataset"
    assert json_dest.read_text() == "[]"

    def failing(**kwargs: Any) -> str:
        raise OSError("401 Unauthorized")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=failing))
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    out = am.hub_download("org/model", "main", "model", str(dest), None)
    assert out["code"] == 1 and "https://hf-mirror.example" in out["error"] and "401" in out["error"]


def test_hub_command_and_environment() -> None:
    plan = ap.plan(
        llava(
            llm={"source": "hub", "repo_id": "lmsys/vicuna-13b-v1.5", "revision": "r1"},
            pretrain_json={"source": "hub", "repo_id": "liuhaotian/LLaVA-Pretrain", "repo_type": "dataset"},
        )
    )
    llm, data = plan["assets"]
    helper = "/usr/local/lib/llava-devserver"
    assert ap.hub_command(llm, helper, "1000:1000") == [
        "python3", f"{helper}/assets_manifest.py", "hub-download", "--repo-id", "lmsys/vicuna-13b-v1.5",
        "--revision", "r1", "--repo-type", "model", "--dest", "/data/llava-devserver/sim-assets/llm",
        "--owner", "1000:1000",
    ]  # fmt: skip
    assert ap.hub_command(data, helper, "1000:1000")[-6:] == [
        "--dest", "/data/llava-devserver/sim-assets/blip_laion_cc_sbu_558k.json",
        "--owner", "1000:1000", "--file", "blip_laion_cc_sbu_558k.json",
    ]  # fmt: skip
    assert "dataset" in ap.hub_command(data, helper, "1000:1000")
    # the token goes through stdin (--token-stdin): never into the command line or the environment
    env = ap.hub_environment("https://hf-mirror.com")
    assert env["HF_ENDPOINT"] == "https://hf-mirror.com" and "HF_TOKEN" not in env
    assert ap.hub_command(llm, helper, "1000:1000", token_set=True)[-1] == "--token-stdin"
    assert "--token-stdin" not in ap.hub_command(llm, helper, "1000:1000")
    assert "HF_ENDPOINT" not in ap.hub_environment(None)


def test_hub_task_is_no_log() -> None:
    tasks = yaml.safe_load((REPO / "roles/llava_assets/tasks/local.yml").read_text())
    hub = next(t for t in tasks if t["name"] == "Download the hub assets on the server")
    assert hub["no_log"] is True and "hf_token" not in hub["environment"]
    assert "hf_token" in hub["ansible.builtin.command"]["stdin"]
    assert "hostvars" not in json.dumps(
        hub["ansible.builtin.command"]["argv"]
    )  # the secret itself is not read there


def test_hub_problems_quote_the_helper_not_the_environment() -> None:
    asset = {"name": "llm", "repo_id": "org/m", "revision": "main"}
    results = [
        {
            "item": asset,
            "rc": 1,
            "stdout": json.dumps(
                {"ok": False, "error": "GET https://hf-mirror.com/api/models/org/m: HTTP 401"}
            ),
        }
    ]
    (problem,) = ap.hub_problems(results, "devserver-1", "https://hf-mirror.com")
    assert problem.startswith(
        "devserver-1: assets.llm: hub download of org/m@main (https://hf-mirror.com) failed"
    )
    assert ap.hub_problems([{"item": asset, "rc": 0}], "h", None) == []


# --- plan, seeds and commands ---------------------------------------------------------------------------


def test_host_path() -> None:
    assert ap.host_path("/home/ma-user/ws/a/b", "/home/ma-user/ws", "/data/x") == "/data/x/a/b"
    assert ap.host_path("/home/ma-user/ws", "/home/ma-user/ws/", "/data/x") == "/data/x"
    assert ap.host_path("/home/ma-user/wsx/a", "/home/ma-user/ws", "/data/x") is None
    assert ap.host_path("/opt/model", "/home/ma-user/ws", "/data/x") is None


def test_plan(assets: dict[str, Path]) -> None:
    settings = llava(
        llm={"source": "control", "path": str(assets["llm"])},
        images={"source": "control", "path": str(assets["images"])},
        pretrain_json={"source": "server", "path": "/mnt/sfs/blip.json"},
    )
    fps = ap.control_fingerprints([settings, settings])
    assert len(fps) == 2
    plan = ap.plan(settings, fps)
    assert plan["errors"] == []
    assert [a["name"] for a in plan["assets"]] == ["images", "llm", "pretrain_json"]  # images before the JSON
    _, llm, data = plan["assets"]
    assert llm["host_dest"] == "/data/llava-devserver/sim-assets/llm" and llm["is_dir"]
    assert (
        llm["source_fingerprint"]["digest"]
        == am.fingerprint(str(assets["llm"]), ap.HASH_SMALL["llm"])["digest"]
    )
    assert data["image_root"] == "/data/llava-devserver/sim-assets/images" and not data["is_dir"]
    # root's record: in the root-only folder, never in the container-writable state folder
    assert plan["manifest"] == "/var/lib/llava-devserver/llava-pretrain/assets-manifest.json"

    outside = llava(llm={"source": "server", "path": "/mnt/llm"})
    outside["assets"]["llm"]["dest"] = "/opt/llm"
    (error,) = ap.plan(outside)["errors"]
    assert error.startswith(
        "devserver-1: assets.llm: its container path /opt/llm is outside container_work_dir"
    )


def test_parent_dirs_are_container_paths(assets: dict[str, Path]) -> None:
    """The folders made in the container (as its user) before staging: a directory asset's own, a file's
    parent, each once, container paths (never work_dir's host side), only for the assets named."""
    settings = llava(
        llm={"source": "control", "path": str(assets["llm"] / "config.json")},  # a file, per its fingerprint
        images={"source": "control", "path": str(assets["images"])},
        pretrain_json={"source": "server", "path": "/mnt/sfs/blip.json"},
        vision_tower={"source": "hub", "repo_id": "org/clip"},
    )
    settings["assets"]["images"]["dest"] = "/home/ma-user/ws/sim-assets/images/"
    plan = ap.plan(settings, ap.control_fingerprints([settings]))
    base = "/home/ma-user/ws/sim-assets"
    assert ap.parent_dirs(plan, ["images", "llm", "vision_tower", "pretrain_json"]) == [
        f"{base}/images",
        base,
        f"{base}/vision_tower",
    ]  # llm (a file) and the pretrain JSON share one parent
    assert ap.parent_dirs(plan, ["pretrain_json"]) == [base]
    assert ap.parent_dirs(plan, []) == []


def test_operations_for_the_helper(assets: dict[str, Path]) -> None:
    settings = llava(
        llm={"source": "control", "path": str(assets["llm"])},
        pretrain_json={"source": "server", "path": "/mnt/sfs/blip.json"},
        images={"source": "hub", "repo_id": "org/images", "repo_type": "dataset"},
    )
    plan = ap.plan(settings, ap.control_fingerprints([settings]))
    status = {op["name"]: op for op in ap.status_ops(plan)}
    assert status["llm"]["expect"] == plan["assets"][1]["source_fingerprint"]["digest"]
    assert status["pretrain_json"]["source"] == "/mnt/sfs/blip.json"
    assert "expect" not in status["images"] and "source" not in status["images"]

    statuses = {
        "llm": {"state": "stale", "fingerprint": {"bytes": 100}},
        "pretrain_json": {"state": "no-source"},
        "images": {"state": "missing"},
    }
    spaces = ap.space_ops(plan, ["llm", "pretrain_json", "images"], statuses, margin=7)
    assert spaces == [
        {"op": "space", "name": "llm", "path": "/data/llava-devserver/sim-assets/llm",
         "need_bytes": plan["assets"][1]["source_fingerprint"]["bytes"], "present": 100, "margin": 7,
         "root": "/data/llava-devserver"},
    ]  # fmt: skip
    verify = ap.verify_ops(plan, ["pretrain_json", "images"], sample=0)
    assert [op["name"] for op in verify] == ["images", "pretrain_json"]
    assert (
        verify[1]["sample"] is None and verify[1]["image_root"] == "/data/llava-devserver/sim-assets/images"
    )
    (mark,) = ap.mark_ops(plan, {"llm": "not staged: no room"})
    assert mark["error"] == "not staged: no room" and mark["op"] == "mark"
    # every operation on the server knows work_dir, below which the helper follows no link
    assert {op["root"] for op in [*status.values(), *verify, *ap.mark_ops(plan, {"llm": "x"})]} == {
        "/data/llava-devserver"
    }
    argv = ap.batch_command(verify, plan)
    assert argv[:3] == ["python3", "/usr/local/lib/llava-devserver/assets_manifest.py", "batch"]
    assert json.loads(argv[3]) == verify


def test_batch_results() -> None:
    ops = [{"op": "status", "name": "llm"}, {"op": "status", "name": "images"}]
    good = {"stdout": json.dumps([{"state": "verified"}, {"state": "missing"}]), "rc": 0}
    assert ap.batch_results(good, ops) == {"llm": {"state": "verified"}, "images": {"state": "missing"}}
    assert ap.batch_results({"skipped": True}, ops) == {}
    broken = ap.batch_results({"stdout": "", "stderr": "SyntaxError: invalid syntax", "rc": 1}, ops)
    assert broken["llm"]["state"] == "error" and "SyntaxError" in broken["llm"]["errors"][0]


def test_seeds() -> None:
    def plan(path: str) -> dict[str, Any]:
        return {
            "assets": [
                {"name": "llm", "source": "control", "path": path},
                {"name": "images", "source": "server", "path": "/x"},
            ]
        }

    plans = {"a": plan("/src/llm"), "b": plan("/src/llm"), "c": plan("/other/llm")}
    hosts = ["a", "b", "c"]
    assert ap.seeds("b", plans, hosts) == {"llm": "a"}
    assert ap.seeds("a", plans, hosts) == {"llm": "a"}
    assert ap.seeds("c", plans, hosts) == {"llm": "c"}  # another source: its own seed
    assert ap.seeds("b", plans, hosts, {"a": ["llm"]}) == {"llm": "b"}  # a has no room: b is the seed


def test_fanout_and_local_copy_commands() -> None:
    asset = {"name": "llm", "host_dest": "/data/ws/sim-assets/llm/", "is_dir": True, "path": "/mnt/llm"}
    argv = ap.fanout_command(asset, "/root/.ssh/llava-devserver-fanout", "root", "10.0.0.2")
    assert argv[:4] == ["rsync", "-a", "--delete", "--stats"]
    assert argv[-2:] == ["/data/ws/sim-assets/llm/", "root@10.0.0.2:/data/ws/sim-assets/llm/"]
    ssh = argv[argv.index("-e") + 1]
    assert "-i /root/.ssh/llava-devserver-fanout" in ssh and "BatchMode=yes" in ssh
    file_asset = {
        "name": "pretrain_json",
        "host_dest": "/data/ws/b.json",
        "is_dir": False,
        "path": "/mnt/b.json",
    }
    assert ap.fanout_command(file_asset, "k", "root", "h")[-2:] == [
        "/data/ws/b.json",
        "root@h:/data/ws/b.json",
    ]
    assert ap.local_copy_command(asset, "1000:1000") == [
        "rsync", "-a", "--delete", "--protect-args",
        "--rsh", f"python3 {ap.HELPER_DIR}/as_owner.py 1000:1000",  # root reads, the owner writes
        "--", "/mnt/llm/", "localhost:/data/ws/sim-assets/llm/",
    ]  # fmt: skip
    assert ap.needs_copy([asset, {**file_asset, "path": "/data/ws/b.json"}]) == [asset]


def test_rsync_bytes_and_transfers() -> None:
    stats = "Number of files: 3\nTotal bytes sent: 1,234,567\nTotal bytes received: 100\n"
    assert ap.parse_rsync_bytes(stats) == 1234567
    assert ap.parse_rsync_bytes("nothing") is None
    results = [
        {"item": {"name": "llm"}, "rc": 0, "stdout": stats},
        {
            "item": {"name": "images"},
            "rc": 23,
            "stdout": "",
            "stderr": "rsync: write failed: No space left on device",
        },
        {"item": {"name": "x"}, "skipped": True},
    ]
    moved = ap.transfers(results, "seed", {"llm": "devserver-1", "images": "devserver-1"})
    assert moved["llm"] == {"via": "seed:devserver-1", "bytes": 1234567, "ok": True, "error": None}
    assert not moved["images"]["ok"] and "No space left" in moved["images"]["error"]
    (problem,) = ap.transfer_problems("devserver-2", moved)
    assert problem.startswith(
        "devserver-2: assets.images: the copy (seed:devserver-1) failed: rsync: write failed"
    )
    sync = ap.transfers([{"item": {"name": "llm"}, "changed": True, "msg": stats}], "control")
    assert sync["llm"]["bytes"] == 1234567 and sync["llm"]["via"] == "control"
    hub = {"item": {"name": "vision_tower"}, "rc": 0, "stdout": '{"ok": true, "bytes": 4096, "files": 3}'}
    assert ap.transfers([hub], "hub")["vision_tower"] == {
        "via": "hub",
        "bytes": 4096,
        "ok": True,
        "error": None,
    }


def test_messages_and_reasons() -> None:
    spaces = {
        "vision_tower": {"name": "vision_tower", "ok": False, "path": "/d/vt", "checked": "/d/vt",
                         "avail": 16384, "need": 3 << 20},
        "llm": {"name": "llm", "ok": True},
    }  # fmt: skip
    (problem,) = ap.space_problems(spaces, "devserver-1")
    assert problem.startswith("devserver-1: assets.vision_tower: not enough free space for /d/vt: 16.0 KiB")
    assert "3.0 MiB needed" in problem
    reasons = ap.unstaged_reasons(
        spaces, ["pretrain_json"], {"images": {"ok": False, "via": "control", "error": "x"}}
    )
    assert reasons == {
        "vision_tower": "not staged: 16.0 KiB free at /d/vt, 3.0 MiB needed",
        "pretrain_json": "not staged: its source path is missing on the server",
        "images": "not staged: the copy (control) failed: x",
    }
    plan = {"assets": [{"name": "llm", "source": "server", "path": "/srv/llm"}]}
    verified = {"llm": {"ok": False, "errors": ["a", "b", "c", "d"]}}
    (message,) = ap.verify_problems(verified, plan, "devserver-1")
    assert message == (
        "devserver-1: assets.llm (server /srv/llm) failed verification: a; b; c (and 1 more); "
        "fix the source and run again"
    )


def test_report() -> None:
    plan = {
        "manifest": "/m.json",
        "assets": [
            {"name": "llm", "source": "control", "path": "/s/llm", "dest": "/c/llm"},
            {"name": "images", "source": "control", "path": "/s/img", "dest": "/c/img"},
        ],
    }
    statuses = {
        "llm": {"state": "verified", "fingerprint": {"files": 8, "bytes": 10}},
        "images": {"state": "missing"},
    }
    staged = {"images": {"via": "seed:devserver-1", "bytes": 30, "ok": True}}
    verified = {"images": {"ok": True, "fingerprint": {"files": 2, "bytes": 25}, "errors": []}}
    report = ap.report(plan, statuses, staged, verified)
    assert (
        report["assets"]["llm"]["state"] == "unchanged" and report["assets"]["images"]["state"] == "verified"
    )
    assert report["assets"]["images"]["bytes"] == 25 and report["bytes_transferred"] == 30
    assert report["bytes_from_control"] == 0
