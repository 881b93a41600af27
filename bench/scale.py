"""Throughput with 1, 2 and 4 worker processes on the cluster stack (3 Kafka brokers with
RF 3 and min.insync.replicas=2, a Redis Cluster of 3 primaries + 3 replicas, FerretDB), in
one run, as one table: the README's scale note.

    deploy/local/stack up --cluster && eval "$(deploy/local/stack env --cluster)"
    .venv/bin/python bench/scale.py [--earns 20000] [--processes 1 2 4]

Each row: fresh topics (8 partitions), its workers started and warm, then the earns of the
bench's full rules (bench/run.py: a customer lifetime cap, a daily and a weekly badge cap)
published; time from the first send to the last outcome. "tight" refuses most earns. Every
process, the servers included, shares the same 2 cores: read the ratios, not a promise of
linear growth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from run import WIDE, badge, drain, earn_bodies, tight  # bench/run.py, next to this file

from badge_worker.settings import Settings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--earns", type=int, default=20_000)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--log", type=Path, default=Path("bench-scale.log"))
    args = parser.parse_args()
    base = Settings()
    if not base.redis_cluster:
        raise SystemExit('run on the cluster stack: eval "$(deploy/local/stack env --cluster)" first')
    n = args.earns
    rows = []
    for workload in ("accept", "tight"):
        for processes in args.processes:
            print(f"[scale] {time.strftime('%H:%M:%S')} {workload} x{processes}", file=sys.stderr, flush=True)
            limits = WIDE if workload == "accept" else tight(n)
            per_customer = 1 if workload == "accept" else 3
            bodies = earn_bodies(n, f"{workload[0]}{processes}", workload, per_customer=per_customer)
            row = await drain(f"{workload} x{processes}", base, bodies, badge(workload, **limits),
                              processes=processes, log=args.log, topic_partitions=8)
            rows.append((workload, processes, row))
    first = {w: r.rate for w, p, r in rows if p == min(args.processes)}
    print(f"\nscale on the cluster stack, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, {n:,} earns per row\n")
    print("| workload | worker processes | earns/s | vs 1 process | worker CPU ms/earn | worker peak RSS | codes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for workload, processes, row in rows:
        codes = ", ".join(f"{c} x{k:,}" for c, k in sorted(row.codes.items()))
        print(f"| {workload} | {processes} | {row.rate:,.0f} | {row.rate / first[workload]:.2f}x | "
              f"{row.cpu_ms('worker'):.3f} | {row.rss_mb:.0f} MB | {codes} |")


if __name__ == "__main__":
    asyncio.run(main())
