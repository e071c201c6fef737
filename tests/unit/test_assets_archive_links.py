"""assets_archive.py runs as root in a folder the training container's user owns: every path below work_dir
is theirs and may become a symbolic link at any moment. For the marker, an archive, the caption file and a
folder on the way to them, replaced by a link to a "victim" outside work_dir (statically, or swapped in
right after root looked): the victim is never read (nothing of it reaches the output or the image folder),
never changed, and the result says the thing was refused (the marker: treated as missing, see below)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import assets_archive
from victims import snapshot

IMAGES = ["00000/000000012.jpg", "00000/000000013.jpg", "00453/004539375.jpg"]
SECRET = "VICTIM-SECRET"


def write_zip(path: Path, names: list[str], content: bytes = b"jpeg ") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, content + name.encode())
    return path


def write_caption(path: Path, images: list[str]) -> Path:
    path.write_text(json.dumps([{"id": str(i), "image": image} for i, image in enumerate(images)]))
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work" / "data" / "images").mkdir(parents=True)
    write_caption(tmp_path / "work" / "data" / "captions.json", IMAGES)
    return tmp_path / "work"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Root's folder outside work_dir: a zip of the same images (other content), a caption file naming a
    secret image, a marker claiming everything is unpacked already."""
    folder = tmp_path / "victim"
    folder.mkdir()
    write_zip(folder / "images.zip", [*IMAGES, f"{SECRET}/1.jpg"], content=SECRET.encode())
    write_caption(folder / "captions.json", [f"{SECRET}/1.jpg"])
    return folder


def victim_marker(victim: Path, archive: Path) -> Path:
    """A marker in the victim folder that, if read, says ARCHIVE was unpacked (with a secret strip)."""
    info = archive.stat()
    entry = {"size": info.st_size, "mtime": int(info.st_mtime), "top": [], "members": 4242, "strip": SECRET}
    marker = {"version": assets_archive.MARKER_VERSION, "archives": {archive.name: entry}}
    path = victim / assets_archive.MARKER
    path.write_text(json.dumps(marker))
    return path


def unpack(work: Path, caption: Path | None = None) -> dict[str, Any]:
    return assets_archive.unpack(
        str(work), str(work / "data" / "images"), str(caption or work / "data" / "captions.json"), margin=0
    )


def assert_untouched(result: dict[str, Any], victim: Path, before: dict[str, tuple[Any, ...]]) -> None:
    assert SECRET not in json.dumps(result), result
    assert snapshot(victim) == before


