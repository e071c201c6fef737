"""What the metadata guard covers on one host, in words for the report (control node, pure function).

The role (roles/metadata_guard) adds REJECT rules for the metadata address: in DOCKER-USER for bridged
containers, and in OUTPUT for the uid of the training container's user, since host-network containers (the
guide's --net=host) never pass DOCKER-USER. It says exactly what that covers, and what it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def coverage(facts: Mapping[str, Any]) -> dict[str, list[str]]:
    """`{"covers": [...], "not_covered": [...]}` from what the role found and set on the host.

    `facts`: enabled, address, addresses_v6 (list), uid (str, "" for none), v4_chain, v6_chain (DOCKER-USER
    exists for iptables / ip6tables), v6 (ip6tables works), container (the training container's name).
    """
    if not facts.get("enabled"):
        return {"covers": [], "not_covered": ["everything: metadata_guard is false (the rules are removed)"]}
    address = str(facts.get("address"))
    v6 = [str(a) for a in facts.get("addresses_v6") or []]
    uid = str(facts.get("uid") or "")
    container = facts.get("container") or "the training container"
    covers: list[str] = []
    missing: list[str] = []
    if facts.get("v4_chain"):
        covers.append(f"IPv4 {address} from bridged containers (DOCKER-USER)")
    else:
        missing.append(f"IPv4 {address} from bridged containers: no DOCKER-USER chain (Docker not running?)")
    if uid:
        covers.append(
            f"IPv4 {address} from every process of uid {uid} (OUTPUT, -m owner): the host-network "
            f"container {container} as its image user, and that uid on the host itself"
        )
    else:
        missing.append(f"IPv4 {address} from host-network containers: no container uid is set")
    if v6:
        listed = ", ".join(v6)
        if facts.get("v6_chain"):
            covers.append(f"IPv6 {listed} from bridged containers (ip6tables DOCKER-USER)")
        else:
            missing.append(
                f"IPv6 {listed} from bridged containers: Docker made no ip6tables DOCKER-USER chain "
                "(its IPv6 support is off, so bridged containers get no IPv6 route)"
            )
        if facts.get("v6") and uid:
            covers.append(f"IPv6 {listed} from every process of uid {uid} (ip6tables OUTPUT, -m owner)")
        elif uid:
            missing.append(
                f"IPv6 {listed} from host-network containers: ip6tables does not work on this host"
            )
    missing.append(
        f"root (uid 0) inside a host-network container such as {container}: to iptables it is the host's root"
    )
    return {"covers": covers, "not_covered": missing}
