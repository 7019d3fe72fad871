#!/usr/bin/env bash
# Fault soak on real processes (not run by CI, which runs 3): RUNS seeded runs (default 1000)
# of SIGKILL of either daemon, connection cuts and stalls against two `mover daemon`s on
# 127.0.0.1 (cli/tests/soak.rs), then writes the figures to results/<date>-soak.md: runs,
# faults injected by kind, recovery points checked, targets found mixed or data lost. Needs
# root (the target is protected with bind mounts). Usage: bash scripts/soak.sh [RUNS] [FIRST_SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000}
first=${2:-1}
bash scripts/install-deps.sh
date=$(date -u +%Y-%m-%d)
report=$(mktemp)
start=$(date +%s)
set +e
MOVER_SOAK_RUNS=$runs MOVER_SOAK_SEED=$first MOVER_SOAK_REPORT=$report \
  cargo test --release --locked -p mover-cli --test soak -- --nocapture 2>&1 | tee /tmp/mover-soak.log
status=${PIPESTATUS[0]}
set -e
line=$(cat "$report" 2>/dev/null || true)
field() { echo "$line" | tr ' ' '\n' | awk -v k="$1" 'prev == k { print; exit } { prev = $0 }'; }
out=results/$date-soak.md
{
  echo "# Fault soak, $date"
  echo
  echo "\`bash scripts/soak.sh $runs $first\` on $(nproc) CPUs, $(uname -r); release build."
  echo "Two daemons on 127.0.0.1, one relationship through a fault proxy, 4 MiB/s bandwidth limit;"
  echo "each run churns the source, adds 2-6 MiB, asks for a job and injects one fault at a seeded"
  echo "moment within 1.5 s. After each run the relationship must reach a verified recovery point"
  echo "equal to the source; the recorded recovery point must describe what the target holds, and"
  echo "right after a target daemon's SIGKILL it must be the previous state or the new one."
  echo
  echo "| runs | SIGKILL source | SIGKILL target | cut | stall | job done before its fault | recovery points checked | mixed | lost | seconds | result |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  if [ -n "$line" ]; then
    verdict=$([ "$status" -eq 0 ] && echo pass || echo FAIL)
    echo "| $(field runs) | $(field kill_source) | $(field kill_target) | $(field cut) | $(field stall) | $(field done_before_fault) | $(field recovery_points_checked) | $(field mixed) | $(field lost) | $(field seconds) | $verdict |"
  else
    echo "| - | - | - | - | - | - | - | - | - | $(( $(date +%s) - start )) | FAIL before the end (see /tmp/mover-soak.log) |"
  fi
} >"$out"
cat "$out"
rm -f "$report"
exit "$status"
