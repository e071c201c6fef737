"""The HCCL host NIC of a multi-node job: the settings hccl_if_ip / hccl_socket_ifname, validated, rendered
into pretrain_new.sh, and by default the address of the server's route to the master, found at launch."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llava_devserver import render
from llava_devserver.config import FleetValidationError, validate_fleet

SCRIPT = "scripts/v1_5/pretrain_new.sh"


def fleet(tmp_path: Path, **host_settings: Any) -> dict[str, dict[str, Any]]:
    package = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    package.write_bytes(b"PK")
    return {
        f"ds-{i}": {
            "ansible_host": f"10.0.0.{i + 1}",
            "ascendcloud_package": str(package),
            "per_device_train_batch_size": 16,
            **host_settings,
        }
        for i in range(2)
    }


def test_settings_are_validated_and_normalised(tmp_path: Path) -> None:
    llava = validate_fleet(
        fleet(tmp_path, hccl_if_ip=" 10.0.0.1 ", hccl_socket_ifname="eth, =eth1")
    ).to_vars()
    assert llava["ds-0"]["hccl_if_ip"] == "10.0.0.1"
    assert llava["ds-0"]["hccl_socket_ifname"] == "eth,=eth1"
    defaults = validate_fleet(fleet(tmp_path)).to_vars()["ds-1"]
    assert (defaults["hccl_if_ip"], defaults["hccl_socket_ifname"]) == (None, None)
    assert (defaults["npu_ecc_errors_max"], defaults["npu_link_flaps_max"]) == (0, 3)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("hccl_if_ip", "10.0.0.300", "is not an IP address"),
        ("hccl_socket_ifname", "eth0;rm -rf /", "interface names or prefixes"),
        ("hccl_socket_ifname", "a-very-long-interface-name", "at most 15 characters"),
        ("npu_link_flaps_max", -1, "greater than or equal to 0"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, setting: str, value: Any, message: str) -> None:
    with pytest.raises(FleetValidationError) as caught:
        validate_fleet(fleet(tmp_path, **{setting: value}))
    text = str(caught.value)
    assert f": {setting}: " in text and message in text


def job(tmp_path: Path, **host_settings: Any) -> dict[str, Any]:
    return validate_fleet(fleet(tmp_path, **host_settings)).to_vars()["ds-1"]


def test_settings_are_exported_and_train_env_still_wins(tmp_path: Path) -> None:
    assert render.job_environment(job(tmp_path, hccl_if_ip="10.0.0.2"))["HCCL_IF_IP"] == "10.0.0.2"
    env = render.job_environment(job(tmp_path, hccl_socket_ifname="eth0"))
    assert env["HCCL_SOCKET_IFNAME"] == "eth0" and "HCCL_IF_IP" not in env
    both = render.job_environment(job(tmp_path, hccl_if_ip="10.0.0.2", train_env={"HCCL_IF_IP": "10.0.0.9"}))
    assert both["HCCL_IF_IP"] == "10.0.0.9"
    script = render.render_job(job(tmp_path, hccl_if_ip="10.0.0.2"))[SCRIPT]
    assert "export HCCL_IF_IP=10.0.0.2\n" in script
    assert "getsockname" not in script  # a given NIC: no discovery at launch


def test_default_is_the_source_address_of_the_route_to_the_master(tmp_path: Path) -> None:
    """The block the script runs at launch, run here with the master at 127.0.0.1: it finds 127.0.0.1."""
    settings = {**job(tmp_path), "master_addr": "127.0.0.1"}
    script = render.render_job(settings)[SCRIPT]
    block = re.search(r"^if HCCL_IF_IP=.*?^fi$", script, re.DOTALL | re.MULTILINE)
    assert block, script
    result = subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{block.group(0)}\necho "[$HCCL_IF_IP]"'],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[127.0.0.1]"
    unreachable = subprocess.run(
        [
            "bash",
            "-c",
            block.group(0).replace("127.0.0.1", "no-such-host.invalid") + '\necho "[${HCCL_IF_IP:-}]"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert unreachable.stdout.strip() == "[]"
    assert "HCCL picks the host NIC itself" in unreachable.stderr


def test_one_server_needs_no_host_nic(tmp_path: Path) -> None:
    settings = {**job(tmp_path), "nnodes": 1, "node_rank": 0}
    assert "HCCL_IF_IP" not in render.render_job(settings)[SCRIPT]
