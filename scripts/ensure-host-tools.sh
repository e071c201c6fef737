#!/usr/bin/env bash
# Debian packages the tests and the simulated fleet need on the control machine.
set -euo pipefail
need=()
# chromium: report.html is opened in a real headless browser by the tests.
for pair in debootstrap:debootstrap shellcheck:shellcheck rsync:rsync ssh:openssh-client tmux:tmux chromium:chromium; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "ensure-host-tools: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
