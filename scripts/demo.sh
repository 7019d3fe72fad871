#!/usr/bin/env bash
# The demo: two mover daemons on 127.0.0.1 (a source node and a target node), a replication
# relationship created on the source and authorized on the target, the initial sync watched in
# `mover status`, then a change replicated, and the relationship deleted (target writable again).
# Everything goes through the CLI, as an operator would type it. Run as root to see the target
# protected by a read-only bind mount (without root it is reported as not_enforced).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p mover-cli
M="$PWD/target/release/mover"
W=$(mktemp -d /tmp/mover-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Mounts a killed daemon may have left (none after a clean stop).
  grep -o " $W[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "a source tree: 2000 small files and 2 x 48 MiB"
mkdir -p "$W/src/docs" "$W/src/media" "$W/replica"
for i in $(seq 2000); do printf 'document %d\n%s\n' "$i" "$(date +%N)" > "$W/src/docs/$i.txt"; done
head -c $((48 << 20)) /dev/urandom > "$W/src/media/a.bin"
head -c $((48 << 20)) /dev/urandom > "$W/src/media/b.bin"

PA=$(free_port); AA=$(free_port); PB=$(free_port); AB=$(free_port)
say "two daemons: source node (peer port $PA, API $AA) and target node (peer port $PB, API $AB)"
"$M" daemon --data-dir "$W/node-a" --listen "127.0.0.1:$PA" --api "127.0.0.1:$AA" 2>"$W/node-a.log" & pids+=($!)
"$M" daemon --data-dir "$W/node-b" --listen "127.0.0.1:$PB" --api "127.0.0.1:$AB" 2>"$W/node-b.log" & pids+=($!)
for n in a b; do
  for _ in $(seq 100); do [ -s "$W/node-$n/admin.token" ] && break; sleep 0.1; done
done
A=(--api "http://127.0.0.1:$AA" --token "$(cat "$W/node-a/admin.token")")
B=(--api "http://127.0.0.1:$AB" --token "$(cat "$W/node-b/admin.token")")
for _ in $(seq 100); do "$M" status "${A[@]}" >/dev/null 2>&1 && "$M" status "${B[@]}" >/dev/null 2>&1 && break; sleep 0.1; done

say "create the relationship on the source (bandwidth limited to 64 MiB/s so progress is visible)"
echo "\$ mover relationship create --source-path $W/src --target-address 127.0.0.1 --target-port $PB --target-path $W/replica --bandwidth-limit 67108864"
ID=$("$M" relationship create "${A[@]}" --source-path "$W/src" --target-address 127.0.0.1 --target-port "$PB" \
  --target-path "$W/replica" --bandwidth-limit 67108864 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "relationship $ID"

say "the target lists it as awaiting authorization"
"$M" relationship list "${B[@]}"

say "authorize it on the target; replication starts"
"$M" relationship authorize "${B[@]}" "$ID"
for _ in $(seq 100); do "$M" status "${A[@]}" --json | grep -q '"state":"running"' && break; sleep 0.1; done
"$M" status "${A[@]}" --watch --until-idle --interval 0.5

say "verify: source and replica have the same tree hash (and content hash)"
"$M" hash --content "$W/src"
"$M" hash --content "$W/replica"

say "the replica is read-only while the relationship exists"
if touch "$W/replica/intruder" 2>/dev/null; then echo "(written: mounting was not possible here, see read_only in the status)"; else echo "touch $W/replica/intruder: refused (read-only)"; fi

say "change the source and replicate now: only the change travels"
printf 'changed\n' >> "$W/src/docs/7.txt"
mv "$W/src/media/b.bin" "$W/src/media/renamed.bin"
"$M" relationship replicate "${A[@]}" "$ID"
sleep 1
"$M" status "${A[@]}" --watch --until-idle --interval 0.5
"$M" relationship show "${B[@]}" "$ID"
"$M" hash --content "$W/src"
"$M" hash --content "$W/replica"

say "delete the relationship on the source: the target forgets it and the replica is writable again"
"$M" relationship delete "${A[@]}" "$ID"
touch "$W/replica/now-writable" && echo "touch $W/replica/now-writable: ok"
echo
echo "demo complete: logs were in $W/node-a.log and $W/node-b.log (removed now)"
