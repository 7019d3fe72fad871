#!/usr/bin/env bash
# Installs rsync, the benchmark's baseline (run as an rsync daemon on 127.0.0.1), and
# btrfs-progs for the btrfs-source incremental run. Idempotent.
set -euo pipefail
need=()
command -v rsync >/dev/null 2>&1 || need+=(rsync)
{ command -v mkfs.btrfs && command -v btrfs; } >/dev/null 2>&1 || need+=(btrfs-progs)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
rsync --version | head -1
