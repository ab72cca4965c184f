"""tuneplan: what an LLM fine-tune needs (memory, fit, time, cost), before you rent or buy.

Python API (tuneplan.api has the same functions under the CLI's command names)::

    import tuneplan
    est = tuneplan.estimate("llama-3.1-8b", method="qlora", seq_len=4096, batch=2)
    est.peak_bytes, est.components
    v = tuneplan.check_fit("llama-3.1-8b", "rtx-4090", method="lora", batch=16)
    report = tuneplan.plan_job("qwen2.5-7b", method="qlora", devices="consumer", dataset_tokens="100M")
    cells = tuneplan.fit_table(["llama-3.2-1b"], ["full", "lora"], "rtx-4090,h100")
    tuneplan.model_catalog(), tuneplan.device_catalog("unified")

Bad input raises tuneplan.errors.TuneplanError (a ValueError) with a one-line message.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

# package name -> tuneplan.api function (imported on first use, so `import tuneplan` stays light)
_API = {"estimate": "estimate", "check_fit": "fit", "plan_job": "plan", "fit_table": "matrix",
        "model_catalog": "models", "device_catalog": "devices"}

__all__ = [*_API, "TuneplanError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from tuneplan import api

        return getattr(api, _API[name])
    if name == "TuneplanError":
        from tuneplan.errors import TuneplanError

        return TuneplanError
    raise AttributeError(f"module 'tuneplan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
