#!/usr/bin/env python3
"""Stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test fetches get-pip-<version>.py from ci-files.testing.ansible.com, which the CI network does not
reach (only PyPI). This does what that script does for ansible-test: put pip into the fresh virtualenv
(ensurepip, which ships with CPython), then install the packages ansible-test names (pip==X, from PyPI).
`make sanity` copies it to ~/.ansible/test/cache/get_pip_<version>.py, where ansible-test looks first.
"""

import subprocess
import sys

# get-pip.py's own options; pip itself would refuse them
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode)
