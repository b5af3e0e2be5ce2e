#!/usr/bin/env bash
# Benchmark (not a test): can the mesh-cost verdicts be trusted on this machine?
#   - A/A: the same arm twice (`--mesh none,none`), --repeat 5, ROUNDS_AA times: how often
#     the response p50 verdict is `no difference detected` (with 5 paired repeats the
#     interval's confidence is 93.75%, so expect about that share).
#   - A known effect: a leaf node with a fixed 0.5 ms of added latency against the same
#     topology without it, run as two tests from two configs (the one topology twice, each
#     --repeat 5), ROUNDS_EFFECT times, compared with `meshload compare`: how often the
#     interval of the response p50 difference holds 0.5 ms, and the median estimate.
# Each round is a whole `meshload run`; nothing but loopback is loaded.
#
# Usage: bench/trust.sh [ROUNDS_AA=20] [ROUNDS_EFFECT=10] [SECONDS=2] [RATE=100]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds_aa=${1:-20}
rounds_effect=${2:-10}
secs=${3:-2}
rate=${4:-100}
cargo build --release -q -p meshload
bin=$PWD/target/release/meshload
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# config NAME LATENCY: a chain 0 -> 1, node 1 waiting LATENCY per request.
config() {
  python3 - "$1" "$2" "$secs" "$rate" <<'PY'
import json, sys
name, latency, secs, rate = sys.argv[1:5]
print(json.dumps({
    "backends_map": {"0": ["1"], "1": []}, "nodes": {"1": {"latency": latency}},
    "ConnectivityCheckPerURL": 2, "sleep_between_tests": "0s", "repeat": 5,
    "load_tests": [{"test_name": name, "target": "0", "qps": int(rate), "t": f"{secs}s", "c": 4}],
}))
PY
}

echo "bench/trust.sh: $(nproc) cores, ${secs}s per run at ${rate} req/s, 5 repeats per arm"
config aa 0ms > "$work/aa.json"
for i in $(seq "$rounds_aa"); do
  "$bin" -q run --mesh none,none --json --store "$work/aa-$i" "$work/aa.json" \
    > "$work/aa-$i.out" 2> "$work/aa-$i.err" || { cat "$work/aa-$i.err" >&2; exit 1; }
done
python3 - "$work" "$rounds_aa" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
verdicts = []
for i in range(1, n + 1):
    cost = json.load(open(f"{work}/aa-{i}.out"))["mesh_cost"][0]
    p50 = next(f for f in cost["figures"] if f["name"] == "p50")
    verdicts.append(p50["verdict"])
judged = [v for v in verdicts if v != "not comparable"]
same = sum(v == "no difference detected" for v in judged)
print(f"A/A (none against none): {n - len(judged)} of {n} rounds not comparable (host saturated); "
      f"of the {len(judged)} others, p50 'no difference detected' in {same} "
      f"({100 * same / max(len(judged), 1):.0f}%); the rest: {sorted(v for v in judged if v != 'no difference detected')}")
PY

config fx-base 0ms > "$work/base.json"
config fx-slow 500us > "$work/slow.json"
for i in $(seq "$rounds_effect"); do
  for which in base slow; do
    "$bin" -q run --store "$work/fx-$i" "$work/$which.json" > /dev/null 2> "$work/fx-$i-$which.err" || {
      cat "$work/fx-$i-$which.err" >&2; exit 1; }
  done
  "$bin" compare --store "$work/fx-$i" fx-base fx-slow --json > "$work/fx-$i.out"
done
python3 - "$work" "$rounds_effect" <<'PY'
import json, statistics, sys
work, n = sys.argv[1], int(sys.argv[2])
held, estimates, not_comparable = 0, [], 0
for i in range(1, n + 1):
    doc = json.load(open(f"{work}/fx-{i}.out"))
    not_comparable += not doc["comparable"]
    p50 = next(f for f in doc["figures"] if f["name"] == "p50")
    estimates.append(p50["estimate"])
    low, high = p50["ci95"] or (float("nan"), float("nan"))
    held += low <= 0.5 <= high
print(f"known effect (+0.5 ms at the leaf): the p50 interval held 0.5 ms in {held} of {n} "
      f"({not_comparable} of them flagged not comparable); "
      f"median estimate {statistics.median(estimates):.3f} ms (each round: "
      f"{', '.join(f'{e:.3f}' for e in estimates)})")
PY
