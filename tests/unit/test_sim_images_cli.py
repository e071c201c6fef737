"""`llava-devserver sim images`: builds each image the fleets use once, in order, and says which failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llava_devserver import cli
from llava_devserver.sim import fleet, image, proxy, registry, training_image


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(fleet, "docker_client", lambda: object())
    monkeypatch.setattr(
        image, "ensure_server_image", lambda _c, profile: calls.append(f"server-{profile}") or "s"
    )
    monkeypatch.setattr(
        image, "ensure_docker_server_image", lambda _c, profile: calls.append(f"docker-{profile}") or "d"
    )
    monkeypatch.setattr(proxy, "ensure_proxy_image", lambda _c: calls.append("proxy") or "p")
    monkeypatch.setattr(registry, "ensure_registry_image", lambda _c: calls.append("registry") or "r")

    def training(_client: Any) -> training_image.TrainingImage:
        calls.append("training")
        return training_image.TrainingImage(tag="llava-devserver/train:x", archive=Path("t"))

    monkeypatch.setattr(training_image, "ensure_training_image", training)
    return calls


def test_every_profile_then_the_job_images(built: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "images"]) == 0
    profiles = sorted(image.PROFILES)
    assert built == [f"{kind}-{p}" for p in profiles for kind in ("server", "docker")] + [
        "proxy",
        "registry",
        "training",
    ]
    assert "sim: training: llava-devserver/train:x" in capsys.readouterr().out


def test_one_profile_without_the_job(built: list[str]) -> None:
    assert cli.main(["sim", "images", "--os", "hce2", "--no-job"]) == 0
    assert built == ["server-hce2", "docker-hce2", "proxy"]  # the proxy serves --no-job fleets too


def test_a_failed_build_is_named_and_stops(
    built: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_client: Any, profile: str) -> str:
        raise image.SimImageError(f"debootstrap of {profile} failed")

    monkeypatch.setattr(image, "ensure_docker_server_image", broken)
    assert cli.main(["sim", "images", "--os", "debian12"]) == 1
    assert built == ["server-debian12"]
    assert "sim: debootstrap of debian12 failed" in capsys.readouterr().err
