"""The one image builder of the simulated fleet and its tests: Docker images built from a Dockerfile and a
few files, tagged by the hash of everything that goes in, so an unchanged recipe is a lookup and a changed
one builds a new tag; builds serialised across processes; `docker save` archives written atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors

CACHE_DIR = Path(os.environ.get("LLAVA_DEVSERVER_CACHE", Path.home() / ".cache" / "llava-devserver"))


class ImageBuildError(RuntimeError):
    """An image could not be built or saved."""


def recipe_hash(recipe: Any) -> str:
    """12 hex digits over a JSON-serialisable recipe (what a tag's hash covers)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """One build of `name` at a time across processes (parallel tests may all ask for the same image)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name.replace('/', '_')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_context(
    dockerfile: str,
    files: Mapping[str, bytes],
    extra: Mapping[str, Path] | None = None,
    executable: Callable[[str], bool] = lambda _name: True,
) -> io.BytesIO:
    """A tar build context: the Dockerfile, in-memory files (mode 0755 where `executable(name)`, else 0644)
    and files from disk (`extra`: name in the context -> path)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name != "Dockerfile" and executable(name) else 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, path in (extra or {}).items():
            tar.add(str(path), arcname=name)
    buffer.seek(0)
    return buffer


def ensure_image(
    client: docker.DockerClient,
    repository: str,
    dockerfile: str,
    files: Mapping[str, bytes] | None = None,
    version: str = "1",
) -> str:
    """The tag `repository:<hash>` of the image built from dockerfile + files, building it if needed."""
    files = dict(files or {})
    recipe = {
        "version": version,
        "dockerfile": dockerfile,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    tag = f"{repository}:{recipe_hash(recipe)}"
    if has_image(client, tag):
        return tag
    with build_lock(repository):
        if not has_image(client, tag):  # another process may have built it while we waited
            build(client, tag, build_context(dockerfile, files))
    return tag


def build(client: docker.DockerClient, tag: str, context: io.BytesIO) -> None:
    try:
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise ImageBuildError(f"building {tag} failed: {exc}\n{log[-3000:]}") from exc
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}") from exc


def save_image(client: docker.DockerClient, tag: str, archive: Path) -> Path:
    """`docker save` of tag to archive (written beside it, then renamed: never a half archive)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            for chunk in client.images.get(tag).save(named=True):
                handle.write(chunk)
        tmp.replace(archive)
    except (docker.errors.APIError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ImageBuildError(f"docker save of {tag} to {archive} failed: {exc}") from exc
    return archive
