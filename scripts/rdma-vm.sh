#!/usr/bin/env bash
# rdma-vm.sh: soft-RoCE (rdma_rxe) tests inside a KVM guest (issue 17).
#
# This machine's kernel has no rdma_rxe and there is no RDMA NIC, so the RDMA tests run in a
# small Debian guest under KVM:
#   1. build (once, cached under $RDMA_VM_DIR, default target/rdma-vm/) a Debian root of the
#      host's release with debootstrap: linux-image-amd64 (its rdma_rxe module), rdma-core,
#      ibverbs-utils, iproute2, kmod; packed into an ext4 image with mkfs.ext4 -d, kernel and
#      initrd copied beside it. The image is rebuilt only when deleted (or with --rebuild).
#   2. boot it with qemu-system-x86_64 -enable-kvm, no systemd: /sbin/rdma-vm-init is PID 1.
#      Network: one virtio NIC on qemu's user-mode network with restrict=on (the guest reaches
#      nothing outside itself, and no host port is forwarded). The repo's binaries (`mover`
#      and the `rdma_echo` example, from target/release or else target/debug; $RDMA_VM_BIN
#      names another directory) are staged in $RDMA_VM_DIR/share and shared read-only over 9p.
#   3. inside: modprobe rdma_rxe, `rdma link add rxe0 type rxe netdev eth0`, `ibv_devices`,
#      `ibv_devinfo`, then ibv_rc_pingpong server and client (two processes in the guest, over
#      rxe0 on the guest's own address), then from the share, when there: `mover hw --json`
#      (must list rxe0), and `rdma_echo rxe0 <gid>` (mover's RDMA transport: seeded data both
#      ways between two threads through RdmaConn's send_all/recv_exact over rxe0, hashes
#      compared, a shut-down peer reported). Then, with a `mover` built `--features rdma`,
#      on a generated tree ($RDMA_VM_TREE_MIB MiB in 4 MiB files, default 24, plus 300 small
#      files) between `mover receive` and `mover send` on the guest's address 10.0.2.15 (the
#      one rxe0's RoCE v2 GID holds; sessions in clear but in (d): the guest is its own
#      network):
#        (a) a sync with --transport rdma: exit 0, the JSON of both sides says
#            "transport":"rdma", the sender's log says its workers send out of their own slab
#            (registered as a memory region: no copy), and `mover hash --content` of source
#            and target are equal;
#        (b) the receiver SIGKILLed once a quarter of the bytes is in the target, restarted
#            on the same port; the sender (--retries 30) resumes: "resumed":true,
#            "attempts" > 1, still "transport":"rdma", hashes equal;
#        (c) MOVER_RDMA_FAIL_AFTER_BYTES (a third of the tree) moves the sender's QP to Error
#            mid-job with --transport auto: the retry uses TCP ("transport":"tcp",
#            "resumed":true, the fallback warning on stderr), hashes equal;
#        (d) an encrypted sync (identities made with `mover identity`, fingerprints pinned)
#            with --transport rdma: "encrypted":true, "transport":"rdma", hashes equal;
#      each prints `rdma-vm: PASS ...` or `rdma-vm: FAIL ...`. Then the benchmark:
#      $RDMA_VM_BENCH_REPS (default 3, 0: none) syncs of the same tree into an empty target
#      per variant, one worker: RDMA, RDMA with frames copied (MOVER_RDMA_COPY: the data path
#      before the worker's slab was the memory region), then TCP; one `rdma-bench:` line each (seconds, bytes,
#      user and sys CPU of sender and receiver), medians on the host into
#      $RDMA_VM_DIR/bench-medians.txt. It prints `RDMA-VM-RESULT: PASS` or `FAIL <step>` on the
#      serial console and powers off.
#      Accelerator: KVM ($RDMA_VM_ACCEL=kvm, the default). $RDMA_VM_ACCEL=tcg runs the same
#      guest under emulation, for hosts whose nested KVM cannot boot a Linux guest (the dev
#      machine's, see ARCHITECTURE.md): slower, but the same tests. $RDMA_VM_ACCEL=auto (what
#      CI uses, scripts/rdma-ci.sh) tries KVM and, when the guest kernel shows nothing on the
#      console within KVM_PROBE_S, says so on stderr and boots it under TCG.
# The host side prints PASS/FAIL and exits 0 (pass), 1 (a test in the guest failed), 2 (the
# guest did not boot or did not report in time: loud failure when /dev/kvm exists), 3 (missing
# host tool or /dev/kvm), 4 (image build failed). Timings of build and boot are printed.
#
# Host needs (Debian): debootstrap qemu-system-x86 e2fsprogs (scripts/install-deps.sh does not
# install them; `apt-get install -y debootstrap qemu-system-x86`). Runs as root (debootstrap).
# CI runs it through scripts/rdma-ci.sh whenever /dev/kvm exists.
#
# Measured on the dev machine (2 cores, Dec 2026): image build 100-290 s (network-bound);
# with RDMA_VM_ACCEL=tcg, boot plus all guest tests 70-90 s without the benchmark, debug or
# release build (correctness, not speed; the benchmark's 15 syncs add about 30 s). With KVM
# the guest never gets past the kernel decompressor on this machine's nested KVM (same with
# -cpu host/max/kvm64, q35, nokaslr): RDMA_VM_ACCEL=kvm exits 2 after its 120 s timeout, as
# it should, and auto falls back to TCG after KVM_PROBE_S. In CI (scripts/rdma-ci.sh, a
# fresh clone) the rdma debug build took 275 s, the image 98 s, the guest 83 s; since the test
# command builds with the feature itself, rdma-ci.sh reuses that build.
#
# Build the binaries first (release: the emulated guest is slow enough; needs libibverbs-dev,
#   librdmacm-dev, libclang-dev on the host):
#   cargo build --release -p mover-cli --features rdma && \
#   cargo build --release -p mover --features rdma --example rdma_echo
# Usage: scripts/rdma-vm.sh [--rebuild] [--build-only]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${RDMA_VM_DIR:-$here/target/rdma-vm}"
accel="${RDMA_VM_ACCEL:-kvm}"
# Bounds: the whole boot+test must report within this many seconds (emulation is slower).
boot_timeout() { if [ "$1" = tcg ]; then echo "${RDMA_VM_TIMEOUT:-300}"; else echo "${RDMA_VM_TIMEOUT:-120}"; fi; }
# auto: how long KVM has to show the guest kernel's first console line before the guest is
# booted under TCG instead (a nested KVM that cannot run a Linux guest prints nothing).
KVM_PROBE_S=15
# Data the rdma_echo check moves client -> server, MiB.
ECHO_MIB="${RDMA_VM_ECHO_MIB:-32}"
# The tree the send/receive tests sync: this many MiB in 4 MiB files, plus SMALL_FILES small
# ones (emulated soft-RoCE moves a few MiB/s: keep it small).
TREE_MIB="${RDMA_VM_TREE_MIB:-24}"
SMALL_FILES=300
# The forced RDMA failure of the fallback test fires after this many bytes (a third of the tree).
FAIL_AFTER_BYTES=$((TREE_MIB * 1024 * 1024 / 3))
# Benchmark repetitions per transport (0: no benchmark).
BENCH_REPS="${RDMA_VM_BENCH_REPS:-3}"
IMAGE_SIZE_MB=1536
# Bumped when the image's contents change; a cached image of another version is rebuilt.
IMAGE_VERSION=2
GUEST_MEM_MB=1024

