"""Paths and names that validate but would destroy or break out: each is refused, naming host, setting, why.

Values are set on one server of two (ds-1), so each error is that server's, not the fleet's, and the
normalized value is what the llava dict carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llava_devserver import pathrules
from llava_devserver.config import ConfigError, FleetValidationError, validate_fleet

COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
WS = "/home/ma-user/ws"
LLAVA = f"{WS}/multimodal_algorithm/LLAVA/llava-train/{COMMIT}/LLaVA"


@pytest.fixture
def package(tmp_path: Path) -> str:
    path = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    path.write_bytes(b"PK")
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> str:
    path = tmp_path / "images"
    path.mkdir()
    return str(path)


def fleet(package: str, **on_ds1: Any) -> dict[str, dict[str, Any]]:
    common = {"ascendcloud_package": package, "per_device_train_batch_size": 16}
    return {
        "ds-0": {"ansible_host": "10.0.0.1", **common},
        "ds-1": {"ansible_host": "10.0.0.2", **common, **on_ds1},
    }


def refusal(raw: dict[str, dict[str, Any]]) -> ConfigError:
    with pytest.raises(FleetValidationError) as info:
        validate_fleet(raw)
    errors = info.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def assert_refused(raw: dict[str, dict[str, Any]], host: str, setting: str, *reasons: str) -> str:
    error = refusal(raw)
    text = str(error)
    assert (error.host, error.setting) == (host, setting), text
    assert text.startswith(f"{host}: {setting}: "), text
    for reason in reasons:
        assert reason in error.message, text
    assert "\n" not in text
    return text


# --- work_dir and container_work_dir


@pytest.mark.parametrize(
    ("value", "reasons"),
    [
        ("//", ["'//' (that is /)", "must not be /"]),
        ("///", ["(that is /)", "must not be /"]),
        ("/.", ["(that is /)", "must not be /"]),
        ("//etc", ["'//etc' (that is /etc)", "system directory"]),
        ("/./etc/", ["(that is /etc)", "system directory"]),
        ("//home", ["(that is /home)", "system directory"]),
        ("/tmp", ["/tmp is a system directory"]),
        ("/var", ["system directory"]),
        ("/usr/local", ["system directory"]),
        ("/usr/local/Ascend", ["system directory"]),
        ("/usr/local/Ascend/driver", ["inside /usr/local/Ascend"]),
        ("/usr/local/Ascend/ascend-toolkit/x", ["inside /usr/local/Ascend"]),
        ("/root", ["system directory"]),
        ("/root/.ssh", ["inside /root, a system directory"]),
        ("/var/lib/docker", ["system directory"]),
        ("/var/lib/docker/volumes/llava", ["inside /var/lib/docker"]),
        ("/boot/x", ["inside /boot"]),
        ("/proc/1", ["inside /proc"]),
        ("/sys/fs", ["inside /sys"]),
        ("/dev/shm/ws", ["inside /dev"]),
        ("/bin", ["system directory"]),
        ("/sbin/x", ["inside /sbin"]),
        ("/lib64/x", ["inside /lib*"]),
        ("/libx32", ["system directory"]),
        ("/run/llava", ["inside /run"]),
        ("/usr/local/dcmi", ["the guide mounts it into the container"]),
        ("/usr/local/dcmi/x", ["inside /usr/local/dcmi"]),
        ("/var/log/npu", ["the guide mounts it"]),
        ("/usr/local/bin/npu-smi", ["the guide mounts it"]),
        ("/var/log", ["system directory"]),
        ("/data/../etc", ["'..'"]),
    ],
)
def test_work_dir_refusals(package: str, value: str, reasons: list[str]) -> None:
    assert_refused(fleet(package, work_dir=value), "ds-1", "work_dir", *reasons)


@pytest.mark.parametrize(
    ("value", "normalized"),
    [("/data/llava/", "/data/llava"), ("//data//llava/.", "/data/llava"), ("/tmp/ws", "/tmp/ws"),
     ("/var/lib/llava", "/var/lib/llava"), ("/home/admin/./ws", "/home/admin/ws")],
)  # fmt: skip
def test_work_dir_is_used_normalized(package: str, value: str, normalized: str) -> None:
    assert validate_fleet(fleet(package, work_dir=value)).hosts[1].to_vars()["work_dir"] == normalized


@pytest.mark.parametrize(
    ("value", "reasons"),
    [
        ("//home/ma-user", ["'//home/ma-user' (that is /home/ma-user)", "must not be /home/ma-user"]),
        ("/home/ma-user/.", ["must not be /home/ma-user"]),
        ("/home/ma-user//", ["must not be /home/ma-user"]),
        ("//", ["must not be /"]),
        ("/home", ["system directory"]),
        ("/usr/local/Ascend/ascend-toolkit", ["inside /usr/local/Ascend"]),
        ("/usr/slog", ["the guide mounts it"]),
        ("/etc/ws", ["inside /etc"]),
    ],
)
def test_container_work_dir_refusals(package: str, value: str, reasons: list[str]) -> None:
    raw = fleet(package, container_work_dir=value)
    raw["ds-0"]["container_work_dir"] = value  # a job-wide setting: the same on every server
    error = refusal(raw)
    assert (error.host, error.setting) == ("fleet", "container_work_dir")
    assert str(error).startswith("fleet: container_work_dir: ")
    assert all(reason in error.message for reason in reasons), str(error)


def test_container_work_dir_is_used_normalized(package: str) -> None:
    raw = {h: {**v, "container_work_dir": "//home/ma-user/ws/"} for h, v in fleet(package).items()}
    llava = validate_fleet(raw).hosts[0].to_vars()
    assert llava["container_work_dir"] == WS
    assert llava["llava_dir"] == LLAVA


# --- characters: NUL, line breaks, control characters, a leading '-'


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("work_dir", "/data/llava\n", "contains a line break"),
        ("work_dir", "/data/\0llava", "contains a NUL character"),
        ("work_dir", "/data/ll\x1bava", "control character"),
        ("work_dir", "--data", "must be an absolute path"),
        ("output_dir", "./checkpoints/x\n", "line break"),
        ("output_dir", "-rf", "starts with '-'"),
        ("data_path", "--help", "starts with '-'"),
        ("image_folder", "./images\0", "NUL"),
        ("model_name_or_path", "lmsys/vicuna-13b-v1.5\n", "line break"),
        ("vision_tower", "-x/y", "starts with '-'"),
        ("container_name", "llava\n", "line break"),
        ("container_image", "ubuntu\n", "line break"),
        ("container_registry_username", "-p", "starts with '-'"),
        ("hf_endpoint", "https://hf-mirror.com\n", "line break"),
        ("npu_driver_version", "23.0.5\n", "not a version"),
        ("container_shm_size", "32g\n", "line break"),
    ],
)
def test_control_characters_and_leading_dashes(package: str, setting: str, value: str, reason: str) -> None:
    assert_refused(fleet(package, **{setting: value}), "ds-1", setting, reason)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("HCCL_IF_IP\n", "10.0.0.2", "'HCCL_IF_IP\\n' is not an environment variable name"),
        ("HCCL_IF_IP\0", "10.0.0.2", "is not an environment variable name"),
        ("HCCL_IF_IP", "10.0.0.2\nrm -rf /", "HCCL_IF_IP: the value contains a line break"),
        ("HCCL_IF_IP", "10.0.0.2\0", "HCCL_IF_IP: the value contains a NUL character"),
    ],
)
def test_train_env_keys_and_values(package: str, key: str, value: str, reason: str) -> None:
    assert_refused(fleet(package, train_env={key: value}), "ds-1", "train_env", reason)


def test_patterns_match_the_whole_value(package: str) -> None:
    """`$` accepts a trailing newline; every rule matches the whole text."""
    assert_refused(fleet(package, container_image="ubuntu:22.04\n"), "ds-1", "container_image")
    assert_refused(fleet(package, llava_train_commit=COMMIT + "\n"), "ds-1", "llava_train_commit")
    assert_refused(fleet(package, ansible_host="10.0.0.2\n"), "ds-1", "ansible_host")
    assert_refused(fleet(package, ansible_host="devserver-2.example.com\n"), "ds-1", "ansible_host")
    assert_refused(
        fleet(package, hf_endpoint="https://hf-mirror.com x"), "ds-1", "hf_endpoint", "http(s) URL"
    )


# --- host names


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("ds-1\necho pwned", "contains a line break"),
        ("ds-1\r", "contains a line break"),
        ("ds\0", "NUL"),
        ("../../../tmp/x", "is not a valid host name"),
        ("a/b", "is not a valid host name"),
        ("..", "is not a valid host name"),
        ("-ds", "is not a valid host name"),
        ("ds 1", "is not a valid host name"),
        ("ds..1", "is not a valid host name"),
    ],
)
def test_host_names_that_break_out(package: str, name: str, reason: str) -> None:
    raw = fleet(package)
    raw[name] = raw.pop("ds-1")
    error = refusal(raw)
    text = str(error)
    assert (error.host, error.setting) == (ascii(name), "inventory_hostname"), text
    assert text.startswith(f"{name!a}: inventory_hostname: the inventory host name "), text
    assert reason in error.message and "\n" not in text and "\0" not in text


@pytest.mark.parametrize("name", ["ds-1", "DevServer_01", "node-1.example.com", "192.168.0.12", "fe80::1"])
def test_valid_host_names(package: str, name: str) -> None:
    raw = fleet(package)
    raw[name] = raw.pop("ds-1")
    assert validate_fleet(raw).hosts[1].host == name


# --- asset destinations and output_dir


def with_assets(package: str, assets: dict[str, Any], **settings: Any) -> dict[str, dict[str, Any]]:
    return {host: {**v, **settings, "assets": assets} for host, v in fleet(package).items()}


def assert_fleet_refusal(raw: dict[str, dict[str, Any]], setting: str, *reasons: str) -> None:
    error = refusal(raw)
    text = str(error)
    assert (error.host, error.setting) == ("fleet", setting), text
    assert text.startswith(f"fleet: {setting}: ")
    for reason in reasons:
        assert reason in error.message, text


@pytest.mark.parametrize(
    ("image_folder", "reasons"),
    [
        (WS, ["image_folder /home/ma-user/ws holds the LLaVA tree"]),
        (f"{WS}/", ["holds the LLaVA tree"]),
        (".", ["is the LLaVA tree itself"]),
        (LLAVA, ["is the LLaVA tree itself"]),
        (f"{WS}/multimodal_algorithm", ["holds the LLaVA tree"]),
        (f"{WS}/multimodal_algorithm/images", ["in the package's tree", "a new package replaces"]),
        (
            f"{WS}/.llava-devserver",
            ["overlaps /home/ma-user/ws/.llava-devserver, llava-devserver's state folder"],
        ),
        (f"{WS}/.llava-devserver/images", ["state folder"]),
        (f"{WS}/AscendCloud-6.3.906-20240618153000", ["the unpacked AscendCloud package"]),
        (f"{WS}/AscendCloud-6.3.906-20240618153000.zip", ["the AscendCloud package"]),
        ("/opt/images", ["not strictly inside container_work_dir /home/ma-user/ws"]),
        ("./checkpoints/llava-v1.5-13b-pretrain", ["is output_dir", "rsync --delete"]),
        ("./checkpoints/llava-v1.5-13b-pretrain/images", ["is inside output_dir"]),
        ("./checkpoints", ["holds output_dir"]),
    ],
)
def test_asset_destinations_that_would_wipe_something(
    package: str, images: str, image_folder: str, reasons: list[str]
) -> None:
    raw = with_assets(package, {"images": {"source": "control", "path": images}}, image_folder=image_folder)
    assert_fleet_refusal(raw, "assets.images", *reasons)


def test_asset_destinations_are_disjoint(package: str, images: str) -> None:
    assets = {
        "images": {"source": "control", "path": images},
        "pretrain_json": {"source": "server", "path": "/data/blip_laion_cc_sbu_558k.json"},
    }
    raw = with_assets(package, assets, image_folder=f"{WS}/data", data_path=f"{WS}/data/blip.json")
    assert_fleet_refusal(raw, "assets.images", f"image_folder {WS}/data holds data_path {WS}/data/blip.json")
    raw = with_assets(package, assets, image_folder=f"{WS}/data/images", data_path=f"{WS}/data/images")
    assert_fleet_refusal(raw, "assets.images", "is data_path")


def test_asset_destinations_that_are_fine(package: str, images: str) -> None:
    assets = {
        "images": {"source": "control", "path": images + "//."},
        "pretrain_json": {"source": "server", "path": "//data//blip.json"},
    }
    raw = with_assets(
        package, assets, image_folder=f"{WS}/sim-assets/images", data_path="./playground//blip.json"
    )
    llava = validate_fleet(raw).hosts[0].to_vars()
    assert llava["assets"]["images"]["dest"] == f"{WS}/sim-assets/images"
    assert llava["assets"]["images"]["path"] == images  # normalized, as the copy uses it
    assert llava["assets"]["pretrain_json"]["path"] == "/data/blip.json"
    assert llava["data_path"] == f"{LLAVA}/playground/blip.json"


@pytest.mark.parametrize(
    ("path", "reason"),
    [("//", "'//' (that is /) must not be /"), ("//etc", "(that is /etc) is a system directory"),
     ("/root/.ssh", "inside /root"), ("/data/../etc", "'..'"), ("/data/x\n", "line break")],
)  # fmt: skip
def test_server_asset_sources(package: str, path: str, reason: str) -> None:
    raw = with_assets(package, {"images": {"source": "server", "path": path}}, image_folder=f"{WS}/images")
    assert_fleet_refusal(raw, "assets.images" if "\n" not in path else "assets.images.path", reason)


@pytest.mark.parametrize(
    ("repo_id", "ok"), [("openai/clip-vit-large-patch14-336", True), ("gpt2", True), ("a/b\n", False),
                        ("../x", False), ("-a/b", False), ("a/b/c", False)],
)  # fmt: skip
def test_hub_repo_ids(package: str, repo_id: str, ok: bool) -> None:
    raw = with_assets(package, {"vision_tower": {"source": "hub", "repo_id": repo_id}}, vision_tower="./clip")
    if ok:
        assert validate_fleet(raw)
    else:
        assert_fleet_refusal(raw, "assets.vision_tower.repo_id", "is not a Hugging Face repository")


@pytest.mark.parametrize(
    ("output_dir", "reasons"),
    [
        (".", ["is the LLaVA tree itself"]),
        ("./", ["is the LLaVA tree itself"]),
        (WS, ["holds the LLaVA tree"]),
        (f"{WS}/multimodal_algorithm/out", ["in the package's tree"]),
        (f"{WS}/.llava-devserver/out", ["state folder"]),
        ("//etc/out", ["(that is /etc/out) is inside /etc"]),
    ],
)
def test_output_dir_refusals(package: str, output_dir: str, reasons: list[str]) -> None:
    raw = {host: {**v, "output_dir": output_dir} for host, v in fleet(package).items()}
    assert_fleet_refusal(raw, "output_dir", *reasons)


def test_relative_paths_stay_paths(package: str) -> None:
    """`lmsys/./vicuna` is a path relative to the LLaVA tree; normalizing must not make it the hub id."""
    raw = {h: {**v, "model_name_or_path": "lmsys/./vicuna"} for h, v in fleet(package).items()}
    assert validate_fleet(raw).hosts[0].to_vars()["model_name_or_path"] == f"{LLAVA}/lmsys/vicuna"


@pytest.mark.parametrize("name", [".zip", ".llava-devserver.zip", "-x.zip", "a b.zip"])
def test_package_file_names(tmp_path: Path, name: str) -> None:
    package = tmp_path / name
    package.write_bytes(b"PK")
    raw = {h: {**v, "ascendcloud_package": str(package)} for h, v in fleet(str(package)).items()}
    assert_fleet_refusal(raw, "ascendcloud_package", "must be the package's own")


def test_normalize() -> None:
    assert pathrules.normalize("//a/./b//c/.") == "/a/b/c"
    assert pathrules.normalize("./a//b/") == "./a/b"
    assert pathrules.normalize("a/b") == "./a/b"
    assert pathrules.normalize("./") == pathrules.normalize(".") == "."
    assert pathrules.normalize("//") == "/"
