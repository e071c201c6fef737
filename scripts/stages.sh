#!/usr/bin/env bash
# Run make targets in order as the stages of a test run, timing each one; at the end (also after a failure)
# print every stage's wall time, so that growth of the CI run is seen. Stops at the first failing stage.
#   scripts/stages.sh venv host-tools docker images@ lint unit wait fleet-tests molecule
# A stage written NAME@ runs in the background (its output kept in a file) while the next stages run, so that
# work bound by the network or the disk (image builds) overlaps work bound by the CPU (lint, unit tests);
# the stage `wait` waits for every background stage, prints its output and fails if one failed.
set -uo pipefail
make_cmd=${MAKE:-make}
rows=()
status=0
run_start=$(date +%s)
logs_dir=$(mktemp -d)
trap 'rm -rf "${logs_dir}"' EXIT
declare -A bg_pid=() bg_start=()

row() { # stage seconds rc
  rows+=("$(printf '%-12s %6d s  %s' "$1" "$2" "$([ "$3" -eq 0 ] && echo ok || echo "FAILED (exit $3)")")")
}

wait_background() {
  local name rc failed=0
  for name in "${!bg_pid[@]}"; do
    wait "${bg_pid[$name]}"
    rc=$?
    echo "=== background stage ${name}: output"
    cat "${logs_dir}/${name}.log"
    # Its own wall time: from its start to when its last line was written.
    row "${name}@" $(($(stat -c %Y "${logs_dir}/${name}.log") - bg_start[$name])) "${rc}"
    [ "${rc}" -eq 0 ] || failed=${rc}
    unset "bg_pid[$name]"
  done
  return "${failed}"
}

for stage in "$@"; do
  start=$(date +%s)
  if [[ "${stage}" == *@ ]]; then
    name=${stage%@}
    echo "=== stage ${name}: started in the background $(date -u +%H:%M:%S) UTC"
    "${make_cmd}" --no-print-directory "${name}" >"${logs_dir}/${name}.log" 2>&1 &
    bg_pid[$name]=$!
    bg_start[$name]=${start}
    continue
  fi
  echo "=== stage ${stage}: started $(date -u +%H:%M:%S) UTC"
  if [ "${stage}" = wait ]; then
    wait_background
  else
    "${make_cmd}" --no-print-directory "${stage}"
  fi
  rc=$?
  row "${stage}" $(($(date +%s) - start)) "${rc}"
  if [ ${rc} -ne 0 ]; then
    status=${rc}
    break
  fi
done
# A failure before `wait`: the background stages still finish (a half-built image would only be rebuilt).
[ ${#bg_pid[@]} -eq 0 ] || wait_background || true
echo
echo "=== stage times (wall clock)"
printf '%s\n' "${rows[@]}"
printf '%-12s %6d s\n' "total" $(($(date +%s) - run_start))
exit ${status}
