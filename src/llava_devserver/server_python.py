"""Can this ansible-core manage a server's Python? The first check of preflight, before any module runs.

Ansible runs its modules with the server's Python, and each ansible-core release supports only some Python
versions on targets: ansible-core 2.18 and newer need Python 3.8, while EulerOS 2.x ships 3.7. Such a server
fails every module with a traceback (a SyntaxError deep in module_utils), so preflight asks first, with
`raw` (no Python needed): `probe_script()` prints what Ansible's interpreter discovery would pick and its
version, and `assess()` turns that output into one summary line and, where this ansible-core cannot manage the
server, one message that says what to do.

The probe also prints the OS (os-release ID, VERSION_ID) and PID 1's name: their `fingerprint`, cached with
the facts, tells a server whose OS changed under the same inventory name (a reinstalled server, a simulated
fleet of another OS profile), whose cached facts and discovered interpreter would be wrong.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

# ansible-core release -> the oldest Python its modules run with on targets (ansible-core's support matrix).
TARGET_PYTHON_MINIMUM: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((2, 18), (3, 8)),
    ((2, 17), (3, 7)),
    ((2, 16), (2, 7)),
)
# The ansible-core the project pins and tests with (pyproject.toml).
TESTED_ANSIBLE_CORE = "2.19"
_VERSION = re.compile(r"^(\d+)\.(\d+)")


def _major_minor(text: str, what: str) -> tuple[int, int]:
    match = _VERSION.match(str(text).strip())
    if not match:
        raise ValueError(f"cannot read the {what} version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def minimum_target_python(ansible_core: str) -> tuple[int, int]:
    """The oldest server Python ansible-core `ansible_core` (e.g. "2.19.14") manages."""
    core = _major_minor(ansible_core, "ansible-core")
    for release, minimum in TARGET_PYTHON_MINIMUM:
        if core >= release:
            return minimum
    return TARGET_PYTHON_MINIMUM[-1][1]


def probe_script(candidates: Sequence[str]) -> str:
    """A POSIX shell script for `raw`: the first of `candidates` found (as interpreter discovery picks it),
    its version, the OS and PID 1, as `key=value` lines."""
    if not candidates:
        raise ValueError("no Python interpreter to look for")
    names = " ".join(shlex.quote(str(name)) for name in candidates)
    return (
        "py=; for c in " + names + "; do "
        'p=$(command -v "$c" 2>/dev/null) && { py=$p; break; }; done; '
        'echo "interpreter=$py"; '
        'if [ -n "$py" ]; then echo "python_version=$("$py" -c '
        '\'import sys; print(".".join(str(v) for v in sys.version_info[:3]))\' 2>&1 | head -n 1)"; fi; '
        '(. /etc/os-release 2>/dev/null; echo "os_id=${ID:-}"; echo "os_version_id=${VERSION_ID:-}"; '
        'echo "os_name=${PRETTY_NAME:-${NAME:-}}"); '
        'echo "init=$(cat /proc/1/comm 2>/dev/null)"'
    )


def interpreter_candidates(configured: str | None, fallback: Sequence[str] | None) -> list[str]:
    """What interpreter discovery tries: an explicit ansible_python_interpreter alone, else the fallback
    list."""
    if configured and not str(configured).startswith("auto"):
        return [str(configured)]
    return [str(name) for name in (fallback or ["python3"])]


def parse_probe(stdout: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in str(stdout).splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("interpreter", "python_version", "os_id", "os_version_id", "os_name", "init"):
            values[key] = value.strip()
    return values


def assess(
    probe: Mapping[str, Any], ansible_core: str, host: str, candidates: Sequence[str] = ()
) -> dict[str, Any]:
    """`{interpreter, python_version, os, fingerprint, summary, problem}` from a probe's registered result.

    problem is None when ansible-core can manage the server, else the one message to stop with."""
    if probe.get("unreachable"):
        raise ValueError(f"{host}: unreachable")
    values = parse_probe(str(probe.get("stdout") or ""))
    interpreter = values.get("interpreter", "")
    version_text = values.get("python_version", "")
    minimum = minimum_target_python(ansible_core)
    need = ".".join(str(part) for part in minimum)
    os_name = values.get("os_name") or values.get("os_id") or "unknown OS"
    fingerprint = "|".join(
        [values.get("os_id", ""), values.get("os_version_id", ""), values.get("init", ""), interpreter]
    )
    problem: str | None = None
    advice = (
        f"Install Python {need} or newer on the server and point Ansible at it for this host "
        f"(`{host} ansible_python_interpreter=/usr/bin/python3.X` in devserver.ini, or "
        f"host_vars/{host}.yml), "
        f"then rerun. This tool is tested with ansible-core {TESTED_ANSIBLE_CORE}"
        " (an older ansible-core manages older Pythons: 2.17 the last for Python 3.7, untested here)."
    )
    if probe.get("rc") not in (0, None) and not interpreter:
        problem = (
            f"{host}: cannot look for Python on the server (exit {probe.get('rc')}): "
            + str(probe.get("stderr") or probe.get("stdout") or probe.get("msg") or "").strip()
        )
        version: tuple[int, int] | None = None
    elif not interpreter:
        tried = ", ".join(candidates) or "python3"
        problem = (
            f"{host} ({os_name}): no Python found (tried {tried}); ansible-core {ansible_core} needs one. "
        )
        problem += advice
        version = None
    else:
        try:
            version = _major_minor(version_text, "Python")
        except ValueError:
            version = None
            problem = (
                f"{host} ({os_name}): {interpreter} does not run as Python ({version_text or 'no output'}). "
                + advice
            )
        if version is not None and version < minimum:
            problem = (
                f"{host} ({os_name}): Python {version_text} ({interpreter}) is too old for ansible-core "
                f"{ansible_core}, which runs its modules only with Python {need} or newer on servers. "
                + advice
            )
    summary = (
        f"{host}: {os_name}, Python {version_text or 'none'} ({interpreter or 'not found'}), "
        f"ansible-core {ansible_core} (needs Python {need}+ on servers)"
    )
    return {
        "interpreter": interpreter,
        "python_version": version_text,
        "os": os_name,
        "fingerprint": fingerprint,
        "summary": summary,
        "problem": problem,
    }
