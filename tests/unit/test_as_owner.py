"""as_owner.py: rsync's receiver runs as the owner of the container's tree, never as root.

The real-rsync tests run as root (as CI does) into a folder under /tmp that uid 1000 can reach; the one
that matters: a destination the container swapped for a link to a root-only folder is written by root's
rsync, and is not written through as_owner.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llava_devserver import as_owner
from llava_devserver import assets_plan as ap

HELPER = Path(as_owner.__file__)
as_root = pytest.mark.skipif(os.getuid() != 0, reason="writing as another user needs root (CI runs as root)")


@pytest.mark.parametrize("text", ["", "1000", "ma-user:ma-group", "1000:", ":1000", "-1:0", "1000:1000:0"])
def test_the_owner_is_uid_gid(text: str) -> None:
    with pytest.raises(as_owner.Refused, match="is not UID:GID"):
        as_owner.parse_owner(text)


@pytest.mark.parametrize(
    ("args", "runs"),
    [
        (["localhost", "rsync", "--server", "-logDtpre.iLsfxC", "--delete", "."],
         ["rsync", "--server", "-logDtpre.iLsfxC", "--delete", "."]),
        (["--server", "-s", "."], ["rsync", "--server", "-s", "."]),  # as --rsync-path gives them
    ],
)  # fmt: skip
def test_it_runs_an_rsync_receiver(args: list[str], runs: list[str]) -> None:
    assert as_owner.receiver_argv(args) == runs


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["localhost", "sh", "-c", "id"], "only an rsync receiver"),
        (["otherhost", "rsync", "--server", "."], "only an rsync receiver"),
        (["localhost", "rsync", "--daemon"], "only an rsync receiver"),
        ([], "only an rsync receiver"),
        (["localhost", "rsync", "--server", "--sender", "."], "never a sender"),
    ],
)
def test_it_runs_nothing_else(args: list[str], words: str) -> None:
    with pytest.raises(as_owner.Refused, match=words):
        as_owner.receiver_argv(args)


def test_the_script_refuses_on_stderr_only() -> None:
    """stdout is rsync's protocol channel: a refusal goes to stderr, which the sending rsync shows."""
    done = subprocess.run(
        [sys.executable, "-S", str(HELPER), "1000:1000", "localhost", "cat", "/etc/shadow"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert "as_owner.py: refused: only an rsync receiver" in done.stderr


def test_the_commands_that_use_it() -> None:
    receiver = f"python3 {ap.HELPER_DIR}/as_owner.py 1000:1001"
    assert ap.owner_receiver("1000:1001") == receiver
    asset = {"name": "llm", "host_dest": "/data/ws/llm", "is_dir": True, "path": "/mnt/llm"}
    assert ap.local_copy_command(asset, "1000:1001") == [
        "rsync", "-a", "--delete", "--protect-args", "--rsh", receiver,
        "--", "/mnt/llm/", "localhost:/data/ws/llm/",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="is not UID:GID"):
        ap.owner_receiver("root")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder uid 1000 can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="llava-as-owner-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def _copy(source: Path, dest: Path, rsh: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rsync", "-a", "--delete", "--protect-args", *rsh, "--", f"{source}/", f"localhost:{dest}/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@as_root
def test_what_it_receives_is_the_owners(reachable: Path) -> None:
    source = reachable / "storage"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "shard.bin").write_bytes(b"x" * 100)
    source.chmod(0o700)  # root's storage: only the sending side (root) reads it
    dest = reachable / "ws" / "llm"
    dest.mkdir(parents=True)
    os.chown(dest, 1000, 1000)
    done = _copy(source, dest, ["--rsh", f"{sys.executable} {HELPER} 1000:1000"])
    assert done.returncode == 0, done.stderr
    made = [dest / "sub", dest / "sub" / "shard.bin"]
    assert [(p.stat().st_uid, p.stat().st_gid) for p in made] == [(1000, 1000)] * 2
    assert (dest / "sub" / "shard.bin").read_bytes() == b"x" * 100


@as_root
def test_a_destination_linked_to_a_root_folder_is_not_written(reachable: Path) -> None:
    source = reachable / "storage"
    source.mkdir()
    (source / "planted").write_text("an asset file")
    victim = reachable / "root-only"
    victim.mkdir(mode=0o700)
    (victim / "precious").write_text("keep me")
    ws = reachable / "ws"
    ws.mkdir()
    os.chown(ws, 1000, 1000)
    (ws / "llm").symlink_to(victim)  # what the container's user can do in its own tree
    os.lchown(ws / "llm", 1000, 1000)
    # root's own receiver follows the link (the reason for as_owner.py) ...
    shadow = reachable / "shadow-root-only"
    shutil.copytree(victim, shadow)
    (ws / "llm-root").symlink_to(shadow)
    as_root_receiver = _copy(source, ws / "llm-root", ["--rsh", f"{sys.executable} {HELPER} 0:0"])
    assert as_root_receiver.returncode == 0 and (shadow / "planted").exists()
    assert not (shadow / "precious").exists()  # --delete reached into it too
    # ... the owner's does not get in
    done = _copy(source, ws / "llm", ["--rsh", f"{sys.executable} {HELPER} 1000:1000"])
    assert done.returncode != 0
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]
    assert (victim / "precious").read_text() == "keep me"


FAKE_HUB = """
import json, os
def snapshot_download(repo_id, revision, repo_type, local_dir, **auth):
    os.makedirs(local_dir, exist_ok=True)
    with open(os.path.join(local_dir, "config.json"), "w") as out:
        json.dump({"uid": os.getuid(), "home": os.environ["HOME"], "hf_home": os.environ["HF_HOME"]}, out)
    return local_dir
"""


def _hub_download(reachable: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """assets_manifest.py hub-download as the role runs it (root, the server's python3), with a stand-in
    huggingface_hub that records who wrote the files."""
    fake = reachable / "fake-hub"
    fake.mkdir(exist_ok=True)
    (fake / "huggingface_hub.py").write_text(FAKE_HUB)
    helper = Path(ap.assets_manifest.__file__)
    return subprocess.run(
        ["/usr/bin/python3", "-S", str(helper), "hub-download", "--repo-id", "o/m", "--dest", str(dest),
         "--owner", "1000:1000"],
        capture_output=True, text=True, check=False,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(fake)},
    )  # fmt: skip


@as_root
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3, as a server has")
def test_the_hub_download_writes_as_the_owner(reachable: Path) -> None:
    ws = reachable / "ws"
    ws.mkdir()
    os.chown(ws, 1000, 1000)
    done = _hub_download(reachable, ws / "llm")
    assert done.returncode == 0, done.stdout + done.stderr
    written = ws / "llm" / "config.json"
    seen = json.loads(written.read_text())
    assert seen["uid"] == 1000 and written.stat().st_uid == 1000
    assert seen["home"].startswith("/tmp/llava-devserver-hub-") and seen["hf_home"].startswith(seen["home"])
    assert not Path(seen["home"]).exists()  # the private HOME is gone afterwards
    # an asset folder linked to a root-only folder: the download cannot write there
    victim = reachable / "root-only"
    victim.mkdir(mode=0o700)
    (ws / "vision_tower").symlink_to(victim)
    refused = _hub_download(reachable, ws / "vision_tower")
    assert refused.returncode == 1 and "Permission denied" in refused.stdout, refused.stdout + refused.stderr
    assert list(victim.iterdir()) == []
