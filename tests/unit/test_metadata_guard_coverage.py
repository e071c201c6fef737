"""The metadata guard says exactly what it covers: bridged containers (DOCKER-USER), host-network containers
by the container user's uid (OUTPUT), IPv6 where ip6tables works, never root in a host-network container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llava_devserver.config import Settings
from llava_devserver.metadata_guard import coverage

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "enabled": True, "address": "169.254.169.254", "addresses_v6": ["fd00:ec2::254"], "uid": "1000",
    "v4_chain": True, "v6_chain": False, "v6": True, "container": "llava-pretrain",
}  # fmt: skip


def test_everything_the_rules_cover_is_listed() -> None:
    out = coverage(BASE)
    assert out["covers"] == [
        "IPv4 169.254.169.254 from bridged containers (DOCKER-USER)",
        "IPv4 169.254.169.254 from every process of uid 1000 (OUTPUT, -m owner): the host-network container "
        "llava-pretrain as its image user, and that uid on the host itself",
        "IPv6 fd00:ec2::254 from every process of uid 1000 (ip6tables OUTPUT, -m owner)",
    ]
    assert any("no ip6tables DOCKER-USER" in line for line in out["not_covered"])
    assert out["not_covered"][-1].startswith(
        "root (uid 0) inside a host-network container such as llava-pretrain"
    )


def test_missing_pieces_are_said() -> None:
    out = coverage({**BASE, "v4_chain": False, "v6": False, "uid": ""})
    assert not any("uid" in line for line in out["covers"])
    assert any("no container uid is set" in line for line in out["not_covered"])
    assert any("no DOCKER-USER chain" in line for line in out["not_covered"])
    off = coverage({**BASE, "enabled": False})
    assert off["covers"] == [] and "metadata_guard is false" in off["not_covered"][0]
    v6_everywhere = coverage({**BASE, "v6_chain": True})
    assert "IPv6 fd00:ec2::254 from bridged containers (ip6tables DOCKER-USER)" in v6_everywhere["covers"]


def test_role_rules_match_the_coverage() -> None:
    tasks = yaml.safe_load((REPO / "roles/metadata_guard/tasks/main.yml").read_text())
    rules = [t["ansible.builtin.iptables"] for t in tasks if "ansible.builtin.iptables" in t]
    chains = sorted((r["chain"], r["ip_version"], "uid_owner" in r) for r in rules)
    assert chains == [
        ("DOCKER-USER", "ipv4", False), ("DOCKER-USER", "ipv6", False),
        ("OUTPUT", "ipv4", True), ("OUTPUT", "ipv6", True),
    ]  # fmt: skip
    assert all(r["jump"] == "REJECT" and r["comment"] == "{{ metadata_guard_comment }}" for r in rules)


def test_the_setting_says_what_is_covered() -> None:
    text = str(Settings.model_fields["metadata_guard"].description)
    for words in (
        "DOCKER-USER",
        "host networking",
        "-m owner",
        "IPv6",
        "Root inside a host-network container",
    ):
        assert words in text, words
