#!/usr/bin/env bash
# Full benchmark: builds release binaries, installs rsync, runs every dataset and writes
# results/<date>-all.{json,md}. Needs root (drops the page cache) and ~6 GB free under
# $MOVER_BENCH_DIR (default /work/bench-data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-bench-deps.sh
cargo build --release -p mover-cli -p bench
exec target/release/bench all --reps "${REPS:-5}" "$@"
