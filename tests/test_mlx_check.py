"""tuneplan's MLX memory estimate against a real mlx-lm training step on MLX's CPU backend.

Runs benchmarks/mlx_check.py's jobs (small random models built from config dicts with
mlx-lm's own classes, its trainer's compiled step, nn.quantize, linear_to_lora_layers) and
holds tuneplan's prediction of mx.get_peak_memory() within 5% of the measured figure for each.
Skipped where mlx or mlx-lm is not importable. ~40 s on 2 CPU cores.
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
    measured = bench.measure(name, job)
    predicted = bench.estimate(name, job)
    assert abs(predicted / measured - 1) <= 0.05, (jid, measured, predicted)
