"""The fan-out key: its authorized_keys options, the pattern that removes every key the tool added, and the
forced command (fanout_receive.py) that lets the key do nothing but rsync into the asset folders, checked
with a real rsync whose `ssh` is replaced by a stand-in that plays sshd's part (SSH_ORIGINAL_COMMAND)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llava_devserver import assets_plan as ap
from llava_devserver import fanout_receive as fr

RECEIVER = Path(fr.__file__)
OWNER = f"{os.getuid()}:{os.getgid()}"  # the receiver "drops" to whoever runs the tests: nothing to drop


# --- authorized_keys options ------------------------------------------------------------------------------


def test_key_options_force_the_receiver_with_the_destinations_from_the_seed_only() -> None:
    options = ap.fanout_key_options(
        ["10.0.0.1"],
        ["/data/w/llava/models/llm", "/data/w/llava/data.json"],
        "20261201153000",
        "OpenSSH_9.2p1",
        "1000:1001",
    )
    assert options == (
        'command="/usr/bin/python3 /usr/local/lib/llava-devserver/fanout_receive.py --owner 1000:1001 '
        '/data/w/llava/models/llm /data/w/llava/data.json",from="10.0.0.1",restrict,'
        'expiry-time="20261201153000"'
    )


@pytest.mark.parametrize("owner", ["", "ma-user", "1000", "1000:x", "0:0 /etc"])
def test_key_options_need_a_numeric_owner(owner: str) -> None:
    with pytest.raises(ValueError, match="is not UID:GID"):
        ap.fanout_key_options(["10.0.0.1"], ["/d"], None, None, owner)


def test_expiry_only_where_sshd_knows_it() -> None:
    old = ap.fanout_key_options(
        ["10.0.0.1", "10.0.0.2"], ["/d"], "20261201153000", "OpenSSH_7.4p1, OpenSSL", OWNER
    )
    assert "expiry-time" not in old and 'from="10.0.0.1,10.0.0.2"' in old
    assert "expiry-time" not in ap.fanout_key_options(["a"], ["/d"], "20261201153000", "unreadable", OWNER)
    assert 'expiry-time="202612011530"' in ap.fanout_key_options(
        ["a"], ["/d"], "202612011530", "OpenSSH_8.2p1", OWNER
    )
    with pytest.raises(ValueError, match="expiry 'tomorrow'"):
        ap.fanout_key_options(["a"], ["/d"], "tomorrow", "OpenSSH_9.6p1", OWNER)


@pytest.mark.parametrize(
    ("seeds", "dests", "bad"),
    [
        (["10.0.0.1"], ['/d"x'], '/d"x'),
        (["10.0.0.1"], ["/d x"], "/d x"),
        (["10.0.0.1,1.2.3.4"], ["/d"], "10.0.0.1,1.2.3.4"),
        (["10.0.0.1"], [""], ""),
    ],
)
def test_key_options_refuse_values_that_would_break_the_line(
    seeds: list[str], dests: list[str], bad: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        ap.fanout_key_options(seeds, dests, None, None, OWNER)


def test_the_removal_pattern_finds_every_key_the_tool_added_and_nothing_else() -> None:
    pattern = re.compile(ap.fanout_key_line_pattern())
    ours = [
        'from="10.0.0.1",restrict ssh-ed25519 AAAAC3Nz llava-devserver-fanout',  # the comment of older runs
        'command="x",restrict ssh-ed25519 AAAAC3Nz ' + ap.fanout_key_comment("20261201T101500Z"),
        "ssh-ed25519 AAAAC3Nz llava-devserver-fanout-20261201T101500Z  ",
    ]
    others = [
        "ssh-ed25519 AAAAC3Nz root@laptop",
        "ssh-ed25519 AAAAC3Nz llava-devserver-fanoutX",
        "ssh-ed25519 AAAAC3Nz my-llava-devserver-fanout",
        "ssh-rsa AAAAB3Nz llava-devserver-fanout-backup admin note",
    ]
    assert all(pattern.search(line) for line in ours)
    assert not any(pattern.search(line) for line in others)


# --- the forced command ------------------------------------------------------------------------------------


def test_receiver_lets_through_what_rsync_a_delete_sends(tmp_path: Path) -> None:
    dest = str(tmp_path / "llm")
    for command in (
        f"rsync --server -logDtpre.iLsfxCIvu --delete --stats . {dest}/",
        f"rsync --server -logDtpre.iLsfxC --delete . {dest}",
    ):
        assert fr.decide(command, [dest]) == shlex.split(command)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("", "no shell"),
        ("bash -i", "only `rsync --server`"),
        ("cat /etc/shadow", "only `rsync --server`"),
        ("rsync --server --sender -logDtpre.iLsfxCIvu . {dest}/", "never send"),
        ("rsync --server -logDtpre.iLsfxCIvu . /etc/", "not one of the asset folders"),
        ("rsync --server -logDtpre.iLsfxCIvu . {dest}/../..", "not one of the asset folders"),
        (
            "rsync --server -logDtpre.iLsfxCIvu --backup-dir=/tmp/x . {dest}/",
            "'--backup-dir=/tmp/x' is not allowed",
        ),
        ("rsync --server -T /tmp -logDtpre.iLsfxCIvu . {dest}/", "'-T' is not allowed"),
        ("rsync --server -logDtpre.iLsfxCIvu . {dest}/ /root/", "exactly one destination"),
        ("rsync --server -logDtpre.iLsfxCIvu {dest}/", "no `.`"),
        ("rsync --server -logDtpre.iLsfxCIvu . 'unterminated", "unreadable command"),
    ],
)
def test_receiver_refuses_anything_else(tmp_path: Path, command: str, words: str) -> None:
    dest = str(tmp_path / "llm")
    with pytest.raises(fr.Refused, match=re.escape(words)):
        fr.decide(command.format(dest=dest), [dest])


def test_receiver_refuses_a_destination_behind_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "models").symlink_to(tmp_path / "victim")
    dest = str(tmp_path / "models" / "llm")
    with pytest.raises(fr.Refused, match="passes through a symbolic link"):
        fr.decide(f"rsync --server -logDtpre.iLsfxCIvu --delete . {dest}/", [dest])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["/d"], "names no --owner"),
        (["--owner", "1000:1000"], "names no --owner"),
        (["--owner", "ma-user", "/d"], "is not UID:GID"),
    ],
)
def test_receiver_needs_the_owner_it_writes_as(
    args: list[str], words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "rsync --server -logDtpre.iLsfxCIvu . /d/")
    assert fr.main(args) == 1
    assert words in capsys.readouterr().err


def test_receiver_script_is_standalone_python_without_the_package() -> None:
    result = subprocess.run(
        # -S: no site-packages, no llava_devserver: as_owner.py comes from beside the script, as on a server
        [sys.executable, "-S", str(RECEIVER), "--owner", OWNER, "/d"],
        capture_output=True, text=True, check=False,
        env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": "id"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "llava-devserver fan-out key: refused: only `rsync --server`" in result.stderr


def _fake_ssh(tmp_path: Path, allowed: list[str], owner: str = "") -> str:
    """An `ssh` for rsync -e: drops the host arguments and runs the receiver as sshd would (the client's
    command in SSH_ORIGINAL_COMMAND, the forced command's arguments fixed)."""
    owner = owner or OWNER
    script = tmp_path / "fake-ssh"
    script.write_text(
        "#!/bin/sh\n"
        'while [ "$1" = -l ]; do shift 2; done\n'
        "shift  # the host\n"
        'SSH_ORIGINAL_COMMAND="$*" exec '
        + " ".join(shlex.quote(part) for part in [sys.executable, str(RECEIVER), "--owner", owner, *allowed])
        + "\n"
    )
    script.chmod(0o755)
    return str(script)


def test_a_real_rsync_through_the_receiver(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "shard.bin").write_bytes(b"x" * 1000)
    dest = tmp_path / "dest" / "llm"
    dest.mkdir(parents=True)
    (dest / "stale").write_text("removed by --delete")
    ssh = _fake_ssh(tmp_path, [str(dest)])
    ok = subprocess.run(
        ["rsync", "-a", "--delete", "--stats", "-e", ssh, f"{source}/", f"root@seed:{dest}/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in dest.rglob("*")) == ["config.json", "shard.bin", "sub"]
    # the same key cannot write anywhere else, nor read anything back
    other = tmp_path / "elsewhere"
    other.mkdir()
    refused = subprocess.run(
        ["rsync", "-a", "-e", ssh, f"{source}/", f"root@seed:{other}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and "not one of the asset folders" in refused.stderr
    assert list(other.iterdir()) == []
    pulled = tmp_path / "pulled"
    read = subprocess.run(
        ["rsync", "-a", "-e", ssh, f"root@seed:{dest}/", f"{pulled}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode != 0 and "never send" in read.stderr
    assert not pulled.exists() or list(pulled.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="writing as another user needs root (CI runs as root)")
def test_the_receiver_writes_as_the_owner_not_as_root(tmp_path: Path) -> None:
    """sshd runs the forced command as root; the files it receives belong to the owner, and an asset folder
    the container swapped for a link to a root-only folder (after the realpath check) is not written."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="llava-fanout-", dir="/tmp"))  # pytest's tmp is 0700: closed to 1000
    try:
        base.chmod(0o755)
        source = base / "src"
        source.mkdir()
        (source / "config.json").write_text("{}")
        dest = base / "dest" / "llm"
        dest.mkdir(parents=True)
        os.chown(dest, 1000, 1000)
        ssh = _fake_ssh(base, [str(dest)], owner="1000:1000")
        ok = subprocess.run(
            ["rsync", "-a", "--delete", "-e", ssh, f"{source}/", f"root@seed:{dest}/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert (dest / "config.json").stat().st_uid == 1000
    finally:
        import shutil

        shutil.rmtree(base)
