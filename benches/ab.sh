#!/usr/bin/env bash
# A/B of the request path between two commits, in one session:
#   bash benches/ab.sh OLD_REV [NEW_REV]        (NEW_REV: the working tree)
# Builds `benches/request_path` at OLD_REV (in a temporary git worktree) and here, then
# runs both in alternation, ROUNDS rounds (default 6) of RUNS runs each (default 3), the
# order flipping every round, and prints per ratio the median and range of each side.
# Every figure is a ratio to the bare router measured in the same run, so the two sides
# compare although the machine's speed drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
old_rev="${1:?usage: bash benches/ab.sh OLD_REV [NEW_REV]}"
new_rev="${2:-}"
rounds="${ROUNDS:-6}"
runs="${RUNS:-3}"
work="$(mktemp -d)"
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1 || true; git worktree remove --force "$work/new" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

bench_binary() { # dir -> path of the built request_path bench
  (cd "$1" && cargo bench --bench request_path --no-run --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "request_path" and m.get("executable"):
        print(m["executable"])'
}

git worktree add --quiet --detach "$work/old" "$old_rev"
new_dir="."
if [ -n "$new_rev" ]; then
  git worktree add --quiet --detach "$work/new" "$new_rev"
  new_dir="$work/new"
fi
OLD="$(bench_binary "$work/old")"
NEW="$(bench_binary "$new_dir")"
echo "old: $old_rev ($OLD)"
echo "new: ${new_rev:-working tree} ($NEW)"

out="$work/ab.txt"
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="OLD NEW"; else order="NEW OLD"; fi
  for side in $order; do
    RUNS="$runs" "${!side}" --bench 2>/dev/null | sed "s/^/$side /" >> "$out"
  done
done

python3 - "$out" <<'EOF'
import collections, re, statistics, sys
seen = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, rest = line.split(" ", 1)
    m = re.match(r"\| `(.+?)` \| ([\d.]+) \|", rest)
    if m:
        seen[(m.group(1), side)].append(float(m.group(2)))
    m = re.match(r"bare router: (\d+) ns", rest)
    if m:
        seen[("bare router, ns per request", side)].append(float(m.group(1)))
print("| ratio | old: median (range) | new: median (range) |")
print("|---|---|---|")
for name in sorted({name for name, _ in seen}):
    cells = []
    for side in ("OLD", "NEW"):
        v = seen[(name, side)]
        cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})")
    print(f"| `{name}` | {cells[0]} | {cells[1]} |")
EOF
