"""The simulator's one image builder (llava_devserver.sim.image_cache), with a stand-in Docker client."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from llava_devserver.sim import image_cache


class FakeImages:
    def __init__(self) -> None:
        self.tags: set[str] = set()
        self.built: list[tuple[str, dict[str, int]]] = []

    def get(self, tag: str) -> Any:
        if tag not in self.tags:
            raise docker.errors.ImageNotFound(tag)
        return tag

    def build(self, fileobj: Any, tag: str, **_: Any) -> None:
        with tarfile.open(fileobj=fileobj) as tar:
            self.built.append((tag, {m.name: m.mode for m in tar.getmembers()}))
        self.tags.add(tag)


class FakeClient:
    def __init__(self) -> None:
        self.images = FakeImages()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_cache, "CACHE_DIR", tmp_path / "cache")


def test_same_recipe_is_a_lookup_and_a_changed_one_a_new_tag() -> None:
    client: Any = FakeClient()
    first = image_cache.ensure_image(client, "llava-test/x", "FROM base\n", {"a.sh": b"echo a"})
    again = image_cache.ensure_image(client, "llava-test/x", "FROM base\n", {"a.sh": b"echo a"})
    changed = image_cache.ensure_image(client, "llava-test/x", "FROM base\n", {"a.sh": b"echo b"})
    assert first == again != changed
    assert first.startswith("llava-test/x:") and len(first.split(":")[1]) == 12
    assert [tag for tag, _ in client.images.built] == [first, changed]  # the second call built nothing


def test_context_modes() -> None:
    context = image_cache.build_context(
        "FROM base\n", {"run.sh": b"", "data.txt": b""}, executable=lambda name: name.endswith(".sh")
    )
    with tarfile.open(fileobj=context) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes == {"Dockerfile": 0o644, "run.sh": 0o755, "data.txt": 0o644}


def test_build_error_names_the_tag() -> None:
    class Broken(FakeImages):
        def build(self, fileobj: Any, tag: str, **_: Any) -> None:
            raise docker.errors.BuildError("step 2 failed", [{"stream": "RUN false\n"}])

    client: Any = FakeClient()
    client.images = Broken()
    with pytest.raises(image_cache.ImageBuildError, match=r"building llava-test/y:[0-9a-f]{12} failed"):
        image_cache.ensure_image(client, "llava-test/y", "FROM base\n")
