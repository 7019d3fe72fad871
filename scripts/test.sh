#!/usr/bin/env bash
# The test suite, as CI runs it: install dependencies, then every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --locked
