#!/usr/bin/env bash
# Installs what mover's build and tests need on a fresh Debian machine: a C toolchain for
# bundled -sys crates and strace (the io_uring/pinning test). Idempotent; fails loudly.
set -euo pipefail
need=()
for p in strace gcc; do
  command -v "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
command -v strace >/dev/null || { echo "strace missing after install" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
