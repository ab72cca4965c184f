"""Estimator speed: single-estimate latency and estimates per second on one core.

Run: python benchmarks/speed.py   (results also written to benchmarks/results/speed.md;
     --no-write only prints them)
Targets (issue #2): < 1 ms per estimate, > 5,000 estimates/s; (issue #26) the public API
(tuneplan.estimate with a catalog name and settings) at most 1.5x the core estimate_memory
(spec, job) it wraps: model resolution and settings validation are cached, not re-derived.
"""

from __future__ import annotations

import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import tuneplan
from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.models import catalog, resolve_model


def api_vs_core(rounds: int = 7, per: int = 50) -> tuple[float, float]:
    """Median over jobs of the warm per-call time (best of `rounds`, `per` calls each) of
    tuneplan.estimate(name, **settings) and of estimate_memory(spec, job) on the same job,
    measured interleaved so machine load hits both alike. Returns (api_s, core_s)."""
    cases = []
    for name in ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-14b", "mixtral-8x7b", "llama-3.1-70b"):
        for settings in ({"method": "qlora", "seq_len": 4096, "batch": 2}, {"method": "lora", "seq_len": 2048},
                         {"method": "full", "gpus": 8, "sharding": "zero3"}):
            spec = resolve_model(name)
            cases.append((name, settings, spec, Job.from_request(**settings)))
    api_t, core_t = [], []
    for name, settings, spec, job in cases:
        tuneplan.estimate(name, **settings)  # warm
        best_api = best_core = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(per):
                tuneplan.estimate(name, **settings)
            t1 = time.perf_counter()
            for _ in range(per):
                estimate_memory(spec, job)
            t2 = time.perf_counter()
            best_api, best_core = min(best_api, (t1 - t0) / per), min(best_core, (t2 - t1) / per)
        api_t.append(best_api)
        core_t.append(best_core)
    return statistics.median(api_t), statistics.median(core_t)


def main(write: bool = True) -> None:
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
    api_s, core_s = api_vs_core()

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
        f"| tuneplan.estimate(name, **settings), warm, median of 15 jobs | {api_s * 1e6:.0f} us |",
        f"| estimate_memory(spec, job) on the same jobs | {core_s * 1e6:.0f} us |",
        f"| API / core (target <= 1.5) | {api_s / core_s:.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        out = Path(__file__).parent / "results" / "speed.md"
        out.write_text(text)


if __name__ == "__main__":
    main(write="--no-write" not in sys.argv[1:])
