"""The settings model: every rule with a valid and an invalid case, the derived values and the llava dict."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from llava_devserver.config import (
    FLEET,
    GUIDE_IMAGE,
    ConfigError,
    FleetSettings,
    FleetValidationError,
    Settings,
    UnresolvedValue,
    json_schema,
    validate_fleet,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-never-printed"


@pytest.fixture
def package(tmp_path: Path) -> str:
    path = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    path.write_bytes(b"PK")
    return str(path)


def hosts(package: str, n: int = 2, **common: Any) -> dict[str, dict[str, Any]]:
    """n servers with 8 NPUs each; global 256 divides 32 x 8 for n = 1 and 16 x 16 for n = 2."""
    per_device = {1: 32, 2: 16}.get(n, 1)
    raw = {}
    for i in range(n):
        raw[f"ds-{i}"] = {
            "ansible_host": f"10.0.0.{i + 1}",
            "ascendcloud_package": package,
            "per_device_train_batch_size": per_device,
            "global_batch_size": 256 if n <= 2 else per_device * 8 * n,
            **common,
        }
    return raw


def errors_of(raw: dict[str, dict[str, Any]]) -> list[ConfigError]:
    with pytest.raises(FleetValidationError) as info:
        validate_fleet(raw)
    return info.value.errors


def only_error(raw: dict[str, dict[str, Any]]) -> ConfigError:
    errors = errors_of(raw)
    assert len(errors) == 1, errors
    return errors[0]


def test_defaults_give_a_valid_fleet(package: str) -> None:
    fleet = validate_fleet(hosts(package))
    first = fleet.hosts[0].to_vars()
    assert first["container_image"] == GUIDE_IMAGE
    assert first["npu_devices"] == list(range(8))
    assert first["container_work_dir"] == "/home/ma-user/ws"
    assert first["llava_train_commit"] == "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
    assert first["container_shm_size"] == "32g"
    assert (first["learning_rate"], first["num_train_epochs"], first["max_steps"]) == (1e-3, 1.0, -1)
    assert (first["save_steps"], first["model_max_length"], first["dataloader_num_workers"]) == (
        24000,
        2048,
        4,
    )
    assert first["metadata_guard"] is True and first["container_recreate"] is False
    assert first["train_wait"] is False
    assert first["cann_set_env"] == "/usr/local/Ascend/ascend-toolkit/set_env.sh"


def test_contract_table_keys_are_all_in_the_llava_dict(package: str) -> None:
    """docs/architecture.md, Contract 1: every key of the table is in to_vars()."""
    text = (ROOT / "docs/architecture.md").read_text()
    table = text.split("## Contract 1", 1)[1].split("## Contract 2", 1)[0]
    keys = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    assert len(keys) > 30
    llava = validate_fleet(hosts(package)).hosts[0].to_vars()
    assert keys <= set(llava), keys - set(llava)
    json.dumps(llava)  # JSON-serialisable


def test_derived_values(package: str) -> None:
    fleet = validate_fleet(hosts(package))
    a, b = (h.to_vars() for h in fleet.hosts)
    assert (a["node_rank"], b["node_rank"]) == (0, 1)
    assert a["nnodes"] == b["nnodes"] == 2
    assert a["master_addr"] == b["master_addr"] == "10.0.0.1"
    assert a["nproc_per_node"] == 8 and a["world_size"] == 16
    assert a["gradient_accumulation_steps"] == 1
    commit = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
    llava_dir = f"/home/ma-user/ws/multimodal_algorithm/LLAVA/llava-train/{commit}/LLaVA"
    assert a["llava_dir"] == llava_dir
    assert a["data_path"] == f"{llava_dir}/playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    assert a["image_folder"] == f"{llava_dir}/playground/data/LLaVA-Pretrain/images"
    assert a["output_dir"] == f"{llava_dir}/checkpoints/llava-v1.5-13b-pretrain"
    assert a["model_name_or_path"] == "lmsys/vicuna-13b-v1.5"  # a hub id stays a hub id


def test_paths_relative_to_the_llava_tree_and_absolute(package: str) -> None:
    raw = hosts(package, model_name_or_path="./playground/model/vicuna", output_dir="/home/ma-user/ws/out")
    llava = validate_fleet(raw).hosts[0].to_vars()
    assert llava["model_name_or_path"] == f"{llava['llava_dir']}/playground/model/vicuna"
    assert llava["output_dir"] == "/home/ma-user/ws/out"
    error = only_error(hosts(package, data_path="../../etc/passwd"))
    assert (error.host, error.setting) == (FLEET, "data_path") and "'..'" in error.message


# --- ansible_host


@pytest.mark.parametrize("address", ["10.0.0.7", "fe80::1", "devserver-1.example.com", "localhost"])
def test_valid_addresses(package: str, address: str) -> None:
    raw = hosts(package, 1)
    raw["ds-0"]["ansible_host"] = address
    assert validate_fleet(raw).hosts[0].to_vars()["ansible_host"] == address


@pytest.mark.parametrize("address", ["10.0.0.300", "bad_host", "-dash.example.com", "a..b", "1.2.3"])
def test_invalid_addresses(package: str, address: str) -> None:
    raw = hosts(package, 1)
    raw["ds-0"]["ansible_host"] = address
    error = only_error(raw)
    assert (error.host, error.setting) == ("ds-0", "ansible_host")
    assert address in error.message


def test_address_defaults_to_the_inventory_name(package: str) -> None:
    raw = hosts(package, 1)
    del raw["ds-0"]["ansible_host"]
    assert validate_fleet(raw).hosts[0].to_vars()["ansible_host"] == "ds-0"


def test_addresses_must_be_unique(package: str) -> None:
    raw = hosts(package)
    raw["ds-1"]["ansible_host"] = "10.0.0.1"
    error = only_error(raw)
    assert (error.host, error.setting) == (FLEET, "ansible_host")
    assert "ds-0 and ds-1" in error.message


# --- npu_devices


def test_devices_within_npu_count(package: str) -> None:
    assert validate_fleet(hosts(package, 1, npu_devices="0-7"))
    raw = hosts(package, 1, npu_devices="0-8")
    error = only_error(raw)
    assert (error.host, error.setting) == ("ds-0", "npu_devices")
    assert "NPU 8 outside 0-7" in error.message


def test_duplicate_devices_are_an_error(package: str) -> None:
    error = only_error(hosts(package, 1, npu_devices="0,1,1"))
    assert error.setting == "npu_devices" and "NPU 1 more than once" in error.message


def test_every_host_has_the_same_number_of_devices(package: str) -> None:
    raw = hosts(package)
    raw["ds-0"]["npu_devices"] = "0-3"
    raw["ds-1"]["npu_devices"] = "4-7"
    raw["ds-0"]["global_batch_size"] = raw["ds-1"]["global_batch_size"] = 128
    assert validate_fleet(raw).hosts[1].to_vars()["npu_devices"] == [4, 5, 6, 7]
    raw["ds-1"]["npu_devices"] = "0-5"
    error = only_error(raw)
    assert (error.host, error.setting) == (FLEET, "npu_devices")
    assert "ds-0: 4, ds-1: 6" in error.message


# --- paths


@pytest.mark.parametrize("path", ["/data/llava", "/mnt/disk1/ws", "/home/admin/ws", "/var/lib/llava"])
def test_valid_work_dirs(package: str, path: str) -> None:
    assert validate_fleet(hosts(package, work_dir=path)).hosts[0].to_vars()["work_dir"] == path


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("data/llava", "absolute"),
        ("/", "must not be /"),
        ("/etc", "system directory"),
        ("/usr", "system directory"),
        ("/var", "system directory"),
        ("/home", "system directory"),
        ("/etc/llava", "system directory"),
        ("/proc/1", "system directory"),
        ("/data/../etc", "'..'"),
    ],
)
def test_invalid_work_dirs(package: str, path: str, message: str) -> None:
    error = only_error(hosts(package, work_dir=path))
    assert error.setting == "work_dir" and message in error.message


def test_container_work_dir_never_ma_user_home(package: str) -> None:
    assert validate_fleet(hosts(package, container_work_dir="/home/ma-user/ws"))
    error = only_error(hosts(package, container_work_dir="/home/ma-user/"))
    assert error.setting == "container_work_dir" and "/home/ma-user" in error.message
    assert only_error(hosts(package, container_work_dir="/")).setting == "container_work_dir"


# --- docker values


@pytest.mark.parametrize("name", ["llava", "llava-pretrain_2.a"])
def test_valid_container_names(package: str, name: str) -> None:
    assert validate_fleet(hosts(package, container_name=name))


@pytest.mark.parametrize("name", ["-llava", "llava pretrain", "llava/x", ""])
def test_invalid_container_names(package: str, name: str) -> None:
    assert only_error(hosts(package, container_name=name)).setting == "container_name"


@pytest.mark.parametrize(
    "image",
    [
        GUIDE_IMAGE,
        "ubuntu",
        "localhost:5000/llava/train:1.0",
        "registry.example.com/a/b@sha256:" + "a" * 64,
    ],
)
def test_valid_images(package: str, image: str) -> None:
    assert validate_fleet(hosts(package, container_image=image))


@pytest.mark.parametrize("image", ["Upper/Case", "has space:1", "repo:", "repo:tag:again", "repo@sha256:xyz"])
def test_invalid_images(package: str, image: str) -> None:
    assert only_error(hosts(package, container_image=image)).setting == "container_image"


@pytest.mark.parametrize("size", ["32g", "512m", "1.5g", "64GB", "1024"])
def test_valid_sizes(package: str, size: str) -> None:
    assert validate_fleet(hosts(package, container_shm_size=size))


@pytest.mark.parametrize("size", ["32x", "g", "0", "-1g", "thirty"])
def test_invalid_sizes(package: str, size: str) -> None:
    assert only_error(hosts(package, container_shm_size=size)).setting == "container_shm_size"


@pytest.mark.parametrize(
    ("port", "ok"), [(1, True), (29500, True), (65535, True), (0, False), (65536, False)]
)
def test_port_range(package: str, port: int, ok: bool) -> None:
    raw = hosts(package, master_port=port)
    if ok:
        assert validate_fleet(raw).hosts[0].to_vars()["master_port"] == port
    else:
        assert only_error(raw).setting == "master_port"


# --- files on the control node


def test_ascendcloud_package_must_exist(package: str, tmp_path: Path) -> None:
    assert validate_fleet(hosts(package)).hosts[0].to_vars()["ascendcloud_package"] == package
    error = only_error(hosts(package, ascendcloud_package=str(tmp_path / "AscendCloud-missing.zip")))
    assert error.setting == "ascendcloud_package" and "does not exist" in error.message
    assert "AscendCloud-missing.zip" in error.message


def test_ascendcloud_package_is_an_absolute_zip(package: str, tmp_path: Path) -> None:
    assert "absolute" in only_error(hosts(package, ascendcloud_package="AscendCloud-1.zip")).message
    directory = tmp_path / "dir.zip"
    directory.mkdir()
    assert "not a file" in only_error(hosts(package, ascendcloud_package=str(directory))).message
    assert ".zip" in only_error(hosts(package, ascendcloud_package=str(tmp_path))).message


def test_ascendcloud_package_is_required(package: str) -> None:
    raw = hosts(package)
    for variables in raw.values():
        del variables["ascendcloud_package"]
    error = only_error(raw)  # said once for the whole fleet, not once per server
    assert (error.host, error.setting, error.message) == (
        FLEET,
        "ascendcloud_package",
        "is required (on every server)",
    )


def test_image_archive_must_exist(package: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"tar")
    assert validate_fleet(hosts(package, container_image_archive=str(archive)))
    error = only_error(hosts(package, container_image_archive=str(tmp_path / "nope.tar")))
    assert error.setting == "container_image_archive" and "nope.tar" in error.message


# --- batch arithmetic


def test_accumulation_is_derived(package: str) -> None:
    raw = hosts(package, per_device_train_batch_size=4, global_batch_size=256)
    assert validate_fleet(raw).hosts[0].to_vars()["gradient_accumulation_steps"] == 4  # 4 x 4 x 16


def test_accumulation_that_cannot_divide(package: str) -> None:
    error = only_error(hosts(package, per_device_train_batch_size=3, global_batch_size=256))
    assert (error.host, error.setting) == (FLEET, "global_batch_size")
    assert "3 x world size 16 = 48" in error.message


def test_global_smaller_than_one_step(package: str) -> None:
    assert only_error(hosts(package, per_device_train_batch_size=32, global_batch_size=256)).setting == (
        "global_batch_size"
    )


def test_explicit_accumulation_must_multiply_out(package: str) -> None:
    assert validate_fleet(hosts(package, per_device_train_batch_size=8, gradient_accumulation_steps=2))
    error = only_error(hosts(package, per_device_train_batch_size=8, gradient_accumulation_steps=3))
    assert error.setting == "global_batch_size" and "= 384, not 256" in error.message


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("per_device_train_batch_size", 0),
        ("learning_rate", 0),
        ("num_train_epochs", -1),
        ("max_steps", 0),
        ("save_steps", 0),
        ("dataloader_num_workers", -1),
        ("launcher", "mpirun"),
        ("npu_count", 0),
        ("metadata_guard", "maybe"),
    ],
)
def test_invalid_job_numbers(package: str, setting: str, value: Any) -> None:
    assert only_error(hosts(package, **{setting: value})).setting == setting


def test_values_from_ini_strings_are_coerced(package: str) -> None:
    raw = hosts(package, master_port="29501", metadata_guard="false", launcher="deepspeed", max_steps="10")
    llava = validate_fleet(raw).hosts[0].to_vars()
    assert (llava["master_port"], llava["metadata_guard"], llava["max_steps"]) == (29501, False, 10)


def test_job_settings_must_agree(package: str) -> None:
    raw = hosts(package)
    raw["ds-1"]["learning_rate"] = 2e-3
    error = only_error(raw)
    assert (error.host, error.setting) == (FLEET, "learning_rate")
    assert "ds-0: 0.001, ds-1: 0.002" in error.message


def test_host_settings_may_differ(package: str) -> None:
    raw = hosts(package)
    raw["ds-1"]["work_dir"] = "/data2/llava"
    fleet = validate_fleet(raw)
    assert [h.to_vars()["work_dir"] for h in fleet.hosts] == ["/data/llava-devserver", "/data2/llava"]


# --- unknown settings


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("container_imgae", "container_image"), ("npu_devics", "npu_devices"), ("Work_Dir", "work_dir")],
)
def test_typos_get_a_did_you_mean(package: str, name: str, suggestion: str) -> None:
    raw = hosts(package, 1)
    raw["ds-0"][name] = "x"
    error = only_error(raw)
    assert (error.setting, error.message) == (name, f"unknown setting; did you mean {suggestion}?")


@pytest.mark.parametrize(
    "name",
    [
        "ansible_user",
        "ansible_ssh_private_key_file",
        "inventory_dir",
        "group_names",
        "groups",
        "playbook_dir",
        "omit",
        "docker_daemon_options",
        "proxy_env",  # the usual name of a proxy dict for `environment:`; ours are http_proxy etc.
        "llava",
    ],
)
def test_ansible_and_foreign_variables_are_fine(package: str, name: str) -> None:
    raw = hosts(package, 1)
    raw["ds-0"][name] = {"anything": 1}
    assert validate_fleet(raw)


# --- secrets


def test_secrets_never_appear(package: str) -> None:
    raw = hosts(package, container_registry_password=SECRET, hf_token=SECRET, container_registry_username="u")
    fleet = validate_fleet(raw)
    llava = fleet.hosts[0].to_vars()
    assert SECRET not in json.dumps(fleet.to_vars())
    assert SECRET not in repr(fleet) and SECRET not in str(fleet.hosts[0].settings)
    assert llava["container_registry_login"] is True and llava["hf_token_set"] is True
    assert fleet.hosts[0].settings.container_registry_password is not None
    assert fleet.hosts[0].settings.container_registry_password.get_secret_value() == SECRET
    raw["ds-0"]["work_dir"] = "/etc"  # an unrelated error: the secret must not be in its text either
    raw["ds-1"]["hf_token"] = ["not", "a", SECRET]
    errors = errors_of(raw)
    assert {e.setting for e in errors} == {"work_dir", "hf_token"}
    assert all(SECRET not in str(e) for e in errors)


def test_unresolved_values_are_errors(package: str) -> None:
    raw = hosts(package, 1)
    raw["ds-0"]["work_dir"] = UnresolvedValue("'base' is undefined")
    raw["ds-0"]["hf_token"] = UnresolvedValue("vault: no secret to decrypt " + SECRET)
    errors = errors_of(raw)
    assert [(e.setting, e.message) for e in errors] == [
        ("work_dir", "could not be resolved: 'base' is undefined"),
        ("hf_token", "is vault-encrypted or templated and could not be resolved"),
    ]


# --- the rest


def test_driver_version(package: str) -> None:
    assert validate_fleet(hosts(package, npu_driver_version="23.0.5")).hosts[0].to_vars()[
        "npu_driver_version"
    ] == ("23.0.5")
    assert (
        validate_fleet(hosts(package, npu_driver_version=23.0)).hosts[0].to_vars()["npu_driver_version"]
        == "23.0"
    )
    assert only_error(hosts(package, npu_driver_version="latest!")).setting == "npu_driver_version"


def test_commit(package: str) -> None:
    assert only_error(hosts(package, llava_train_commit="5d8f176")).setting == "llava_train_commit"


def test_train_env_merges_over_defaults(package: str) -> None:
    llava = validate_fleet(hosts(package, train_env={"HCCL_CONNECT_TIMEOUT": 600, "HCCL_IF_IP": "10.0.0.1"}))
    env = llava.hosts[0].to_vars()["train_env"]
    assert env == {
        "HCCL_CONNECT_TIMEOUT": "600",
        "TASK_QUEUE_ENABLE": "1",
        "CPU_AFFINITY_CONF": "1",
        "HCCL_IF_IP": "10.0.0.1",
    }
    assert only_error(hosts(package, train_env={"BAD-NAME": 1})).setting == "train_env"
    assert only_error(hosts(package, train_env=["A=1"])).setting == "train_env"


def test_hf_endpoint(package: str) -> None:
    assert validate_fleet(hosts(package, hf_endpoint="https://hf-mirror.com"))
    assert only_error(hosts(package, hf_endpoint="hf-mirror.com")).setting == "hf_endpoint"


def test_assets(package: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    raw = hosts(
        package,
        vision_tower="./playground/model/clip",
        image_folder="/home/ma-user/ws/images",
        assets={
            "images": {"source": "control", "path": str(images)},
            "vision_tower": {"source": "hub", "repo_id": "openai/clip-vit-large-patch14-336"},
            "pretrain_json": {"source": "server", "path": "/data/blip_laion_cc_sbu_558k.json"},
        },
    )
    assets = validate_fleet(raw).hosts[0].to_vars()["assets"]
    assert assets["images"]["dest"] == "/home/ma-user/ws/images"
    assert assets["vision_tower"]["dest"].endswith("/LLaVA/playground/model/clip")
    assert assets["llm"]["source"] == "none" and assets["llm"]["dest"] == "lmsys/vicuna-13b-v1.5"


@pytest.mark.parametrize(
    ("assets", "setting", "message"),
    [
        ({"llm": {"source": "hub"}}, "assets.llm", "needs repo_id"),
        ({"images": {"source": "control", "path": "/nonexistent/images"}}, "assets.images", "does not exist"),
        ({"images": {"source": "server", "path": "images"}}, "assets.images", "absolute"),
        ({"images": {"source": "ftp"}}, "assets.images.source", "control"),
        ({"llm": {"source": "hub", "repo_id": "lmsys/vicuna-13b-v1.5"}}, "assets.llm", "hub id"),
        ({"llm": {"sorce": "hub"}}, "assets.llm.sorce", "Extra inputs"),
    ],
)
def test_invalid_assets(package: str, assets: dict[str, Any], setting: str, message: str) -> None:
    error = only_error(hosts(package, assets=assets))
    assert error.setting == setting and message in error.message


def test_empty_group() -> None:
    error = only_error({})
    assert (error.host, error.setting) == (FLEET, "devservers")


def test_all_errors_at_once(package: str) -> None:
    raw = hosts(package)
    raw["ds-0"].update(work_dir="/", container_name="bad name", master_port=0)
    raw["ds-1"].update(npu_devices="0,0", container_imgae="x")
    errors = errors_of(raw)
    assert {(e.host, e.setting) for e in errors} == {
        ("ds-0", "work_dir"),
        ("ds-0", "container_name"),
        ("ds-0", "master_port"),
        ("ds-1", "npu_devices"),
        ("ds-1", "container_imgae"),
    }
    assert all(str(e).startswith(f"{e.host}: {e.setting}: ") for e in errors)


def test_schema_documents_every_setting() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == set(Settings.model_fields)
    assert all(prop.get("description") for prop in schema["properties"].values())
    assert schema["required"] == ["ansible_host", "ascendcloud_package"]


def test_fleet_settings_round_trip(package: str) -> None:
    fleet = validate_fleet(hosts(package))
    assert isinstance(fleet, FleetSettings)
    assert list(fleet.to_vars()) == ["ds-0", "ds-1"]


def test_cross_field_and_cross_host_rules_report_alongside_other_errors(package: str) -> None:
    raw = hosts(package)
    fetched_llm = {"llm": {"source": "hub", "repo_id": "x/y"}}
    raw["ds-0"].update(work_dir="/etc", npu_devices="0-8", assets=fetched_llm)
    raw["ds-1"].update(ansible_host="10.0.0.1", container_name="bad name")
    errors = errors_of(raw)
    assert {(e.host, e.setting) for e in errors} == {
        ("ds-0", "work_dir"),
        ("ds-0", "npu_devices"),  # the range rule needs npu_count: it still runs
        ("ds-0", "assets.llm"),  # a fetched llm needs a path, not the hub id lmsys/vicuna-13b-v1.5
        ("ds-1", "container_name"),
        ("fleet", "ansible_host"),  # the address rule runs over the servers that parsed
    }


def test_control_files_must_be_readable(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import llava_devserver.config as config_module

    real_access = config_module.os.access
    # root reads everything; pretend the package is not readable for the one path under test
    monkeypatch.setattr(
        config_module.os, "access", lambda path, mode: str(path) != package and real_access(path, mode)
    )
    error = only_error(hosts(package))
    assert (error.host, error.setting) == (
        FLEET,
        "ascendcloud_package",
    ) and "is not readable" in error.message
