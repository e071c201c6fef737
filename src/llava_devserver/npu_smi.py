"""Parse `npu-smi` output (`info`, `info -l`, `info -t board -i N`) and check it against expectations.

The layouts differ by driver version and chip, so nothing here relies on fixed column offsets:

- `npu-smi info` is a `|`-separated table whose two header rows (`NPU Name | Health | Power(W) ...` and
  `Chip [Phy-ID|Device] | Bus-Id | AICore(%) ...`) name the whitespace-separated values of the two rows
  each chip prints. Values are mapped to fields by those names, so a new or missing column shifts nothing.
  `X / Y`, `X/ Y` and `X /Y` pairs are one value. 910B prints one chip per NPU; A3 (910C) prints two dies
  per NPU with `-` as the power of the second; NPU ids can be non-contiguous (VMs); a
  `[WARNING]...` line can follow the table; the process table comes after the card table.
- `npu-smi info -l` and `-t board` print `Key : value` lines (indented with a tab, or spaces once
  copied); `-l` starts with `Total Count` (older drivers: `Card Count`) and then one block per NPU.
- When the DCMI library cannot start, `npu-smi` prints `dcmi module initialize failed. ret is -8005`
  (or `dcmi model initialized failed, because the device is used. ret is -8020`): that output raises
  `NpuSmiToolError` with what the code means and what to do.

`check_npu_smi()` turns a parsed output plus the host's expectations (`npu_count`, `npu_devices`,
`npu_driver_version`) into a list of problems, one sentence each, naming the card or the cause. The
Ansible filter plugin `npu_smi` is a thin adapter over `parse_npu_smi()` and `check_npu_smi()`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

HEALTH_VALUES = ("OK", "Warning", "Alarm", "Critical", "UNKNOWN")
_HEALTH_BY_LOWER = {value.lower(): value for value in HEALTH_VALUES}

OutputKind = Literal["info", "list", "board"]

# Values npu-smi prints where it has no number.
_NOT_AVAILABLE = {"-", "NA", "N/A", ""}

FAKE_NPU_SMI = Path(__file__).parent / "sim" / "files" / "npu-smi"
"""The simulated fleet's stand-in for the real tool (a standalone stdlib script)."""


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class NpuSmiError(Exception):
    """Base class: the text could not be turned into a result."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NpuSmiParseError(NpuSmiError):
    """The text is not an `npu-smi` output this parser knows, or is damaged."""


class NpuSmiToolError(NpuSmiError):
    """`npu-smi` itself reported a failure (DCMI error code, driver library missing)."""

    def __init__(self, code: int | None, meaning: str, action: str, evidence: str) -> None:
        self.code = code
        self.meaning = meaning
        self.action = action
        self.evidence = evidence
        label = f"npu-smi failed with DCMI error {code}" if code is not None else "npu-smi failed"
        super().__init__(f"{label} ({meaning}): {action} [npu-smi said: {evidence}]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "meaning": self.meaning,
            "action": self.action,
            "evidence": self.evidence,
            "message": self.message,
        }


_RELEASE_NPUS = (
    "release the NPUs: stop or remove the container (or process) that holds /dev/davinciN "
    "(`docker ps` and `docker inspect` show which container mounts them; one NPU cannot be shared by "
    "two containers)"
)

# Meanings from Huawei's DCMI return-code table; the actions are what helps on a DevServer.
_DCMI_CODES: dict[int, tuple[str, str]] = {
    -8001: (
        "invalid parameter while initialising DCMI",
        "the driver and firmware do not match or the driver is incompletely installed: install the "
        "driver/firmware versions that match each other (and the CANN version), then reboot",
    ),
    -8002: ("operation not permitted", "run npu-smi as root"),
    -8005: (
        "DCMI internal error at initialisation",
        f"the NPUs are most often still held by another container; {_RELEASE_NPUS}. If none holds them, "
        "the driver is not loaded or was upgraded without a reboot: check `lsmod | grep drv_`, reboot "
        "after a driver/firmware upgrade, and run npu-smi as root",
    ),
    -8007: ("invalid device id", "use an NPU id that `npu-smi info -l` lists"),
    -8008: ("device does not exist", "the NPU is not visible: check the card and the driver installation"),
    -8012: ("device not ready", "the NPU is still starting: retry in a minute"),
    -8017: ("device is upgrading", "wait for the firmware upgrade to finish, then reboot"),
    -8020: ("device resource occupied", f"another container or process is using the NPU; {_RELEASE_NPUS}"),
}

_DCMI_RE = re.compile(r"dcmi\s+mod\w*\s+initiali[sz]\w*\s+failed[^\n]*?ret\s+is\s+(-?\d+)", re.IGNORECASE)
_DRIVER_MISSING_RE = re.compile(
    r"error while loading shared libraries|npu-smi: (?:command )?not found|No such file or directory",
    re.IGNORECASE,
)


def _raise_if_tool_error(text: str) -> None:
    match = _DCMI_RE.search(text)
    if match:
        code = int(match.group(1))
        meaning, action = _DCMI_CODES.get(
            code,
            (
                "unlisted DCMI error",
                "look the code up in Huawei's DCMI return-code table; check the driver, firmware and "
                "whether another container holds the NPUs",
            ),
        )
        line = text[text.rfind("\n", 0, match.start()) + 1 : match.end()].strip()
        raise NpuSmiToolError(code, meaning, action, line)
    match = _DRIVER_MISSING_RE.search(text)
    if match and "|" not in text:
        line = text[text.rfind("\n", 0, match.start()) + 1 :].split("\n", 1)[0].strip()
        raise NpuSmiToolError(
            None,
            "the driver's npu-smi or its libraries are missing",
            "install the Ascend NPU driver and firmware (they provide /usr/local/bin/npu-smi and "
            "/usr/local/Ascend/driver), then reboot",
            line,
        )


# --------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------


@dataclass
class NpuChip:
    """One chip (die) row pair of `npu-smi info`. 910B: one per NPU; A3/910C: two per NPU."""

    npu: int
    chip: int
    name: str
    health: str
    bus_id: str | None = None
    phy_id: int | None = None  # `Phy-ID` (A3) or `Device` (310P): the /dev/davinciN index when printed
    power_w: float | None = None
    temp_c: int | float | None = None
    aicore_pct: int | float | None = None
    hbm_used_mb: int | None = None
    hbm_total_mb: int | None = None
    memory_used_mb: int | None = None
    memory_total_mb: int | None = None
    hugepages_used: int | None = None
    hugepages_total: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # columns this parser has no field for

    @property
    def device_id(self) -> int:
        """The /dev/davinciN index: Phy-ID where printed (A3), else the NPU id (910B)."""
        return self.phy_id if self.phy_id is not None else self.npu

    @property
    def label(self) -> str:
        where = f", {self.bus_id}" if self.bus_id else ""
        return f"NPU {self.npu} chip {self.chip}{where}"


@dataclass
class NpuProcess:
    npu: int
    chip: int
    pid: int
    name: str
    memory_mb: int | None


@dataclass
class NpuSmiInfo:
    """`npu-smi info`."""

    version: str | None  # of npu-smi
    driver_version: str | None  # the `Version:` of the title row
    cards: list[NpuChip]
    processes: list[NpuProcess] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kind: OutputKind = "info"

    @property
    def npu_ids(self) -> list[int]:
        return sorted({card.npu for card in self.cards})

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "driver_version": self.driver_version,
            "npu_count": len(self.npu_ids),
            "npu_ids": self.npu_ids,
            "total_count": None,
            "cards": [asdict(card) | {"device_id": card.device_id} for card in self.cards],
            "processes": [asdict(process) for process in self.processes],
            "warnings": list(self.warnings),
        }


@dataclass
class NpuListEntry:
    npu: int
    chip_count: int | None
    fields: dict[str, str] = field(default_factory=dict)  # every `Key : value` of the block


@dataclass
class NpuSmiList:
    """`npu-smi info -l`."""

    total_count: int
    cards: list[NpuListEntry]
    warnings: list[str] = field(default_factory=list)
    kind: OutputKind = "list"

    @property
    def npu_ids(self) -> list[int]:
        return sorted(entry.npu for entry in self.cards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "total_count": self.total_count,
            "npu_count": self.total_count,
            "npu_ids": self.npu_ids,
            "cards": [asdict(entry) for entry in self.cards],
            "warnings": list(self.warnings),
        }


@dataclass
class NpuSmiBoard:
    """`npu-smi info -t board -i N`: the key/value mapping, with the well-known keys lifted out."""

    npu: int | None
    fields: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    kind: OutputKind = "board"

    @property
    def driver_version(self) -> str | None:
        return self.fields.get("Software Version")

    @property
    def firmware_version(self) -> str | None:
        return self.fields.get("Firmware Version")

    @property
    def bus_id(self) -> str | None:
        return _text_or_none(self.fields.get("PCIe Bus Info"))

    @property
    def chip_count(self) -> int | None:
        return _int_or_none(self.fields.get("Chip Count"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "npu": self.npu,
            "driver_version": self.driver_version,
            "firmware_version": self.firmware_version,
            "total_count": None,
            "cards": [{"npu": self.npu, "bus_id": self.bus_id, "chip_count": self.chip_count}],
            "board": dict(self.fields),
            "warnings": list(self.warnings),
        }


NpuSmiOutput = NpuSmiInfo | NpuSmiList | NpuSmiBoard


# --------------------------------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------------------------------


def _text_or_none(value: str | None) -> str | None:
    return None if value is None or value.strip() in _NOT_AVAILABLE else value.strip()


def _int_or_none(value: str | None) -> int | None:
    text = _text_or_none(value)
    if text is None:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _float_or_none(value: str | None) -> float | None:
    text = _text_or_none(value)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _number_or_none(value: str | None) -> int | float | None:
    """An int where npu-smi prints one (`55`), else a float (`55.5`)."""
    number = _float_or_none(value)
    if number is None or value is None:
        return None
    return int(number) if number.is_integer() and "." not in value else number


def _pair(value: str | None) -> tuple[int | None, int | None]:
    """`3338/65536` (already joined) -> (3338, 65536); anything else -> (None, None)."""
    if value is None or "/" not in value:
        return None, None
    used, _, total = value.partition("/")
    return _int_or_none(used), _int_or_none(total)


def _is_warning(line: str) -> bool:
    return line.lstrip().upper().startswith("[WARNING]") or line.lstrip().upper().startswith("WARNING")


# --------------------------------------------------------------------------------------------------
# `npu-smi info`
# --------------------------------------------------------------------------------------------------

_VERSION_RE = re.compile(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)", re.IGNORECASE)

# Header label -> field (card row or chip row); unknown labels go to `extra`.
_LABELS = {
    "npu": "npu",
    "name": "name",
    "health": "health",
    "power(w)": "power_w",
    "temp(c)": "temp_c",
    "hugepages-usage(page)": "hugepages",
    "chip": "chip",
    "phy-id": "phy_id",
    "device": "phy_id",
    "bus-id": "bus_id",
    "aicore(%)": "aicore_pct",
    "memory-usage(mb)": "memory",
    "hbm-usage(mb)": "hbm",
}


def _cells(line: str) -> list[str]:
    """`| a | b |` -> ['a', 'b'] (outer bars dropped, inner text kept)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    return [cell.strip() for cell in body.split("|")]


