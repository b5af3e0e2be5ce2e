#!/usr/bin/env bash
# Benchmark (not a test): the embedded PromQL engine against the Debian Prometheus on the
# same 10 minutes of samples (200 series at 1 s), the same range queries (step 1 s) on
# both. Prints each engine's evaluation time (Prometheus's own evalTotalTime from
# stats=all; meshload's from --stats), the ratio, and the HTTP round trip for reference.
# Each figure is the median of ROUNDS runs.
#
# Usage: bench/promql.sh [ROUNDS=5]
# Needs: prometheus and promtool (Debian package prometheus), jq, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload

work=$(mktemp -d)
trap 'kill $prom_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
# Start three hours ago on an hour boundary, so the data sits in finished 2h blocks.
start=$(( ($(date +%s) / 3600 - 3) * 3600 ))
end=$(( start + 599 ))
python3 bench/promql_data.py "$work" "$start"
promtool tsdb create-blocks-from openmetrics "$work/data.om" "$work/tsdb" >/dev/null
printf 'global:\n  scrape_interval: 1h\n' > "$work/prometheus.yml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --storage.tsdb.retention.time=10y --web.listen-address="127.0.0.1:$port" >/dev/null 2>&1 &
prom_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/-/ready" >/dev/null && break; sleep 0.2; done

# "12.3ms", "950µs", "1.2s" as milliseconds.
to_ms() { awk '/ms$/ {sub(/ms$/, ""); print; next} /µs$/ {sub(/µs$/, ""); print $1 / 1000; next} /ns$/ {sub(/ns$/, ""); print $1 / 1e6; next} /s$/ {sub(/s$/, ""); print $1 * 1000}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

queries=(
  'sum(rate(http_requests_total[1m])) by (code)'
  'sum(label_replace(container_memory_working_set_bytes, "replica_set", "$1", "pod", "(node-.*)-.*")) by (replica_set) / (1024*1024)'
  'histogram_quantile(0.99, sum(rate(request_duration_seconds_bucket[1m])) by (le))'
  'max_over_time(container_memory_working_set_bytes[1m])'
)
printf '%-60s %12s %12s %8s %14s\n' query "prom ms" "meshload ms" ratio "prom HTTP ms"
for q in "${queries[@]}"; do
  prom_eval=(); prom_http=(); ours=()
  for _ in $(seq "$rounds"); do
    resp=$(curl -s -w '\n%{time_total}' --data-urlencode "query=$q" -d start="$start" -d end="$end" -d step=1 \
      -d stats=all "http://127.0.0.1:$port/api/v1/query_range")
    prom_eval+=("$(echo "$resp" | head -n -1 | jq '.data.stats.timings.evalTotalTime * 1000')")
    prom_http+=("$(echo "$resp" | tail -n 1 | awk '{print $1 * 1000}')")
    # meshload: median of 5 evaluations in one process (the samples are loaded once).
    ours+=("$("$bin" query --run "$work/samples.jsonl" --start "$start" --end "$end" --step 1s --stats --repeat 5 \
      --format json "$q" 2>&1 >/dev/null | sed -n 's/.*evaluated in \([^ ]*\) .*/\1/p' | to_ms)")
  done
  p=$(printf '%s\n' "${prom_eval[@]}" | median)
  m=$(printf '%s\n' "${ours[@]}" | median)
  h=$(printf '%s\n' "${prom_http[@]}" | median)
  printf '%-60.60s %12.2f %12.2f %8.2f %14.2f\n' "$q" "$p" "$m" "$(awk -v a="$m" -v b="$p" 'BEGIN {print a / b}')" "$h"
done
echo "(ratio = meshload / Prometheus evaluation time; under 1 means the embedded engine is faster)"
