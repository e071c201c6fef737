#!/usr/bin/env bash
# Run make targets in order as the stages of a test run, timing each one; at the end (also after a failure)
# print every stage's wall time, so that growth of the CI run is seen. Stops at the first failing stage.
#   scripts/stages.sh venv host-tools docker lint unit fleet-tests molecule
set -uo pipefail
make_cmd=${MAKE:-make}
rows=()
status=0
run_start=$(date +%s)
for stage in "$@"; do
  start=$(date +%s)
  echo "=== stage ${stage}: started $(date -u +%H:%M:%S) UTC"
  "${make_cmd}" --no-print-directory "${stage}"
  rc=$?
  rows+=("$(printf '%-12s %6d s  %s' "${stage}" $(($(date +%s) - start)) "$([ ${rc} -eq 0 ] && echo ok || echo "FAILED (exit ${rc})")")")
  if [ ${rc} -ne 0 ]; then
    status=${rc}
    break
  fi
done
echo
echo "=== stage times (wall clock)"
printf '%s\n' "${rows[@]}"
printf '%-12s %6d s\n' "total" $(($(date +%s) - run_start))
exit ${status}
