#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60), growing the
# committed corpora under fuzz/corpus/<target>, then minimizes them and writes the executions,
# coverage and any crash to results/<date>-fuzz.md. CI does not fuzz; it replays the corpora
# (mover/tests/fuzz_corpus.rs, control/tests/fuzz_corpus.rs). Needs cargo-fuzz (installed from
# crates.io if missing); RUSTC_BOOTSTRAP=1 lets the stable toolchain build with the sanitizer.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder state_files peer_messages rest_bodies)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
date=$(date -u +%Y-%m-%d)
out=results/$date-fuzz.md
rows=()
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  echo "== fuzzing $t for ${secs}s"
  set +e
  (cd fuzz && cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1) >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  if [ "$rc" -ne 0 ]; then
    status=1
    verdict="CRASH (exit $rc; see fuzz/artifacts/$t)"
    tail -40 "$log"
  else
    verdict="no crash"
  fi
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin "$t" >/dev/null 2>&1) || true
  inputs=$(find "fuzz/corpus/$t" -type f | wc -l)
  rows+=("| $t | ${secs} | ${execs:-?} | ${cov:-?} | $inputs | $verdict |")
  rm -f "$log"
done
{
  echo "# Fuzzing, $date"
  echo
  echo "\`bash scripts/fuzz.sh $secs\` on $(nproc) CPUs, $(uname -r); cargo-fuzz (libFuzzer) with"
  echo "the address sanitizer. Corpora are minimized after each run and committed under"
  echo "fuzz/corpus; CI replays them."
  echo
  echo "| target | seconds | executions | coverage (edges) | corpus inputs | result |"
  echo "|---|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} >"$out"
cat "$out"
exit $status
