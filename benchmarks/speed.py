"""Estimator speed: single-estimate latency and estimates per second on one core.

Run: python benchmarks/speed.py   (results also written to benchmarks/results/speed.md)
Targets (issue #2): < 1 ms per estimate, > 5,000 estimates/s.
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time
from pathlib import Path

from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.models import catalog


def main() -> None:
    specs = [m.spec for m in catalog().values()]
    methods = ("full", "lora", "qlora", "dora", "freeze")
    seqs = (512, 2048, 8192)
    jobs = [(s, Job.from_settings(method=m, seq_len=q)) for s, m, q in itertools.product(specs, methods, seqs)]

    # cold: first estimate of each (spec, job) pays for the per-spec caches
    t0 = time.perf_counter()
    for s, j in jobs:
        estimate_memory(s, j)
    cold = (time.perf_counter() - t0) / len(jobs)

    # warm latency of single full estimates (breakdown, notes, assumptions)
    lat = []
    for s, j in jobs:
        t1 = time.perf_counter()
        estimate_memory(s, j)
        lat.append(time.perf_counter() - t1)
    # throughput with varying batch sizes (what the planner does)
    batched = [(s, Job.from_settings(method=j.method.kind, seq_len=j.training.seq_len, micro_batch=b))
               for b in range(1, 9) for s, j in jobs]

    def rate(fn) -> float:
        t0 = time.perf_counter()
        for s, j in batched:
            fn(s, j)
        return len(batched) / (time.perf_counter() - t0)

    full_rate = rate(estimate_memory)
    fast_rate = rate(peak_bytes)

    lines = [
        "# Estimator speed",
        "",
        f"python {platform.python_version()} on {platform.machine()}, one core; {len(jobs)} distinct jobs "
        f"({len(specs)} models x 5 methods x 3 seq-lens).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| first estimate of a job (cold caches), mean | {cold * 1e6:.0f} us |",
        f"| single estimate, median | {statistics.median(lat) * 1e6:.0f} us |",
        f"| single estimate, p99 | {sorted(lat)[int(0.99 * len(lat))] * 1e6:.0f} us |",
        f"| estimate_memory (full breakdown) per second | {full_rate:,.0f} |",
        f"| peak_bytes (planner fast path) per second | {fast_rate:,.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "speed.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
