#!/usr/bin/env python3
"""Medians over runs of the JSON files bench.sh writes: python3 medians.py OUT_DIR."""
import glob, json, os, statistics, sys
from collections import defaultdict

KEYS = {
    "idle": ["connections", "server_rss_per_conn_bytes", "floor.server_rss_per_conn_bytes",
             "server_rss_bytes", "generator_rss_per_conn_bytes", "connects_per_sec",
             "floor.connects_per_sec", "failed", "floor.failed"],
    "traffic": ["delivered_per_sec", "floor.delivered_per_sec", "ratio_to_floor.delivered_per_sec",
                "latency_us.p50", "latency_us.p90", "latency_us.p99", "latency_us.p999", "latency_us.max",
                "sent_latency_us.p50", "sent_latency_us.p99", "sent_latency_us.p999", "sent_latency_us.max",
                "hbase_cpu_us_per_delivered",
                "floor.latency_us.p50", "floor.latency_us.p99", "floor.latency_us.p999", "floor.latency_us.max",
                "last_member_latency_us.p50", "last_member_latency_us.p99", "last_member_latency_us.max",
                "floor.last_member_latency_us.p99", "last_member_incomplete",
                "target_cpu_us_per_delivered", "floor.target_cpu_us_per_delivered",
                "generator_cpu_us_per_delivered", "target_cpu_pct", "generator_cpu_pct", "errors", "floor.errors"],
    "ceiling": ["rows_per_sec"],
    "ceilingcas": ["rows_per_sec"],
    "reconnect": ["caught_up", "all_back_ms", "all_caught_up_ms", "drop_to_all_caught_up_ms",
                  "connect_to_caught_up_us.p50", "connect_to_caught_up_us.p99", "connect_to_caught_up_us.max",
                  "floor.all_caught_up_ms", "floor.connect_to_caught_up_us.p50",
                  "floor.connect_to_caught_up_us.p99", "errors", "floor.errors"],
}

def get(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d

runs = defaultdict(list)
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    name = os.path.basename(f).rsplit("-", 1)[0]
    runs[name].append(json.load(open(f)))
for name, docs in runs.items():
    base = name.split(".")[0]  # pairs.sqlite: STORES="memory sqlite" in bench.sh
    kind = base if base in ("idle", "reconnect", "ceiling", "ceilingcas") else "traffic"
    print(f"## {name} ({len(docs)} runs)")
    for k in KEYS[kind]:
        vals = [get(d, k) for d in docs]
        nums = [v for v in vals if isinstance(v, (int, float))]
        if not nums:
            continue
        print(f"  {k:45} median {statistics.median(nums):>12g}   runs {nums}")
