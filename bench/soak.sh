#!/usr/bin/env bash
# Soak (benchmark, not a test): REQUESTS requests (default 10 million) through the 3-node
# topology 0 -> 1, 2 of `meshload-node` (the node binary `meshload run` starts), sent by
# `meshload load` as fast as it goes. Samples
# the resident memory, open file descriptors and threads of the load generator and of
# every node every few seconds, then prints them at the start, the middle and the end,
# the peak, and whether memory stayed flat (the end within 25% + 2 MiB of the value at a
# tenth of the run) and nothing leaked (file descriptors back to their start; no meshload
# process left afterwards).
#
# Usage: bench/soak.sh [REQUESTS=10000000] [CONNECTIONS=32] [SAMPLE_SECONDS=5]
# Traffic stays on 127.0.0.1; the load ends by itself after REQUESTS requests.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-10000000}
conns=${2:-32}
every=${3:-5}
out=bench/out/soak
mkdir -p "$out"
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload
node=$PWD/target/release/meshload-node
base=19380

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# meshload and meshload-node processes (pgrep matches at most 15 characters of a name).
running() { echo $(($(pgrep -c -x meshload || true) + $(pgrep -c -x meshload-node || true))); }
before=$(running)
"$node" -q --listen "127.0.0.1:$((base + 1))" --name 1 >/dev/null & pids+=($!)
"$node" -q --listen "127.0.0.1:$((base + 2))" --name 2 >/dev/null & pids+=($!)
"$node" -q --listen "127.0.0.1:$base" --name 0 \
  --backends "http://127.0.0.1:$((base + 1))/,http://127.0.0.1:$((base + 2))/" >/dev/null & pids+=($!)
for p in "$base" $((base + 1)) $((base + 2)); do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done
names=(node1 node2 node0)

"$bin" -q load --qps 0 -c "$conns" -n "$requests" --timeout 5s --json "$out/result.json" \
  "http://127.0.0.1:$base/" >"$out/summary.txt" 2>&1 &
load=$!
names+=(loadgen)
watched=("${pids[@]}" "$load")

# sample: "elapsed name rss_kib fds threads" for every process still alive.
samples=$out/samples.tsv
: >"$samples"
start=$(date +%s)
sample() {
  local t=$(($(date +%s) - start)) i
  for i in "${!watched[@]}"; do
    local p=${watched[$i]}
    [ -r "/proc/$p/status" ] || continue
    local rss threads fds
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$p/status")
    fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\n' "$t" "${names[$i]}" "$rss" "$fds" "$threads" >>"$samples"
  done
}
sample
while kill -0 "$load" 2>/dev/null; do
  sleep "$every"
  sample
done
wait "$load" || { echo "the load failed:"; cat "$out/summary.txt"; exit 2; }
# The nodes after the load: their connections closed, their fds back.
sleep 1
sample
cleanup
pids=()
sleep 1
after=$(running)

grep -E '^(Achieved|Codes)' "$out/summary.txt" || cat "$out/summary.txt"
echo
awk -F'\t' -v before="$before" -v after="$after" '
  { m = ++n[$2]; rss[$2, m] = $3; fd[$2, m] = $4; th[$2, m] = $5
    if ($3 > peak[$2]) peak[$2] = $3 }
  END {
    printf "%-8s %10s %10s %10s %10s %8s %8s %8s  %s\n", "process", "RSS@10%", "RSS mid", "RSS end", "RSS peak", "fds 0", "fds end", "threads", "memory"
    split("loadgen node0 node1 node2", order, " ")
    for (k = 1; k <= 4; k++) {
      p = order[k]; m = n[p]; if (!m) continue
      early = int(m / 10) + 1; mid = int(m / 2) + 1
      flat = (rss[p, m] <= rss[p, early] * 1.25 + 2048) ? "flat" : "GREW"
      printf "%-8s %6.1f MiB %6.1f MiB %6.1f MiB %6.1f MiB %8d %8d %8d  %s\n", p, rss[p, early] / 1024, rss[p, mid] / 1024, rss[p, m] / 1024, peak[p] / 1024, fd[p, 1], fd[p, m], th[p, m], flat
    }
    printf "\nload generator peak RSS %.1f MiB (goal: at most 16 MiB)\n", peak["loadgen"] / 1024
    printf "meshload processes before %d, after %d (%s)\n", before, after, (after <= before ? "none left" : "LEFT BEHIND")
  }' "$samples"
echo "(samples every ${every}s in $samples; $requests requests, c=$conns, as fast as possible, 3-node topology 0 -> 1, 2 on 127.0.0.1)"
