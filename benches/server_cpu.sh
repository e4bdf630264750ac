#!/usr/bin/env bash
# Server CPU time per request, in real servers over loopback: one server per variant
# (examples/load_target.rs, release build, WORKERS tokio workers each, default 1),
# loaded in turn with `wrk -t1 -cCONNECTIONS` for DURATION, the order rotated every
# round; CPU time from /proc/<pid>/stat (utime + stime) over the requests wrk counted.
# Each variant's figure is its ratio to the bare server in the same round; the table
# gives the median and range over ROUNDS rounds.
#   bash benches/server_cpu.sh                       # 10 rounds of 3 s
#   ROUNDS=12 DURATION=5s WORKERS=2 bash benches/server_cpu.sh
# PIN=1 (the default with one worker on two or more cores) runs the servers on the last
# core and wrk on the first, so that the two never take turns on one core; PIN=0 lets
# the scheduler place them.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-3s}
CONNECTIONS=${CONNECTIONS:-32}
WORKERS=${WORKERS:-1}
VARIANTS=${VARIANTS:-"bare around api_key around_limited"}
cores=$(nproc)
if [ "$WORKERS" = 1 ] && [ "$cores" -ge 2 ]; then PIN=${PIN:-1}; else PIN=${PIN:-0}; fi
server_cpu="" wrk_cpu=""
if [ "$PIN" = 1 ]; then server_cpu="taskset -c $((cores - 1))"; wrk_cpu="taskset -c 0"; fi

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null; else sudo apt-get install -y wrk >/dev/null; fi
fi
cargo build --release --example load_target >&2
bin=target/release/examples/load_target
out=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT

port=3700
declare -A PORT PID
for v in $VARIANTS; do
  port=$((port + 1))
  MODE=$v PORT=$port WORKERS=$WORKERS $server_cpu "$bin" >"$out/$v" &
  PID[$v]=$!; PORT[$v]=$port; pids+=($!)
done
for v in $VARIANTS; do
  for _ in $(seq 100); do grep -q READY "$out/$v" 2>/dev/null && break; sleep 0.1; done
done
key=$(sed -n 's/^KEY=//p' "$out/api_key" 2>/dev/null || true)
tick=$(getconf CLK_TCK)

cpu() { # pid -> utime+stime in ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
load() { # variant -> "requests cpu_ticks"
  local v=$1 k
  k=$(sed -n 's/^KEY=//p' "$out/$v")
  local before after n
  before=$(cpu "${PID[$v]}")
  n=$($wrk_cpu wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $k" "http://127.0.0.1:${PORT[$v]}/" |
    awk '/requests in/ {print $1}')
  after=$(cpu "${PID[$v]}")
  echo "$n $((after - before))"
}

# Warm-up, not counted; every variant must answer 200 with its key.
for v in $VARIANTS; do
  k=$(sed -n 's/^KEY=//p' "$out/$v")
  curl -fsS -o /dev/null -H "Authorization: Bearer $k" "http://127.0.0.1:${PORT[$v]}/"
  DURATION=1s load "$v" >/dev/null
done

read -r -a order <<<"$VARIANTS"
rows="$out/rows"
for round in $(seq "$ROUNDS"); do
  declare -A NS=() RPS=()
  for v in "${order[@]}"; do
    read -r n t < <(load "$v")
    NS[$v]=$(awk -v n="$n" -v t="$t" -v hz="$tick" 'BEGIN {printf "%.0f", t / hz * 1e9 / n}')
    RPS[$v]=$n
  done
  for v in "${order[@]}"; do
    echo "$v ${NS[$v]} ${NS[bare]} ${RPS[$v]} ${RPS[bare]}" >>"$rows"
  done
  order=("${order[@]:1}" "${order[0]}") # rotate
done

echo "server CPU per request, $WORKERS worker(s), wrk -t1 -c$CONNECTIONS, $ROUNDS rounds of $DURATION, pinned: $PIN"
echo "| variant | CPU ns per request (median) | CPU ratio to bare: median | middle half | range | requests ratio to bare: median | middle half | range |"
echo "|---|---|---|---|---|---|---|---|"
python3 - "$rows" <<'PY'
import collections, statistics, sys
ns, ratio, rps = (collections.defaultdict(list) for _ in range(3))
for line in open(sys.argv[1]):
    v, n, b, q, qb = line.split()
    ns[v].append(float(n)); ratio[v].append(float(n) / float(b)); rps[v].append(float(q) / float(qb))
def middle(xs):  # the quartiles: where the middle half of the rounds fell
    xs = sorted(xs)
    return f"{xs[len(xs) // 4]:.2f}–{xs[(3 * len(xs)) // 4 - (len(xs) % 4 == 0)]:.2f}"
for v in ns:
    r, q = ratio[v], rps[v]
    print(f"| `{v}` | {statistics.median(ns[v]):.0f} | {statistics.median(r):.2f} | {middle(r)} | {min(r):.2f}–{max(r):.2f} | {statistics.median(q):.2f} | {middle(q)} | {min(q):.2f}–{max(q):.2f} |")
PY