def _tokens(cell: str) -> list[str]:
    """Whitespace tokens of a value cell, with `X / Y`, `X/ Y`, `X /Y` joined into one `X/Y`."""
    return re.sub(r"\s*/\s*", "/", cell.strip()).split()


def _is_rule(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("+") and set(stripped) <= {"+", "-", "="}


def _map_row(header: list[list[str]], line: str, line_no: int) -> dict[str, str]:
    cells = _cells(line)
    if len(cells) != len(header):
        raise NpuSmiParseError(
            f"npu-smi info: line {line_no} has {len(cells)} columns, the header has {len(header)}: "
            f"{line.strip()!r}"
        )
    row: dict[str, str] = {}
    for labels, cell in zip(header, cells, strict=True):
        values = _tokens(cell)
        if len(values) > len(labels):
            raise NpuSmiParseError(
                f"npu-smi info: line {line_no} has {len(values)} values under {' '.join(labels)!r}, "
                f"expected {len(labels)}: {line.strip()!r}"
            )
        # A trailing value may be absent (blank cell); the rest map by name, not by offset.
        for label, value in zip(labels, values, strict=False):
            row[label] = value
    return row


def _chip_from_rows(card_row: dict[str, str], chip_row: dict[str, str], line_no: int) -> NpuChip:
    merged = {**card_row, **chip_row}
    known: dict[str, str] = {}
    extra: dict[str, str] = {}
    for label, value in merged.items():
        key = _LABELS.get(label.lower())
        if key is None:
            extra[label] = value
        else:
            known[key] = value
    npu = _int_or_none(known.get("npu"))
    chip = _int_or_none(known.get("chip"))
    if npu is None or chip is None:
        raise NpuSmiParseError(
            f"npu-smi info: the chip ending at line {line_no} has no numeric NPU/Chip id "
            f"(NPU={known.get('npu')!r}, Chip={known.get('chip')!r})"
        )
    health_text = known.get("health", "")
    health = _HEALTH_BY_LOWER.get(health_text.lower(), health_text)
    if not health:
        raise NpuSmiParseError(f"npu-smi info: NPU {npu} chip {chip} has no Health value (line {line_no})")
    hbm_used, hbm_total = _pair(known.get("hbm"))
    memory_used, memory_total = _pair(known.get("memory"))
    hugepages_used, hugepages_total = _pair(known.get("hugepages"))
    return NpuChip(
        npu=npu,
        chip=chip,
        name=known.get("name", ""),
        health=health,
        bus_id=_text_or_none(known.get("bus_id")),
        phy_id=_int_or_none(known.get("phy_id")),
        power_w=_float_or_none(known.get("power_w")),
        temp_c=_number_or_none(known.get("temp_c")),
        aicore_pct=_number_or_none(known.get("aicore_pct")),
        hbm_used_mb=hbm_used,
        hbm_total_mb=hbm_total,
        memory_used_mb=memory_used,
        memory_total_mb=memory_total,
        hugepages_used=hugepages_used,
        hugepages_total=hugepages_total,
        extra=extra,
    )


def _header_labels(line: str) -> list[list[str]]:
    return [cell.split() for cell in _cells(line)]


def _is_card_header(line: str) -> bool:
    if not line.lstrip().startswith("|"):
        return False
    labels = _header_labels(line)
    return bool(labels) and labels[0][:1] == ["NPU"] and "Name" in labels[0] and "Process" not in line


def _is_process_header(line: str) -> bool:
    return line.lstrip().startswith("|") and "Process" in line and _cells(line)[0].split()[:1] == ["NPU"]


def parse_info(text: str) -> NpuSmiInfo:
    """Parse `npu-smi info`."""
    _raise_if_tool_error(text)
    lines = text.splitlines()
    version = driver_version = None
    for line in lines:
        match = _VERSION_RE.search(line)
        if match:
            version, driver_version = match.group(1), match.group(2)
            break
    start = next((i for i, line in enumerate(lines) if _is_card_header(line)), None)
    if start is None:
        raise NpuSmiParseError(
            "npu-smi info: no card table header (a `| NPU  Name | Health | ...` row) was found"
        )
    chip_header_no = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("|")), None
    )
    if chip_header_no is None or _cells(lines[chip_header_no])[0].split()[:1] != ["Chip"]:
        raise NpuSmiParseError(
            f"npu-smi info: the card header at line {start + 1} is not followed by a `| Chip ...` header row"
        )
    card_header = _header_labels(lines[start])
    chip_header = _header_labels(lines[chip_header_no])

    cards: list[NpuChip] = []
    processes: list[NpuProcess] = []
    warnings: list[str] = []
    pending: dict[str, str] | None = None  # the card row waiting for its chip row
    index = chip_header_no + 1
    while index < len(lines):
        line = lines[index]
        line_no = index + 1
        index += 1
        if not line.strip() or _is_rule(line):
            continue
        if _is_process_header(line):
            index = _parse_processes(lines, index, processes, warnings)
            continue
        if not line.lstrip().startswith("|"):
            if _is_warning(line) or line.strip():
                warnings.append(line.strip())
            continue
        if pending is None:
            pending = _map_row(card_header, line, line_no)
        else:
            cards.append(_chip_from_rows(pending, _map_row(chip_header, line, line_no), line_no))
            pending = None
    if pending is not None:
        raise NpuSmiParseError(
            f"npu-smi info: NPU {pending.get('NPU', '?')} has its name row but no chip row "
            "(output cut short?)"
        )
    return NpuSmiInfo(
        version=version, driver_version=driver_version, cards=cards, processes=processes, warnings=warnings
    )


