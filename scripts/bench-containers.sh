#!/usr/bin/env bash
# What running a node as containers by role costs (issue 14): the same jobs in three set-ups,
# alternating, medians of REPS, every target writing into a tmpfs:
#   - one:     a source run as one process (`mover daemon`) into a target daemon;
#   - split:   a source run as three containers (`mover node run`: control, data, API; the data
#              container runs the sessions control hands it over its socket) into that daemon;
#   - tsplit:  the one-process source into a target run as containers (its data container
#              runs the receivers, fed the data-plane sockets its control container accepts).
#
# Jobs, each timed from the source's log ("job started" to "job ended"):
#   - large: the initial sync of SIZE_MB in FILE_MB files, source hot in the page cache;
#   - noop: a rerun of a relationship over SMALL_FILES x 4 KiB files in which nothing changed
#     (the per-job cost: ticket, walk, entry list delta, the manifest kept between jobs).
# CPU seconds are those of every process of the source node and of the target node (the
# supervisor and its containers, or the one daemon), per GB for the large job.
#
# Usage: sudo bash scripts/bench-containers.sh   (root: the target daemon mounts its directory)
# Env: REPS (5), SIZE_MB (1024), FILE_MB (16), SMALL_FILES (20000), OUT (results/<date>-containers)
# Needs: a release build (target/release/mover), curl, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MOVER_BIN:-$ROOT/target/release/mover}
REPS=${REPS:-5}
SIZE_MB=${SIZE_MB:-1024}
FILE_MB=${FILE_MB:-16}
SMALL_FILES=${SMALL_FILES:-20000}
OUT=${OUT:-$ROOT/results/$(date -u +%Y-%m-%d)-containers}
[ "$(id -u)" = 0 ] || { echo "bench-containers: run as root (the target mounts its directory)" >&2; exit 2; }
for t in curl python3; do
  command -v "$t" >/dev/null || { echo "bench-containers: $t is missing" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "bench-containers: no $BIN: cargo build --release first" >&2; exit 2; }

