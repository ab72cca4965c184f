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

# One parser for every number a user types (micro-batch, sequence length, dataset tokens,
# GPUs, ...): 4096, 2k, 2.5k, 1e8, 100M, 2B, 1_000 and 1,000 all work the same way everywhere.
# Suffixes are powers of 1000 (SI: --dataset-tokens 100M, --samples 50k), except in a token
# length (--seq-len), where k = 1024: context lengths are powers of two in every stack, so
# 8k is 8,192 (parse_token_length). An exponent (1e3) is always decimal.
_SUFFIXES = {"": 0, "k": 1, "m": 2, "b": 3, "g": 3, "t": 4}  # power of the suffix's base (1000 or 1024)
_NUMBER = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d{1,6}))?([kmbgt]?)", re.IGNORECASE)
MAX_TYPED_DIGITS = 18  # 10**18: far beyond any count tuneplan accepts; larger is refused here


def parse_number(text: str, whole: bool = False, binary: bool = False) -> int | float:
    """A number typed by a person: digits with an optional exponent (1e8) and suffix (k, M,
    B/G, T: powers of 1000; with `binary` powers of 1024, for token lengths), '_' or ','
    thousands separators. NaN, infinity and magnitudes above 10**18 are refused in one line;
    `whole` also refuses fractions (2.5 of a token).

    Raises:
        TuneplanError: not a number, not finite, too large, or a fraction when `whole`.
    """
    if binary:
        what = "a whole number of tokens (like 4096, 8k = 8,192, 32k)"
    else:
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
    power = _SUFFIXES[suffix.lower()]
    scale = int(exp or 0) + 3 * power  # decimal digits the exponent and suffix add (1024 > 1000: checked again)
    value = Decimal(mantissa)
    if value and value.adjusted() + scale >= MAX_TYPED_DIGITS:
        raise TuneplanError(f"{_cut(text)} is too large (limit 10^{MAX_TYPED_DIGITS})")
    ctx = Context(prec=60)
    value = ctx.multiply(value.scaleb(int(exp or 0), ctx), (1024 if binary else 1000) ** power)
    value = -value if sign == "-" else value
    if abs(value) >= 10**MAX_TYPED_DIGITS:
        raise TuneplanError(f"{_cut(text)} is too large (limit 10^{MAX_TYPED_DIGITS})")
    if value == value.to_integral_value():
        return int(value)
    if whole:
        raise TuneplanError(f"expected {what}, got {_cut(text)}: not a whole number")
    return float(value)


def parse_count(text: str) -> int:
    """parse_number for whole numbers: '2k' -> 2000, '1e8' -> 100_000_000, '2.5B' -> 2_500_000_000."""
    return int(parse_number(text, whole=True))


def parse_token_length(text: str) -> int:
    """A token length (sequence length): whole, with k = 1024 as every stack's context lengths
    are: '8k' -> 8192, '2.5k' -> 2560, '128k' -> 131072; '1e3' and '4096' as typed."""
    return int(parse_number(text, whole=True, binary=True))


def _cut(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 40 else r[:37] + "..."
