"""Bounds every job setting is checked against, and the one-line refusals that name a bad value.

Shared by tuneplan.job (Method, Training, the flat settings) and tuneplan.parallel (the
layout), and read by the planner and the exporters, so a value is bounded and shown the
same way wherever it is refused.
"""

from __future__ import annotations

from typing import Any

from tuneplan.errors import TuneplanError

# Largest value accepted for each whole-number setting: far beyond any real job, small
# enough that every figure stays a finite float (10**400 tokens would not).
MAX_COUNT = 1 << 20
MAX_SEQ_LEN = 1 << 30
LIMITS = {"seq_len": MAX_SEQ_LEN}


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse a name that is not one of `allowed`, listing them."""
    if value not in allowed:
        raise TuneplanError(f"unknown {name} {show_value(value)}; choose one of: {', '.join(allowed)}")


def show_value(value: Any) -> str:
    """A value for a one-line message: huge integers by their size, long texts cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"a {int(value.bit_length() * 0.30103) + 1}-digit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_positive(name: str, value: int | float, hi: int | None = None) -> None:
    """Refuse a value that is not a number above 0 (and at most `hi` when given)."""
    try:
        ok = value > 0
    except TypeError:
        raise TuneplanError(f"{name} must be a number, got {show_value(value)}") from None
    if not ok:
        raise TuneplanError(f"{name} must be positive, got {show_value(value)}")
    if hi is not None and value > hi:
        raise TuneplanError(f"{name} {show_value(value)} is above the {hi:,} tuneplan accepts")