W=$(mktemp -d /tmp/mover-bench-containers.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  grep " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "bench-containers: kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A API PID
start() { # name how (daemon | node)
  local n=$1 how=$2 l a args
  l=$(port); a=$(port)
  mkdir -p "$W/$n"
  printf 'continuous_interval_secs = 3600\n' >"$W/$n.toml"
  if [ "$how" = node ]; then args=(node run); else args=(daemon); fi
  MOVER_LOG=info "$BIN" "${args[@]}" --data-dir "$W/$n/data" --config "$W/$n.toml" \
    --listen "127.0.0.1:$l" --api "127.0.0.1:$a" >/dev/null 2>>"$W/$n.log" &
  PID[$n]=$!; PIDS+=($!)
  API[$n]="http://127.0.0.1:$a"
  eval "LISTEN_$n=$l"
  for _ in $(seq 300); do [ -s "$W/$n/data/admin.token" ] && curl -sf "${API[$n]}/v1/health" >/dev/null && break; sleep 0.1; done
}
cli() { local n=$1; shift; MOVER_TOKEN=$(cat "$W/$n/data/admin.token") "$BIN" "$@" --api "${API[$n]}"; }
get() { curl -sf -H "Authorization: Bearer $(cat "$W/$1/data/admin.token")" "${API[$1]}$2"; }

start one daemon; start split node; start t1 daemon; start t2 node
# A split node is ready once its three containers answer.
for n in split t2; do
  for _ in $(seq 300); do
    get "$n" /v1/containers | python3 -c 'import json,sys; c=json.load(sys.stdin)["containers"]; sys.exit(0 if len(c)==3 and all(x["healthy"] for x in c) else 1)' && break
    sleep 0.2
  done
done

echo "bench-containers: generating $SIZE_MB MB in $FILE_MB MB files and $SMALL_FILES small files" >&2
mkdir -p "$W/src" "$W/small" "$W/dst"
mount -t tmpfs -o size=$((SIZE_MB * 2 + 1024))m tmpfs "$W/dst"
for i in $(seq 1 $((SIZE_MB / FILE_MB))); do
  head -c $((FILE_MB << 20)) /dev/urandom >"$W/src/f$i"
done
python3 - "$W/small" "$SMALL_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 500:03}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(4096))
EOF
cat "$W"/src/* >/dev/null   # warm: the source is read from the page cache

cpu_of() { # CPU seconds of node $1's processes (the supervisor's children too)
  local p t=0 all
  all="${PID[$1]} $(pgrep -P "${PID[$1]}" | tr '\n' ' ')"
  for p in $all; do
    t=$(python3 -c "import os; f=open('/proc/$p/stat').read().rsplit(')',1)[1].split(); print($t + (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" 2>/dev/null || echo "$t")
  done
  echo "$t"
}
synced() { # node id: waits for the job to end, prints the view
  local v
  while :; do
    v=$(get "$1" "/v1/replication/source-relationships/$2")
    echo "$v" | python3 -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if (v.get("last_attempt") or {}).get("ok") and v.get("job") is None else 1)' && break
    sleep 0.1
  done
  echo "$v"
}
ended_jobs() { grep -c "job ended" "$W/$1.log" || true; }
job_secs() { # log id -> seconds of the last job of id
  python3 - "$W/$1.log" "$2" <<'EOF'
import re, sys, datetime
log, rid = sys.argv[1:]
ansi = re.compile(r"\x1b\[[0-9;]*m")
def ts(line):
    t = ansi.sub("", line).split(" ")[0].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
start = end = None
for line in open(log, errors="replace"):
    if rid in line and "job started" in line:
        start = ts(line)
    if rid in line and "job ended" in line:
        end = ts(line)
print(end - start)
EOF
}
create() { # node source target target-node -> id
  local dst=$3 tn=$4 id port
  mkdir -p "$dst"
  port=$(eval echo "\$LISTEN_$tn")
  id=$(cli "$1" relationship create --source-path "$2" --target-address 127.0.0.1 \
    --target-port "$port" --target-path "$dst" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  cli "$tn" relationship authorize "$id" >/dev/null
  echo "$id"
}
# Each set-up's source and target node.
declare -A SRC=([one]=one [split]=split [tsplit]=one) TGT=([one]=t1 [split]=t1 [tsplit]=t2)

# One relationship over the small tree per node, synced once: the no-op reruns use it.
declare -A SMALL
for h in one split tsplit; do
  SMALL[$h]=$(create "${SRC[$h]}" "$W/small" "$W/dst/$h-small" "${TGT[$h]}")
  synced "${SRC[$h]}" "${SMALL[$h]}" >/dev/null
done

JOBS="$W/jobs.jsonl"
for r in $(seq 1 "$REPS"); do
  case $((r % 3)) in
    1) order="one split tsplit" ;;
    2) order="split tsplit one" ;;
    *) order="tsplit one split" ;;
  esac
  for h in $order; do
    n=${SRC[$h]} tn=${TGT[$h]}
    echo "bench-containers: rep $r, $h, large" >&2
    c0=$(cpu_of "$n"); t0=$(cpu_of "$tn")
    id=$(create "$n" "$W/src" "$W/dst/$h-large-$r" "$tn")
    synced "$n" "$id" >/dev/null
    c1=$(cpu_of "$n"); t1=$(cpu_of "$tn")
    s=$(job_secs "$n" "$id")
    cli "$n" relationship delete "$id" >/dev/null
    python3 -c "import json; gb = $SIZE_MB * 1048576 / 1e9; print(json.dumps({'how': '$h', 'job': 'large', 'secs': $s, 'mb_s': gb * 1e3 / $s, 'cpu_s_per_gb': ($c1 - $c0) / gb, 'target_cpu_s_per_gb': ($t1 - $t0) / gb}))" | tee -a "$JOBS" >&2
    rm -rf "$W/dst/$h-large-$r"
    echo "bench-containers: rep $r, $h, noop" >&2
    e0=$(ended_jobs "$n")
    cli "$n" relationship replicate "${SMALL[$h]}" >/dev/null
    while [ "$(ended_jobs "$n")" -le "$e0" ]; do sleep 0.05; done
    v=$(synced "$n" "${SMALL[$h]}")
    s=$(job_secs "$n" "${SMALL[$h]}")
    python3 -c "import json; print(json.dumps({'how': '$h', 'job': 'noop', 'secs': $s}))" | tee -a "$JOBS" >&2
  done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$JOBS" "$OUT" "$SIZE_MB" "$FILE_MB" "$SMALL_FILES" "$REPS" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'EOF'
import json, statistics, sys
jobs = [json.loads(l) for l in open(sys.argv[1])]
out, size, fsize, small, reps, rev = sys.argv[2], *map(int, sys.argv[3:7]), sys.argv[7]
med = lambda how, job, key: statistics.median(j[key] for j in jobs if j["how"] == how and j["job"] == job)
res = {"rev": rev, "size_mb": size, "file_mb": fsize, "small_files": small, "reps": reps, "jobs": jobs,
       "median": {how: {"large_s": med(how, "large", "secs"), "large_mb_s": med(how, "large", "mb_s"),
                        "large_cpu_s_per_gb": med(how, "large", "cpu_s_per_gb"),
                        "large_target_cpu_s_per_gb": med(how, "large", "target_cpu_s_per_gb"),
                        "noop_s": med(how, "noop", "secs")} for how in ("one", "split", "tsplit")}}
json.dump(res, open(out + ".json", "w"), indent=1)
m = res["median"]
lines = [f"# Nodes as one process and as containers by role ({rev})", "",
  f"`REPS={reps} bash scripts/bench-containers.sh`: {size} MiB in {fsize} MiB files (source hot) and a no-op",
  f"rerun over {small} x 4 KiB files, every target writing into a tmpfs; the three set-ups",
  "rotate. Medians.", "",
  "| source node | target node | large: time | MB/s | CPU s/GB (source) | CPU s/GB (target) | no-op rerun |",
  "|---|---|---|---|---|---|---|"]
daemon, node = "`mover daemon` (one process)", "`mover node run` (control, data, API)"
for how, src, dst in (("one", daemon, daemon), ("split", node, daemon), ("tsplit", daemon, node)):
    x = m[how]
    lines.append(f"| {src} | {dst} | {x['large_s']:.2f} s | {x['large_mb_s']:.0f} | {x['large_cpu_s_per_gb']:.2f} | {x['large_target_cpu_s_per_gb']:.2f} | {x['noop_s']:.3f} s |")
lines += [""]
for how, name in (("split", "Source split"), ("tsplit", "Target split")):
    lines.append(f"{name} / one process: large {m[how]['large_s'] / m['one']['large_s']:.2f}x the time, "
                 f"no-op {m[how]['noop_s'] / m['one']['noop_s']:.2f}x.")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
