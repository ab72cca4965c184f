"""Byte units (everything is bytes internally; users see GiB, 2**30 bytes) and the one parser
for numbers people type."""

from __future__ import annotations

import re
from decimal import Context, Decimal

from tuneplan.errors import TuneplanError

KiB = 1024
MiB = 1024**2
GiB = 1024**3


def gib(n_bytes: float) -> float:
    """Bytes -> GiB (2**30 bytes)."""
    return n_bytes / GiB


def fmt_gib(n_bytes: float, digits: int = 2) -> str:
    """Format bytes as a GiB figure with a fixed number of decimals."""
    return f"{n_bytes / GiB:.{digits}f}"


def fmt_params(n: float) -> str:
    """Human parameter count: 8.03B, 494M, 12.6K."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return str(int(n))


# ---------------------------------------------------------------- numbers typed by people

# One parser for every count a user types (micro-batch, sequence length, dataset tokens,
# GPUs, ...): 4096, 2k, 2.5k, 1e8, 100M, 2B, 1_000 and 1,000 all work the same way everywhere.
_SUFFIXES = {"": 0, "k": 3, "m": 6, "b": 9, "g": 9, "t": 12}
_NUMBER = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d{1,6}))?([kmbgt]?)", re.IGNORECASE)
MAX_TYPED_DIGITS = 18  # 10**18: far beyond any count tuneplan accepts; larger is refused here


def parse_number(text: str, whole: bool = False) -> int | float:
    """A number typed by a person: digits with an optional exponent (1e8) and suffix (k, M,
    B/G, T: powers of 1000), '_' or ',' thousands separators. NaN, infinity and magnitudes
    above 10**18 are refused in one line; `whole` also refuses fractions (2.5 of a token).

    Raises:
        TuneplanError: not a number, not finite, too large, or a fraction when `whole`.
    """
    what = "a whole number (like 4096, 2k, 1e8, 100M)" if whole else "a number (like 0.5, 600, 2k, 1e-3)"
    if not isinstance(text, str):
        raise TuneplanError(f"expected {what}, got {text!r}")
    s = text.strip().replace("_", "")
    if "," in s:
        if not re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?[a-zA-Z]?", s):
            raise TuneplanError(f"expected {what}, got {_cut(text)}")
        s = s.replace(",", "")
    m = _NUMBER.fullmatch(s)
    if not m:
        raise TuneplanError(f"expected {what}, got {_cut(text)}")
    sign, mantissa, exp, suffix = m.groups()
    scale = int(exp or 0) + _SUFFIXES[suffix.lower()]
    value = Decimal(mantissa)
    if value and value.adjusted() + scale >= MAX_TYPED_DIGITS:
        raise TuneplanError(f"{_cut(text)} is too large (limit 10^{MAX_TYPED_DIGITS})")
    value = value.scaleb(scale, Context(prec=60)) * (-1 if sign == "-" else 1)
    if value == value.to_integral_value():
        return int(value)
    if whole:
        raise TuneplanError(f"expected {what}, got {_cut(text)}: not a whole number")
    return float(value)


def parse_count(text: str) -> int:
    """parse_number for whole numbers: '2k' -> 2000, '1e8' -> 100_000_000, '2.5B' -> 2_500_000_000."""
    return int(parse_number(text, whole=True))


def _cut(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 40 else r[:37] + "..."
