#!/usr/bin/env bash
# Installs rsync, the benchmark's baseline (run as an rsync daemon on 127.0.0.1). Idempotent.
set -euo pipefail
if ! command -v rsync >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rsync
fi
rsync --version | head -1
