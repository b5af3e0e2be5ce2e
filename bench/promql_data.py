"""Writes the PromQL benchmark's samples twice: OpenMetrics text for `promtool tsdb
create-blocks-from openmetrics`, and meshload's samples.jsonl. 10 minutes of 200 series at
1 s resolution: 80 request counters, 40 memory gauges, 80 histogram buckets.

Usage: python3 promql_data.py OUT_DIR START_UNIX_SECONDS
"""
import json
import math
import os
import sys

out, start = sys.argv[1], int(sys.argv[2])
SECONDS, PODS = 600, 40


def series():
    for p in range(PODS):
        pod = f"node-{p % 8}-rs{p // 8}-{p}"
        for code in ("200", "500"):
            rate = 50.0 if code == "200" else 1.0 + p % 3
            yield "http_requests", "counter", {"pod": pod, "code": code}, lambda t, r=rate: r * t
        yield "container_memory_working_set_bytes", "gauge", {"pod": pod}, \
            lambda t, p=p: 2**20 * (20 + p + 5 * math.sin(t / 30.0))
        for le in ("0.1", "+Inf"):
            frac = 0.9 if le == "0.1" else 1.0
            yield "request_duration_seconds_bucket", "unknown", {"pod": pod, "le": le}, \
                lambda t, f=frac: math.floor(f * 50.0 * t)


def fmt_labels(labels):
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


all_series = list(series())
assert len(all_series) == 200
with open(os.path.join(out, "data.om"), "w") as om:
    families = {}
    for s in all_series:
        families.setdefault(s[0], []).append(s)
    for family, members in families.items():
        om.write(f"# TYPE {family} {members[0][1]}\n")
        suffix = "_total" if members[0][1] == "counter" else ""
        for name, _, labels, f in members:
            for t in range(SECONDS):
                om.write(f"{name}{suffix}{{{fmt_labels(labels)}}} {f(t)} {start + t}\n")
    om.write("# EOF\n")
with open(os.path.join(out, "samples.jsonl"), "w") as js:
    js.write('{"format":"meshload-tsdb","version":1}\n')
    for name, kind, labels, f in all_series:
        full = dict(labels, __name__=name + ("_total" if kind == "counter" else ""))
        samples = [[(start + t) * 1000, f(t)] for t in range(SECONDS)]
        js.write(json.dumps({"labels": full, "samples": samples}) + "\n")
