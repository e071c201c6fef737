"""package_unpack: the zips' member names judged, only top-level directories synced, never work_dir itself.

The sync tests run the real helper (its `main`, as the role runs it) and the real rsync on a temporary
work_dir that holds a job's state and checkpoints, and check that nothing of it is deleted.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import package_unpack
from llava_devserver.config import STATE_DIR_NAME
from llava_devserver.package_unpack import UnpackError, normalize_member, plan, protected_paths, sync_argv

COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
TREE = f"multimodal_algorithm/LLAVA/llava-train/{COMMIT}"
KEEP = ["/LLAVA/llava-train/*/LLaVA/"]
INNER = "AscendCloud-AIGC-6.3.906-20240618000000.zip"
STATE = STATE_DIR_NAME
OWNER = f"{os.getuid()}:{os.getgid()}"  # the receiver runs as whoever runs the tests (no drop)
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip with exactly these member names (ZipInfo keeps `./` and `..`, which ZipFile.write would not)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def workspace(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """A work_dir in the middle of a job: state folder, the LLaVA tree with checkpoints, the package tree."""
    work = tmp_path / "work"
    files = {
        work / STATE / "job.json": b'{"state": "running"}',
        work / f"{TREE}/LLaVA/checkpoints/llava/checkpoint-10/model.bin": b"weights",
        work / f"{TREE}/LLaVA/llava/train/train_mem.py": b"built by build.sh",
        work / "sim-assets/images/0.jpg": b"jpeg",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return work, files


def staging_of(tmp_path: Path) -> Path:
    """Where the role unzips the inner zip: root's folder (llava.host_state_dir/unpack), not work_dir."""
    return tmp_path / "host-state" / "unpack" / "AscendCloud-6.3.906-1" / ".inner"


def assert_untouched(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.is_file() and path.read_bytes() == data, f"{path} was changed or deleted"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = package_unpack.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


# --- member names


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("multimodal_algorithm/", "multimodal_algorithm"),
        ("./multimodal_algorithm/x.py", "multimodal_algorithm/x.py"),
        ("a//b/./c", "a/b/c"),
        ("././a/", "a"),
    ],
)
def test_member_names_are_normalized(name: str, normalized: str) -> None:
    assert normalize_member("p.zip", name) == normalized


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("./", "the zip's root itself"),
        (".", "the zip's root itself"),
        ("./././", "the zip's root itself"),
        ("//", "absolute"),
        ("/etc/passwd", "absolute"),
        ("../outside", "'..'"),
        ("a/../../outside", "'..'"),
        ("a/\nb", "control character"),
        ("a\0b", "NUL"),
        ("a\\b", "backslash"),
    ],
)
def test_unsafe_member_names_are_refused_naming_the_zip(name: str, reason: str) -> None:
    with pytest.raises(UnpackError) as info:
        normalize_member("AIGC.zip (inside AscendCloud.zip)", name)
    message = str(info.value)
    assert message.startswith("AIGC.zip (inside AscendCloud.zip): the member ")
    assert reason in message


def test_only_top_level_directories_are_synced() -> None:
    names = ["./multimodal_algorithm/", "./multimodal_algorithm/README.md", "tools/x.sh", "version.info"]
    result = plan(INNER, names)
    assert result == {
        "directories": ["multimodal_algorithm", "tools"],
        "files": ["version.info"],
        "inner": None,
    }


def test_the_inner_zip_is_found_by_a_full_match() -> None:
    names = [f"./{INNER}", f"{INNER}\u00a0.bak", "nested/" + INNER, "version.info"]
    assert plan("outer.zip", names, r"AscendCloud-AIGC-[0-9.]+-[0-9]+\.zip")["inner"] == INNER
    assert plan("outer.zip", ["version.info"], r"AscendCloud-AIGC-.*\.zip")["inner"] is None


@pytest.mark.parametrize(
    ("top", "what"),
    [(STATE, "llava-devserver's state folder"), ("AscendCloud-6.3.906-1", "the package itself")],
)
def test_reserved_top_level_directories_are_refused(top: str, what: str) -> None:
    with pytest.raises(UnpackError) as info:
        plan(INNER, [f"{top}/job.json"], reserved=["AscendCloud-6.3.906-1"], state_dir_name=STATE)
    assert str(info.value).startswith(
        f"{INNER}: its top-level directory '{top}' would replace work_dir/{top}"
    )
    assert what in str(info.value)


