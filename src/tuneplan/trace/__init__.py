"""Ground truth for the estimator: the real model's training step under a memory tracker.

Needs the optional extra (pip install -e '.[trace]' in the repository: torch, transformers, peft).
Nothing here is imported by the core package.
"""

from __future__ import annotations


def available() -> bool:
    """True when torch, transformers and peft can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))
