"""tuneplan's MLX memory estimate against a real mlx-lm training step on MLX's CPU backend.

Runs benchmarks/mlx_check.py's jobs (small random models built from config dicts with
mlx-lm's own classes, its trainer's compiled step, nn.quantize, linear_to_lora_layers) and
holds tuneplan's prediction of mx.get_peak_memory() within 5% of the measured figure for each.
The measured step is the second of a run: the first compiles MLX's CPU kernels, which with a
cold kernel cache (a fresh machine) stalls the graph-walking thread so the worker frees inputs
earlier and the peak drops by up to 14% (the flake of issue 26; bench.measure says why).
Skipped where mlx or mlx-lm is not importable. ~90 s on 2 CPU cores with a warm kernel cache
(MLX caches them in $TMPDIR/mlx), about two minutes more the first time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")


bench = load_script("benchmarks/mlx_check.py")


def test_job_set_covers_the_methods_and_two_lengths():
    methods = {job["method"] for _, _, job in bench.JOBS}
    assert {"lora", "qlora", "dora", "full"} <= methods and len(bench.JOBS) >= 6
    assert len({job["seq_len"] for _, _, job in bench.JOBS if job["method"] == "lora"}) >= 2


@pytest.mark.parametrize("jid,name,job", bench.JOBS, ids=[j[0] for j in bench.JOBS])
def test_estimate_within_5_percent_of_mlx_peak(jid, name, job):
    # the larger of two measurements: thread timing (how far the calling thread runs ahead of
    # the CPU backend's worker) can lower one by up to ~1.6% (seen on a fresh CI clone), and
    # the normal figure, the one mlx-lm prints as "Peak mem", is the higher one
    measured = max(bench.measure(name, job), bench.measure(name, job))
    predicted = bench.estimate(name, job)
    assert abs(predicted / measured - 1) <= 0.05, (jid, measured, predicted)


def test_measurement_is_repeatable_in_one_process():
    """Two measurements of the same job in one process (the second after other work) agree:
    no state of an earlier job (buffer cache, compiled kernels, leftover arrays) moves the peak."""
    jid, name, job = next(j for j in bench.JOBS if j[0] == "q-dora-s64")
    first, second = bench.measure(name, job), bench.measure(name, job)
    # state carried over moved the peak by up to 14% (issue 26); thread timing alone moves it by
    # up to ~1.6% (a fresh CI clone measured 33,500,412 then 32,964,352 bytes), so 3% separates them
    assert abs(second / first - 1) <= 0.03, (jid, first, second)