def test_a_sync_that_would_delete_a_protected_path_is_refused() -> None:
    protected = {
        "output_dir": f"{TREE}/LLaVA/checkpoints/llava",
        "assets.images": "multimodal_algorithm/images",
    }
    with pytest.raises(UnpackError) as info:
        plan(INNER, [f"{TREE}/build.sh"], protected=protected, keep=KEEP)
    assert "would delete assets.images (work_dir/multimodal_algorithm/images)" in str(info.value)
    # inside the kept LLaVA tree, output_dir is safe
    assert plan(INNER, [f"{TREE}/build.sh"], protected={"output_dir": protected["output_dir"]}, keep=KEEP)


def test_protected_paths_from_the_llava_dict() -> None:
    llava = {
        "container_work_dir": "/home/ma-user/ws",
        "output_dir": f"/home/ma-user/ws/{TREE}/LLaVA/checkpoints/x",
        "assets": {
            "images": {"source": "control", "dest": "/home/ma-user/ws/sim-assets/images"},
            "llm": {"source": "none", "dest": "lmsys/vicuna-13b-v1.5"},
            "vision_tower": {"source": "hub", "dest": "/elsewhere/clip"},
        },
    }
    assert protected_paths(llava) == {
        "output_dir": f"{TREE}/LLaVA/checkpoints/x",
        "assets.images": "sim-assets/images",
    }


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", STATE, "x\n"])
def test_sync_never_aims_at_work_dir_itself(name: str) -> None:
    with pytest.raises(UnpackError, match="not one plain directory name"):
        sync_argv("/s/pkg/.inner", "/w", name, "1000:1000", KEEP, state_dir_name=STATE)


def test_sync_argv() -> None:
    helper = os.path.abspath(package_unpack.__file__)
    assert sync_argv("/s/pkg/.inner", "/w", "multimodal_algorithm", "1000:1001", KEEP) == [
        "rsync", "-a", "--no-owner", "--no-group", "--delete", "--protect-args",
        "--exclude=/LLAVA/llava-train/*/LLaVA/",
        "--rsh", f"{sys.executable} {helper} receive-as 1000:1001",
        "--", "/s/pkg/.inner/multimodal_algorithm/", "localhost:/w/multimodal_algorithm/",
    ]  # fmt: skip


@pytest.mark.parametrize("owner", ["", "1000", "ma-user:ma-group", "1000:-1", "1000:1000:0"])
def test_the_owner_must_be_uid_gid(owner: str) -> None:
    with pytest.raises(UnpackError, match="is not UID:GID"):
        sync_argv("/s/pkg/.inner", "/w", "multimodal_algorithm", owner)


@pytest.mark.parametrize(
    "command",
    [
        ["localhost", "sh", "-c", "id"],
        ["elsewhere", "rsync", "--server", "."],
        ["localhost", "rsync", "--daemon"],
        [],
    ],
)
def test_receive_as_runs_nothing_but_an_rsync_receiver(command: list[str]) -> None:
    ran: list[Any] = []
    with pytest.raises(UnpackError, match="runs only an rsync receiver"):
        package_unpack.receive_as(OWNER, command, execv=lambda *a: ran.append(a))
    assert ran == []


def test_receive_as_runs_the_receiver() -> None:
    ran: list[Any] = []
    argv = ["localhost", "rsync", "--server", "-s", "."]
    package_unpack.receive_as(OWNER, argv, execv=lambda *a: ran.append(a))
    assert ran == [(shutil.which("rsync"), ["rsync", "--server", "-s", "."])]


# --- the real helper on a temporary work_dir


