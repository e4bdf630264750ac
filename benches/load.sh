#!/usr/bin/env bash
# Loopback load: the API-key server against a bare twin, in alternating rounds.
#   bash benches/load.sh            # 6 rounds of 5 s each way
#   ROUNDS=10 DURATION=10s CONNECTIONS=64 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
BARE_PORT=${BARE_PORT:-3601}
KEY_PORT=${KEY_PORT:-3602}

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null; else sudo apt-get install -y wrk >/dev/null; fi
fi

cargo build --release --example load_target >&2
bin=target/release/examples/load_target
out=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"; }
pids=()
trap cleanup EXIT

MODE=bare PORT=$BARE_PORT "$bin" >"$out/bare" & pids+=($!)
MODE=api_key PORT=$KEY_PORT "$bin" >"$out/key" & pids+=($!)
for f in "$out/bare" "$out/key"; do
  for _ in $(seq 100); do grep -q READY "$f" 2>/dev/null && break; sleep 0.1; done
done
key=$(sed -n 's/^KEY=//p' "$out/key")

rps() { # port
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $key" "http://127.0.0.1:$1/" \
    | awk '/Requests\/sec/ {print $2}'
}

# A short warm-up of both, not counted.
DURATION=1s rps "$BARE_PORT" >/dev/null; DURATION=1s rps "$KEY_PORT" >/dev/null
curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$KEY_PORT/" >/dev/null

ratios=()
echo "round  bare req/s  api_key req/s  ratio"
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then b=$(rps "$BARE_PORT"); k=$(rps "$KEY_PORT"); else k=$(rps "$KEY_PORT"); b=$(rps "$BARE_PORT"); fi
  r=$(awk -v k="$k" -v b="$b" 'BEGIN {printf "%.3f", k / b}')
  ratios+=("$r")
  printf "%5d  %10.0f  %13.0f  %s\n" "$round" "$b" "$k" "$r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {
  m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
  printf "loopback req/s ratio (api_key / bare): median %.3f, range %.3f-%.3f over %d rounds\n", m, a[1], a[NR], NR }'
