"""Parse the outputs of `hccn_tool -i N ...`, the tool of the NPUs' own network (RoCE ports, device IPs).

Every NPU has a RoCE port with its own IP (the device IP); HCCL uses those between servers, not the host
network. Formats (Ascend HDK; nothing here relies on columns, case or line ends):

- `-ip -g`: `ipaddr:10.0.0.5` and `netmask:255.255.255.0`, on two lines or one; no IP set:
  `Get ipconf failed, because no ip was preset there!`
- `-link -g`: `link status: UP` (or `DOWN`)
- `-net_health -g`: `net health status: Success` (or `Fault`, `Init` before a detect IP is set, ...)
- `-tls -g`: `dev_id:0, tls switch[0](0:disable, 1:enable), tls preconfigured[1](...), ...` then the
  certificates; the switch is the number in `tls switch[...]`
- `-ping -g address A`: `device 0 PING A`, one `recv seq=...` or `recv time out seq=...` line a packet, then
  `3 packets transmitted, 3 received, 0.00% packet loss`
- `-netdetect -g`: `netdetect address: 10.0.0.1` (the detect IP; `0.0.0.0` or none printed: not set)
- `-link_stat -g`: `[device 0]link up count : 2`, (newer drivers) `link down count : 1`, then
  `[device 0]    Tue Jun  6 16:32:10 2023    LINK DOWN` records, newest first

`parse_hccn()` detects the kind from the text and returns a plain dict (the JSON of `llava-devserver hccn
parse --json`); text it cannot read raises `HccnParseError` with what it expected.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

KINDS = ("ip", "link", "net_health", "tls", "ping", "link_stat", "netdetect")
LINK_STATES = ("UP", "DOWN")
# The states the driver documents; others are passed through as printed.
NET_HEALTH_STATES = (
    "Success",
    "Init",
    "Fault",
    "Socket fail",
    "Receive timeout",
    "Unreachable",
    "Time exceeded",
    "Detect ip set",
    "Unknown",
)
_NET_HEALTH_BY_LOWER = {state.lower(): state for state in NET_HEALTH_STATES}

_NO_IP_RE = re.compile(r"get\s+ipconf\s+failed", re.IGNORECASE)
_IPADDR_RE = re.compile(r"\bipaddr\s*:\s*([0-9A-Fa-f.:]+)", re.IGNORECASE)
_NETMASK_RE = re.compile(r"\bnetmask\s*:\s*([0-9.]+)", re.IGNORECASE)
_LINK_RE = re.compile(r"\blink\s+status\s*:\s*(\w+)", re.IGNORECASE)
_HEALTH_RE = re.compile(r"\bnet\s+health\s+status\s*:\s*([^\r\n]*?)\s*$", re.IGNORECASE | re.MULTILINE)
_TLS_RE = re.compile(r"\btls\s+switch\s*\[\s*(\d+)\s*\]", re.IGNORECASE)
_PING_RE = re.compile(
    r"(\d+)\s+packets?\s+transmitted\s*,\s*(\d+)\s+(?:packets?\s+)?received\s*,\s*([0-9.]+)\s*%\s*packet\s+loss",
    re.IGNORECASE,
)
_NETDETECT_RE = re.compile(r"\bnetdetect\s+address\s*:\s*([0-9A-Fa-f.:]*)", re.IGNORECASE)
_LINK_UP_COUNT_RE = re.compile(r"link\s+up\s+count\s*:\s*(\d+)", re.IGNORECASE)
_LINK_DOWN_COUNT_RE = re.compile(r"link\s+down\s+count\s*:\s*(\d+)", re.IGNORECASE)
_LINK_RECORD_RE = re.compile(
    r"([A-Za-z]{3}\s+[A-Za-z]{3}\s+\d{1,2}\s+\d{1,2}:\d{2}:\d{2}\s+\d{4})\s+LINK\s+(UP|DOWN)\b", re.IGNORECASE
)
# What the tool prints when it could not ask the device at all.
_TOOL_ERRORS = (
    (
        re.compile(r"hccn_tool\s+is\s+busy", re.IGNORECASE),
        "hccn_tool is busy (another call on this card); retry",
    ),
    (
        re.compile(r"hccn_tool[^\n]*(?:not\s+found|no\s+such\s+file)", re.IGNORECASE),
        "hccn_tool is not installed: it comes with the Ascend driver (/usr/local/Ascend/driver/tools)",
    ),
    (
        re.compile(r"permission\s+denied", re.IGNORECASE),
        "hccn_tool was refused: run it as root",
    ),
    (
        re.compile(r"(?:invalid|illegal)\s+(?:device|dev)\s*id|device\s+id\s+is\s+invalid", re.IGNORECASE),
        "no such NPU: check the card number (npu-smi info -l)",
    ),
)


class HccnParseError(ValueError):
    """The text is not an `hccn_tool` output this parser reads (or the tool reported a failure)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _normalise(text: str) -> str:
    return str(text).replace("\r\n", "\n").replace("\r", "\n")


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise HccnParseError(f"hccn_tool -ip -g: {what} {value!r} is not an IP address") from exc


def parse_ip(text: str) -> dict[str, Any]:
    text = _normalise(text)
    if _NO_IP_RE.search(text):
        return {"kind": "ip", "ipaddr": None, "netmask": None}
    addresses = {_address(m, "ipaddr") for m in _IPADDR_RE.findall(text)}
    masks = {_address(m, "netmask") for m in _NETMASK_RE.findall(text)}
    if len(addresses) != 1:
        raise HccnParseError(
            "hccn_tool -ip -g: expected one ipaddr line"
            + (f", found {len(addresses)} (several cards' outputs? parse one at a time)" if addresses else "")
        )
    if len(masks) > 1:
        raise HccnParseError(f"hccn_tool -ip -g: several netmasks ({', '.join(sorted(masks))})")
    return {"kind": "ip", "ipaddr": addresses.pop(), "netmask": masks.pop() if masks else None}