def test_an_inner_zip_with_a_dot_slash_root_member_is_refused_and_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: `./` members made the role run `rsync -a --delete .inner/./ work/./`."""
    work, files = workspace(tmp_path)
    inner = make_zip(
        tmp_path / INNER,
        {"./": b"", "./multimodal_algorithm/": b"", f"./{TREE}/build.sh": b"echo build"},
    )
    label = f"{INNER} (inside AscendCloud-6.3.906-1.zip)"
    code, out = run_main(
        capsys, "plan", "--zip", str(inner), "--label", label, *(f"--keep={k}" for k in KEEP)
    )
    assert code == 1
    assert out["error"].startswith(f"{label}: the member './' is the zip's root itself")
    # and the sync step itself refuses the root, whatever it is given
    staging = staging_of(tmp_path)
    staging.mkdir(parents=True)
    code, out = run_main(
        capsys, "sync", "--staging", str(staging), "--work-dir", str(work), "--owner", OWNER, "--", "."
    )
    assert code == 1 and "not one plain directory name" in out["error"]
    assert_untouched(files)


@needs_rsync
def test_dot_slash_members_are_synced_into_their_own_directory_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, files = workspace(tmp_path)
    stale = work / "multimodal_algorithm/dropped-by-the-new-package.txt"
    stale.write_bytes(b"old")
    inner = make_zip(
        tmp_path / INNER,
        {
            "./multimodal_algorithm/": b"",
            f"./{TREE}/build.sh": b"echo build",
            "./multimodal_algorithm//README.md": b"readme",
            "./version.info": b"AIGC",
        },
    )
    protect = json.dumps({"output_dir": f"{TREE}/LLaVA/checkpoints/llava"})
    code, out = run_main(
        capsys,
        "plan",
        "--zip",
        str(inner),
        "--label",
        INNER,
        "--protect",
        protect,
        *(f"--keep={k}" for k in KEEP),
    )
    assert code == 0, out
    assert out == {"directories": ["multimodal_algorithm"], "files": ["version.info"], "inner": None}
    staging = staging_of(tmp_path)
    with zipfile.ZipFile(inner) as archive:  # what unzip does with these names
        archive.extractall(staging)
    code, out = run_main(
        capsys, "sync", "--staging", str(staging), "--work-dir", str(work), "--owner", OWNER,
        *(f"--keep={k}" for k in KEEP), "--", *out["directories"],
    )  # fmt: skip
    assert (code, out) == (0, {"synced": ["multimodal_algorithm"]})
    assert (work / f"{TREE}/build.sh").read_bytes() == b"echo build"
    assert not stale.exists()  # the package's tree is exactly the new package's
    assert not (work / "version.info").exists()  # top-level files are not synced
    assert_untouched(files)  # state, checkpoints, the built tree and the assets stay


@needs_rsync
def test_a_symlinked_destination_is_refused_before_anything_is_synced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container-made symlink work_dir/<dir> -> elsewhere would aim rsync --delete at elsewhere."""
    work, files = workspace(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"keep me")
    (work / "tools").symlink_to(victim)
    staging = staging_of(tmp_path)
    for top in ("multimodal_algorithm", "tools"):
        (staging / top).mkdir(parents=True)
    code, out = run_main(
        capsys,
        "sync",
        "--staging",
        str(staging),
        "--work-dir",
        str(work),
        "--owner",
        OWNER,
        "--",
        "multimodal_algorithm",
        "tools",
    )
    assert code == 1 and "it is a symlink" in out["error"]
    assert (victim / "precious").read_bytes() == b"keep me"
    assert_untouched(files)  # the check comes first: multimodal_algorithm was not synced either


