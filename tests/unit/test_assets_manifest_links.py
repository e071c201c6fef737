"""assets_manifest.py (status / verify / mark / space) and assets_verify.py run as root on the assets below
work_dir, which the training container's user owns and may change at any moment. For a link planted inside
the LLM folder, the asset folder itself a link, a folder above it a link, the caption JSON a link, an image
a link and a FIFO in place of a config file: the victim (a root-only file or folder outside work_dir) is
never read into any output, never changed, and the manifest records the asset as not verified with a
message that names the link. The operations run as the role builds them (assets_plan: `root` is
llava.work_dir); the FIFO case also through the copied helper on a plain python3, under a timeout.

The fingerprint of a normal tree is pinned to what the code gave before these rules (digests recorded from
it): a change would make every verified server re-stage its assets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import assets_manifest as am
from llava_devserver import assets_plan as ap
from llava_devserver.sim.assets import generate_assets
from victims import snapshot

SECRET = "VICTIM-SECRET-7f3a"
CONTAINER_WORK_DIR = "/home/ma-user/ws"
DESTS = {
    "llm": "sim-assets/llm",
    "vision_tower": "sim-assets/vision_tower",
    "pretrain_json": "sim-assets/blip_laion_cc_sbu_558k.json",
    "images": "sim-assets/images",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_assets(tmp_path_factory.mktemp("pristine"), records=12)


@pytest.fixture
def work(pristine: dict[str, Path], tmp_path: Path) -> Path:
    """work_dir with the four assets staged as real files (mtimes kept, as rsync -a keeps them)."""
    shutil.copytree(pristine["llm"].parent, tmp_path / "work" / "sim-assets")
    return tmp_path / "work"


@pytest.fixture
def victim(pristine: dict[str, Path], tmp_path: Path) -> Path:
    """Root's files outside work_dir, each of which would pass a check if it were followed and would put
    SECRET in the output: a shadow file, a model folder whose model_type is SECRET, a caption JSON naming
    SECRET images (and a whole asset tree of such things, for a link above the assets)."""
    folder = tmp_path / "victim"
    tree = folder / "sim-assets"
    shutil.copytree(pristine["llm"].parent, tree)
    config = json.loads((tree / "llm" / "config.json").read_text())
    (tree / "llm" / "config.json").write_text(json.dumps({**config, "model_type": SECRET}))
    records = json.loads((tree / DESTS["pretrain_json"].split("/")[1]).read_text())
    secret_records = [{**r, "image": f"{SECRET}/{i}.jpg"} for i, r in enumerate(records)]
    (tree / DESTS["pretrain_json"].split("/")[1]).write_text(json.dumps(secret_records))
    (folder / "shadow").write_text(f"root:{SECRET}:19000:0:99999:7:::\n")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    return folder


def plan(work: Path, tmp_path: Path) -> dict[str, Any]:
    llava = {
        "host": "devserver-1",
        "work_dir": str(work),
        "container_work_dir": CONTAINER_WORK_DIR,
        "host_state_dir": str(tmp_path / "host-state"),
        "assets": {
            name: {"source": "hub", "repo_id": f"org/{name}", "dest": f"{CONTAINER_WORK_DIR}/{dest}"}
            for name, dest in DESTS.items()
        },
    }
    planned = ap.plan(llava)
    assert planned["errors"] == [] and planned["work_dir"] == str(work)
    return planned


def run_role_checks(work: Path, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """status, then verify of every asset, as the role runs them (one batch each); the manifest's text."""
    planned = plan(work, tmp_path)
    statuses = {out["name"]: out for out in am.batch(ap.status_ops(planned))}
    verified = {out["name"]: out for out in am.batch(ap.verify_ops(planned, list(DESTS), sample=0))}
    return statuses, verified, Path(planned["manifest"]).read_text()