def parse_link(text: str) -> dict[str, Any]:
    match = _LINK_RE.search(_normalise(text))
    if not match:
        raise HccnParseError("hccn_tool -link -g: no `link status:` line")
    return {"kind": "link", "status": match.group(1).upper()}


def parse_net_health(text: str) -> dict[str, Any]:
    match = _HEALTH_RE.search(_normalise(text))
    if not match or not match.group(1):
        raise HccnParseError("hccn_tool -net_health -g: no `net health status:` line")
    status = match.group(1)
    return {"kind": "net_health", "status": _NET_HEALTH_BY_LOWER.get(status.lower(), status)}


def parse_tls(text: str) -> dict[str, Any]:
    switches = {int(value) for value in _TLS_RE.findall(_normalise(text))}
    if not switches:
        raise HccnParseError("hccn_tool -tls -g: no `tls switch[N]` field")
    if len(switches) > 1 or not switches <= {0, 1}:
        raise HccnParseError(
            f"hccn_tool -tls -g: expected one switch of 0 or 1, found {sorted(switches)}"
            " (parse one card at a time)"
        )
    return {"kind": "tls", "switch": switches.pop()}


def parse_ping(text: str) -> dict[str, Any]:
    matches = _PING_RE.findall(_normalise(text))
    if not matches:
        raise HccnParseError(
            "hccn_tool -ping -g: no `N packets transmitted, M received, P% packet loss` line"
        )
    if len(matches) > 1:
        raise HccnParseError("hccn_tool -ping -g: several ping summaries (parse one ping at a time)")
    transmitted, received, loss = matches[0]
    return {
        "kind": "ping",
        "transmitted": int(transmitted),
        "received": int(received),
        "loss_pct": float(loss),
    }


def parse_link_stat(text: str) -> dict[str, Any]:
    text = _normalise(text)
    up = _LINK_UP_COUNT_RE.search(text)
    records = [
        {"time": " ".join(when.split()), "status": status.upper()}
        for when, status in _LINK_RECORD_RE.findall(text)
    ]
    if not up and not records:
        raise HccnParseError("hccn_tool -link_stat -g: no `link up count` line and no LINK UP/DOWN records")
    down = _LINK_DOWN_COUNT_RE.search(text)
    return {
        "kind": "link_stat",
        "up_count": int(up.group(1)) if up else sum(r["status"] == "UP" for r in records),
        # Older drivers print no down count: the records say it.
        "down_count": int(down.group(1)) if down else sum(r["status"] == "DOWN" for r in records),
        "records": records,
    }


def parse_netdetect(text: str) -> dict[str, Any]:
    match = _NETDETECT_RE.search(_normalise(text))
    if not match:
        raise HccnParseError("hccn_tool -netdetect -g: no `netdetect address:` line")
    value = match.group(1)
    address = _address(value, "netdetect address") if value else None
    return {"kind": "netdetect", "address": None if address in (None, "0.0.0.0") else address}


_PARSERS = {
    "ip": parse_ip,
    "link": parse_link,
    "net_health": parse_net_health,
    "tls": parse_tls,
    "ping": parse_ping,
    "link_stat": parse_link_stat,
    "netdetect": parse_netdetect,
}


def detect_kind(text: str) -> str:
    """Which `hccn_tool` output this is; HccnParseError for a tool failure or unknown text."""
    text = _normalise(text)
    if not text.strip():
        raise HccnParseError("empty hccn_tool output")
    checks = (
        ("ip", _NO_IP_RE.search(text) or _IPADDR_RE.search(text)),
        ("net_health", _HEALTH_RE.search(text)),
        ("tls", _TLS_RE.search(text)),
        ("ping", _PING_RE.search(text)),
        ("link_stat", _LINK_UP_COUNT_RE.search(text) or _LINK_RECORD_RE.search(text)),
        ("netdetect", _NETDETECT_RE.search(text)),
        ("link", _LINK_RE.search(text)),
    )
    for kind, found in checks:
        if found:
            return kind
    _raise_if_tool_error(text)
    raise HccnParseError(
        "not an hccn_tool output (expected -ip -g, -link -g, -net_health -g, -tls -g, -ping -g or"
        f" -link_stat -g): {_first_line(text)!r}"
    )


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]


def parse_hccn(text: str, kind: str | None = None) -> dict[str, Any]:
    """Parse one `hccn_tool -i N` output; `kind` (one of KINDS) skips the detection."""
    if kind is None:
        kind = detect_kind(text)
    elif kind not in _PARSERS:
        raise HccnParseError(f"unknown hccn_tool output kind {kind!r} (known: {', '.join(KINDS)})")
    elif not str(text).strip():
        raise HccnParseError(f"empty hccn_tool output (expected {kind})")
    try:
        return _PARSERS[kind](text)
    except HccnParseError:
        _raise_if_tool_error(_normalise(text))
        raise


def _raise_if_tool_error(text: str) -> None:
    for pattern, meaning in _TOOL_ERRORS:
        if pattern.search(text):
            raise HccnParseError(f"hccn_tool failed: {meaning} [hccn_tool said: {_first_line(text)}]")
