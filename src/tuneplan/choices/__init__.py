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

import difflib

from tuneplan.errors import TuneplanError


def lookup(table: dict, kind: str, name: str, aliases: dict[str, str] | None = None):
    """The record `name` from `table`, or a one-line error listing the choices, with the
    closest name when one is close ("did you mean adamw-8bit?").

    Args:
        aliases: other spellings -> the table's name (transformers' optimizer names); the
            record is looked up by its own name only (a caller canonicalises first), so an
            alias given here is answered with the name to use.
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        pass
    aliases = aliases or {}
    if isinstance(name, str) and name in aliases:
        raise TuneplanError(f"{kind} {name!r} is {aliases[name]} here: give {aliases[name]}")
    choices = f"choose one of: {', '.join(table)}"
    close = difflib.get_close_matches(name, [*table, *aliases], n=1) if isinstance(name, str) else []
    if close:
        hint = close[0] if close[0] in table else f"{close[0]} (= {aliases[close[0]]})"
        choices = f"did you mean {hint}? {choices}"
    raise TuneplanError(f"unknown {kind} {name!r}; {choices}") from None
