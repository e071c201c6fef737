#!/usr/bin/env bash
# The whole job from a wheel, away from the checkout: a fresh virtualenv holding only this checkout's wheel
# (not editable; the dependencies are .venv's, scripts/overlay_venv.py: src/ is not importable there), a
# one-server simulated fleet, and `llava-devserver up` run from an empty folder with no LLAVA_DEVSERVER_HOME,
# ANSIBLE_CONFIG or PYTHONPATH. The playbooks, roles and plugins come from the collection inside the wheel;
# the run lands in ./runs of that folder.   scripts/wheel-up.sh [WORK_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/llava-wheel.XXXXXX")}
VENV=$WORK/venv
mkdir -p "$WORK/dist" "$WORK/run"
"$BIN/pip" wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT"
"$BIN/python" "$ROOT/scripts/overlay_venv.py" "$VENV" --ansible-playbook -- "$WORK"/dist/llava_devserver-*.whl
"$BIN/llava-devserver" sim up --hosts 1 --name wheel-up -o "$WORK/fleet"
trap '"$BIN/llava-devserver" sim down --name wheel-up' EXIT
cd "$WORK/run"
env -u ANSIBLE_CONFIG -u PYTHONPATH -u LLAVA_DEVSERVER_HOME PATH="$VENV/bin:/usr/bin:/bin" \
  llava-devserver up -i "$WORK/fleet/devserver.ini"
echo "wheel-up: ran from $WORK/run with the collection of $VENV"
