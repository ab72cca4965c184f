"""One record per choice a user makes, each a frozen dataclass in a table keyed by name.

Adding a framework, optimizer, attention kernel, cross-entropy implementation or
precision is adding one row to its table here; the estimators read the record's fields
and never compare names.

- frameworks: the training stack's profile (HF/PEFT, Unsloth, torchtune, Axolotl, ...).
- optimizers: state count and bytes, 8-bit, paged, temporaries, library names.
- attention: the kernel and what it saves for backward.
- cross_entropy: how the loss treats the logits (plain, chunked, fused).
- precision: parameter, compute and optimizer-state dtypes.
"""

from __future__ import annotations

from tuneplan.errors import TuneplanError


def lookup(table: dict, kind: str, name: str):
    """The record `name` from `table`, or a one-line error listing the choices."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise TuneplanError(f"unknown {kind} {name!r}; choose one of: {', '.join(table)}") from None