def assert_refused(
    name: str,
    link: Path,
    statuses: dict[str, Any],
    verified: dict[str, Any],
    manifest_text: str,
    victim: Path,
    before: dict[str, tuple[Any, ...]],
) -> None:
    """SECRET in no output; ASSET stale and recorded as not verified, with a message naming LINK; the
    other assets unaffected; the victim unchanged."""
    everything = json.dumps([statuses, verified]) + manifest_text
    assert SECRET not in everything
    assert statuses[name]["state"] == "stale", statuses[name]
    assert str(link) in statuses[name]["reason"], statuses[name]
    assert verified[name]["ok"] is False
    assert any(str(link) in error for error in verified[name]["errors"]), verified[name]["errors"]
    entry = json.loads(manifest_text)["assets"][name]
    assert entry["ok"] is False and any(str(link) in error for error in entry["errors"])
    assert snapshot(victim) == before


def assert_link_refused(
    name: str, link: Path, verified: dict[str, Any], victim: Path, before: dict[str, tuple[Any, ...]]
) -> None:
    errors = " ".join(verified[name]["errors"])
    assert f"{link} is a symbolic link" in errors or f"{link} is a link" in errors, errors
    assert snapshot(victim) == before


def test_the_normal_assets_verify(work: Path, tmp_path: Path) -> None:
    """The baseline the cases below change one thing of: every asset is verified and then `verified`."""
    _statuses, verified, _text = run_role_checks(work, tmp_path)
    assert all(out["ok"] for out in verified.values()), verified
    planned = plan(work, tmp_path)
    assert {out["state"] for out in am.batch(ap.status_ops(planned))} == {"verified"}


@pytest.mark.parametrize("planted", ["config.json", "notes.txt"])
def test_a_link_inside_the_llm_folder(work: Path, victim: Path, tmp_path: Path, planted: str) -> None:
    """config.json (which the check reads and whose model_type it reports) or an extra file (which the
    fingerprint would hash) made a link to root's files."""
    before = snapshot(victim)
    link = work / DESTS["llm"] / planted
    link.unlink(missing_ok=True)
    link.symlink_to(
        victim / "sim-assets" / "llm" / "config.json" if planted == "config.json" else victim / "shadow"
    )
    statuses, verified, text = run_role_checks(work, tmp_path)
    assert_refused("llm", link, statuses, verified, text, victim, before)
    assert_link_refused("llm", link, verified, victim, before)
    assert verified["vision_tower"]["ok"] and verified["images"]["ok"]  # only the asset with the link


def test_the_asset_folder_itself_a_link(work: Path, victim: Path, tmp_path: Path) -> None:
    before = snapshot(victim)
    folder = work / DESTS["llm"]
    shutil.rmtree(folder)
    folder.symlink_to(victim / "sim-assets" / "llm")
    statuses, verified, text = run_role_checks(work, tmp_path)
    assert_refused("llm", folder, statuses, verified, text, victim, before)
    assert_link_refused("llm", folder, verified, victim, before)
    assert statuses["llm"]["fingerprint"] is None  # nothing behind the link was listed


def test_a_folder_above_the_assets_a_link(work: Path, victim: Path, tmp_path: Path) -> None:
    before = snapshot(victim)
    above = work / "sim-assets"
    shutil.rmtree(above)
    above.symlink_to(victim / "sim-assets")
    statuses, verified, text = run_role_checks(work, tmp_path)
    for name in DESTS:
        assert_refused(name, above, statuses, verified, text, victim, before)
        assert_link_refused(name, above, verified, victim, before)


def test_the_caption_json_a_link(work: Path, victim: Path, tmp_path: Path) -> None:
    """The caption file made a link to root's copy whose records name SECRET images (which a check that
    followed it would list as missing)."""
    before = snapshot(victim)
    caption = work / DESTS["pretrain_json"]
    caption.unlink()
    caption.symlink_to(victim / "sim-assets" / caption.name)
    statuses, verified, text = run_role_checks(work, tmp_path)
    assert_refused("pretrain_json", caption, statuses, verified, text, victim, before)
    assert_link_refused("pretrain_json", caption, verified, victim, before)
    assert verified["pretrain_json"]["details"] == {}  # not even its record count


