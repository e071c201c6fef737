#!/usr/bin/env bash
# Ansible's own sanity suite on the collection, as ansible-test wants it: from a copy installed at
# <path>/ansible_collections/llava/devserver (the collection tarball, so that what is tested is what ships).
# ansible-test fetches its pip bootstrap script from ci-files.testing.ansible.com, which this network does not
# reach: scripts/ansible-test-get-pip.py stands in (ensurepip, then PyPI), put where ansible-test looks first.
# The tests' own requirements come from PyPI at the versions ansible-test pins. Ignores, each with its
# reason: tests/sanity/ignore-<ansible-core minor>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
# outside the checkout: inside a git work tree, ansible-test lists only the files git tracks (none, here)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llava-sanity.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$PWD
PIP_VERSION=$("$BIN/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
from ansible_test._internal.host_configs import NativePythonConfig as N
import sys; print(g(N(version="%d.%d" % sys.version_info[:2], path=sys.executable))["pip"])')
mkdir -p ~/.ansible/test/cache
cp scripts/ansible-test-get-pip.py ~/.ansible/test/cache/get_pip_"${PIP_VERSION//./_}".py
"$BIN/ansible-galaxy" collection build --output-path "$WORK/dist" . >/dev/null
# from $WORK: the checkout's ansible.cfg (the checkout as the collection) would make it "already installed"
(cd "$WORK" && ANSIBLE_COLLECTIONS_PATH="$WORK/collections" "$ROOT/$BIN/ansible-galaxy" collection install \
  --offline --no-deps -p collections dist/llava-devserver-*.tar.gz >/dev/null)
cd "$WORK/collections/ansible_collections/llava/devserver"
PY=$("$ROOT/$BIN/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$ROOT/$BIN/ansible-test" sanity --python "$PY" --color no "$@"
