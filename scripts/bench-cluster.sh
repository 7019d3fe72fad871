#!/usr/bin/env bash
# Cluster benchmark (issue 14): one relationship's job spread over 1, 2 and 3 source nodes of
# one etcd cluster on this machine (three daemons with --spread-jobs reading one source
# directory, a target daemon writing into a tmpfs), then a source node SIGKILLed mid-job.
#
# Reports, per number of source nodes (rotating order, medians of REPS):
#   - the job's time and throughput (the session's seconds, as the daemon reports them), and
#     the CPU seconds all mover processes spent per GB;
#   - etcd writes (put + delete + txn, from etcd's own /metrics) for a relationship's create and
#     initial sync, per GiB moved, and per later job (a one-file change replicated);
# and, for the kill: the time from the SIGKILL to the owner's session failing (detection) and
# to the retried session running on the nodes left (reassignment), with the bytes the retry
# sent.
#
# Usage: sudo bash scripts/bench-cluster.sh   (root: the target daemon mounts its directory)
# Env: REPS (3), SIZE_MB (1024), FILE_MB (16), THREADS per node (1), OUT (results/<date>-cluster)
# Needs: a release build (target/release/mover), etcd (scripts/install-deps.sh), curl, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MOVER_BIN:-$ROOT/target/release/mover}
REPS=${REPS:-3}
SIZE_MB=${SIZE_MB:-1024}
FILE_MB=${FILE_MB:-16}
THREADS=${THREADS:-1}
OUT=${OUT:-$ROOT/results/$(date -u +%Y-%m-%d)-cluster}
[ "$(id -u)" = 0 ] || { echo "bench-cluster: run as root (the target mounts its directory)" >&2; exit 2; }
for t in etcd curl python3; do
  command -v "$t" >/dev/null || { echo "bench-cluster: $t is missing (scripts/install-deps.sh installs it)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "bench-cluster: no $BIN: cargo build --release first" >&2; exit 2; }

W=$(mktemp -d /tmp/mover-bench-cluster.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  umount -R "$W/dst" 2>/dev/null || true
  grep " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "bench-cluster: kept $W" >&2 || rm -rf "$W"
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

declare -A API PID
start_node() { # name spread
  local n=$1 spread=$2 l a
  l=$(port); a=$(port)
  mkdir -p "$W/$n"
  printf 'cluster = "etcd://127.0.0.1:%s"\nnode_name = "%s"\nspread_jobs = %s\nthreads = %s\ncontinuous_interval_secs = 3600\n' \
    "$EP" "$n" "$spread" "$THREADS" >"$W/$n.toml"
  MOVER_LOG=info "$BIN" daemon --data-dir "$W/$n/data" --config "$W/$n.toml" \
    --listen "127.0.0.1:$l" --api "127.0.0.1:$a" >/dev/null 2>>"$W/$n.log" &
  PID[$n]=$!; PIDS+=($!)
  API[$n]="http://127.0.0.1:$a"
  eval "LISTEN_$n=$l"
  for _ in $(seq 200); do [ -s "$W/$n/data/admin.token" ] && curl -s "${API[$n]}/v1/health" >/dev/null && break; sleep 0.1; done
}
cli() { local n=$1; shift; MOVER_TOKEN=$(cat "$W/$n/data/admin.token") "$BIN" "$@" --api "${API[$n]}"; }
get() { curl -sf -H "Authorization: Bearer $(cat "$W/$1/data/admin.token")" "${API[$1]}$2"; }

start_node n1 true; start_node n2 true; start_node n3 true; start_node t1 false
for _ in $(seq 300); do
  up=$(get n1 /v1/cluster | python3 -c 'import json,sys; print(sum(m["up"] for m in json.load(sys.stdin)["members"]))')
  [ "$up" = 4 ] && break; sleep 0.1
done

echo "bench-cluster: generating $SIZE_MB MB in $FILE_MB MB files" >&2
mkdir -p "$W/src" "$W/dst"
mount -t tmpfs -o size=$((SIZE_MB * 2 + 256))m tmpfs "$W/dst"
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
set_nodes() { # k: n1..nk take shares, the others are drained
  local k=$1 i
  for i in 2 3; do
    if [ "$i" -le "$k" ]; then cli n1 node undrain "n$i" >/dev/null; else cli n1 node drain "n$i" >/dev/null; fi
  done
  sleep 1
}
one_job() { # k -> prints JSON of one job
  local k=$1 id dst c0 c1 e0 e1 t0 t1 v
  dst="$W/dst/r$(date +%s%N)"; mkdir -p "$dst"
  set_nodes "$k"
  c0=$(cpu_all); e0=$(etcd_writes); t0=$(date +%s.%N)
  id=$(cli n1 relationship create --source-path "$W/src" --target-address 127.0.0.1 \
    --target-port "$LISTEN_t1" --target-path "$dst" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  cli t1 relationship authorize "$id" >/dev/null
  while :; do
    v=$(get n1 "/v1/replication/source-relationships/$id")
    echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if (v.get("last_attempt") or {}).get("ok") and v.get("job") is None else 1)' && break
    sleep 0.2
  done
  t1=$(date +%s.%N); c1=$(cpu_all); e1=$(etcd_writes)
  # Then a one-file change replicated: what a later job of the relationship costs in etcd
  # (the window above also holds the relationship's create and authorize).
  local ended e3 f="$W/src/rerun.$k"
  ended=$(ended_jobs "$id")
  date +%s%N > "$f"
  cli n1 relationship replicate "$id" >/dev/null 2>&1 || true
  while [ "$(ended_jobs "$id")" -le "$ended" ] || ! get n1 "/v1/replication/source-relationships/$id" \
      | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("job") is None else 1)'; do
    sleep 0.2
  done
  e3=$(etcd_writes)
  rm -f "$f"
  cli n1 relationship delete "$id" >/dev/null
  rm -rf "$dst"
  python3 - "$k" "$v" "$t0" "$t1" "$c0" "$c1" "$e0" "$e1" "$W/n1.log" "$id" "$e3" "$ended" <<'EOF'
import json, re, sys
import datetime
ansi = re.compile(r"\x1b\[[0-9;]*m")
def ts(line):
    t = ansi.sub("", line).split(" ")[0].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
k, v, t0, t1, c0, c1, e0, e1, log, rid, e3, ended = sys.argv[1:]
v = json.loads(v)
m = re.search(r"([0-9]+) bytes sent in ([0-9.]+) s", v["last_attempt"]["message"])
b = int(m.group(1))
# The job's time from the owner's log, to the microsecond: "job started" to "job ended".
start = end = None
jobs = 0
for line in open(log, errors="replace"):
    if rid in line and "job started" in line and end is None:
        start = ts(line)
    if rid in line and "job ended" in line:
        end = end or ts(line)
        jobs += 1
s = end - start
print(json.dumps({"nodes": int(k), "bytes": b, "session_s": s, "wall_s": float(t1) - float(t0),
  "mb_s": b / s / 1e6, "cpu_s_per_gb": (float(c1) - float(c0)) / (b / 1e9),
  "etcd_writes": int(float(e1) - float(e0)),
  "rerun_jobs": jobs - int(ended), "etcd_writes_rerun": int(float(e3) - float(e1))}))
EOF
}

ended_jobs() { # id -> how many of its jobs n1's log says ended
  grep "job ended" "$W/n1.log" | grep -c "$1" || true
}

JOBS="$W/jobs.jsonl"
for r in $(seq 1 "$REPS"); do
  case $((r % 3)) in 1) order="1 2 3";; 2) order="2 3 1";; *) order="3 1 2";; esac
  for k in $order; do
    echo "bench-cluster: rep $r, $k source node(s)" >&2
    one_job "$k" | tee -a "$JOBS" >&2
  done