def test_an_image_a_link(work: Path, victim: Path, tmp_path: Path) -> None:
    """One image of the image folder made a link to the shadow file: the images asset is not verified,
    and the caption check (all records sampled) refuses that image too, without reading through it."""
    before = snapshot(victim)
    first = json.loads((work / DESTS["pretrain_json"]).read_text())[0]["image"]
    image = work / DESTS["images"] / first
    image.unlink()
    image.symlink_to(victim / "shadow")
    statuses, verified, text = run_role_checks(work, tmp_path)
    assert_refused("images", image, statuses, verified, text, victim, before)
    assert_link_refused("images", image, verified, victim, before)
    assert verified["pretrain_json"]["ok"] is False
    (error,) = verified["pretrain_json"]["errors"]
    assert "1 of 12 sampled images are symbolic links" in error and str(image) in error
    # verified directly (as `assets_verify.py pretrain-json --root`), the caption check says the same
    from llava_devserver import assets_verify

    direct = assets_verify.verify_pretrain_json(
        str(work / DESTS["pretrain_json"]), str(work / DESTS["images"]), sample=None, root=str(work)
    )
    assert direct.errors == [error]


def test_a_fifo_in_place_of_a_config_file(work: Path, tmp_path: Path) -> None:
    """A FIFO nobody writes to, where config.json belongs: refused by name, never opened for reading (a
    read would block root forever); the copied helper on a plain python3 comes back well within 30 s."""
    config = work / DESTS["vision_tower"] / "preprocessor_config.json"
    config.unlink()
    os.mkfifo(config)
    statuses, verified, text = run_role_checks(work, tmp_path)
    expected = f"{config} is not a regular file (a FIFO, socket or device): refused, not read"
    assert statuses["vision_tower"]["state"] == "stale"
    assert expected in statuses["vision_tower"]["reason"]
    assert verified["vision_tower"]["errors"] == [expected]
    assert json.loads(text)["assets"]["vision_tower"]["ok"] is False
    assert verified["llm"]["ok"]

    from ansible_collections.llava.devserver.plugins.filter.assets import llava_assets_python_files

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, path in llava_assets_python_files().items():
        shutil.copy(path, bin_dir / name)
    planned = plan(work, tmp_path)
    ops = [
        *ap.verify_ops(planned, ["vision_tower"]),
        *[op for op in ap.status_ops(planned) if op["name"] == "vision_tower"],
        # the FIFO itself as the path of a free-space check: its folder's file system, never opened
        {"op": "space", "name": "fifo", "path": str(config), "need_bytes": 1, "root": str(work)},
    ]
    done = subprocess.run(
        [sys.executable, "-S", str(bin_dir / "assets_manifest.py"), "batch", json.dumps(ops)],
        capture_output=True, text=True, check=False, env={"PATH": os.environ["PATH"]}, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    verify_out, status_out, fifo_space = json.loads(done.stdout)
    assert verify_out["errors"] == [expected] and not verify_out["ok"]
    assert expected in status_out["reason"]
    assert fifo_space["ok"] and fifo_space["checked"] == str(config)


def test_the_free_space_check_follows_no_link(work: Path, victim: Path, tmp_path: Path) -> None:
    """`space` on an asset folder that is a link, and on one below a link: refused by name (no statvfs of
    whatever the link points to), and the role then records the asset as not staged."""
    before = snapshot(victim)
    folder = work / DESTS["llm"]
    shutil.rmtree(folder)
    folder.symlink_to(victim / "sim-assets" / "llm")
    planned = plan(work, tmp_path)
    statuses = {out["name"]: out for out in am.batch(ap.status_ops(planned))}
    (out,) = am.batch(
        ap.space_ops(
            {
                **planned,
                "assets": [{**a, "source": "server"} for a in planned["assets"] if a["name"] == "llm"],
            },
            ["llm"],
            statuses,
        )
    )
    assert out["ok"] is False and out["errors"] == [
        f"{folder} is a symbolic link: refused, not followed (an asset holds no links) "
        "(the free space is not checked through it)"
    ]
    assert ap.space_problems({"llm": out}, "devserver-1") == [
        f"devserver-1: assets.llm: the free-space check failed: {out['errors'][0]}"
    ]
    below = am.space(str(folder / "sub" / "deeper"), 1, root=str(work))
    assert below["ok"] is False and str(folder) in below["errors"][0]
    # a missing asset is checked at its nearest existing folder, as before
    fresh = am.space(str(work / "sim-assets" / "new" / "llm"), 1, root=str(work))
    assert fresh["ok"] and fresh["checked"] == str(work / "sim-assets")
    assert snapshot(victim) == before


def test_mark_records_a_link_asset_without_reading_it(work: Path, victim: Path, tmp_path: Path) -> None:
    before = snapshot(victim)
    folder = work / DESTS["llm"]
    shutil.rmtree(folder)
    folder.symlink_to(victim / "sim-assets" / "llm")
    planned = plan(work, tmp_path)
    (out,) = am.batch(ap.mark_ops(planned, {"llm": "not staged: the copy failed"}))
    assert out["ok"] is False and out["fingerprint"] is None
    assert am.fingerprint(str(folder)) is not None  # without root the path itself is the admin's
    assert snapshot(victim) == before


@pytest.mark.parametrize("planted", ["config.json", "shard", "tokenizer.json", "index-escape"])
def test_the_kind_checks_alone_follow_no_link(work: Path, victim: Path, planted: str) -> None:
    """assets_verify on its own (as if the link were swapped in after the scan): each file is opened
    through one no-follow descriptor, and a shard name in the index that leaves the folder is refused."""
    from llava_devserver import assets_verify

    before = snapshot(victim)
    llm = work / DESTS["llm"]
    index_path = llm / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    if planted == "index-escape":  # the victim's copy of the shard, named through ../
        escape = os.path.relpath(victim / "sim-assets" / "llm" / shard, llm)
        index["weight_map"] = {k: escape if v == shard else v for k, v in index["weight_map"].items()}
        index_path.write_text(json.dumps(index))
        shown = f"shard name {escape!r} leaves the model folder: refused"
    else:
        name = shard if planted == "shard" else planted
        (llm / name).unlink()
        (llm / name).symlink_to(victim / "sim-assets" / "llm" / name)
        shown = f"{llm / name} is a symbolic link: refused, not followed"
    result = assets_verify.verify_weights(str(llm), root=str(work))
    assert not result.ok and any(shown in e for e in result.errors), result.errors
    assert SECRET not in json.dumps(result.to_dict())
    assert snapshot(victim) == before


# --- the fingerprint of a normal tree is what it was -----------------------------------------------------


def build_tree(base: Path) -> tuple[Path, Path, Path]:
    """A fixed tree (names, sizes, contents, mtimes): nested folders, an empty file and folder, a
    non-ASCII name, upper/lower case order, a file of exactly 2048 bytes; an image folder with an
    unpack marker whose names the fingerprint leaves out."""
    llm = base / "llm"
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b"{}" * 10,
        "empty.txt": b"",
        "model-00001-of-00002.safetensors": b"x" * 3000,
        "sub/deeper/a.bin": b"abc",
        "sub/b.bin": b"b" * 2048,
        "sub/\u00e9t\u00e9.txt": b"accent",
        "Zeta": b"Z",
        "zz/1": b"1",
    }
    for i, (relative, data) in enumerate(sorted(files.items())):
        path = llm / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1700000000 + i, 1700000000.75 + i))
    (llm / "emptydir").mkdir()
    caption = base / "captions.json"
    caption.write_bytes(b'[{"image": "00000/1.jpg"}]')
    os.utime(caption, (1700000100, 1700000100))
    images = base / "images"
    for relative in ("00000/1.jpg", "00000/2.jpg", "00001/3.jpg", "images.zip", "keep/4.jpg"):
        path = images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(relative.encode())
        os.utime(path, (1700000200, 1700000200))
    marker = {"version": 1, "archives": {"images.zip": {"size": 1, "mtime": 1, "top": ["00000", "00001"]}}}
    (images / ".llava-devserver-unpacked.json").write_text(json.dumps(marker))
    return llm, caption, images


