"""tuneplan: what an LLM fine-tune needs (memory, fit, time, cost), before you rent or buy.

Python API::

    import tuneplan
    est = tuneplan.estimate("llama-3.1-8b", method="qlora", seq_len=4096, micro_batch=2)
    est.peak_bytes, est.components
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

__all__ = ["estimate", "__version__"]


def estimate(model: Any, hub: bool | None = None, **settings: Any):
    """Estimate per-GPU memory of one fine-tuning step.

    Args:
        model: catalog id/alias, path to a config.json, or a ModelSpec.
        hub: allow fetching a config.json from the Hugging Face Hub (None: TUNEPLAN_HUB).
        **settings: flat settings as in tuneplan.job.Job.from_settings: any field of Method
            (kind via `method=`, rank, targets, quant, ...), Training (micro_batch, seq_len,
            precision, optimizer, checkpointing, cross_entropy, ...) or Parallel (num_gpus,
            sharding, offload_optimizer, offload_params), and `task`.

    Returns:
        tuneplan.memory.MemoryEstimate (bytes; see `.components`, `.peak_bytes`).
    """
    from tuneplan.job import Job
    from tuneplan.memory import estimate_memory
    from tuneplan.models import ModelSpec, resolve_model

    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model), hub=hub)
    return estimate_memory(spec, Job.from_settings(**settings))
