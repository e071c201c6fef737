"""Several tool calls in one SSH round trip: a script prints `### HEADER` then each call's output.

`split_sections(text)` returns `[(header words, body)]` in order; text before the first header is dropped.
Roles use it to run, say, `hccn_tool -i N -ip -g` for every card in one task instead of one task a card.

A role's probe runs several different commands in one task, each between `#### begin NAME` and
`#### end NAME RC` (PROBE_FUNCTION defines `probe NAME COMMAND...` for the shell); `probe_results(text)`
returns NAME -> {"rc": RC, "stdout": output}. The bodies may hold `### ...` sections of their own.
"""

from __future__ import annotations

import re

_HEADER_RE = re.compile(r"^### (\S.*?)\s*$")
_PROBE_RE = re.compile(r"^#### (begin|end) (\S+)(?: (\d+))?\s*$")

# The shell function of a probe: the command's output (its stdout, and what it sends there) between the
# markers, then its exit status in $rc and the end marker; the empty `echo` puts that marker on its own line.
PROBE_FUNCTION = (
    'probe() { name=$1; shift; echo "#### begin $name"; "$@"; rc=$?; echo; echo "#### end $name $rc"; }'
)


def split_sections(text: str) -> list[tuple[list[str], str]]:
    out: list[tuple[list[str], str]] = []
    header: list[str] | None = None
    body: list[str] = []
    for line in str(text).replace("\r\n", "\n").split("\n"):
        match = _HEADER_RE.match(line)
        if match:
            if header is not None:
                out.append((header, "\n".join(body)))
            header, body = match.group(1).split(), []
        elif header is not None:
            body.append(line)
    if header is not None:
        out.append((header, "\n".join(body)))
    return out


def card_sections(text: str, operation: str) -> dict[int, str]:
    """The bodies of `### card N OPERATION` sections, by card."""
    return {
        int(words[1]): body
        for words, body in split_sections(text)
        if len(words) == 3 and words[0] == "card" and words[1].isdigit() and words[2] == operation
    }


def probe_results(text: str) -> dict[str, dict[str, object]]:
    """NAME -> {"rc", "stdout"} of every finished `probe NAME ...` in a probe's output (trailing newlines
    stripped, as Ansible's command module strips them). A section without its end marker is left out."""
    results: dict[str, dict[str, object]] = {}
    name: str | None = None
    body: list[str] = []
    for line in str(text).replace("\r\n", "\n").split("\n"):
        match = _PROBE_RE.match(line)
        if match and match.group(1) == "begin":
            name, body = match.group(2), []
        elif match and name is not None and name == match.group(2) and match.group(3) is not None:
            results[name] = {"rc": int(match.group(3)), "stdout": "\n".join(body).rstrip("\n")}
            name = None
        elif name is not None:
            body.append(line)
    return results
