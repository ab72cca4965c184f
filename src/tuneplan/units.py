"""Byte units. Everything is bytes internally; users see GiB (2**30 bytes)."""

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
