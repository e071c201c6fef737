"""The stand-in AscendCloud package for the simulated fleet.

Same nesting and names as the real one: the outer `AscendCloud-6.3.906-<ts>.zip` holds the inner
`AscendCloud-AIGC-6.3.906-<ts>.zip` (beside other inner zips, as the real bundle holds several, so the
workspace role has to find the AIGC one by pattern) whose tree has
`multimodal_algorithm/LLAVA/llava-train/<commit>/build.sh`. Running `build.sh` creates the `LLaVA` tree
beside it: a miniature LLaVA trainer with the real command line (`llava/train/train_mem.py`), the
vendor's `scripts/v1_5/pretrain_new.sh` and `scripts/zero2.json`.

Zip bytes are deterministic (sorted entries, fixed dates and modes), so rebuilding gives the same checksum
and the role's checksum-based transfer skips hold.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from importlib import resources
from pathlib import Path

VERSION = "6.3.906"
LLAVA_TRAIN_COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
LLAVA_TRAIN_DIR = f"multimodal_algorithm/LLAVA/llava-train/{LLAVA_TRAIN_COMMIT}"
DEFAULT_TIMESTAMP = "20240612100000"

# Ways to make a broken package, for the negative tests of the workspace role.
FAULTS = ("build-fails", "corrupt-zip")

_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def package_name(timestamp: str = DEFAULT_TIMESTAMP) -> str:
    return f"AscendCloud-{VERSION}-{timestamp}.zip"


def aigc_zip_name(timestamp: str = DEFAULT_TIMESTAMP) -> str:
    return f"AscendCloud-AIGC-{VERSION}-{timestamp}.zip"


def standin_tree() -> Path:
    """The files of `llava-train/<commit>/` in the package (build.sh, upstream/, npu_patch/)."""
    return Path(str(resources.files("llava_devserver.sim") / "standin_files"))


def build_package(out_dir: Path, timestamp: str = DEFAULT_TIMESTAMP, fault: str | None = None) -> Path:
    """Write `out_dir/AscendCloud-6.3.906-<timestamp>.zip` and return its path.

    `fault`: None, `build-fails` (build.sh finds its upstream snapshot missing and exits 1) or
    `corrupt-zip` (the outer zip is cut short).
    """
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault {fault!r}: expected one of {', '.join(FAULTS)}")
    _check_timestamp(timestamp)
    date_time = _zip_date(timestamp)

    tree_files = _tree_files(standin_tree())
    if fault == "build-fails":
        tree_files = {name: data for name, data in tree_files.items() if not name.startswith("upstream/")}
    aigc = _zip_bytes(
        {
            **{f"{LLAVA_TRAIN_DIR}/{name}": data for name, data in tree_files.items()},
            "multimodal_algorithm/README.md": _readme("AIGC multimodal algorithms", timestamp).encode(),
            "multimodal_algorithm/version.info": f"AscendCloud-AIGC {VERSION}\nbuild: {timestamp}\n".encode(),
        },
        date_time,
    )
    llm = _zip_bytes(
        {
            "llm_train/README.md": _readme("LLM training (not used by LLaVA)", timestamp).encode(),
            "llm_train/version.info": f"AscendCloud-LLM {VERSION}\nbuild: {timestamp}\n".encode(),
        },
        date_time,
    )
    outer = _zip_bytes(
        {
            aigc_zip_name(timestamp): aigc,
            f"AscendCloud-LLM-{VERSION}-{timestamp}.zip": llm,
            "version.info": f"AscendCloud {VERSION}\nbuild: {timestamp}\n".encode(),
        },
        date_time,
    )
    if fault == "corrupt-zip":
        outer = outer[: len(outer) * 2 // 3]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / package_name(timestamp)
    # Rewrite only when the bytes differ, so an unchanged package keeps its mtime too.
    if not path.is_file() or path.read_bytes() != outer:
        tmp = path.with_suffix(".zip.tmp")
        tmp.write_bytes(outer)
        tmp.replace(path)
    return path


def _check_timestamp(timestamp: str) -> None:
    if len(timestamp) != 14 or not timestamp.isdigit():
        raise ValueError(f"timestamp {timestamp!r}: expected 14 digits, YYYYMMDDhhmmss")


def _zip_date(timestamp: str) -> tuple[int, int, int, int, int, int]:
    moment = datetime.strptime(timestamp, "%Y%m%d%H%M%S")
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _tree_files(root: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not _SKIP_PARTS.intersection(relative.parts) and path.suffix != ".pyc":
            files[relative.as_posix()] = path.read_bytes()
    return files


def _zip_bytes(files: dict[str, bytes], date_time: tuple[int, int, int, int, int, int]) -> bytes:
    """A zip with directory entries, sorted names, one date and fixed modes: same input, same bytes."""
    names = set(files)
    for name in files:
        parts = name.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(names):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.create_system = 3  # Unix, so unzip honours the modes below
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
                continue
            executable = name.endswith(".sh")
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            stored = name.endswith(".zip")  # zips inside zips gain nothing from deflate
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name], compresslevel=None if stored else 6)
    return buffer.getvalue()


def _readme(what: str, timestamp: str) -> str:
    return (
        f"# AscendCloud {VERSION}: {what}\n\n"
        f"Stand-in package for the simulated fleet of llava-devserver (build {timestamp}).\n"
        "Same names and nesting as the vendor's; the contents are miniatures.\n"
    )
