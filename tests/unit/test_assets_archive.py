"""assets_archive.py (server side): images.zip and tar archives unpacked into the image folder once, checked
against the caption file and the free space first, never through a link; the fingerprint stays the
source's; the control-node command and messages (assets_unpack_plan)."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from llava_devserver import assets_archive, assets_manifest
from llava_devserver.assets_unpack_plan import unpack_command, unpack_problems, unpack_report

IMAGES = ["00000/000000012.jpg", "00000/000000013.jpg", "00453/004539375.jpg"]


def write_zip(path: Path, names: list[str], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(prefix + name, b"\xff\xd8jpeg " + name.encode())
    return path


def write_caption(path: Path, images: list[str]) -> Path:
    records = [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        }
        for i, image in enumerate(images)
    ]
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work" / "data" / "images"
    folder.mkdir(parents=True)
    write_caption(tmp_path / "work" / "data" / "captions.json", IMAGES)
    return tmp_path / "work"


def unpack(work: Path, **kwargs: object) -> dict:
    options = {"caption": str(work / "data" / "captions.json"), "margin": 0, **kwargs}
    return assets_archive.unpack(str(work), str(work / "data" / "images"), **options)  # type: ignore[arg-type]


def test_unpacked_once_with_a_marker(work: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    first = unpack(work)
    assert first["errors"] == [] and first["changed"] is True
    assert first["archives"][0]["state"] == "unpacked" and first["archives"][0]["members"] == 3
    assert (folder / "00453" / "004539375.jpg").read_bytes() == b"\xff\xd8jpeg 00453/004539375.jpg"
    marker = json.loads((folder / assets_archive.MARKER).read_text())
    assert marker["archives"]["images.zip"]["top"] == ["00000", "00453"]
    before = (folder / "00000" / "000000012.jpg").stat().st_mtime_ns
    second = unpack(work)
    assert second["changed"] is False and second["archives"][0]["state"] == "unchanged"
    assert (folder / "00000" / "000000012.jpg").stat().st_mtime_ns == before  # not written again
    # A new archive (another size) is unpacked again; a removed folder too.
    write_zip(folder / "images.zip", [*IMAGES, "00454/1.jpg"])
    assert unpack(work)["archives"][0]["state"] == "unpacked"
    assert (folder / "00454" / "1.jpg").is_file()
    shutil.rmtree(folder / "00454")
    assert unpack(work)["archives"][0]["state"] == "unpacked"


def test_fingerprint_stays_the_sources(work: Path, tmp_path: Path) -> None:
    """The control node's folder holds images.zip only; the server's, after unpacking, the same plus what
    the archive created: the same fingerprint, so the asset stays verified and is not copied again."""
    source = tmp_path / "source"
    source.mkdir()
    write_zip(source / "images.zip", IMAGES)
    (source / "README").write_text("hub card\n")
    folder = work / "data" / "images"
    shutil.copy2(source / "images.zip", folder / "images.zip")
    shutil.copy2(source / "README", folder / "README")
    os.utime(folder, None)
    assert unpack(work)["changed"] is True
    assert assets_manifest.fingerprint(str(folder)) == assets_manifest.fingerprint(str(source))
    (folder / "stray.jpg").write_bytes(b"x")  # anything else still counts
    assert assets_manifest.fingerprint(str(folder)) != assets_manifest.fingerprint(str(source))


def test_one_extra_top_directory_is_stripped(work: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES, prefix="images/")
    result = unpack(work)
    assert result["errors"] == [] and result["archives"][0]["strip"] == "images"
    assert (folder / "00000" / "000000012.jpg").is_file() and not (folder / "images").exists()


def test_archive_not_matching_the_caption_file_changes_nothing(work: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", ["other/1.jpg", "other/2.jpg"])
    result = unpack(work)
    assert result["changed"] is False
    assert (
        "none of the 3 sampled images of" in result["errors"][0]
        and "00000/000000012.jpg" in result["errors"][0]
    )
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]
    write_zip(folder / "images.zip", IMAGES[:2])
    partial = unpack(work)
    assert "1 of 3 sampled images" in partial["errors"][0] and "00453/004539375.jpg" in partial["errors"][0]
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]


def test_free_space_is_checked_first(work: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    result = unpack(work, margin=1 << 60)
    assert "not enough free space to unpack it" in result["errors"][0] and str(folder) in result["errors"][0]
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]


def test_a_link_planted_by_the_container_is_never_followed(work: Path, tmp_path: Path) -> None:
    folder = work / "data" / "images"
    outside = tmp_path / "etc"
    outside.mkdir()
    (folder / "00000").symlink_to(outside)
    write_zip(folder / "images.zip", IMAGES)
    result = unpack(work)
    assert result["errors"] and "link" in result["errors"][0]
    assert list(outside.iterdir()) == []
    # The image folder itself a link: refused too.
    (folder / "00000").unlink()
    shutil.move(str(folder), str(tmp_path / "real"))
    folder.symlink_to(tmp_path / "real")
    assert "link" in unpack(work)["errors"][0]
    assert not (tmp_path / "real" / "00000").exists()


def test_a_file_planted_as_a_link_is_not_written_through(work: Path, tmp_path: Path) -> None:
    folder = work / "data" / "images"
    (folder / "00000").mkdir()
    target = tmp_path / "shadow"
    target.write_text("root's file\n")
    (folder / "00000" / "000000012.jpg").symlink_to(target)
    write_zip(folder / "images.zip", IMAGES)
    assert "link" in unpack(work)["errors"][0]
    assert target.read_text() == "root's file\n"


def test_unsafe_members_are_refused(work: Path, tmp_path: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", ["../../escape.jpg", *IMAGES])
    assert "leaves the folder" in unpack(work)["errors"][0]
    assert not (work / "escape.jpg").exists()
    (folder / "images.zip").unlink()
    with tarfile.open(folder / "images.tar", "w") as archive:
        link = tarfile.TarInfo("00000/000000012.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        archive.addfile(link)
    assert "is a link or a device" in unpack(work)["errors"][0]


def test_tar_gz(work: Path) -> None:
    folder = work / "data" / "images"
    with tarfile.open(folder / "images.tar.gz", "w:gz") as archive:
        for name in IMAGES:
            data = b"img " + name.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    result = unpack(work)
    assert result["errors"] == [] and result["archives"][0]["members"] == 3
    assert (folder / "00453" / "004539375.jpg").stat().st_mtime == 1_700_000_000


def test_without_a_caption_file_and_nothing_to_do(work: Path) -> None:
    folder = work / "data" / "images"
    assert unpack(work) == {"folder": str(folder), "changed": False, "archives": [], "errors": []}
    write_zip(folder / "images.zip", ["a/1.jpg"])
    assert unpack(work, caption=str(work / "none.json"))["archives"][0]["state"] == "unpacked"


def test_command_line_as_the_role_runs_it(work: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", ["other/1.jpg"])
    script = Path(assets_archive.__file__)
    argv = [sys.executable, str(script), "unpack", "--root", str(work), "--folder", str(folder)]
    done = subprocess.run(
        [*argv, "--caption", str(work / "data" / "captions.json")], capture_output=True, text=True
    )
    assert done.returncode == 1 and json.loads(done.stdout)["errors"]
    problems = unpack_problems({"stdout": done.stdout, "rc": 1}, "ds-1")
    assert problems[0].startswith("ds-1: assets.images: ") and "none of the 3 sampled images" in problems[0]
    ok = subprocess.run(argv, capture_output=True, text=True)
    assert ok.returncode == 0 and unpack_report({"stdout": ok.stdout})[0]["state"] == "unpacked"
    assert unpack_problems({"skipped": True}, "ds-1") == []
    assert "helper failed: Traceback" in unpack_problems({"stdout": "", "stderr": "Traceback"}, "ds-1")[0]


def test_unpack_command() -> None:
    plan = {
        "helper_dir": "/w/.llava-devserver/bin",
        "assets": [{"name": "images", "host_dest": "/w/d/images"}],
    }
    llava = {
        "work_dir": "/w",
        "container_work_dir": "/home/ma-user/ws",
        "assets": {"pretrain_json": {"dest": "/home/ma-user/ws/d/blip.json"}},
    }
    assert unpack_command(plan, llava, 64, 256) == [
        "python3", "/w/.llava-devserver/bin/assets_archive.py", "unpack", "--root", "/w", "--folder",
        "/w/d/images", "--sample", "256", "--margin", "64", "--caption", "/w/d/blip.json",
    ]  # fmt: skip
    assert unpack_command({"helper_dir": "/x", "assets": []}, llava, 64, 256) == []


def test_server_side_python_37() -> None:
    source = Path(assets_archive.__file__).read_text()
    ast.parse(source, feature_version=(3, 7))  # no walrus, no positional-only parameters, ...
    assert "removeprefix" not in source and "from __future__ import annotations" in source
