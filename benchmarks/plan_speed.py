"""Planner speed: the full fit matrix (all catalog models x 5 methods x all devices, with
max-micro-batch search per cell) and a full `plan` over every device.

Run: python benchmarks/plan_speed.py   (results also written to benchmarks/results/plan_speed.md)
Target (issue #3): the full matrix in under 2 s.
Each run starts from cold caches (a fresh process); the matrix is timed cold, then warm.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from tuneplan import memory
from tuneplan.hardware import devices
from tuneplan.job import Job
from tuneplan.matrix import fit_matrix
from tuneplan.models import catalog, resolve_model
from tuneplan.plan import plan
from tuneplan.timing import Dataset

METHODS = ["full", "lora", "qlora", "dora", "freeze"]


class _Counter:
    """Counts peak_bytes calls (the estimates the searches make)."""

    def __init__(self) -> None:
        self.n = 0
        self.orig = memory.peak_bytes

    def __call__(self, spec, job):
        self.n += 1
        return self.orig(spec, job)


def main() -> None:
    import tuneplan.matrix as mx
    import tuneplan.search as se

    counter = _Counter()
    mx.peak_bytes = se.peak_bytes = counter  # count estimates without changing them
    specs = [m.spec for m in catalog().values()]
    devs = list(devices().values())
    job = Job.from_settings(seq_len=2048)

    t0 = time.perf_counter()
    cells = fit_matrix(specs, METHODS, devs, job)
    cold = time.perf_counter() - t0
    cold_estimates = counter.n
    counter.n = 0
    t0 = time.perf_counter()
    fit_matrix(specs, METHODS, devs, job)
    warm = time.perf_counter() - t0
    warm_estimates = counter.n
    fits = sum(c.verdict == "fits" for c in cells)
    tight = sum(c.verdict == "tight" for c in cells)
    uncertain = sum(c.verdict == "uncertain" for c in cells)
    no = sum(c.verdict == "no" for c in cells)

    spec = resolve_model("llama-3.1-8b")
    t0 = time.perf_counter()
    res = plan(spec, Job.from_settings(method="qlora"), Dataset(100_000_000), devs)
    plan_s = time.perf_counter() - t0

    # the layout search (issue #23): fewest GPUs and their layout for a 405B full fine-tune on
    # every device, each stack's layouts (data x TP inside a machine x PP), node-sized counts
    big = resolve_model("llama-3.1-405b")
    layout_rows = []
    for fw in ("hf", "torchtitan", "megatron"):
        se._safe_peak.cache_clear()
        t0 = time.perf_counter()
        found = [se.min_gpus(big, Job.from_settings(method="full", framework=fw), d) for d in devs]
        layout_rows.append((fw, time.perf_counter() - t0, sum(f is not None for f in found)))
    layout_s = max(s for _, s, _ in layout_rows)

    lines = [
        "# Planner speed",
        "",
        f"python {platform.python_version()} on {platform.machine()}, one core, fresh process (cold caches).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| matrix size | {len(specs)} models x {len(METHODS)} methods x {len(devs)} devices = {len(cells):,} cells |",
        f"| verdicts at micro-batch 1 x 2048 | {fits:,} fit, {tight:,} tight, {uncertain:,} uncertain, {no:,} do not fit |",
        f"| full matrix with max-micro-batch search, cold | {cold:.2f} s ({cold_estimates:,} estimates, "
        f"{cold_estimates / cold:,.0f} estimates/s) |",
        f"| same matrix, warm caches | {warm:.2f} s ({warm_estimates:,} estimates, {warm_estimates / warm:,.0f}/s) |",
        f"| cells per second, cold | {len(cells) / cold:,.0f} |",
        f"| `plan` Llama-3.1-8B QLoRA over all {len(devs)} devices (counts, batch, checkpointing) | "
        f"{plan_s:.2f} s, {len(res.setups)} setups ranked |",
        *(f"| layout search, Llama-3.1-405B full, --framework {fw}, all {len(devs)} devices, cold | {t:.2f} s, "
          f"{n} devices can run it |" for fw, t, n in layout_rows),
        "",
        f"Target: full matrix < 2 s -> {'met' if cold < 2 else 'NOT met'}; 405B layout search over the catalog "
        f"< 2 s -> {'met' if layout_s < 2 else 'NOT met'}.",
        "Estimates are peak-memory evaluations (tuneplan.memory.peak_bytes); per model and method the",
        "peak for each micro-batch is computed once and shared by all devices (galloping + bisection).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "plan_speed.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
