#!/usr/bin/env bash
# Full benchmark: builds release binaries, installs rsync, runs the initial-sync benchmark on
# every dataset (results/<date>-all.{json,md}), then the incremental one: 1% block rewrite,
# no-op rerun and directory rename (results/<date>-incremental.{json,md}). Needs root (drops
# the page cache) and, under $MOVER_BENCH_DIR (default /work/bench-data), ~35 GB free: the
# initial-sync run keeps all 3 x REPS copies of the 2.1 GB large set until its last run; the
# incremental run needs ~7 GB (working copy, two destinations, rsync's temporary file).
# Extra arguments go to both runs (e.g. --scale 0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-bench-deps.sh
cargo build --release -p mover-cli -p bench
target/release/bench all --reps "${REPS:-5}" "$@"
target/release/bench incremental --reps "${REPS:-5}" "$@"
# The same incremental scenarios with the sources in a btrfs subvolume (loop-mounted image):
# mover then finds changed blocks from snapshot extents instead of reading whole files.
exec target/release/bench incremental --source-fs btrfs --name incremental-btrfs --reps "${REPS:-5}" "$@"