done

# A source node SIGKILLed mid-job: detection and reassignment.
echo "bench-cluster: killing n3 mid-job" >&2
set_nodes 3
dst="$W/dst/kill"; mkdir -p "$dst"
id=$(cli n1 relationship create --source-path "$W/src" --target-address 127.0.0.1 \
  --target-port "$LISTEN_t1" --target-path "$dst" --bandwidth-limit $((SIZE_MB * 1000000 / 8)) --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
cli t1 relationship authorize "$id" >/dev/null
shards0=$(grep -c "running a shard" "$W/n3.log" || true)
for _ in $(seq 300); do
  [ "$(grep -c "running a shard" "$W/n3.log" || true)" -gt "$shards0" ] && break; sleep 0.1
done
sleep 2
kill_at=$(date -u +%s.%N); kill -9 "${PID[n3]}"
while :; do
  v=$(get n1 "/v1/replication/source-relationships/$id")
  echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if (v.get("last_attempt") or {}).get("ok") and v.get("job") is None else 1)' && break
  sleep 0.2
done
KILL=$(python3 - "$kill_at" "$W/n1.log" "$v" <<'EOF'
import json, re, sys, datetime
kill_at, log, v = float(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
ansi = re.compile(r"\x1b\[[0-9;]*m")
def ts(line):
    t = ansi.sub("", line).split(" ")[0].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
failed = spread = None
for line in open(log, errors="replace"):
    if failed is None and "session failed" in line and "n3" in line and ts(line) >= kill_at:
        failed = ts(line)
    elif failed is not None and spread is None and "spreading the session" in line:
        spread = ts(line)
m = re.search(r"([0-9]+) bytes sent in ([0-9.]+) s", v["last_attempt"]["message"])
print(json.dumps({"detect_s": failed - kill_at if failed else None,
  "reassign_s": spread - kill_at if spread else None,
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
for k in (1, 2, 3):
    js = [j for j in jobs if j["nodes"] == k]
    med = lambda key: statistics.median(j[key] for j in js)
    rows.append({"nodes": k, "reps": len(js), "mb_s": med("mb_s"), "session_s": med("session_s"),
                 "cpu_s_per_gb": med("cpu_s_per_gb"), "etcd_writes_per_job": med("etcd_writes"),
                 "etcd_writes_per_gib": med("etcd_writes") / (med("bytes") / 2**30),
                 "etcd_writes_per_later_job": statistics.median(
                     j["etcd_writes_rerun"] / max(j["rerun_jobs"], 1) for j in js)})
doc = {"size_mb": size, "file_mb": fsize, "threads_per_node": threads, "reps": reps,
       "cpus": os.cpu_count(), "per_nodes": rows, "kill": kill, "jobs": jobs}
json.dump(doc, open(out + ".json", "w"), indent=2)
print("| source nodes | MB/s (median) | vs 1 node | session s | CPU s/GB | etcd writes: create + initial sync | per GiB | per later job |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['nodes']} | {r['mb_s']:.0f} | {r['mb_s']/rows[0]['mb_s']:.2f}x | {r['session_s']:.2f} | "
          f"{r['cpu_s_per_gb']:.2f} | {r['etcd_writes_per_job']:.0f} | {r['etcd_writes_per_gib']:.1f} | "
          f"{r['etcd_writes_per_later_job']:.1f} |")
print(f"\nKill of n3 mid-job: session failed {kill['detect_s']:.2f} s after the SIGKILL, "
      f"the retry ran on the nodes left {kill['reassign_s']:.2f} s after it, and sent {kill['retry_bytes']} bytes.")
EOF
echo "bench-cluster: wrote $OUT.json" >&2