rebuild=0
build_only=0
for a in "$@"; do
  case "$a" in
    --rebuild) rebuild=1 ;;
    --build-only) build_only=1 ;;
    *) echo "usage: $0 [--rebuild] [--build-only]" >&2; exit 3 ;;
  esac
done

need() { command -v "$1" >/dev/null || { echo "FAIL: missing host tool $1 ($2)" >&2; exit 3; }; }
need qemu-system-x86_64 "apt-get install -y qemu-system-x86"
need debootstrap "apt-get install -y debootstrap"
need mkfs.ext4 "apt-get install -y e2fsprogs"
case "$accel" in
  kvm | auto) [ -e /dev/kvm ] || { echo "FAIL: /dev/kvm missing: cannot run the RDMA guest" >&2; exit 3; } ;;
  tcg) ;;
  *) echo "FAIL: RDMA_VM_ACCEL must be kvm, tcg or auto" >&2; exit 3 ;;
esac

# The host's Debian release (bookworm on the dev machines).
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
mirror="${RDMA_VM_MIRROR:-http://deb.debian.org/debian}"

build_image() {
  local t0 root
  t0=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir"
  root="$dir/root"
  echo "rdma-vm: building $suite guest in $dir (debootstrap from $mirror)"
  debootstrap --variant=minbase \
    --include=linux-image-amd64,initramfs-tools,kmod,iproute2,rdma-core,ibverbs-utils,ibverbs-providers,procps \
    "$suite" "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 || {
    tail -30 "$dir/debootstrap.log" >&2
    echo "FAIL: debootstrap (log: $dir/debootstrap.log)" >&2
    exit 4
  }
  # The initrd must be able to mount the virtio root disk.
  printf 'virtio_pci\nvirtio_blk\next4\n' >>"$root/etc/initramfs-tools/modules"
  chroot "$root" update-initramfs -u -k all >>"$dir/debootstrap.log" 2>&1
  mkdir -p "$root/mnt/host"
  install -m 0755 /dev/stdin "$root/sbin/rdma-vm-init" <<'INIT'