def _parse_processes(lines: list[str], index: int, processes: list[NpuProcess], warnings: list[str]) -> int:
    """Read the process table that starts after its header; return the index after it."""
    while index < len(lines):
        line = lines[index]
        if not line.strip() or _is_rule(line):
            index += 1
            continue
        if not line.lstrip().startswith("|"):
            return index  # a trailing [WARNING] line: the caller records it
        index += 1
        cells = _cells(line)
        if len(cells) < 4 or "no running processes" in line.lower():
            continue
        ids = cells[0].split()
        npu = _int_or_none(ids[0] if ids else None)
        chip = _int_or_none(ids[1] if len(ids) > 1 else "0")
        pid = _int_or_none(cells[1])
        if npu is None or chip is None or pid is None:
            warnings.append(f"unreadable process row: {line.strip()}")
            continue
        processes.append(
            NpuProcess(npu=npu, chip=chip, pid=pid, name=cells[2], memory_mb=_int_or_none(cells[3]))
        )
    return index


# --------------------------------------------------------------------------------------------------
# `npu-smi info -l` and `-t board`
# --------------------------------------------------------------------------------------------------

_KEY_VALUE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/_.-]*?)\s*:\s*(.*?)\s*$")


def _key_values(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    pairs: list[tuple[str, str]] = []
    others: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # A trailing `# comment` is not npu-smi's, but copies in documents carry them.
        match = _KEY_VALUE_RE.match(line.split("\t#", 1)[0])
        if match and not _is_warning(line):
            pairs.append((match.group(1), match.group(2)))
        else:
            others.append(line.strip())
    return pairs, others


def parse_list(text: str) -> NpuSmiList:
    """Parse `npu-smi info -l`."""
    _raise_if_tool_error(text)
    pairs, others = _key_values(text)
    total: int | None = None
    cards: list[NpuListEntry] = []
    for key, value in pairs:
        if key in ("Total Count", "Card Count"):
            total = _int_or_none(value)
            if total is None:
                raise NpuSmiParseError(f"npu-smi info -l: {key} is not a number: {value!r}")
        elif key == "NPU ID":
            npu = _int_or_none(value)
            if npu is None:
                raise NpuSmiParseError(f"npu-smi info -l: NPU ID is not a number: {value!r}")
            cards.append(NpuListEntry(npu=npu, chip_count=None))
        elif cards:
            cards[-1].fields[key] = value
            if key == "Chip Count":
                cards[-1].chip_count = _int_or_none(value)
    if total is None:
        raise NpuSmiParseError("npu-smi info -l: no `Total Count` (or `Card Count`) line was found")
    return NpuSmiList(total_count=total, cards=cards, warnings=others)


def parse_board(text: str) -> NpuSmiBoard:
    """Parse `npu-smi info -t board -i N`."""
    _raise_if_tool_error(text)
    pairs, others = _key_values(text)
    if not pairs:
        raise NpuSmiParseError("npu-smi info -t board: no `Key : value` lines were found")
    fields = dict(pairs)
    if "Software Version" not in fields and "NPU ID" not in fields:
        raise NpuSmiParseError(
            "npu-smi info -t board: expected `NPU ID` and `Software Version` lines, found "
            + ", ".join(sorted(fields))
        )
    return NpuSmiBoard(npu=_int_or_none(fields.get("NPU ID")), fields=fields, warnings=others)


# --------------------------------------------------------------------------------------------------
# Auto-detection, JSON and checks
# --------------------------------------------------------------------------------------------------


def detect_kind(text: str) -> OutputKind:
    """Which of the three outputs `text` is (after tool errors have been ruled out)."""
    lines = text.splitlines()
    if any(_is_card_header(line) for line in lines):
        return "info"
    if re.search(r"^\s*(Total|Card) Count\s*:", text, re.MULTILINE):
        return "list"
    if re.search(r"^\s*(Software Version|Firmware Version|PCIe Bus Info)\s*:", text, re.MULTILINE):
        return "board"
    snippet = next((line.strip() for line in lines if line.strip()), "")
    raise NpuSmiParseError(
        "not an npu-smi output this parser knows: expected `npu-smi info` (a `| NPU  Name | Health |` "
        "table), `npu-smi info -l` (`Total Count : N`) or `npu-smi info -t board -i N` "
        f"(`Software Version : ...`); the text starts with {snippet[:80]!r}"
        if snippet
        else "empty npu-smi output: expected `npu-smi info`, `npu-smi info -l` or "
        "`npu-smi info -t board -i N`"
    )


def parse_npu_smi(text: str) -> NpuSmiOutput:
    """Parse any of the three outputs, auto-detected. Raises NpuSmiToolError or NpuSmiParseError."""
    _raise_if_tool_error(text)
    kind = detect_kind(text)
    if kind == "info":
        return parse_info(text)
    if kind == "list":
        return parse_list(text)
    return parse_board(text)


def npu_smi_to_dict(text: str) -> dict[str, Any]:
    """The JSON contract of `llava-devserver npu-smi parse --json` and of the `npu_smi_info` filter."""
    return parse_npu_smi(text).to_dict()


def _as_int_list(values: Iterable[Any]) -> list[int]:
    return sorted({int(value) for value in values})


def check_npu_smi(
    output: str | Mapping[str, Any] | NpuSmiOutput,
    *,
    npu_count: int | None = None,
    npu_devices: Sequence[int] | None = None,
    driver_version: str | None = None,
) -> list[str]:
    """Problems of one host's npu-smi output against its expectations; [] when all is well.

    `output` is the raw text, the dict of `npu_smi_to_dict()`, or a parsed result. Checks, where the
    output carries the information: the NPU count equals `npu_count`; every id of `npu_devices` is
    reported (the Phy-ID on A3, else the NPU id); every chip in use (those of `npu_devices`, or all when
    none are given) is healthy (`OK`); the driver version equals `driver_version`.
    A tool failure (e.g. DCMI -8005) or unreadable text is the one problem returned.
    """
    try:
        parsed: NpuSmiOutput | Mapping[str, Any]
        parsed = parse_npu_smi(output) if isinstance(output, str) else output
    except NpuSmiError as exc:
        return [exc.message]
    data = parsed if isinstance(parsed, Mapping) else parsed.to_dict()
    kind = data.get("kind")
    problems: list[str] = []
    wanted = _as_int_list(npu_devices) if npu_devices is not None else None

    if kind == "info":
        cards = list(data.get("cards", []))
        npu_ids = _as_int_list(card["npu"] for card in cards)
        if npu_count is not None and len(npu_ids) != int(npu_count):
            problems.append(
                f"expected {npu_count} NPUs (npu_count) but npu-smi info reports {len(npu_ids)}: "
                f"{_id_list(npu_ids)}"
            )
        device_ids = _as_int_list(card.get("device_id", card["npu"]) for card in cards)
        if wanted is not None:
            missing = [device for device in wanted if device not in device_ids]
            if missing:
                problems.append(
                    f"NPU {_id_list(missing)} of npu_devices {_id_list(wanted)} not reported by npu-smi info "
                    f"(it reports {_id_list(device_ids)})"
                )
        for card in cards:
            device = card.get("device_id", card["npu"])
            if wanted is not None and device not in wanted:
                continue
            if card.get("health") != "OK":
                bus = f", {card['bus_id']}" if card.get("bus_id") else ""
                problems.append(
                    f"NPU {card['npu']} chip {card['chip']}{bus} health is {card.get('health')!r}, "
                    "expected 'OK'"
                )
        _check_driver(problems, data.get("driver_version"), driver_version, "npu-smi info")
    elif kind == "list":
        total = data.get("total_count")
        if npu_count is not None and total != int(npu_count):
            ids = _as_int_list(card["npu"] for card in data.get("cards", []))
            problems.append(
                f"expected {npu_count} NPUs (npu_count) but npu-smi info -l reports Total Count {total}: "
                f"{_id_list(ids)}"
            )
        if wanted is not None:
            ids = _as_int_list(card["npu"] for card in data.get("cards", []))
            missing = [device for device in wanted if device not in ids]
            if missing:
                problems.append(
                    f"NPU {_id_list(missing)} of npu_devices {_id_list(wanted)} not listed by npu-smi info -l"
                )
    elif kind == "board":
        _check_driver(
            problems,
            data.get("driver_version"),
            driver_version,
            f"npu-smi info -t board -i {data.get('npu')}",
        )
    else:
        problems.append(
            f"not a parsed npu-smi output (kind {kind!r}); pass the text or npu_smi_info's result"
        )
    return problems


def _check_driver(problems: list[str], found: str | None, expected: str | None, source: str) -> None:
    if expected is None or str(expected).strip() == "":
        return
    if found is None:
        problems.append(f"{source} shows no driver version; expected {expected} (npu_driver_version)")
    elif str(found).strip().lower() != str(expected).strip().lower():
        problems.append(f"driver version is {found}, expected {expected} (npu_driver_version)")


def _id_list(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids) if ids else "none"


# --------------------------------------------------------------------------------------------------
# The simulated fleet's state (read by sim/files/npu-smi)
# --------------------------------------------------------------------------------------------------

# Bus ids of an 8-card 910B server (from a real one), then made-up ones for larger counts.
_SIM_BUS_IDS = ("C1", "C2", "81", "82", "01", "02", "41", "42")


def default_sim_state(n_cards: int = 8, driver_version: str = "23.0.5") -> dict[str, Any]:
    """A healthy 910B3 server's state for the fake npu-smi (`/etc/npu-sim/state.json`).

    Faults are edits of the result: a card's `health` to `Critical`, a card removed, another
    `driver_version`, `error` to `"-8005"` (see the schema at the top of sim/files/npu-smi).
    """
    if n_cards < 0:
        raise ValueError(f"n_cards must be >= 0, got {n_cards}")
    cards = []
    for npu in range(n_cards):
        bus = _SIM_BUS_IDS[npu] if npu < len(_SIM_BUS_IDS) else f"{0x10 + npu:02X}"
        cards.append(
            {
                "npu": npu,
                "health": "OK",
                "bus_id": f"0000:{bus}:00.0",
                "power_w": round(96.0 + (npu * 37 % 13), 1),
                "temp_c": 54 + npu % 5,
                "aicore_pct": 0,
                "hbm_used_mb": 3334 + (npu % 3) * 2,
                "hbm_total_mb": 65536,
                "processes": [],
            }
        )
    return {
        "driver_version": driver_version,
        "npu_smi_version": driver_version,
        "firmware_version": "7.1.0.5.220",
        "chip_name": "910B3",
        "cards": cards,
        "error": None,
        "warning": None,
    }


# --------------------------------------------------------------------------------------------------
# ECC counters (`npu-smi info -t ecc -i N`) and the PCI count of the cards (`lspci -n -d 19e5:`)
# --------------------------------------------------------------------------------------------------

# The counters of errors ECC could not correct, since the driver started (the `Aggregate` ones are for
# the card's life, the `Isolated Pages` ones what the driver already retired).
ECC_UNCORRECTABLE = ("HBM Double Bit Error Count", "DDR Double Bit Error Count")
_ECC_COUNTER_RE = re.compile(r"(Error Count|Err Cnt|Pages Count)$")

HUAWEI_PCI_VENDOR = "19e5"
# Ascend NPUs' PCI device ids (310, 310P, 910, 910B, 910_93). Huawei's vendor id also covers the Kunpeng
# server's own functions (root ports, the HiSilicon ZIP/SEC engines, NICs), so the id must match.
ASCEND_PCI_DEVICES = {"d100": "310", "d500": "310P", "d801": "910", "d802": "910B", "d803": "910_93"}
_LSPCI_NUMERIC_RE = re.compile(r"^\S+\s+[0-9a-fA-F]{4}:\s+([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\b")
_LSPCI_NAMED_RE = re.compile(r"Huawei[^\n]*?\b(?:Device\s+|\[19e5:)([0-9a-fA-F]{4})\b", re.IGNORECASE)


def parse_ecc(text: str) -> dict[str, Any]:
    """`npu-smi info -t ecc -i N` -> `{"npu", "supported", "counters": {name: count}}`.

    Drivers without the query print that they do not support it: `supported` is then false."""
    _raise_if_tool_error(text)
    pairs, others = _key_values(text)
    fields = dict(pairs)
    counters = {key: number for key, value in pairs if _ECC_COUNTER_RE.search(key) and
                (number := _int_or_none(value)) is not None}  # fmt: skip
    if not counters:
        if re.search(r"not\s+support|unsupported|invalid\s+(?:type|param)", text, re.IGNORECASE):
            return {"npu": _int_or_none(fields.get("NPU ID")), "supported": False, "counters": {}}
        snippet = next((line for line in others if line), "")
        raise NpuSmiParseError(
            f"npu-smi info -t ecc: no `... Error Count : N` lines were found (starts with {snippet[:80]!r})"
        )
    return {"npu": _int_or_none(fields.get("NPU ID")), "supported": True, "counters": counters}


def ecc_problems(npu: int, ecc: Mapping[str, Any], max_errors: int) -> list[str]:
    """A sentence when the card counted more uncorrectable ECC errors than `max_errors`."""
    counters = ecc.get("counters") or {}
    found = {name: int(counters[name]) for name in ECC_UNCORRECTABLE if name in counters}
    worst = max(found.values(), default=0)
    if worst <= max_errors:
        return []
    detail = ", ".join(f"{name} {count}" for name, count in found.items() if count)
    pages = counters.get("HBM Double Bit Isolated Pages Count")
    return [
        f"NPU {npu}: {worst} uncorrectable ECC errors ({detail}"
        + (f", {pages} HBM pages isolated" if pages else "")
        + f"), more than npu_ecc_errors_max {max_errors}: the card's memory is failing; exclude it from "
        f"npu_devices and request a repair (npu-smi info -t ecc -i {npu})"
    ]


def count_ascend_pci(text: str) -> int:
    """How many Ascend NPUs `lspci -n -d 19e5:` (or plain `lspci`) lists."""
    count = 0
    for line in str(text).splitlines():
        numeric = _LSPCI_NUMERIC_RE.match(line.strip())
        if numeric:
            count += (
                numeric.group(1).lower() == HUAWEI_PCI_VENDOR
                and numeric.group(2).lower() in ASCEND_PCI_DEVICES
            )
            continue
        named = _LSPCI_NAMED_RE.search(line)
        count += bool(named and named.group(1).lower() in ASCEND_PCI_DEVICES)
    return count


def pci_count_problems(pci_count: int | None, npu_smi_count: int | None) -> list[str]:
    """The driver should see every Ascend card on the PCI bus, and no more."""
    if pci_count is None or npu_smi_count is None or pci_count == npu_smi_count:
        return []
    if pci_count > npu_smi_count:
        return [
            f"{pci_count} Ascend NPUs are on the PCI bus (lspci -d 19e5:) but npu-smi sees {npu_smi_count}: "
            f"the driver lost {pci_count - npu_smi_count} card(s); check `dmesg | grep -i davinci` and the "
            "firmware (npu-smi info -t board -i N), reboot the server, or request a repair"
        ]
    return [
        f"npu-smi sees {npu_smi_count} NPUs but only {pci_count} Ascend NPUs are on the PCI bus "
        "(lspci -d 19e5:): a card fell off the bus since the driver started; reboot the server or request "
        "a repair"
    ]


def ecc_by_card(text: str) -> dict[int, dict[str, Any]]:
    """`### card N ecc` sections of `npu-smi info -t ecc -i N` calls -> parse_ecc() per card; a card whose
    output cannot be read gets `{"supported": None, "error": ...}` (the `info` check reports npu-smi)."""
    from llava_devserver.sections import card_sections

    out: dict[int, dict[str, Any]] = {}
    for card, body in card_sections(text, "ecc").items():
        try:
            out[card] = parse_ecc(body)
        except NpuSmiError as exc:
            out[card] = {"npu": card, "supported": None, "counters": {}, "error": exc.message}
    return out


def ecc_section_problems(text: str, max_errors: int) -> list[str]:
    problems: list[str] = []
    for card, ecc in sorted(ecc_by_card(text).items()):
        problems += ecc_problems(card, ecc, max_errors)
    return problems


def ecc_summary(text: str) -> dict[int, int | None]:
    """Uncorrectable ECC errors per card for the report (None: not supported or unreadable)."""
    return {
        card: max((int(ecc["counters"].get(name, 0)) for name in ECC_UNCORRECTABLE), default=0)
        if ecc.get("supported")
        else None
        for card, ecc in ecc_by_card(text).items()
    }
