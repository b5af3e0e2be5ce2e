#!/usr/bin/env bash
# Benchmark (not a test): `meshload run` on topologies of 10, 50 and 200 nodes. For each:
# the time from start until every replica answered /health, the resident memory per node
# process during the test, and the overhead of metric collection: the rate the load
# generator reaches at max rate on the same 4-node chain with scraping every 1s against
# scraping (almost) never. The other nodes are idle entry points: they cost only collection.
#
# Usage: bench/scale.sh [SECONDS=5] [SIZES="10 50 200"]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
sizes=${2:-"10 50 200"}
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# config N SCRAPE: a chain 0 -> 1 -> 2 -> 3 plus N-4 idle leaves, one max-rate test on node 0.
config() {
  python3 - "$1" "$2" "$secs" <<'PY'
import json, sys
n, scrape, secs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
backends = {str(i): ([str(i + 1)] if i < 3 else []) for i in range(n)}
print(json.dumps({
    "backends_map": backends, "ConnectivityCheckPerURL": 1, "scrape_interval": scrape,
    "sleep_between_tests": "0s",
    "load_tests": [{"test_name": f"scale{n}", "target": "0", "qps": "max", "t": f"{secs}s", "c": 16}],
}))
PY
}

# run_one N SCRAPE: prints "ready_seconds achieved_rate rss_avg_kib rss_max_kib".
run_one() {
  local n=$1 scrape=$2 cfg="$work/c-$1-$2.json" store="$work/results-$1-$2"
  config "$n" "$scrape" > "$cfg"
  local start ready="" rss_file="$work/rss-$n-$scrape"
  start=$(date +%s.%N)
  "$bin" run --store "$store" --json "$cfg" > "$work/out.json" 2> >(while IFS= read -r line; do
      case "$line" in
        *"connectivity check"*) echo "$(date +%s.%N)" > "$work/ready" ;;
        *"test 1/1"*)
          sleep "$((secs / 2))"
          # Resident memory of every node process of this run.
          for p in $(pgrep -f "meshload-node -q|meshload -q node"); do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done > "$rss_file" ;;
      esac
    done)
  sleep 0.5
  ready=$(awk -v a="$(cat "$work/ready")" -v b="$start" 'BEGIN {printf "%.2f", a - b}')
  local rate
  rate=$(jq '.[0].actual_qps' "$work/out.json")
  awk -v r="$ready" -v q="$rate" '{s += $1; if ($1 > m) m = $1; n++} END {printf "%s %.0f %.0f %.0f\n", r, q, s / n, m}' "$rss_file"
}

printf '%6s %10s %14s %14s %16s %16s %8s\n' nodes "ready s" "RSS avg MiB" "RSS max MiB" "req/s scraping" "req/s no scrape" ratio
for n in $sizes; do
  read -r ready with avg max < <(run_one "$n" 1s)
  read -r _ without _ _ < <(run_one "$n" 1h)
  awk -v n="$n" -v r="$ready" -v w="$with" -v wo="$without" -v a="$avg" -v m="$max" \
    'BEGIN {printf "%6d %10.2f %14.1f %14.1f %16.0f %16.0f %8.2f\n", n, r, a / 1024, m / 1024, w, wo, w / wo}'
done
echo "(one run per cell on a shared 2-core machine; ratio = rate with scraping every 1s / without)"