#!/bin/sh
# PID 1 of the RDMA test guest: mount the host's share, run its guest.sh, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys 2>/dev/null; mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
modprobe 9pnet_virtio; modprobe 9p
if mount -t 9p -o trans=virtio,version=9p2000.L,ro host /mnt/host && [ -r /mnt/host/guest.sh ]; then
  sh /mnt/host/guest.sh
else
  echo "RDMA-VM-RESULT: FAIL no share with guest.sh"
fi
sync
echo o >/proc/sysrq-trigger
sleep 10
INIT
  local kver
  kver="$(ls "$root/lib/modules" | head -1)"
  [ -n "$kver" ] || { echo "FAIL: no kernel installed in the guest" >&2; exit 4; }
  [ -e "$root/lib/modules/$kver/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko" ] ||
    [ -e "$root/lib/modules/$kver/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko.xz" ] ||
    { echo "FAIL: guest kernel $kver has no rdma_rxe module" >&2; exit 4; }
  cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$dir/initrd.img"
  # Drop what the guest does not need at boot to keep the image small.
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/usr/share/doc" "$root/usr/share/man"
  mkfs.ext4 -q -L rdmavm -d "$root" "$dir/root.img" "${IMAGE_SIZE_MB}M"
  rm -rf "$root"
  echo "$kver" >"$dir/kernel-version"
  echo "$IMAGE_VERSION" >"$dir/image-version"
  echo "rdma-vm: image built in $(($(date +%s) - t0)) s (kernel $kver)"
}

if [ "$rebuild" = 1 ] || [ ! -e "$dir/root.img" ] || [ ! -e "$dir/vmlinuz" ] ||
  [ "$(cat "$dir/image-version" 2>/dev/null)" != "$IMAGE_VERSION" ]; then
  build_image
else
  echo "rdma-vm: using cached image in $dir (kernel $(cat "$dir/kernel-version"))"
fi
[ "$build_only" = 1 ] && exit 0

