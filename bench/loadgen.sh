#!/usr/bin/env bash
# Benchmark (not a test): meshload's load generator against wrk, hey and oha on the same
# target (a `meshload node` without backends), the target pinned to one core and the
# generator to the other (taskset). Prints each tool's maximum rate and the ratios, the
# median latency of meshload at a fixed 1,000 req/s against wrk's at c=1, and meshload's
# pacing accuracy at 10,000 req/s. Each figure is the median of ROUNDS runs.
#
# Usage: bench/loadgen.sh [SECONDS=5] [CONNECTIONS=50] [ROUNDS=3]
# Needs: wrk and hey (Debian, installed when missing), oha (cargo install oha; skipped if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${2:-50}
rounds=${3:-3}

for tool in wrk hey taskset; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk hey util-linux >/dev/null; }
done
oha=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[ -x "$oha" ] || oha=
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload

taskset -c 1 "$bin" -q node --listen 127.0.0.1:0 > bench/out.target 2>/dev/null &
target_pid=$!
trap 'kill $target_pid 2>/dev/null || true; rm -f bench/out.target' EXIT
for _ in $(seq 50); do [ -s bench/out.target ] && break; sleep 0.1; done
url=$(sed 's/listening on //' bench/out.target)/

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
gen() { taskset -c 0 "$@"; }

rate_meshload() { gen "$bin" -q load --qps 0 -c "$conns" -t "${secs}s" --json - "$url" 2>/dev/null | jq '.ActualQPS'; }
# The same with hyper's HTTP/1.1 client instead of meshload's fast exchange.
rate_meshload-std() { gen "$bin" -q load --std-client --qps 0 -c "$conns" -t "${secs}s" --json - "$url" 2>/dev/null | jq '.ActualQPS'; }
rate_wrk() { gen wrk -t1 -c"$conns" -d"${secs}s" "$url" | awk '/Requests\/sec/ {print $2}'; }
rate_hey() { gen hey -z "${secs}s" -c "$conns" "$url" | awk '/Requests\/sec/ {print $2}'; }
rate_oha() { gen "$oha" -z "${secs}s" -c "$conns" --no-tui "$url" | awk '/Requests\/sec/ {print $2}'; }

command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }

declare -A rate runs
tools=(meshload meshload-std wrk hey)
[ -n "$oha" ] && tools+=(oha)
# Rounds interleave the tools, so that drift in the machine's load hits them alike.
for _ in $(seq "$rounds"); do
  for tool in "${tools[@]}"; do runs[$tool]+="$("rate_$tool") "; done
done
for tool in "${tools[@]}"; do
  rate[$tool]=$(printf '%s\n' ${runs[$tool]} | median)
done

echo "Maximum rate (meshload-std: --std-client), c=$conns, ${secs}s, median of $rounds (generator on core 0, target on core 1):"
for tool in "${tools[@]}"; do printf '  %-12s %10.0f req/s\n' "$tool" "${rate[$tool]}"; done
for tool in "${tools[@]}"; do
  [ "$tool" = meshload ] && continue
  awk -v a="${rate[meshload]}" -v b="${rate[$tool]}" -v t="$tool" 'BEGIN { printf "  meshload/%s: %.2f\n", t, a / b }'
done

# Median latency: meshload paced at 1,000 req/s on one connection against wrk at c=1.
ml=$(for _ in $(seq "$rounds"); do gen "$bin" -q load --qps 1000 -c 1 -t "${secs}s" --json - "$url" 2>/dev/null \
  | jq '.DurationHistogram.Percentiles[] | select(.Percentile == 50) | .Value * 1e6'; done | median)
wl=$(for _ in $(seq "$rounds"); do gen wrk -t1 -c1 -d"${secs}s" --latency "$url" \
  | awk '/^ +50%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v)} else if (v ~ /ms$/) {sub(/ms/,"",v); v*=1000} print v}'; done | median)
# The same, both back to back (meshload at --qps 0): the gap above is the idle time
# between paced requests, which both processes spend asleep.
mb=$(for _ in $(seq "$rounds"); do gen "$bin" -q load --qps 0 -c 1 -t "${secs}s" --json - "$url" 2>/dev/null \
  | jq '.DurationHistogram.Percentiles[] | select(.Percentile == 50) | .Value * 1e6'; done | median)
echo "Median latency: meshload at 1000 req/s c=1: ${ml} us; wrk c=1: ${wl} us"
awk -v a="$ml" -v b="$wl" 'BEGIN { printf "  meshload/wrk median: %.2f\n", a / b }'
echo "Median latency back to back: meshload --qps 0 c=1: ${mb} us; wrk c=1: ${wl} us"
awk -v a="$mb" -v b="$wl" 'BEGIN { printf "  meshload/wrk median: %.2f\n", a / b }'

# Pacing accuracy: achieved against requested at 10,000 req/s.
acc=$(for _ in $(seq "$rounds"); do gen "$bin" -q load --qps 10000 -c 16 -t "${secs}s" --json - "$url" 2>/dev/null \
  | jq '.ActualQPS / 10000 * 100'; done | median)
echo "Pacing: meshload at 10000 req/s c=16 achieved ${acc}% of the requested rate"

# CPU per request at maximum rate (/usr/bin/time over a fixed count; wrk over a fixed time,
# divided by the requests it made), user and system µs, median of ROUNDS.
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
n=300000
cpu_meshload() { gen /usr/bin/time -f '%U %S' "$bin" -q load "$@" --qps 0 -c "$conns" -n $n --json /dev/null "$url" 2>&1 >/dev/null \
  | tail -1 | awk -v n=$n '{printf "%.2f %.2f\n", $1 / n * 1e6, $2 / n * 1e6}'; }
cpu_wrk() { gen /usr/bin/time -f '%U %S' wrk -t1 -c"$conns" -d3s "$url" 2>&1 \
  | awk '/requests in/ {r=$1} END {printf "%.2f %.2f\n", u / r * 1e6, s / r * 1e6} NF == 2 && $1 ~ /^[0-9.]+$/ {u=$1; s=$2}'; }
declare -A cu cs
for _ in $(seq "$rounds"); do
  read -r u s < <(cpu_meshload); cu[meshload]+="$u "; cs[meshload]+="$s "
  read -r u s < <(cpu_meshload --std-client); cu[meshload-std]+="$u "; cs[meshload-std]+="$s "
  read -r u s < <(cpu_wrk); cu[wrk]+="$u "; cs[wrk]+="$s "
done
echo "CPU per request at maximum rate, c=$conns (user / system µs, median of $rounds):"
for tool in meshload meshload-std wrk; do
  printf '  %-12s %6.2f / %6.2f\n' "$tool" "$(printf '%s\n' ${cu[$tool]} | median)" "$(printf '%s\n' ${cs[$tool]} | median)"
done
