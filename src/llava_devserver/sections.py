"""Several tool calls in one SSH round trip: a script prints `### HEADER` then each call's output.

`split_sections(text)` returns `[(header words, body)]` in order; text before the first header is dropped.
Roles use it to run, say, `hccn_tool -i N -ip -g` for every card in one task instead of one task a card.
"""

from __future__ import annotations

import re

_HEADER_RE = re.compile(r"^### (\S.*?)\s*$")


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