# Stage the binaries to share.
share_dir="$dir/share"
rm -rf "$share_dir"
mkdir -p "$share_dir"
pick() {
  for d in ${RDMA_VM_BIN:-} "$here/target/release" "$here/target/debug"; do
    [ -x "$d/$1" ] && { cp "$d/$1" "$share_dir/"; echo "rdma-vm: sharing $d/$1"; return; }
  done
  echo "rdma-vm: no $1 built (the guest step using it will FAIL)"
}
pick mover
pick examples/rdma_echo
echo "$ECHO_MIB" >"$share_dir/echo-mib"
printf '%s %s %s %s\n' "$TREE_MIB" "$SMALL_FILES" "$FAIL_AFTER_BYTES" "$BENCH_REPS" >"$share_dir/params"
cat >"$share_dir/guest.sh" <<'GUEST'
# The tests run inside the guest (written by scripts/rdma-vm.sh into the share).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
result=PASS
fail() { [ "$result" = PASS ] && result="FAIL $1"; echo "rdma-vm: step failed: $1"; }
step() { echo "rdma-vm: == $*"; }
ip link set lo up
modprobe virtio_net 2>/dev/null
ip link set eth0 up || fail "eth0 up"
ip addr add 10.0.2.15/24 dev eth0 || fail "eth0 address"
step "modprobe rdma_rxe"
modprobe rdma_rxe || fail "modprobe rdma_rxe"
step "rdma link add rxe0 type rxe netdev eth0"
rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add"
rdma link show
step "ibv_devices"
ibv_devices | tee /tmp/devs
grep -q rxe0 /tmp/devs || fail "ibv_devices lists no rxe0"
ibv_devinfo -d rxe0 | head -25 || fail "ibv_devinfo"
# GID of the IPv4 address (RoCE v2): the index whose gid holds ::ffff:10.0.2.15.
gid=1
for g in /sys/class/infiniband/rxe0/ports/1/gids/*; do
  case "$(cat "$g")" in *ffff:0a00:020f) gid=$(basename "$g"); break ;; esac
done
step "ibv_rc_pingpong (gid index $gid)"
ibv_rc_pingpong -d rxe0 -g "$gid" -n 1000 >/tmp/srv.log 2>&1 &
srv=$!
sleep 1
timeout 30 ibv_rc_pingpong -d rxe0 -g "$gid" -n 1000 10.0.2.15 >/tmp/cli.log 2>&1 || fail "ibv_rc_pingpong client"
wait $srv || fail "ibv_rc_pingpong server"
cat /tmp/srv.log /tmp/cli.log
grep -q 'iters in' /tmp/cli.log || fail "ibv_rc_pingpong reported no iterations"
if [ -x /mnt/host/mover ]; then
  step "mover hw --json (RDMA devices seen by mover)"
  /mnt/host/mover hw --json >/tmp/hw.json 2>&1 || fail "mover hw"
  cat /tmp/hw.json
  grep -q '"rxe0"' /tmp/hw.json || fail "mover hw lists no rxe0"
else
  fail "no mover binary shared (cargo build -p mover-cli)"
fi
if [ -x /mnt/host/rdma_echo ]; then
  step "rdma_echo rxe0 $gid $(cat /mnt/host/echo-mib) (mover's RDMA transport)"
  timeout 240 /mnt/host/rdma_echo rxe0 "$gid" "$(cat /mnt/host/echo-mib)" || fail "rdma_echo"
else
  fail "no rdma_echo shared (cargo build -p mover --features rdma --example rdma_echo)"
fi
# mover send/receive over RDMA (the `mover` shared must be built with --features rdma).
M=/mnt/host/mover
IP=10.0.2.15
read TREE_MIB SMALL_FILES FAIL_AFTER BENCH_REPS </mnt/host/params
# Waits (at most 20 s) for a receiver's {"listening":..} line in file $1.
listening() {
  n=0
  while [ $n -lt 100 ]; do
    grep -q listening "$1" 2>/dev/null && return 0
    sleep 0.2
    n=$((n + 1))
  done
  echo "rdma-vm: no receiver listening: $(cat "$1")"
  return 1
}
# Test $1 passes when the content hashes of /tmp/src and $2 are equal.
same_tree() {
  a="$($M hash --content /tmp/src --json 2>&1)"
  b="$($M hash --content "$2" --json 2>&1)"
  if [ -n "$a" ] && [ "$a" = "$b" ]; then
    echo "rdma-vm: $1: source and target hashes equal: $a"
    return 0
  fi
  echo "rdma-vm: $1: hashes differ: source $a target $b"
  return 1
}
# Whether the JSON report in file $1 has "$2":$3.
has() { grep -q "\"$2\":$3" "$1"; }
verdict() {
  if [ "$2" = ok ]; then echo "rdma-vm: PASS $1"; else echo "rdma-vm: FAIL $1"; fail "$1"; fi
}
receive() { # port root log, then mover receive options
  port=$1 root=$2 log=$3
  shift 3
  mkdir -p "$root"
  $M receive --listen "$IP:$port" --root "$root" --json "$@" >"$log" 2>&1 &
  rpid=$!
  listening "$log"
}
if [ -x $M ] && $M send --help | grep -q -- --transport; then
  step "a tree of ${TREE_MIB} MiB in 4 MiB files and $SMALL_FILES small files"
  mkdir -p /tmp/src/big /tmp/src/small/a /tmp/src/small/b
  i=1
  while [ $i -le $((TREE_MIB / 4)) ]; do head -c $((4 << 20)) /dev/urandom >/tmp/src/big/f$i; i=$((i + 1)); done
  i=0
  while [ $i -lt "$SMALL_FILES" ]; do
    head -c $(((i * 7919) % 20000 + 1)) /dev/urandom >/tmp/src/small/$([ $((i % 2)) = 0 ] && echo a || echo b)/s$i
    i=$((i + 1))
  done

  step "(a) sync over RDMA"
  v=fail
  if receive 3711 /tmp/dst1 /tmp/r1.log --insecure-plaintext --once --transport rdma; then
    MOVER_LOG=info timeout 180 $M send /tmp/src --to $IP:3711 --insecure-plaintext --json \
      --threads 2 --retries 1 --transport rdma >/tmp/s1.json 2>/tmp/s1.err
    src=$?
    wait $rpid
    rrc=$?
    cat /tmp/s1.json
    grep -v ' INFO ' /tmp/s1.err
    # Each worker sent its frames out of its own slab, registered as a memory region.
    slab=$(grep -c "out of the worker's slab" /tmp/s1.err)
    echo "rdma-vm: workers sending from their slab: $slab"
    [ $src = 0 ] && [ $rrc = 0 ] && has /tmp/s1.json transport '"rdma"' &&
      has /tmp/r1.log transport '"rdma"' && [ "$slab" -ge 1 ] && same_tree sync /tmp/dst1 && v=ok
  fi
  verdict "(a) tree sync over RDMA: $(grep -o '"seconds":[0-9.]*' /tmp/s1.json)" $v

  step "(b) receiver SIGKILLed mid-job, restarted: the sender resumes over RDMA"
  v=fail
  if receive 3712 /tmp/dst2 /tmp/r2a.log --insecure-plaintext --transport rdma; then
    timeout 240 $M send /tmp/src --to $IP:3712 --insecure-plaintext --json --threads 2 \
      --retries 30 --transport rdma >/tmp/s2.json 2>/tmp/s2.err &
    spid=$!
    # Mid-job: a quarter of the tree's bytes in the target (checked every 0.1 s, 60 s at most).
    n=0
    kb=0
    while [ $n -lt 600 ] && [ "$kb" -lt $((TREE_MIB * 256)) ]; do
      sleep 0.1
      kb=$(du -sk /tmp/dst2 | cut -f1)
      n=$((n + 1))
    done
    kill -9 $rpid
    wait $rpid 2>/dev/null
    echo "rdma-vm: receiver SIGKILLed with $kb KiB in the target"
    if receive 3712 /tmp/dst2 /tmp/r2b.log --insecure-plaintext --once --transport rdma; then
      wait $spid
      src=$?
      wait $rpid
      rrc=$?
      cat /tmp/s2.json /tmp/s2.err
      [ $src = 0 ] && [ $rrc = 0 ] && has /tmp/s2.json transport '"rdma"' &&
        has /tmp/s2.json resumed true && ! has /tmp/s2.json attempts 1, &&
        same_tree resume /tmp/dst2 && v=ok
    fi
  fi
  verdict "(b) SIGKILLed receiver, resumed over RDMA: $(grep -o -e '"attempts":[0-9]*' -e '"resumed":[a-z]*' /tmp/s2.json | tr '\n' ' ')" $v

  step "(c) RDMA error forced after $FAIL_AFTER bytes: falls back to TCP and completes"
  v=fail
  if receive 3713 /tmp/dst3 /tmp/r3.log --insecure-plaintext --transport auto; then
    MOVER_RDMA_FAIL_AFTER_BYTES=$FAIL_AFTER timeout 240 $M send /tmp/src --to $IP:3713 \
      --insecure-plaintext --json --threads 2 --retries 30 >/tmp/s3.json 2>/tmp/s3.err
    src=$?
    kill $rpid
    wait $rpid
    cat /tmp/s3.json /tmp/s3.err
    [ $src = 0 ] && has /tmp/s3.json transport '"tcp"' && ! has /tmp/s3.json attempts 1, &&
      has /tmp/s3.json resumed true && grep -q "RDMA transport failed" /tmp/s3.err &&
      same_tree fallback /tmp/dst3 && v=ok
  fi
  verdict "(c) forced RDMA error, fell back to TCP: $(grep -o -e '"attempts":[0-9]*' -e '"resumed":[a-z]*' -e '"transport":"[a-z]*"' /tmp/s3.json | tr '\n' ' ')" $v

  step "(d) an encrypted (sealed) sync over RDMA: the same sealed frames on the queue pair"
  v=fail
  fa=$($M identity --identity /tmp/id-send --json | grep -o 'sha256:[0-9a-f]*')
  fb=$($M identity --identity /tmp/id-recv --json | grep -o 'sha256:[0-9a-f]*')
  if receive 3714 /tmp/dst4 /tmp/r4.log --once --transport rdma --identity /tmp/id-recv \
    --peer-fingerprint "$fa"; then
    timeout 180 $M send /tmp/src --to $IP:3714 --json --threads 2 --retries 1 \
      --transport rdma --identity /tmp/id-send --peer-fingerprint "$fb" >/tmp/s4.json 2>/tmp/s4.err
    src=$?
    wait $rpid
    rrc=$?
    cat /tmp/s4.json /tmp/s4.err
    [ $src = 0 ] && [ $rrc = 0 ] && has /tmp/s4.json transport '"rdma"' &&
      has /tmp/s4.json encrypted true && same_tree sealed /tmp/dst4 && v=ok
  fi
  verdict "(d) sealed sync over RDMA: $(grep -o -e '"encrypted":[a-z]*' -e '"transport":"[a-z]*"' /tmp/s4.json | tr '\n' ' ')" $v

  # The benchmark: the same tree into an empty target, one worker, over the guest's own
  # address (TCP to a local address runs over loopback; rxe loops back in its own stack):
  # RDMA sending out of the worker's slab, RDMA with every frame copied into the
  # connection's send buffers (MOVER_RDMA_COPY, the data path before), then TCP. CPU: user
  # and sys of each process (the shell's `times` for its children).
  r=1
  while [ $r -le "$BENCH_REPS" ]; do
    for v in rdma rdma-copy tcp; do
      t=${v%-copy}
      copy=$([ "$v" = rdma-copy ] && echo 1 || true)
      rm -rf /tmp/bdst /tmp/br.log
      (receive 3720 /tmp/bdst /tmp/br.log --insecure-plaintext --once --transport $t && wait $rpid; times >/tmp/br.times) &
      bpid=$!
      sleep 0.5
      listening /tmp/br.log >/dev/null
      (env ${copy:+MOVER_RDMA_COPY=1} timeout 240 $M send /tmp/src --to $IP:3720 --insecure-plaintext \
        --json --threads 1 --retries 1 --transport $t >/tmp/bs.json 2>/tmp/bs.err; times >/tmp/bs.times)
      wait $bpid
      echo "rdma-bench: transport=$v rep=$r used=$(grep -o '"transport":"[a-z]*"' /tmp/bs.json | cut -d'"' -f4)" \
        "seconds=$(grep -o '"seconds":[0-9.e-]*' /tmp/bs.json | cut -d: -f2)" \
        "bytes=$(grep -o '"bytes":[0-9]*' /tmp/bs.json | head -1 | cut -d: -f2)" \
        "sender_cpu=$(sed -n 2p /tmp/bs.times | tr ' ' ,) receiver_cpu=$(sed -n 2p /tmp/br.times | tr ' ' ,)"
    done
    r=$((r + 1))
  done
else
  fail "the shared mover has no --transport (build it with: cargo build --release -p mover-cli --features rdma)"
fi
echo "RDMA-VM-RESULT: $result"
GUEST
share=(-virtfs "local,path=$share_dir,mount_tag=host,security_model=none,readonly=on")
console="$dir/console.log"
# Boots the guest under $1 (kvm or tcg) in the background: its pid in $qpid.
boot() {
  local args
  case "$1" in
    kvm) args=(-enable-kvm -cpu host) ;;
    tcg) args=(-accel tcg) ;;
  esac
  : >"$console"
  echo "rdma-vm: booting with $1 (timeout $(boot_timeout "$1") s, console in $console)"
  timeout "$(boot_timeout "$1")" qemu-system-x86_64 "${args[@]}" -smp 2 -m "$GUEST_MEM_MB" \
    -nographic -no-reboot -serial "file:$console" -monitor none \
    -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 init=/sbin/rdma-vm-init" \
    -drive "file=$dir/root.img,format=raw,if=virtio,snapshot=on" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
    "${share[@]}" >"$dir/qemu.log" 2>&1 &
  qpid=$!
}
t0=$(date +%s)
set +e
if [ "$accel" = auto ]; then
  boot kvm
  probe=0
  while [ "$probe" -lt "$KVM_PROBE_S" ] && kill -0 "$qpid" 2>/dev/null &&
    ! grep -aq 'Linux version' "$console"; do
    sleep 1
    probe=$((probe + 1))
  done
  if grep -aq 'Linux version' "$console"; then
    accel=kvm
  else
    kill "$qpid" 2>/dev/null
    wait "$qpid"
    cat "$dir/qemu.log" >&2 || true
    echo "rdma-vm: WARNING: /dev/kvm exists but KVM showed no guest kernel within ${KVM_PROBE_S} s" \
      "(a nested KVM that cannot run a Linux guest?): booting the same guest under TCG emulation" >&2
    accel=tcg
    t0=$(date +%s)
    boot tcg
  fi
else
  boot "$accel"
fi
wait "$qpid"
qrc=$?
set -e
BOOT_TIMEOUT_S="$(boot_timeout "$accel")"
elapsed=$(($(date +%s) - t0))
grep -a -e 'rdma-vm:' -e 'rdma-echo:' -e 'rdma-bench:' -e 'iters in' "$console" || true
# Benchmark medians per transport: MiB/s, and CPU seconds (user+sys) per GiB moved.
grep -a 'rdma-bench:' "$console" | tr -d '\r' >"$dir/bench.txt" || true
awk '
  function secs(s,  a, n, t, i, m) { # "0m1.23s,0m0.45s" -> 1.68
    n = split(s, a, ","); t = 0
    for (i = 1; i <= n; i++) { m = a[i]; sub(/s$/, "", m); split(m, p, "m"); t += p[1] * 60 + p[2] }
    return t
  }
  function median(arr, n,  i, j, x) {
    for (i = 2; i <= n; i++) { x = arr[i]; for (j = i - 1; j >= 1 && arr[j] > x; j--) arr[j + 1] = arr[j]; arr[j + 1] = x }
    return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
  }
  {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    t = f["transport"]; k = ++n[t]; gib = f["bytes"] / 1073741824
    rate[t, k] = f["bytes"] / 1048576 / f["seconds"]
    scpu[t, k] = secs(f["sender_cpu"]) / gib; rcpu[t, k] = secs(f["receiver_cpu"]) / gib
    used[t] = used[t] " " f["used"]
  }
  END {
    for (t in n) {
      for (k = 1; k <= n[t]; k++) { a[k] = rate[t, k]; b[k] = scpu[t, k]; c[k] = rcpu[t, k] }
      printf "rdma-bench-median: transport=%s reps=%d used=[%s ] MiB/s=%.2f sender_cpu_s_per_GiB=%.1f receiver_cpu_s_per_GiB=%.1f\n", t, n[t], used[t], median(a, n[t]), median(b, n[t]), median(c, n[t])
    }
  }' "$dir/bench.txt" | tee "$dir/bench-medians.txt" || true
line="$(grep -a 'RDMA-VM-RESULT:' "$console" | tail -1 | tr -d '\r' || true)"
if [ -z "$line" ]; then
  tail -40 "$console" >&2 || true
  cat "$dir/qemu.log" >&2 || true
  echo "FAIL: the guest ($accel) did not boot and report within ${BOOT_TIMEOUT_S} s (qemu exit $qrc, ${elapsed} s)" >&2
  exit 2
fi
echo "rdma-vm: boot+tests took ${elapsed} s"
case "$line" in
  *": PASS"*) echo "PASS"; exit 0 ;;
  *) echo "FAIL: ${line#*RDMA-VM-RESULT: }" >&2; exit 1 ;;
esac