def test_a_staging_folder_in_work_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Where the container can write, it can swap the unzipped tree for links: root reads only its own."""
    work, files = workspace(tmp_path)
    (work / "pkg/multimodal_algorithm").mkdir(parents=True)
    code, out = run_main(
        capsys, "sync", "--staging", str(work / "pkg"), "--work-dir", str(work), "--owner", OWNER,
        "--", "multimodal_algorithm",
    )  # fmt: skip
    assert code == 1 and "it is in work_dir, where the container writes" in out["error"]
    assert_untouched(files)


def test_a_staging_folder_reached_through_a_link_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, files = workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "multimodal_algorithm").mkdir(parents=True)
    (tmp_path / "pkg").symlink_to(elsewhere)
    code, out = run_main(
        capsys, "sync", "--staging", str(tmp_path / "pkg"), "--work-dir", str(work), "--owner", OWNER,
        "--", "multimodal_algorithm",
    )  # fmt: skip
    assert code == 1 and f"a link on its way leads to {elsewhere}" in out["error"]
    assert_untouched(files)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to another user needs root (CI runs as root)")
@needs_rsync
def test_the_sync_writes_as_the_workspace_owner(capsys: pytest.CaptureFixture[str]) -> None:
    """As root, the writing side of rsync runs as the owner: what it makes is the owner's, and it cannot
    write where the owner could not (a root-only folder the container linked into the tree)."""
    base = Path(tempfile.mkdtemp(prefix="llava-unpack-", dir="/tmp"))  # pytest's tmp is 0700: closed to 1000
    try:
        base.chmod(0o755)
        work = base / "work"
        work.mkdir()
        os.chown(work, 1000, 1000)
        victim = base / "victim"
        victim.mkdir(mode=0o700)
        staging = base / "host-state" / ".inner"
        (staging / "multimodal_algorithm/into-victim").mkdir(parents=True)
        (staging / "multimodal_algorithm/into-victim/planted.txt").write_bytes(b"package file")
        (staging / "multimodal_algorithm/README.md").write_bytes(b"readme")
        code, out = run_main(
            capsys, "sync", "--staging", str(staging), "--work-dir", str(work), "--owner", "1000:1000",
            "--", "multimodal_algorithm",
        )  # fmt: skip
        assert (code, out) == (0, {"synced": ["multimodal_algorithm"]})
        made = [work / "multimodal_algorithm", work / "multimodal_algorithm/README.md"]
        assert [(p.stat().st_uid, p.stat().st_gid) for p in made] == [(1000, 1000)] * 2
        # the container links a folder of its tree to the root-only victim; the next sync cannot write there
        shutil.rmtree(work / "multimodal_algorithm/into-victim")
        (work / "multimodal_algorithm/into-victim").symlink_to(victim)
        os.lchown(work / "multimodal_algorithm/into-victim", 1000, 1000)
        code, out = run_main(
            capsys, "sync", "--staging", str(staging), "--work-dir", str(work), "--owner", "1000:1000",
            "--", "multimodal_algorithm",
        )  # fmt: skip
        assert (code, out) == (0, {"synced": ["multimodal_algorithm"]})
        assert list(victim.iterdir()) == []
        assert not (work / "multimodal_algorithm/into-victim").is_symlink()  # the link became the package's
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.getuid() != 0, reason="a folder the owner cannot pass needs another user (CI: root)")
def test_a_work_dir_the_owner_cannot_reach_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, files = workspace(tmp_path)
    staging = staging_of(tmp_path)
    (staging / "multimodal_algorithm").mkdir(parents=True)
    code, out = run_main(
        capsys, "sync", "--staging", str(staging), "--work-dir", str(work), "--owner", "1000:1000",
        "--", "multimodal_algorithm",
    )  # fmt: skip
    assert code == 1
    assert f"the workspace owner 1000:1000 cannot reach {work}: " in out["error"]
    assert "or choose another work_dir" in out["error"]
    assert_untouched(files)


def test_an_unreadable_zip_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    code, out = run_main(capsys, "plan", "--zip", str(broken), "--label", "broken.zip")
    assert code == 1 and out["error"].startswith("broken.zip: cannot read the zip")


def test_helper_error_says_why_in_one_line() -> None:
    assert (
        package_unpack.helper_error({"rc": 1, "stdout": '{"error": "x.zip: bad\\nname"}'})
        == "x.zip: bad name"
    )
    assert package_unpack.helper_error({"rc": 127, "stdout": "", "stderr": "python3: not found\n"}) == (
        "python3: not found"
    )


def test_the_helper_is_python_3_7() -> None:
    """It runs on the servers with whatever python3 they have (3.7 or newer)."""
    source = Path(package_unpack.__file__).read_text()
    ast.parse(source, feature_version=(3, 7))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {"__future__", "argparse", "fnmatch", "json", "os", "re", "shutil", "stat",
                        "subprocess", "sys", "unicodedata", "zipfile", "collections", "typing"}  # fmt: skip
    for banned in ("removeprefix", "removesuffix", "strict=", ":=", "datetime import UTC"):
        assert banned not in source


def test_the_role_runs_the_helper_as_a_script(tmp_path: Path) -> None:
    """The file works standalone, as ansible.builtin.script runs it (no package on the server)."""
    copy = tmp_path / "package_unpack.py"
    copy.write_bytes(Path(package_unpack.__file__).read_bytes())
    zipped = make_zip(tmp_path / "p.zip", {"./a/": b"", "./a/b": b"1"})
    result = subprocess.run(
        ["python3", str(copy), "plan", "--zip", str(zipped), "--label", "p.zip"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["directories"] == ["a"]


def test_zip_helper_builds_the_names_given() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("./"), b"")
    assert zipfile.ZipFile(buffer).namelist() == ["./"]
