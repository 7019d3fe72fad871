#!/usr/bin/env bash
# Cluster benchmark, target side (issue 14): one relationship's sessions written by 1 or 2
# target nodes of one etcd cluster on this machine (two daemons with --spread-writes sharing
# one target directory, a tmpfs; t2 in a mount namespace of its own, as another machine), from
# a single source daemon; then t2 SIGKILLed mid-job.
#
# Reports, per number of target nodes (rotating order, medians of REPS): the job's time and
# throughput (from the source's log), the CPU seconds all mover processes spent per GB, and
# etcd writes per job; for the kill: the time from the SIGKILL to the session failing
# (detection) and to the retried session's end, with the bytes the retry sent.
#
# Usage: sudo bash scripts/bench-cluster-writes.sh   (root: mounts)
# Env: REPS (3), SIZE_MB (1024), FILE_MB (16), THREADS of the source (2), OUT
# (results/<date>-cluster-writes). Needs: a release build, etcd, curl, python3, unshare.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MOVER_BIN:-$ROOT/target/release/mover}
REPS=${REPS:-3}
SIZE_MB=${SIZE_MB:-1024}
FILE_MB=${FILE_MB:-16}
THREADS=${THREADS:-2}
OUT=${OUT:-$ROOT/results/$(date -u +%Y-%m-%d)-cluster-writes}
[ "$(id -u)" = 0 ] || { echo "bench-cluster-writes: run as root" >&2; exit 2; }
for t in etcd curl python3 unshare; do
  command -v "$t" >/dev/null || { echo "bench-cluster-writes: $t is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "bench-cluster-writes: no $BIN: cargo build --release first" >&2; exit 2; }

W=$(mktemp -d /tmp/mover-bench-writes.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  grep " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "bench-cluster-writes: kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

EP=$(port); EPP=$(port)
etcd --name bench --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$EP" \
  --advertise-client-urls "http://127.0.0.1:$EP" --listen-peer-urls "http://127.0.0.1:$EPP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$EPP" --initial-cluster "bench=http://127.0.0.1:$EPP" \
  >"$W/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$EP/health" >/dev/null && break; sleep 0.1; done

# The shared target, mounted before t2 starts so its namespace has it too.
mkdir -p "$W/src" "$W/dst"
mount -t tmpfs -o size=$((SIZE_MB * 2 + 256))m tmpfs "$W/dst"

declare -A API PID
start_node() { # name config-lines [own-namespace]
  local n=$1 cfg=$2 own=${3:-} l a
  l=$(port); a=$(port)
  mkdir -p "$W/$n"
  printf '%s\nthreads = %s\ncontinuous_interval_secs = 3600\n' "$cfg" "$THREADS" >"$W/$n.toml"
  if [ -n "$own" ]; then
    MOVER_LOG=info unshare --mount --propagation private "$BIN" daemon --data-dir "$W/$n/data" \
      --config "$W/$n.toml" --listen "127.0.0.1:$l" --api "127.0.0.1:$a" >/dev/null 2>>"$W/$n.log" &
  else
    MOVER_LOG=info "$BIN" daemon --data-dir "$W/$n/data" --config "$W/$n.toml" \
      --listen "127.0.0.1:$l" --api "127.0.0.1:$a" >/dev/null 2>>"$W/$n.log" &
  fi
  PID[$n]=$!; PIDS+=($!)
  API[$n]="http://127.0.0.1:$a"
  eval "LISTEN_$n=$l"
  for _ in $(seq 200); do [ -s "$W/$n/data/admin.token" ] && curl -s "${API[$n]}/v1/health" >/dev/null && break; sleep 0.1; done
}
cli() { local n=$1; shift; MOVER_TOKEN=$(cat "$W/$n/data/admin.token") "$BIN" "$@" --api "${API[$n]}"; }
get() { curl -sf -H "Authorization: Bearer $(cat "$W/$1/data/admin.token")" "${API[$1]}$2"; }

cfg() { printf 'cluster = "etcd://127.0.0.1:%s"\nnode_name = "%s"\nspread_writes = true\n' "$EP" "$1"; }
start_node t1 "$(cfg t1)"
start_node t2 "$(cfg t2)" own
start_node s1 ""
for _ in $(seq 300); do
  up=$(get t1 /v1/cluster | python3 -c 'import json,sys; print(sum(m["up"] for m in json.load(sys.stdin)["members"]))')
  [ "$up" = 2 ] && break; sleep 0.1
done

echo "bench-cluster-writes: generating $SIZE_MB MB in $FILE_MB MB files" >&2
for i in $(seq 1 $((SIZE_MB / FILE_MB))); do
  head -c $((FILE_MB << 20)) /dev/urandom >"$W/src/f$i"
done
cat "$W"/src/* >/dev/null   # warm: the source is read from the page cache

cpu_all() { # CPU seconds of every mover process so far
  local t=0 p
  for p in "${PID[@]}"; do
    t=$(python3 -c "import os; f=open('/proc/$p/stat').read().rsplit(')',1)[1].split(); print($t + (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" 2>/dev/null || echo "$t")
  done
  echo "$t"
}
etcd_writes() {
  curl -sf "http://127.0.0.1:$EP/metrics" | awk '/^etcd_mvcc_(put|delete|txn)_total /{s+=$2} END{print s+0}'
}
set_places() { # k: 1 = t1 alone (t2 drained), 2 = t1 and t2
  if [ "$1" = 2 ]; then cli t1 node undrain t2 >/dev/null; else cli t1 node drain t2 >/dev/null; fi
  sleep 1
}
synced() { # id
  while :; do
    v=$(get s1 "/v1/replication/source-relationships/$1")
    echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if (v.get("last_attempt") or {}).get("ok") and v.get("job") is None else 1)' && break
    sleep 0.2
  done
  echo "$v"
}
create() { # dst [flags] -> id
  local dst=$1; shift
  cli s1 relationship create --source-path "$W/src" --target-address 127.0.0.1 \
    --target-port "$LISTEN_t1" --target-path "$dst" "$@" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
one_job() { # k -> prints JSON of one job
  local k=$1 id dst c0 c1 e0 e1 v s0
  dst="$W/dst/r$(date +%s%N)"; mkdir -p "$dst"
  set_places "$k"
  s0=$(grep -c "writing a share" "$W/t2.log" || true)
  c0=$(cpu_all); e0=$(etcd_writes)
  id=$(create "$dst")
  cli t1 relationship authorize "$id" >/dev/null
  v=$(synced "$id")
  c1=$(cpu_all); e1=$(etcd_writes)
  local shares; shares=$(( $(grep -c "writing a share" "$W/t2.log" || true) - s0 ))
  # The replica is the source, byte for byte.
  diff -r -q -x .mover-state "$W/src" "$dst" >&2 || { echo "bench-cluster-writes: replica differs" >&2; exit 1; }
  cli s1 relationship delete "$id" >/dev/null
  cli t1 relationship delete "$id" >/dev/null 2>&1 || true
  rm -rf "$dst"
  python3 - "$k" "$v" "$c0" "$c1" "$e0" "$e1" "$W/s1.log" "$id" "$shares" <<'EOF'
import json, re, sys, datetime
ansi = re.compile(r"\x1b\[[0-9;]*m")
def ts(line):
    t = ansi.sub("", line).split(" ")[0].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
k, v, c0, c1, e0, e1, log, rid, shares = sys.argv[1:]
v = json.loads(v)
m = re.search(r"([0-9]+) bytes sent in ([0-9.]+) s", v["last_attempt"]["message"])
b = int(m.group(1))
start = end = None
for line in open(log, errors="replace"):
    if rid in line and "job started" in line and start is None:
        start = ts(line)
    if rid in line and "job ended" in line and end is None:
        end = ts(line)
s = end - start
print(json.dumps({"places": int(k), "bytes": b, "session_s": s, "mb_s": b / s / 1e6,
  "cpu_s_per_gb": (float(c1) - float(c0)) / (b / 1e9), "etcd_writes": int(float(e1) - float(e0)),
  "t2_shares": int(shares)}))
EOF
}

JOBS="$W/jobs.jsonl"
for r in $(seq 1 "$REPS"); do
  case $((r % 2)) in 1) order="1 2";; *) order="2 1";; esac
  for k in $order; do
    echo "bench-cluster-writes: rep $r, $k target node(s)" >&2
    one_job "$k" | tee -a "$JOBS" >&2
  done
done

# t2 SIGKILLed mid-job: detection and the retry on t1 alone.
echo "bench-cluster-writes: killing t2 mid-job" >&2
set_places 2
dst="$W/dst/kill"; mkdir -p "$dst"
id=$(create "$dst" --bandwidth-limit $((SIZE_MB * 1000000 / 8)))
s0=$(grep -c "writing a share" "$W/t2.log" || true)
cli t1 relationship authorize "$id" >/dev/null
for _ in $(seq 300); do
  [ "$(grep -c "writing a share" "$W/t2.log" || true)" -gt "$s0" ] && break; sleep 0.1
done
sleep 2
kill_at=$(date -u +%s.%N); kill -9 "${PID[t2]}"
v=$(synced "$id")
diff -r -q -x .mover-state "$W/src" "$dst" >&2 || { echo "bench-cluster-writes: replica differs after the kill" >&2; exit 1; }
KILL=$(python3 - "$kill_at" "$W/s1.log" "$v" "$id" <<'EOF'
import json, re, sys, datetime
kill_at, log, v, rid = float(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
ansi = re.compile(r"\x1b\[[0-9;]*m")
def ts(line):
    t = ansi.sub("", line).split(" ")[0].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
failed = ended = None
for line in open(log, errors="replace"):
    if rid not in line and "session failed" not in line:
        continue
    if failed is None and "session failed" in line and ts(line) >= kill_at:
        failed = ts(line)
    elif rid in line and "job ended" in line and ts(line) >= kill_at:
        ended = ts(line)
m = re.search(r"([0-9]+) bytes sent in ([0-9.]+) s", v["last_attempt"]["message"])
print(json.dumps({"detect_s": failed - kill_at if failed else None,
  "done_s": ended - kill_at if ended else None,
  "retry_bytes": int(m.group(1)) if m else None}))
EOF
)
echo "$KILL" >&2

mkdir -p "$(dirname "$OUT")"
python3 - "$JOBS" "$KILL" "$OUT" "$SIZE_MB" "$FILE_MB" "$THREADS" "$REPS" <<'EOF'
import json, statistics, sys, os
jobs = [json.loads(l) for l in open(sys.argv[1])]
kill = json.loads(sys.argv[2])
out, size, fsize, threads, reps = sys.argv[3], *map(int, sys.argv[4:])
rows = []
for k in (1, 2):
    js = [j for j in jobs if j["places"] == k]
    med = lambda key: statistics.median(j[key] for j in js)
    rows.append({"places": k, "reps": len(js), "mb_s": med("mb_s"), "session_s": med("session_s"),
                 "cpu_s_per_gb": med("cpu_s_per_gb"), "etcd_writes_per_job": med("etcd_writes"),
                 "t2_shares": sum(j["t2_shares"] for j in js)})
doc = {"size_mb": size, "file_mb": fsize, "source_threads": threads, "reps": reps,
       "cpus": os.cpu_count(), "per_places": rows, "kill": kill, "jobs": jobs}
json.dump(doc, open(out + ".json", "w"), indent=2)
print("| target nodes | MB/s (median) | vs 1 node | session s | CPU s/GB | etcd writes per job (create, authorize, sync) | shares t2 wrote |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['places']} | {r['mb_s']:.0f} | {r['mb_s']/rows[0]['mb_s']:.2f}x | {r['session_s']:.2f} | "
          f"{r['cpu_s_per_gb']:.2f} | {r['etcd_writes_per_job']:.0f} | {r['t2_shares']} |")
d = kill["detect_s"]; e = kill["done_s"]
print(f"\nKill of t2 mid-job: the session failed {d:.2f} s after the SIGKILL, the job ended "
      f"{e:.2f} s after it, and the retry sent {kill['retry_bytes']} bytes.")
EOF
echo "bench-cluster-writes: wrote $OUT.json" >&2