# Recorded from assets_manifest.fingerprint before the no-follow rules (commit 5e93d33).
GOLDEN = {
    ("llm", 0): (9, 5102, "aa9020e3acc5a0462d28bd0d54248693a22c72d789e85519295523b25b46cab9"),
    ("llm", 1 << 20): (9, 5102, "477487bfb7c4a11b104c31df82ff2b9b5a183b08b5da7962345bf4036d3a0737"),
    ("llm", 2048): (9, 5102, "e9ce2e5a145b009a788175a21351ef6012cfddf56ffd1c4aa87ce82896a696d7"),
    ("captions.json", 0): (1, 26, "b72083c7dd00efe6bd9312f52620e17cda8c750dd687ee66b6b5398a2c39f66a"),
    ("captions.json", 1 << 20): (1, 26, "deb6cb95a5888612728d312dc4e7face58b7a72c36d97a34d46a565775f9fcb1"),
    ("images", 0): (2, 20, "5c13a08c2650f3583772b7e3f329be1764bef7c44d3d25f231a64b85b65f6ec3"),
    ("images", 1 << 20): (2, 20, "5da5aff0b39c3b9d3d825bcf85bea3f26418aaaaaaeb44a685284df48e613ec1"),
}


@pytest.mark.parametrize(("name", "hash_small"), sorted(GOLDEN))
def test_the_fingerprint_of_a_normal_tree_is_unchanged(tmp_path: Path, name: str, hash_small: int) -> None:
    """Byte for byte, with and without work_dir as the root, and from the command line."""
    build_tree(tmp_path / "work")
    path = str(tmp_path / "work" / name)
    files, size, digest = GOLDEN[(name, hash_small)]
    expected = {"files": files, "bytes": size, "digest": digest}
    assert am.fingerprint(path, hash_small) == expected
    assert am.scan(path, hash_small, root=str(tmp_path / "work")) == (expected, [])
    assert am.status(str(tmp_path / "m.json"), name, path, hash_small, root=str(tmp_path))["fingerprint"] == (
        expected
    )


