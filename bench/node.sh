#!/usr/bin/env bash
# Benchmark (not a test): the 3-node topology 0 -> 1, 2 served by `meshload-node` (the
# node-only binary that `meshload run` starts; MESHLOAD_NODE_BIN=meshload for `meshload
# node` from the main binary) and by a
# seed-style Flask + aiohttp service (bench/seed_node.py), each loaded by wrk with the same
# duration and connections. Prints requests per second and peak RSS per node, and ratios.
#
# Usage: bench/node.sh [DURATION_SECONDS=10] [CONNECTIONS=32]
# Needs: wrk (Debian), python3 with pip (installs flask[async] and aiohttp into bench/out/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
out=bench/out
mkdir -p "$out"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ ! -x "$out/venv/bin/python" ]; then
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install -q "flask[async]" aiohttp
fi
cargo build --release -q -p meshload
if [ "${MESHLOAD_NODE_BIN:-meshload-node}" = meshload ]; then
  node_cmd=(target/release/meshload -q node)
else
  node_cmd=(target/release/meshload-node -q)
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_node KIND PORT BACKENDS: starts one node in the background, records its pid.
start_node() {
  local kind=$1 port=$2 backends=$3
  if [ "$kind" = meshload ]; then
    BACKENDS=$backends "${node_cmd[@]}" --listen "127.0.0.1:$port" >/dev/null &
  else
    BACKENDS=$backends "$out/venv/bin/python" bench/seed_node.py "$port" >/dev/null 2>&1 &
  fi
  pids+=($!)
}

wait_up() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 2; }

peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# bench KIND BASEPORT: prints "rps rss0 rss1 rss2" (RSS in KiB).
bench() {
  local kind=$1 base=$2
  pids=()
  start_node "$kind" $((base + 1)) ""
  start_node "$kind" $((base + 2)) ""
  start_node "$kind" "$base" "http://127.0.0.1:$((base + 1))/,http://127.0.0.1:$((base + 2))/"
  for p in "$base" $((base + 1)) $((base + 2)); do wait_up "$p"; done
  local rps
  rps=$(wrk -t2 -c"$conns" -d"${secs}s" "http://127.0.0.1:$base/" | awk '/Requests\/sec/ {print $2}')
  echo "$rps $(peak_rss_kib "${pids[2]}") $(peak_rss_kib "${pids[0]}") $(peak_rss_kib "${pids[1]}")"
  cleanup
}

read -r m_rps m0 m1 m2 < <(bench meshload 19080)
read -r s_rps s0 s1 s2 < <(bench seed 19180)

printf '%-10s %12s %14s %14s %14s\n' impl req/s "node0 RSS KiB" "node1 RSS KiB" "node2 RSS KiB"
printf '%-10s %12s %14s %14s %14s\n' "${node_cmd[0]##*/}" "$m_rps" "$m0" "$m1" "$m2"
printf '%-10s %12s %14s %14s %14s\n' seed-style "$s_rps" "$s0" "$s1" "$s2"
awk -v a="$m_rps" -v b="$s_rps" -v m="$m0" -v s="$s0" 'BEGIN {
  printf "throughput ratio meshload/seed-style: %.1fx\n", a / b
  printf "node0 peak RSS ratio meshload/seed-style: %.2f\n", m / s
}'
echo "(wrk -t2 -c$conns -d${secs}s against node 0 of the 3-node topology 0 -> 1, 2; one run, a shared 2-core machine)"
