"""Measure the real training step on the hardware at hand (CUDA, Apple MPS or CPU) and set it
beside the estimate: `tuneplan probe`.

Needs the optional extra (pip install -e '.[probe]' in the repository: torch, transformers,
peft, bitsandbytes). Nothing here is imported by the core package; tuneplan.probe.system and
tuneplan.probe.record import no torch.
"""

from __future__ import annotations


def available() -> bool:
    """True when torch, transformers and peft can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


def quiet_libraries() -> None:
    """Keep the libraries' import-time chatter off the terminal (bitsandbytes asks for the
    `kernels` package, which would download CPU kernels from the Hub; it falls back without them)."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
