#!/usr/bin/env bash
# rdma-ci.sh: the RDMA guest tests (scripts/rdma-vm.sh, issue 17) as the test command runs them.
# Whenever /dev/kvm exists: installs the host tools the guest needs, builds `mover` and the
# `rdma_echo` example with the `rdma` feature (debug, and with the features the test command
# builds with, so what the tests built is reused), builds the guest image (debootstrap,
# cached in target/rdma-vm), boots
# it (KVM, or TCG when KVM shows no guest kernel: RDMA_VM_ACCEL=auto) and fails unless every
# guest step passes. Without /dev/kvm it says so and does nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /dev/kvm ]; then
  echo "rdma-ci: no /dev/kvm on this machine: the RDMA guest tests do not run here"
  exit 0
fi
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ "${#need[@]}" -gt 0 ]; then
  echo "rdma-ci: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
# The guest image (network-bound: debootstrap) builds while cargo compiles.
log=target/rdma-vm-image.log
mkdir -p target
bash scripts/rdma-vm.sh --build-only >"$log" 2>&1 &
image=$!
t0=$(date +%s)
cargo build --locked -q --workspace --features mover-cli/rdma --bins --examples
echo "rdma-ci: rdma build took $(($(date +%s) - t0)) s"
if ! wait "$image"; then
  cat "$log" >&2
  echo "rdma-ci: FAIL: building the guest image" >&2
  exit 4
fi
cat "$log"
# Debug binaries under emulation are slower than the release ones rdma-vm.sh was timed with:
# a wider bound for the guest, and no benchmark (its figures come from release builds).
RDMA_VM_ACCEL=auto RDMA_VM_BENCH_REPS=0 RDMA_VM_TIMEOUT="${RDMA_VM_TIMEOUT:-900}" \
  RDMA_VM_BIN="$PWD/target/debug" bash scripts/rdma-vm.sh
