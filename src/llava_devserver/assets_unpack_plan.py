"""Control node: the command that unpacks the image archives on a server, and what its result means.

The server side is assets_archive.py (stdlib only); the llava_assets role runs it once per server, after
staging and before verification, when the images asset was (re)staged in this run.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from llava_devserver.assets_plan import host_path


def unpack_command(
    plan: Mapping[str, Any], llava: Mapping[str, Any], margin: int, sample: int, python: str = "python3"
) -> list[str]:
    """argv of `assets_archive.py unpack` for the host's image folder ([] when images are not staged)."""
    images = next((a for a in plan.get("assets") or [] if a["name"] == "images"), None)
    if images is None:
        return []
    argv = [
        python, posixpath.join(str(plan["helper_dir"]), "assets_archive.py"), "unpack",
        "--root", str(llava["work_dir"]), "--folder", str(images["host_dest"]),
        "--sample", str(int(sample)), "--margin", str(int(margin)),
    ]  # fmt: skip
    caption_dest = ((llava.get("assets") or {}).get("pretrain_json") or {}).get("dest")
    caption = (
        host_path(str(caption_dest), str(llava["container_work_dir"]), str(llava["work_dir"]))
        if caption_dest
        else None
    )
    if caption:
        argv += ["--caption", caption]
    return argv


def unpack_problems(result: Mapping[str, Any], host: str) -> list[str]:
    """`HOST: assets.images: ...` for each archive that could not be unpacked (the registered task result)."""
    if not result or result.get("skipped"):
        return []
    try:
        outcome = json.loads(str(result.get("stdout") or ""))
    except ValueError:
        text = str(result.get("stderr") or result.get("msg") or "no output").strip().splitlines()
        return [f"{host}: assets.images: the archive helper failed: {text[-1] if text else 'no output'}"]
    return [f"{host}: assets.images: {error}" for error in outcome.get("errors") or []]


def unpack_report(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The archives' outcomes for the report (name, state, members, bytes)."""
    try:
        outcome = json.loads(str((result or {}).get("stdout") or ""))
    except ValueError:
        return []
    return [
        {k: archive.get(k) for k in ("name", "state", "members", "bytes", "strip")}
        for archive in outcome.get("archives") or []
    ]
