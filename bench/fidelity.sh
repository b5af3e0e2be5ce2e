#!/usr/bin/env bash
# Benchmark (not a test): how close each load generator's reported latency is to the wire.
# nginx (a target none of us wrote) answers on loopback, pinned to core 1; meshload and
# wrk take turns on core 0 while dumpcap captures the port. For each run the script pairs
# every request packet with the response packet that follows it on the same connection
# (c=1, so requests are strictly sequential) and prints the wire's service time beside
# what the tool reported: p50, p99 and mean at max rate, and meshload's at a fixed
# 1,000 req/s (with its schedule lag: how late requests left their due time).
#
# Usage: bench/fidelity.sh [SECONDS=5]
# Needs: nginx-light, tshark (dumpcap), wrk (Debian; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
for tool in nginx dumpcap tshark wrk taskset; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light tshark wrk util-linux >/dev/null; break; }
done
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload
work=$(mktemp -d)
chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/html" "$work/logs"
printf 'ok\n' > "$work/html/index.html"
cat > "$work/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $work/logs/error.log;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$port; root $work/html; keepalive_requests 100000000; }
}
CONF
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/"

# capture NAME CMD...: runs CMD under a capture of the port; the capture is $work/NAME.pcap.
capture() {
  local name=$1; shift
  dumpcap -q -i lo -f "tcp port $port" -w "$work/$name.pcap" 2>/dev/null &
  local cap=$!
  sleep 1
  taskset -c 0 "$@" > "$work/$name.out" 2>&1
  sleep 0.5
  kill -INT $cap; wait $cap 2>/dev/null || true
}

# wire NAME: p50 p99 mean (ms) of request-to-response times on the wire.
wire() {
  tshark -r "$work/$1.pcap" -Y "tcp.len > 0" -T fields -e frame.time_epoch -e tcp.srcport 2>/dev/null |
    python3 -c '
import sys, statistics
port = sys.argv[1]
times, sent = [], None
for line in sys.stdin:
    t, src = line.split()
    t = float(t)
    if src != port:
        sent = t if sent is None else sent
    elif sent is not None:
        times.append((t - sent) * 1e3)
        sent = None
times.sort()
n = len(times)
print(f"{times[n // 2]:.3f} {times[int(n * 0.99)]:.3f} {statistics.fmean(times):.3f} {n}")
' "$port"
}

capture meshload "$bin" load --qps 0 -c 1 -t "${secs}s" --json "$work/meshload.json" "$url"
capture wrk wrk -t1 -c1 -d"${secs}s" --latency "$url"
capture paced "$bin" load --qps 1000 -c 1 -t "${secs}s" --json "$work/paced.json" "$url"

reported_meshload() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
h = r["DurationHistogram"]
p = {x["Percentile"]: x["Value"] * 1e3 for x in h["Percentiles"]}
lag = {x["Percentile"]: x["Value"] * 1e3 for x in r["ScheduleLagHistogram"]["Percentiles"]} if r.get("ScheduleLagHistogram") else {}
print(f'{p[50]:.3f} {p[99]:.3f} {h["Avg"] * 1e3:.3f} {lag.get(50, 0):.3f} {lag.get(99, 0):.3f}')
PY
}
# wrk --latency prints "50%  63.00us" ... and "Latency  82.00us ..." (mean first).
reported_wrk() {
  python3 - "$work/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
mean = ms(*re.search(r"Latency\s+([\d.]+)(us|ms|s)", text).groups())
pct = {int(k): ms(v, u) for k, v, u in re.findall(r"\s(\d+)%\s+([\d.]+)(us|ms|s)", text)}
print(f"{pct[50]:.3f} {pct[99]:.3f} {mean:.3f}")
PY
}

read -r wm50 wm99 wmmean wmn <<<"$(wire meshload)"
read -r ww50 ww99 wwmean wwn <<<"$(wire wrk)"
read -r wp50 wp99 wpmean wpn <<<"$(wire paced)"
read -r rm50 rm99 rmmean _ _ <<<"$(reported_meshload "$work/meshload.json")"
read -r rw50 rw99 rwmean <<<"$(reported_wrk)"
read -r rp50 rp99 rpmean lag50 lag99 <<<"$(reported_meshload "$work/paced.json")"
echo "service time (ms) against nginx on loopback, c=1, ${secs}s each, $(nproc) cores"
printf '%-34s %9s %9s %9s %9s %9s %9s %9s\n' run "wire p50" "tool p50" "wire p99" "tool p99" "wire avg" "tool avg" requests
printf '%-34s %9s %9s %9s %9s %9s %9s %9s\n' "meshload, max rate" "$wm50" "$rm50" "$wm99" "$rm99" "$wmmean" "$rmmean" "$wmn"
printf '%-34s %9s %9s %9s %9s %9s %9s %9s\n' "wrk, max rate" "$ww50" "$rw50" "$ww99" "$rw99" "$wwmean" "$rwmean" "$wwn"
printf '%-34s %9s %9s %9s %9s %9s %9s %9s\n' "meshload, 1,000 req/s" "$wp50" "$rp50" "$wp99" "$rp99" "$wpmean" "$rpmean" "$wpn"
python3 - "$wm50" "$rm50" "$wm99" "$rm99" "$wmmean" "$rmmean" "$ww50" "$rw50" "$ww99" "$rw99" "$wwmean" "$rwmean" <<'PY'
import sys
v = list(map(float, sys.argv[1:]))
for name, m, w in [("p50", (v[0], v[1]), (v[6], v[7])), ("p99", (v[2], v[3]), (v[8], v[9])), ("mean", (v[4], v[5]), (v[10], v[11]))]:
    print(f"error against the wire, {name}: meshload {m[1] - m[0]:+.3f} ms, wrk {w[1] - w[0]:+.3f} ms")
PY
echo "meshload's schedule lag at 1,000 req/s: p50 ${lag50} ms, p99 ${lag99} ms"
