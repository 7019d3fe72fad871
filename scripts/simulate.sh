#!/usr/bin/env bash
# The control plane's deterministic simulation (control/src/daemon/sim) for as many seeds as
# asked: `bash scripts/simulate.sh N [FIRST_SEED]` runs seeds FIRST_SEED..FIRST_SEED+N (from 0)
# on every core and prints the seeds run, steps, faults injected, invariant violations and the
# first failing seed with the command that replays it. With MOVER_SIM_TRACE=1 it also prints
# every step of the first failing seed (or of FIRST_SEED when none fails). `cargo test -p
# control` runs the first 1,000 seeds; this is for more. Exit status 0: every invariant held.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || ! [[ ${2:-0} =~ ^[0-9]+$ ]]; then
  echo "usage: $0 N [FIRST_SEED]   (N seeds from FIRST_SEED, default 0)" >&2
  exit 2
fi
export MOVER_SIM_SEEDS=$1 MOVER_SIM_FIRST_SEED=${2:-0} RUST_BACKTRACE=0
exec cargo test -q -p control --locked --lib -- \
  daemon::sim::tests::simulate_seeds_from_the_environment --exact --ignored --nocapture
