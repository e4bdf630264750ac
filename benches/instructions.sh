#!/usr/bin/env bash
# Instructions per request of request_path's variants, counted by callgrind: each
# variant runs alone (`PROFILE=variant`), once with 4 batches of 500 requests and once
# with 84, and the difference of the main thread's totals over the 40,000 requests in
# between is the figure (set-up, warm-up and other threads cancel out). Deterministic to
# about ±1 % for one binary; a rebuild can move every variant, the bare router included,
# by a few percent (code layout), so compare ratios to bare from the same binary.
#   bash benches/instructions.sh                                  # the default variants
#   bash benches/instructions.sh bare api_key_hit                 # these
#   BREAKDOWN=api_key_hit bash benches/instructions.sh           # + per function: hit − bare
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

bin=$(cargo bench --bench request_path --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "request_path" and m.get("executable"):
        print(m["executable"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $# -eq 0 ]; then
  set -- bare static_bearer api_key_hit "api_key_hit (Router::layer)" "static_bearer (Router::layer)" \
    api_key_malformed api_key_unknown_cached api_key_hit_rate_limit api_key_hit_metrics
fi

run() { # variant batches -> callgrind file of the main thread
  PROFILE="$1" BATCHES="$2" valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$work/$2.out" "$bin" >/dev/null 2>&1
  echo "$work/$2.out-01"
}
total() { awk '/^totals:/ {print $2}' "$1"; }

declare -A PER
echo "| variant | instructions per request | ratio to bare |"
echo "|---|---|---|"
for v in bare "$@"; do
  [ -n "${PER[$v]:-}" ] && continue
  a=$(total "$(run "$v" 4)")
  b=$(total "$(run "$v" 84)")
  PER[$v]=$(((b - a) / 40000))
  ratio=$(awk -v x="${PER[$v]}" -v y="${PER[bare]}" 'BEGIN {printf "%.2f", x / y}')
  echo "| \`$v\` | ${PER[$v]} | $ratio |"
done

if [ -n "${BREAKDOWN:-}" ]; then
  for v in bare "$BREAKDOWN"; do
    f=$(run "$v" 84)
    callgrind_annotate --threshold=100 "$f" >"$work/$v.txt" 2>/dev/null
  done
  echo
  echo "self instructions per request, \`$BREAKDOWN\` minus \`bare\` (84 batches each; one-off set-up rows are noise):"
  python3 - "$work/bare.txt" "$work/$BREAKDOWN.txt" <<'PY'
import re, sys
def load(path):
    rows = {}
    for line in open(path):
        m = re.match(r'\s*([\d,]+)\s+\([^)]*\)\s+(.*)', line)
        if m:
            name = re.sub(r' \[.*\]$', '', m.group(2).strip())
            rows[name] = rows.get(name, 0) + int(m.group(1).replace(',', ''))
    return rows
base, other = load(sys.argv[1]), load(sys.argv[2])
for name in sorted(set(base) | set(other), key=lambda k: base.get(k, 0) - other.get(k, 0))[:40]:
    print(f"{(other.get(name, 0) - base.get(name, 0)) / 42000:8.1f}  {name[:150]}")
PY
fi
