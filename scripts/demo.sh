#!/usr/bin/env bash
# The demo: two mover processes on 127.0.0.1 replicate a generated tree, verify it, then send
# an incremental change.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p mover-cli
exec target/release/mover demo "$@"
