"""A setting kept as a file of a simulated server and applied by the server's own script (at once, and by its
boot again): the link speed (sim/link.py) and the bastion's refusal of the control node (sim/bastion.py)."""

from __future__ import annotations

import shlex

from docker.models.containers import Container


def apply_setting(container: Container, path: str, value: str | None, script: str) -> str | None:
    """Write one setting file of the running server (value None: remove it), then run the server's script
    that applies it now (its boot applies it again). None when it worked, else the script's output."""
    write = f"printf '%s\\n' {shlex.quote(value)} > {path}" if value else f"rm -f {path}"
    code, output = container.exec_run(["bash", "-c", f"{write} && {script}"], user="root")
    if code == 0:
        return None
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    return text[-2000:]
