"""Declared device IPs: device_ips per server or a device_ip_cidr for the fleet, and device_detect_ip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llava_devserver.config import FleetValidationError, validate_fleet


def fleet(tmp_path: Path, per_host: dict[int, dict[str, Any]] | None = None, **common: Any) -> dict[str, Any]:
    package = tmp_path / "AscendCloud-6.3.906-20240618153000.zip"
    package.write_bytes(b"PK")
    return {
        f"ds-{i}": {
            "ansible_host": f"10.0.0.{i + 1}",
            "ascendcloud_package": str(package),
            "npu_devices": "0-1",
            "per_device_train_batch_size": 16,
            "global_batch_size": 64,
            **common,
            **(per_host or {}).get(i, {}),
        }
        for i in range(2)
    }


def errors(raw: dict[str, Any]) -> str:
    with pytest.raises(FleetValidationError) as caught:
        validate_fleet(raw)
    return str(caught.value)


def test_unset_configures_nothing(tmp_path: Path) -> None:
    llava = validate_fleet(fleet(tmp_path)).to_vars()["ds-0"]
    assert llava["device_ips"] is None and llava["device_detect_ip"] is None


def test_device_ips_per_server(tmp_path: Path) -> None:
    raw = fleet(
        tmp_path,
        {
            0: {"device_ips": ["10.90.1.11/24", "10.90.1.12/24"]},
            1: {"device_ips": "10.90.2.11/24,10.90.2.12/24"},
        },
    )
    llava = validate_fleet(raw).to_vars()
    assert llava["ds-1"]["device_ips"] == [
        {"card": 0, "address": "10.90.2.11", "netmask": "255.255.255.0"},
        {"card": 1, "address": "10.90.2.12", "netmask": "255.255.255.0"},
    ]


def test_cidr_gives_each_server_its_share_and_device_ips_win(tmp_path: Path) -> None:
    own = {1: {"device_ips": ["10.90.9.1/16", "10.90.9.2/16"]}}
    raw = fleet(tmp_path, own, device_ip_cidr="10.90.0.0/16", device_detect_ip="10.90.0.254")
    llava = validate_fleet(raw).to_vars()
    assert [e["address"] for e in llava["ds-0"]["device_ips"]] == ["10.90.0.1", "10.90.0.2"]
    assert llava["ds-0"]["device_ips"][0]["netmask"] == "255.255.0.0"
    assert [e["address"] for e in llava["ds-1"]["device_ips"]] == ["10.90.9.1", "10.90.9.2"]
    assert llava["ds-1"]["device_detect_ip"] == "10.90.0.254"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({0: {"device_ips": ["10.90.1.11/24"]}}, "ds-0: device_ips: 1 addresses for 2 cards"),
        ({0: {"device_ips": ["10.90.1.11/24", "10.90.3.11/24"]}}, "share one subnet"),
        ({0: {"device_ips": ["10.90.1.11", "10.90.1.12"]}}, "with its prefix"),
        ({0: {"device_ips": ["10.90.1.11/24", "bogus"]}}, "is not ADDRESS/PREFIX"),
        (
            {
                0: {"device_ips": ["10.90.1.11/24", "10.90.1.12/24"]},
                1: {"device_ips": ["10.90.1.12/24", "10.90.1.13/24"]},
            },
            "fleet: device_ips: 10.90.1.12 is given to ds-0 card 1 and ds-1 card 0",
        ),
        ({0: {"device_ip_cidr": "10.90.0.1/16"}, 1: {"device_ip_cidr": "10.90.0.1/16"}}, "host bits zero"),
        (
            {0: {"device_ip_cidr": "10.90.0.0/30"}, 1: {"device_ip_cidr": "10.90.0.0/30"}},
            "has no room for 2 servers",
        ),
        ({0: {"device_detect_ip": "10.90.0"}}, "device_detect_ip: '10.90.0' is not an IPv4 address"),
    ],
)
def test_bad_declarations_name_the_setting(
    tmp_path: Path, settings: dict[int, dict[str, Any]], message: str
) -> None:
    assert message in errors(fleet(tmp_path, settings))