def test_a_marker_that_is_a_link_counts_as_missing(work: Path, victim: Path) -> None:
    """Missing, not refused: root never reads through the link, and a missing marker only means the
    archive is unpacked again (idempotent, below the folder's descriptor); the link is then replaced by
    root's own marker, the victim stays as it was."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    (folder / assets_archive.MARKER).symlink_to(victim_marker(victim, folder / "images.zip"))
    before = snapshot(victim)
    result = unpack(work)
    assert result["errors"] == [] and result["archives"][0]["state"] == "unpacked", result
    assert result["archives"][0]["members"] == 3
    assert not (folder / assets_archive.MARKER).is_symlink()
    assert json.loads((folder / assets_archive.MARKER).read_text())["archives"]["images.zip"]["strip"] == ""
    assert_untouched(result, victim, before)


def test_the_marker_is_read_in_the_folder_that_was_opened(
    work: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container swaps the image folder for a link to the victim right after root opened it: the
    marker is still the opened folder's (none), not the one the path now leads to."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    shutil.copy2(folder / "images.zip", victim / "images.zip")  # same size and mtime as the real one
    victim_marker(victim, victim / "images.zip")
    before = snapshot(victim)
    real_open_below = assets_archive.open_below
    swapped: list[str] = []

    def open_then_swap(root: str, relative: str, create: bool = False) -> int:
        fd = real_open_below(root, relative, create)
        if not swapped:
            folder.rename(work / "data" / "images.real")
            folder.symlink_to(victim)
            swapped.append(relative)
        return fd

    monkeypatch.setattr(assets_archive, "open_below", open_then_swap)
    result = unpack(work)
    assert swapped == ["data/images"]
    assert result["errors"] == [] and result["archives"][0]["state"] == "unpacked", result
    assert (work / "data" / "images.real" / "00453" / "004539375.jpg").read_bytes().startswith(b"jpeg ")
    assert_untouched(result, victim, before)


def test_an_archive_that_is_a_link_is_refused(work: Path, victim: Path) -> None:
    folder = work / "data" / "images"
    (folder / "images.zip").symlink_to(victim / "images.zip")
    before = snapshot(victim)
    result = unpack(work)
    assert [a["state"] for a in result["archives"]] == ["failed"]
    assert result["errors"] == [f"{folder}/images.zip: the archive is a symbolic link: refused, not followed"]
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]  # nothing unpacked from the victim
    assert_untouched(result, victim, before)


def test_an_archive_swapped_for_a_link_after_the_listing_is_refused(
    work: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root lists the folder (lstat: a regular images.zip), then the container puts a link there: the
    archive is opened once, without following it, so the link is refused rather than read."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    before = snapshot(victim)
    real_stat = os.stat
    swapped: list[str] = []

    def stat_then_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        info = real_stat(path, *args, **kwargs)
        if path == "images.zip" and kwargs.get("dir_fd") is not None and not swapped:
            swapped.append(path)
            (folder / "images.zip").unlink()
            (folder / "images.zip").symlink_to(victim / "images.zip")
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    result = unpack(work)
    monkeypatch.undo()
    assert swapped == ["images.zip"]
    assert [a["state"] for a in result["archives"]] == ["failed"], result
    assert "symbolic link: refused" in result["errors"][0] and "images.zip" in result["errors"][0]
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]
    assert_untouched(result, victim, before)


def test_a_caption_file_that_is_a_link_is_refused(work: Path, victim: Path) -> None:
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    caption = work / "data" / "captions.json"
    caption.unlink()
    caption.symlink_to(victim / "captions.json")
    before = snapshot(victim)
    result = unpack(work)
    assert result["errors"] == [
        f"{folder}/images.zip: the caption file {caption} cannot be read safely: {caption} is a symbolic "
        "link: refused, not followed"
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["images.zip"]  # not unpacked unchecked
    assert_untouched(result, victim, before)


@pytest.mark.parametrize("link", ["the caption file's folder", "the image folder's parent"])
def test_a_folder_on_the_way_that_is_a_link_is_refused(work: Path, victim: Path, link: str) -> None:
    folder = work / "data" / "images"
    caption = work / "json" / "captions.json"
    if link == "the caption file's folder":
        write_zip(folder / "images.zip", IMAGES)
        (work / "json").symlink_to(victim)
        reason = f"the caption file {caption} cannot be read safely: {work}/json is a link or not a directory"
        expected = [f"{folder}/images.zip: {reason}: refused"]
    else:
        (victim / "images").mkdir()
        shutil.copy2(victim / "images.zip", victim / "images" / "images.zip")
        shutil.rmtree(work / "data")
        (work / "data").symlink_to(victim)
        expected = [f"{work}/data is a link or not a directory: refused"]
    before = snapshot(victim)
    result = unpack(work, caption=caption)
    assert result["errors"] == expected and result["changed"] is False
    assert_untouched(result, victim, before)


def test_unpacked_entries_reads_the_marker_of_the_open_folder(work: Path, victim: Path) -> None:
    """What the fingerprint leaves out comes from the folder's descriptor, not from where its path leads
    now (assets_manifest opens the folder without following a link and passes the descriptor)."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    assert unpack(work)["changed"] is True
    marker = json.loads((folder / assets_archive.MARKER).read_text())
    marker["archives"]["images.zip"]["top"] = [SECRET]
    (victim / assets_archive.MARKER).write_text(json.dumps(marker))
    fd = os.open(folder, assets_archive.DIR_FLAGS)
    try:
        folder.rename(work / "data" / "images.real")
        folder.symlink_to(victim)
        assert assets_archive.unpacked_entries(fd) == [assets_archive.MARKER, "00000", "00453"]
    finally:
        os.close(fd)


PLANTED: dict[str, Callable[[Path], Path]] = {
    "marker": lambda work: work / "data" / "images" / assets_archive.MARKER,
    "archive": lambda work: work / "data" / "images" / "images.tar",
    "caption": lambda work: work / "data" / "captions.json",
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_a_fifo_planted_by_the_container_does_not_hang_root(work: Path, what: str) -> None:
    """Opening a FIFO blocks until someone writes to it: root opens without blocking and refuses what is
    not a regular file (run as the role runs it, with a timeout: a hang fails the test)."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    planted = PLANTED[what](work)
    planted.unlink(missing_ok=True)
    os.mkfifo(planted)
    argv = [
        sys.executable, assets_archive.__file__, "unpack", "--root", str(work), "--folder", str(folder),
        "--caption", str(work / "data" / "captions.json"), "--margin", "0",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    result = json.loads(done.stdout)
    if what == "marker":  # not a regular file: missing; the unpack goes on and replaces it
        assert done.returncode == 0 and result["archives"][0]["state"] == "unpacked", result
        assert (folder / assets_archive.MARKER).is_file()
    elif what == "archive":
        assert result["errors"] == [f"{planted}: the archive is not a regular file: refused"], result
    else:
        assert done.returncode == 1
        assert result["errors"] == [
            f"{folder}/images.zip: the caption file {planted} cannot be read safely: {planted} is not a "
            "regular file: refused"
        ]


def test_a_folder_planted_as_the_marker_is_reported_not_a_crash(work: Path) -> None:
    """The images are unpacked; the marker cannot replace a folder: the result says so (the role names the
    host and the file) instead of a traceback."""
    folder = work / "data" / "images"
    write_zip(folder / "images.zip", IMAGES)
    (folder / assets_archive.MARKER).mkdir()
    result = unpack(work)
    assert result["archives"][0]["state"] == "unpacked"
    (error,) = result["errors"]
    assert error.startswith(f"{folder}/{assets_archive.MARKER}: cannot write the marker: ")
