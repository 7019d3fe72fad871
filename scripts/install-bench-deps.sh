#!/usr/bin/env bash
# Installs what the benchmark runs besides mover: rsync (the baseline, run as an rsync daemon on
# 127.0.0.1), btrfs-progs for the btrfs-source incremental run, and coreutils/util-linux for the
# cp -a + sync baseline and the report's file-system details (findmnt). Idempotent.
set -euo pipefail
need=()
command -v rsync >/dev/null 2>&1 || need+=(rsync)
{ command -v mkfs.btrfs && command -v btrfs; } >/dev/null 2>&1 || need+=(btrfs-progs)
{ command -v cp && command -v sync; } >/dev/null 2>&1 || need+=(coreutils)
command -v findmnt >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
rsync --version | sed -n 1p  # (head would close the pipe early: SIGPIPE under pipefail)
