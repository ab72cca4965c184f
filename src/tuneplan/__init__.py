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


def estimate(model: Any, **settings: Any):
    """Estimate per-GPU memory of one fine-tuning step.

    Args:
        model: catalog id/alias, path to a config.json, or a ModelSpec.
        **settings: any field of Method (kind via `method=`, rank, targets, quant, ...),
            Training (micro_batch, seq_len, precision, optimizer, checkpointing, ...)
            or Parallel (num_gpus, sharding, offload_optimizer, offload_params).

    Returns:
        tuneplan.memory.MemoryEstimate (bytes; see `.components`, `.peak_bytes`).
    """
    from dataclasses import fields

    from tuneplan.errors import TuneplanError
    from tuneplan.job import Job, Method, Parallel, Training, parse_targets
    from tuneplan.memory import estimate_memory
    from tuneplan.models import ModelSpec, resolve_model

    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model))
    settings = dict(settings)
    if "method" in settings:
        settings["kind"] = settings.pop("method")
    if isinstance(settings.get("targets"), str):
        settings["targets"] = parse_targets(settings["targets"])
    groups: dict[type, dict[str, Any]] = {Method: {}, Training: {}, Parallel: {}}
    for key, value in settings.items():
        for cls in groups:
            if key in {f.name for f in fields(cls)}:
                groups[cls][key] = value
                break
        else:
            raise TuneplanError(f"unknown setting {key!r}")
    job = Job(Method(**groups[Method]), Training(**groups[Training]), Parallel(**groups[Parallel]))
    return estimate_memory(spec, job)
