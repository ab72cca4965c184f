"""The analytical estimator against the saved fake-tensor traces (ground truth).

benchmarks/results/traces.json holds what `tuneplan trace` measured for 80+ configs
(regenerate with `python benchmarks/trace_vs_estimate.py`). This test needs no torch: it
re-estimates each config and fails if any drifts more than 1% from its trace, so an
estimator change that breaks agreement with the real transformers/PEFT step cannot land.
"""

import json
from pathlib import Path

import pytest

from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.memory.components import OVERHEAD
from tuneplan.models import resolve_model

TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "traces.json"
NOT_TRACED = OVERHEAD  # a trace cannot see the allocator overhead and the CUDA context


def _cases():
    data = json.loads(TRACES.read_text())
    for key, trace in sorted(data.items()):
        if key.startswith("["):
            model, method, training = json.loads(key)
            if "targets" in method and isinstance(method["targets"], list):
                method["targets"] = tuple(method["targets"])
        else:  # grid key: model|kind|checkpointing|seq_len
            model, kind, ckpt, seq = key.split("|")
            method, training = {"kind": kind}, {"checkpointing": ckpt, "seq_len": int(seq)}
        yield pytest.param(model, method, training, trace["peak_bytes"], id=key)


def test_there_are_enough_traces():
    assert sum(1 for _ in _cases()) >= 80


@pytest.mark.parametrize("model,method,training,traced", list(_cases()))
def test_estimate_within_1_percent_of_trace(model, method, training, traced):
    est = estimate_memory(resolve_model(model), Job.from_settings(**method, **training))
    allocated = sum(c.bytes for c in est.components if c.key not in NOT_TRACED)
    assert abs(allocated - traced) / traced < 0.01