def old_fingerprint(path: str, hash_small: int = 0) -> dict[str, Any] | None:
    """The fingerprint as the code computed it before the no-follow rules, for trees without links (the
    marker's names are left out as assets_archive.unpacked_entries says)."""
    import hashlib

    from llava_devserver import assets_archive

    if not os.path.exists(path):
        return None
    unpacked: set[str] = set()
    if os.path.isdir(path):
        fd = os.open(path, assets_archive.DIR_FLAGS)
        unpacked = set(assets_archive.unpacked_entries(fd))
        os.close(fd)
    found = [("", path)] if os.path.isfile(path) else []
    for root, dirs, names in os.walk(path):
        if root == path and unpacked:
            dirs[:] = [d for d in dirs if d not in unpacked]
            names = [n for n in names if n not in unpacked]
        dirs.sort()
        found += [
            (os.path.relpath(os.path.join(root, n), path), os.path.join(root, n)) for n in sorted(names)
        ]
    digest = hashlib.sha256(b"file\n" if os.path.isfile(path) else b"dir\n")
    total = 0
    for relative, full in found:
        info = os.stat(full)
        line = f"{relative}\t{info.st_size}\t{int(info.st_mtime)}"
        if 0 < info.st_size <= hash_small:
            line += "\t" + hashlib.sha256(Path(full).read_bytes()).hexdigest()
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
        total += info.st_size
    return {"files": len(found), "bytes": total, "digest": digest.hexdigest()}


def test_the_fingerprint_of_the_sim_assets_is_unchanged(work: Path) -> None:
    """The realistic trees (the simulated LLaVA assets), with the hash sizes the role uses."""
    for name, dest in DESTS.items():
        path = str(work / dest)
        expected = old_fingerprint(path, ap.HASH_SMALL[name])
        assert expected is not None and expected["files"] > 0
        assert am.fingerprint(path, ap.HASH_SMALL[name], root=str(work)) == expected, name
