#!/usr/bin/env bash
# Full benchmark, every regime of issue 11 in one run and one report (results/<date>-full.json
# and .md): builds the release binaries, installs rsync, then `bench full`:
#   - the machine's limits, measured first: loopback TCP and memory copy with 1 and N streams
#     (N = mover's worker count, passed to mover as --threads N), each dataset's cold O_DIRECT
#     read, and sequential write + fsync to the disk and to the tmpfs destination;
#   - initial syncs of the large (2 x 512 MiB) and small (20,000 x 4 KiB) sets with the source
#     hot or cold and the destination on disk (the work dir) or in a tmpfs (/dev/shm): mover
#     (encrypted), rsync (daemon on 127.0.0.1) and cp -a + sync, tool order rotating per rep,
#     medians of REPS reps, ratios and % of each regime's bound;
#   - incremental jobs: a no-op rerun on a generated tree of 100,000 files, a 1% block rewrite
#     of a 1 GiB file (source warm), a directory rename;
#   - the resume case: receiver SIGKILLed at 35% of a 2 x 512 MiB initial sync, then the rerun.
# A destination is never deleted right before a timed run: each is deleted after its run, then
# the file systems are synced and the disk must go quiet before the next run is prepared.
# Then (BENCH_BTRFS=0 skips it) the incremental scenarios again with the sources in a btrfs
# subvolume (loop-mounted image): results/<date>-incremental-btrfs.{json,md}.
#
# Needs root (drops the page cache, mounts the btrfs image), ~8 GB free under $MOVER_BENCH_DIR
# (default /work/bench-data; the datasets take ~1.7 GB and are reused, the 1% rewrite needs ~4.5
# GB at its peak) and ~1.1 GB free in /dev/shm. Takes roughly 20-30 minutes on a quiet 2-core
# VM, plus ~10 for the btrfs run (more on a busy disk: each run waits for it to go quiet).
# Extra arguments go to both runs, e.g. a smoke run:
#   REPS=1 scripts/bench.sh --scale 0.01 --results /tmp/bench-smoke --work-dir /tmp/bench-smoke-data
#
# Named benchmarks outside `full` (two `mover daemon` processes on 127.0.0.1, driven with the
# CLI; no rsync), each its own report, results/<date>-<name>.{json,md}:
#   scripts/bench.sh rpo [ARGS]            continuous replication's recovery point: trees of
#       20,000 and 200,000 small files, 60 writes on the source one every 250 ms, each timed
#       until the target holds it (p50/p90/p99/max, misses; both daemons' CPU per minute).
#       ~4 minutes on the 2-core VM, most of it generating the trees (kept for later runs) and
#       deleting the 200,000-file target; --rpo-files 20000 skips the 200,000-file tree;
#       --daemon-config 'LINE' (repeatable) appends LINE to the source daemon's config file.
#   scripts/bench.sh make-writable [ARGS]  failover: make-writable of a 50,000-file target,
#       median of 3 fresh relationships (~1-2 minutes).
#   scripts/bench.sh reverse [ARGS]        failback and back: the reconnect tree, 1% churned on both sides,
#       `relationship reverse` on the target, then churn on the new source and reverse again there.
#   scripts/bench.sh reconnect [ARGS]      failover and back: make-writable of a target of 20,000
#       1 KiB files and 8 x 8 MiB, 1% of the small files and of the large files' blocks churned on the target, then reconnect
#       on the source, timed until the target equals the source; bytes sent vs bytes changed,
#       median of 3 fresh relationships (--reconnect-files 5000 for a shorter run).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  rpo | make-writable | reconnect | reverse)
    what=$1
    shift
    cargo build --release -p mover-cli -p bench
    exec target/release/bench "$what" "$@"
    ;;
esac
bash scripts/install-bench-deps.sh
cargo build --release -p mover-cli -p bench
target/release/bench full --reps "${REPS:-5}" "$@"
if [ "${BENCH_BTRFS:-1}" != 0 ]; then
  exec target/release/bench incremental --source-fs btrfs --name incremental-btrfs --reps "${REPS:-5}" "$@"
fi
