#!/usr/bin/env bash
# The test suite, as CI runs it: install dependencies, then every crate's tests (unit,
# integration and CLI; there are no doc tests), with one "tests: N passed, M failed" line;
# then, where /dev/kvm exists, the RDMA tests in a soft-RoCE guest (scripts/rdma-ci.sh).
# The tests build mover with its `rdma` feature: the binaries they build are then the ones
# the RDMA guest runs (a second build with other features rebuilt nearly every dependency:
# 5 of CI's 27 minutes). Without an RDMA port the rdma build behaves as the TCP one; the
# build without the feature is checked by clippy, and its one difference (`--transport rdma`
# refused as not built) by `select::offer`'s unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --features mover-cli/rdma --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\2/' | awk '{s+=$1} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ]; then
  exit "$status"
fi
if [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
# The RDMA transport's tests run in a soft-RoCE guest (issue 17): whenever /dev/kvm exists.
echo "== RDMA guest (scripts/rdma-ci.sh), after ${SECONDS} s of building and testing"
bash scripts/rdma-ci.sh
