"""On one small fleet (2 servers, the small training image): the hub's layout of the images, a folder
holding `images.zip`, staged, unpacked once and used by the workspace's verification; then
`llava-devserver up --retry` after a run in which one server failed touches only that server."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.fleet

HOSTS = ["devserver-1", "devserver-2"]
MARKER = ".llava-devserver-unpacked.json"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    with harness.fleet_up(
        "cli", len(HOSTS), tmp_path_factory.mktemp("cli"), docker=True, devices_per_host=1
    ) as up:
        harness.use_small_training_image(up)
        up.run_play("validate", "host", "container").assert_ok(*HOSTS)
        yield up


def _zip_images(source: Path, target: Path) -> int:
    """target/images.zip of every file under source (as the hub ships them: 00000/000000012.jpg ...)."""
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(target / "images.zip", "w") as archive:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(source).as_posix())
            count += 1
    return count


def test_images_zip_is_unpacked_once_and_verified(fleet: harness.Fleet) -> None:
    assets = fleet.group_vars()["assets"]
    caption = json.loads(Path(assets["pretrain_json"]["path"]).read_text())
    count = _zip_images(Path(assets["images"]["path"]), fleet.dir / "hub-images")
    fleet.set_group_vars(
        assets=assets | {"images": {"source": "control", "path": str(fleet.dir / "hub-images")}}
    )

    run = fleet.run_play("validate", "workspace")
    assert run.rc == 0, run.tail()
    for host in HOSTS:
        entries = json.loads(
            fleet.read(host, "/var/lib/llava-devserver/llava-pretrain/assets-manifest.json")
        )["assets"]
        images = entries["images"]["path"]
        assert entries["images"]["ok"] and entries["pretrain_json"]["ok"], (host, entries)
        # the caption file's images are there, unpacked from the zip (the JSON check sampled them)
        first = caption[0]["image"]
        assert fleet.sh(host, f"test -s {images}/{first} && test -f {images}/images.zip").returncode == 0, (
            host
        )
        marker = json.loads(fleet.read(host, f"{images}/{MARKER}"))
        assert marker["archives"]["images.zip"]["members"] == count, marker
        assert entries["pretrain_json"]["details"]["records"] == len(caption)
    assert run.outcome("devserver-2", "Unpack the image archives into the image folder") == "changed", (
        run.changed
    )

    again = fleet.run_play("validate", "workspace")
    assert again.rc == 0, again.tail()
    assert again.changed == {}, again.changed  # verified as it is: neither copied nor unpacked again


def test_up_retry_touches_only_the_failed_server(fleet: harness.Fleet) -> None:
    first_dir, retry_dir = fleet.dir / "runs" / "up-first", fleet.dir / "runs" / "up-retry"
    fleet.set_host_vars("devserver-2", {"npu_driver_version": "0.0.1"})  # preflight fails there
    playbook = fleet.playbook("validate", "preflight")  # preflight reads the llava that validate sets
    common = ["-i", str(fleet.inventory), "--playbook", str(playbook), "--plain", "--json"]
    first = fleet.llava("up", *common, "--run-dir", str(first_dir))
    assert first.returncode == 1, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["hosts"]["devserver-1"]["failed"] == 0, summary["hosts"]
    assert "driver version is" in " ".join(summary["hosts"]["devserver-2"]["failures"])

    fleet.set_host_vars("devserver-2", None)
    retry = fleet.llava("up", *common, "--retry", str(first_dir), "--run-dir", str(retry_dir))
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "retrying 1 server(s)" in retry.stderr and "devserver-2" in retry.stderr
    assert set(json.loads(retry.stdout)["hosts"]) == {"devserver-2"}
    report = json.loads((retry_dir / "report.json").read_text())
    ran = {e["host"] for e in report["hosts"] if e["reached"]}
    assert ran == {"devserver-2"}, report["hosts"]
