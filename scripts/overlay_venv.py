#!/usr/bin/env python3
"""A fresh virtualenv that installs only what it is asked for and reuses this environment for the rest.

    overlay_venv.py VENV [--ansible-playbook] -- PIP-INSTALL-ARGS...

The new virtualenv has no pip. A .pth path line names this environment's site-packages, so every dependency
resolves from here. Only a path line is added: the .pth files inside this environment are not processed, so
the editable install's src/ is not importable and a wheel installed into VENV is what runs. Then
`pip --python VENV install ARGS` runs with this environment's pip.

--ansible-playbook writes VENV/bin/ansible-playbook as pip writes it when it installs ansible-core into a
virtualenv, so that the commands in VENV find it on PATH.

Used by tests/unit/test_collection.py (the wheel away from the checkout), tests/unit/test_ansible_private.py
(the oldest ansible-core) and scripts/wheel-up.sh.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

LAUNCHER = "#!{python}\nimport sys\nfrom ansible.cli.playbook import main\nsys.exit(main())\n"


def create(venv: Path, install: list[str], ansible_playbook: bool = False) -> Path:
    """The python of VENV, made afresh, with `install` (pip install arguments) in it."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if install:
        pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        subprocess.run([*pip, *install], check=True, timeout=600)
    if ansible_playbook:
        launcher = venv / "bin" / "ansible-playbook"
        launcher.write_text(LAUNCHER.format(python=python))
        launcher.chmod(0o755)
    return python


def main(argv: list[str]) -> int:
    own, install = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("--ansible-playbook", action="store_true", help="write VENV/bin/ansible-playbook")
    args = parser.parse_args(own)
    print(create(args.venv, install, args.ansible_playbook))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
