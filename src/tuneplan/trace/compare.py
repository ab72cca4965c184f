"""Line up a trace (measured) with the analytical estimate, category by category (no torch needed).

The trace measures allocated bytes, as torch.cuda.max_memory_allocated() would; the
estimate's peak also holds the CUDA context and the caching allocator's overhead, which
a trace cannot see. Comparisons therefore use the estimate's *allocated* bytes: the sum
of its components without those two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneplan.memory import MemoryEstimate
from tuneplan.memory import components as K
from tuneplan.memory.tasks import REF_FORWARD, REF_WEIGHTS

NOT_TRACED = K.OVERHEAD

# (row key, label, trace categories, estimate component keys)
ROWS = (
    ("params", "Parameters (weights, quant state, adapters)", ("weights", "trainable"),
     (K.WEIGHTS, K.QUANT_CONSTANTS, K.ADAPTERS, K.PARAM_GATHER, K.MASTER_WEIGHTS)),
    ("gradients", "Gradients", ("gradients",), (K.GRADIENTS, K.DDP_BUCKETS)),
    ("optimizer", "Optimizer states", ("optimizer",), (K.OPTIMIZER,)),
    ("activations", "Activations", ("activations",), (K.ACTIVATIONS,)),
    ("logits", "Logits + loss", ("logits",), (K.LOGITS,)),
    ("temporaries", "Backward / optimizer temporaries", ("temporaries",), (K.WORKING, K.OPTIMIZER_TEMP)),
    # preference tasks (tuneplan.trace.tasks): a separate reference's weights and the no-grad forwards
    ("reference", "Reference model + no-grad forwards", ("reference",), (REF_WEIGHTS, REF_FORWARD)),
)


@dataclass(frozen=True)
class Row:
    """One comparison line, bytes."""

    key: str
    label: str
    trace: int
    estimate: int


def estimate_allocated(est: MemoryEstimate) -> int:
    """Estimated allocated bytes at the peak (no CUDA context, no allocator overhead)."""
    return est.peak_allocated_bytes


def rows(at_peak: dict[str, int], est: MemoryEstimate) -> list[Row]:
    """Per-category bytes at each side's peak moment (the reference row only where either side has one)."""
    out = [Row(key, label, sum(at_peak.get(c, 0) for c in tcats), sum(est.component(k) for k in ekeys))
           for key, label, tcats, ekeys in ROWS]
    return [r for r in out if r.key != "reference" or r.trace or r.estimate]


def relative_error(trace_peak: int, est: MemoryEstimate) -> float:
    """(estimated allocated - traced peak) / traced peak; positive = estimate too high."""
    return (estimate_allocated(est) - trace_peak) / trace_peak if trace_peak else 0.0


def comparison_dict(trace: dict[str, Any], est: MemoryEstimate) -> dict[str, Any]:
    """JSON-ready trace + estimate + difference (bytes)."""
    alloc = estimate_allocated(est)
    return {
        "unit": "bytes",
        "trace": trace,
        "estimate": {"allocated_bytes": alloc, "peak_bytes": est.peak_bytes, "peak_phase": est.peak_phase,
                     "components": [c.__dict__ for c in est.components]},
        "rows": [r.__dict__ for r in rows(trace["at_peak"], est)],
        "difference_bytes": alloc - trace["peak_bytes"],
        "relative_error": relative_error(trace["peak_bytes"], est),
    }
