"""The training container spec and the judgements of the role training_container (unit tests, no Docker)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llava.devserver.plugins.filter.container import FilterModule

from llava_devserver import container_spec as cs

LLAVA: dict[str, Any] = {
    "container_name": "llava-pretrain",
    "container_image": "swr.cn-southwest-2.myhuaweicloud.com/atelier/pytorch:tag",
    "container_shm_size": "32g",
    "npu_devices": [0, 1, 2, 3, 4, 5, 6, 7],
    "work_dir": "/data/llava-devserver",
    "container_work_dir": "/home/ma-user/ws",
}


def test_spec_is_the_guides_docker_run() -> None:
    spec = cs.container_spec(LLAVA)
    assert spec["devices"] == [f"/dev/davinci{n}:/dev/davinci{n}:rwm" for n in range(8)] + [
        "/dev/davinci_manager:/dev/davinci_manager:rwm",
        "/dev/devmm_svm:/dev/devmm_svm:rwm",
        "/dev/hisi_hdc:/dev/hisi_hdc:rwm",
    ]
    assert [(m["source"], m["target"]) for m in spec["mounts"]] == [
        ("/usr/local/dcmi", "/usr/local/dcmi"),
        ("/usr/local/Ascend/driver", "/usr/local/Ascend/driver"),
        ("/var/log/npu", "/usr/slog"),
        ("/usr/local/bin/npu-smi", "/usr/local/bin/npu-smi"),
        ("/data/llava-devserver", "/home/ma-user/ws"),
    ]
    assert all(m["type"] == "bind" for m in spec["mounts"])
    assert spec["network_mode"] == "host"
    assert spec["shm_size"] == "32g"
    assert (spec["command"], spec["interactive"], spec["tty"]) == ("/bin/bash", True, True)
    assert spec["name"] == "llava-pretrain" and spec["image"] == LLAVA["container_image"]
    assert "user" not in spec  # the image's default user (ma-user), as the guide says
    kinds = {c["source"]: c["kind"] for c in spec["mount_checks"]}
    assert kinds["/usr/local/bin/npu-smi"] == "file"
    assert kinds["/usr/local/dcmi"] == "directory"
    assert "/data/llava-devserver" not in kinds  # the role creates the work directory


def test_spec_subset_of_npus_in_given_order() -> None:
    spec = cs.container_spec({**LLAVA, "npu_devices": [4, 2]})
    assert spec["devices"][:2] == ["/dev/davinci4:/dev/davinci4:rwm", "/dev/davinci2:/dev/davinci2:rwm"]
    assert len(spec["devices"]) == 5 and spec["npus"] == [4, 2]


def test_spec_refuses_no_npus() -> None:
    with pytest.raises(ValueError, match="npu_devices is empty"):
        cs.container_spec({**LLAVA, "npu_devices": []})


def _stat(exists: bool = True, isdir: bool = False, isreg: bool = False) -> dict[str, Any]:
    return {"exists": exists, "isdir": isdir, "isreg": isreg} if exists else {"exists": False}


def test_mount_problems() -> None:
    checks = cs.container_spec(LLAVA)["mount_checks"]
    good = [_stat(isdir=True), _stat(isdir=True), _stat(isdir=True), _stat(isreg=True)]
    assert cs.mount_problems("h1", checks, good) == []
    missing = [_stat(exists=False), *good[1:]]
    (problem,) = cs.mount_problems("h1", checks, missing)
    assert problem.startswith("h1: mount source /usr/local/dcmi") and "does not exist" in problem
    npu_smi_dir = [*good[:3], _stat(isdir=True)]  # what Docker leaves behind after a missing -v source
    (problem,) = cs.mount_problems("h1", checks, npu_smi_dir)
    assert "/usr/local/bin/npu-smi" in problem and "must be a file but is a directory" in problem
    driver_file = [good[0], _stat(isreg=True), *good[2:]]
    (problem,) = cs.mount_problems("h1", checks, driver_file)
    assert "/usr/local/Ascend/driver" in problem and "must be a directory" in problem
    with pytest.raises(ValueError):
        cs.mount_problems("h1", checks, good[:2])


def _container(
    name: str, devices: list[str], env: list[str] | None = None, running: bool = True
) -> dict[str, Any]:
    return {
        "Name": f"/{name}",
        "State": {"Running": running},
        "HostConfig": {"Devices": [{"PathOnHost": d, "PathInContainer": d} for d in devices]},
        "Config": {"Env": env or []},
    }


def test_bound_npu_problems() -> None:
    inspect = [
        _container("other-user-job", ["/dev/davinci0", "/dev/davinci_manager"]),
        _container("llava-pretrain", ["/dev/davinci1"]),  # ours: a rerun must not trip over it
        _container("stopped", ["/dev/davinci1"], running=False),
        _container("runtime-job", [], env=["ASCEND_VISIBLE_DEVICES=3-4,6"]),
    ]
    problems = cs.bound_npu_problems("h2", json.dumps(inspect), [0, 1, 2, 3], "llava-pretrain")
    assert len(problems) == 2
    assert problems[0].startswith(
        "h2: NPU 0 (/dev/davinci0) is held by the running container 'other-user-job'"
    )
    assert "NPU 3" in problems[1] and "ASCEND_VISIBLE_DEVICES=3-4,6" in problems[1]
    assert cs.bound_npu_problems("h2", "", [0], "x") == []
    assert cs.bound_npu_problems("h2", inspect, [5, 7], "llava-pretrain") == []


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("swr.cn-southwest-2.myhuaweicloud.com/atelier/pytorch:tag", "swr.cn-southwest-2.myhuaweicloud.com"),
        ("172.18.0.5:5000/llava/train:abc", "172.18.0.5:5000"),
        ("localhost/x:1", "localhost"),
        ("llava-devserver/train:abc", "docker.io"),
        ("ubuntu", "docker.io"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert cs.registry_of(image) == registry


def test_pull_and_login_messages_name_the_cause_and_never_the_password() -> None:
    password = "s3cret-Pa55"
    raw = f"Error response: manifest for r:5000/llava/nope:1 not found: manifest unknown ({password})"
    message = cs.pull_problem("h1", "r:5000/llava/nope:1", cs.redact(raw, [password]))
    assert "was not found in the registry r:5000" in message and password not in message
    message = cs.pull_problem("h1", "r:5000/x:1", "unauthorized: authentication required")
    assert "refused" in message and "container_registry_password" in message
    message = cs.login_problem("h1", "r:5000", "llava", cs.redact(f"401 Unauthorized {password}", [password]))
    assert "login to the registry r:5000 as 'llava' failed" in message and password not in message
    assert cs.redact("abc", ["", None]) == "abc"


def test_loaded_problem() -> None:
    assert cs.loaded_problem("h1", "llava/train:1", "/a.tar", ["llava/train:1"]) is None
    assert cs.loaded_problem("h1", "ubuntu:22.04", "/a.tar", ["docker.io/library/ubuntu:22.04"]) is None
    message = cs.loaded_problem("h1", "llava/train:2", "/a.tar", ["llava/train:1"])
    assert message is not None and "holds llava/train:1, not container_image llava/train:2" in message


def test_visible_npu_problems() -> None:
    parsed = {"cards": [{"npu": 0}, {"npu": 1}]}
    assert cs.visible_npu_problems("h1", "c", parsed, [1, 0]) == []
    (problem,) = cs.visible_npu_problems("h1", "c", parsed, [0, 1, 2])
    assert "shows NPU [0, 1], expected [0, 1, 2]" in problem


def test_container_report() -> None:
    inspect = {
        "Id": "abc",
        "Name": "/llava-pretrain",
        "Image": "sha256:123",
        "State": {"Status": "running"},
        "Config": {"Image": "llava/train:1", "User": "ma-user"},
        "HostConfig": {
            "Devices": [{"PathOnHost": "/dev/davinci0"}],
            "ShmSize": 1 << 30,
            "NetworkMode": "host",
        },
        "Mounts": [{"Type": "bind", "Source": "/usr/local/dcmi", "Destination": "/usr/local/dcmi"}],
    }
    report = cs.container_report(inspect, {"RepoDigests": ["r/x@sha256:9"]})
    assert report == {
        "id": "abc",
        "name": "llava-pretrain",
        "image": "llava/train:1",
        "image_id": "sha256:123",
        "image_digests": ["r/x@sha256:9"],
        "user": "ma-user",
        "status": "running",
        "devices": ["/dev/davinci0"],
        "mounts": ["/usr/local/dcmi:/usr/local/dcmi"],
        "shm_size": 1 << 30,
        "network_mode": "host",
    }


def test_filters_are_thin_and_fail_as_filter_errors() -> None:
    filters = FilterModule().filters()
    assert filters["training_container_spec"](LLAVA)["name"] == "llava-pretrain"
    with pytest.raises(AnsibleFilterError, match="npu_devices is empty"):
        filters["training_container_spec"]({**LLAVA, "npu_devices": []})
    with pytest.raises(AnsibleFilterError, match="training_container_bound_problems"):
        filters["training_container_bound_problems"]("not json", "h", [0], "c")


def test_sim_registry_settings_make_the_role_pull() -> None:
    from llava_devserver.sim.registry import SimRegistry, registry_settings

    registry = SimRegistry("r", "172.30.0.2:5000", "127.0.0.1:32768", "llava", "pw")
    assert registry.reference("llava/train:1") == "172.30.0.2:5000/llava/train:1"
    assert registry.reference("llava/train:1", local=True) == "127.0.0.1:32768/llava/train:1"
    settings = registry_settings(registry, registry.reference("llava/train:1"))
    assert settings["container_image_archive"] is None
    assert settings["docker_engine_insecure_registries"] == ["172.30.0.2:5000"]
    assert cs.registry_of(str(settings["container_image"])) == "172.30.0.2:5000"
