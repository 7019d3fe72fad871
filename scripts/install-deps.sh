#!/usr/bin/env bash
# Installs what mover's build and tests need on a fresh Debian machine: a C toolchain for
# bundled -sys crates, strace (the io_uring/pinning test), and mkfs.ext4, mkfs.btrfs, btrfs,
# mkfs.xfs plus mount/umount (the disk-full and snapshot tests loop-mount small ext4, btrfs and
# XFS images), setpriv (the daemon tests act as an unprivileged user), promtool (the alert
# rules), protoc (etcd-client's build), etcd (the cluster tests), iproute2 and schemathesis (the
# API test), chromium (the UI test), libibverbs/librdmacm/libclang (the `rdma` feature's build).
# Idempotent; fails loudly.
set -euo pipefail
need=()
for p in strace gcc; do
  command -v "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
{ command -v mkfs.btrfs && command -v btrfs; } >/dev/null 2>&1 || need+=(btrfs-progs)
command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
# Debian's util-linux ships mount and umount (with loop-device support) in package "mount".
{ command -v mount && command -v umount; } >/dev/null 2>&1 || need+=(mount)
# setpriv (util-linux): the daemon tests write into a protected target as an unprivileged user.
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# promtool (Debian's prometheus package): the alert rules' check and unit tests.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# protoc builds etcd-client's protocol; etcd (etcd-server) runs under the cluster tests.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# ip (iproute2): the API test runs its daemon in a network namespace of its own.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# libibverbs, librdmacm and libclang: CI checks that the `rdma` feature builds (bindgen).
[ -e /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
[ -e /usr/include/rdma/rdma_cma.h ] || need+=(librdmacm-dev)
# libclang itself, not libclang-cpp (which some images carry without it).
has_libclang() { ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; }
has_libclang || need+=(libclang-dev)
# The web UI's browser test (cli/tests/ui.rs) drives Debian's headless chromium through
# chromedriver at these paths; it fails, not skips, without them.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
command -v strace >/dev/null || { echo "strace missing after install" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 (e2fsprogs) missing after install" >&2; exit 1; }
command -v mkfs.btrfs >/dev/null || { echo "mkfs.btrfs (btrfs-progs) missing after install" >&2; exit 1; }
command -v btrfs >/dev/null || { echo "btrfs (btrfs-progs) missing after install" >&2; exit 1; }
command -v mkfs.xfs >/dev/null || { echo "mkfs.xfs (xfsprogs) missing after install" >&2; exit 1; }
command -v mount >/dev/null || { echo "mount missing after install" >&2; exit 1; }
command -v umount >/dev/null || { echo "umount missing after install" >&2; exit 1; }
command -v setpriv >/dev/null || { echo "setpriv (util-linux) missing after install" >&2; exit 1; }
command -v promtool >/dev/null || { echo "promtool (prometheus) missing after install" >&2; exit 1; }
command -v protoc >/dev/null || { echo "protoc (protobuf-compiler) missing after install" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd (etcd-server) missing after install" >&2; exit 1; }
command -v ip >/dev/null || { echo "ip (iproute2) missing after install" >&2; exit 1; }
[ -e /usr/include/infiniband/verbs.h ] || { echo "libibverbs-dev missing after install" >&2; exit 1; }
has_libclang || { echo "libclang (libclang-dev) missing after install" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "/usr/bin/chromium (chromium) missing after install" >&2; exit 1; }
[ -x /usr/bin/chromedriver ] || { echo "/usr/bin/chromedriver (chromium-driver) missing after install" >&2; exit 1; }

# --- API test: schemathesis (cli/tests/openapi.rs), the version pinned in
# scripts/api-test-requirements.txt. Into the Python at hand; where that Python is the
# system's and refuses (PEP 668), into a venv under /opt linked onto PATH.
if ! command -v schemathesis >/dev/null 2>&1; then
  req="$(dirname "$0")/api-test-requirements.txt"
  if ! command -v python3 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv python3-pip
  fi
  if ! python3 -m pip install -q -r "$req"; then
    python3 -m venv /opt/mover-schemathesis || {
      apt-get install -y -qq python3-venv && python3 -m venv /opt/mover-schemathesis
    }
    /opt/mover-schemathesis/bin/pip install -q -r "$req"
    ln -sf /opt/mover-schemathesis/bin/schemathesis /usr/local/bin/schemathesis
  fi
  # Under pyenv, a new console script is on PATH only once its shim exists.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
command -v schemathesis >/dev/null || { echo "schemathesis missing after install (scripts/api-test-requirements.txt)" >&2; exit 1; }
