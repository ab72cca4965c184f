"""Console, JSON and change rendering shared by the commands (no core logic here)."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from rich.console import Console

from tuneplan.cli.options import flag_text
from tuneplan.fit import Change


class _Console(Console):
    """rich's Console, but a closed pipe (`tuneplan models | head -1`) ends the command quietly
    with exit code 0 as the JSON and CSV outputs do (rich's own handler exits with 1):
    the BrokenPipeError goes to tuneplan.cli.main, which silences stdout and returns 0."""

    def on_broken_pipe(self) -> None:  # noqa: D102
        self.quiet = True
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal (a pipe, a file, CI), use a wide page so
    tables are not squeezed into 80 columns (COLUMNS still wins when set)."""
    console = _Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = _Console(stderr=stderr, width=200)
    return console


def finite(obj: Any) -> Any:
    """The document with every non-finite float as a string ("Infinity", "-Infinity", "NaN"),
    as protobuf's JSON mapping does: JSON has no such numbers (Python's json would write a
    bare Infinity that JSON.parse and jq refuse). An infinite break-even is one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """Write strict JSON to stdout (keys in the order the core's to_dict gives them)."""
    sys.stdout.write(json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def describe_change(change: Change) -> str:
    """A fit change in words with the flags that make it: 'fused cross-entropy (--cross-entropy fused)'."""
    return " + ".join(f"{s.description} ({flag_text(dict(s.settings))})" for s in change.steps)


def money(x: float | None) -> str:
    """USD for a table cell: '$1,234' or '$12.34'; '-' when unknown."""
    if x is None:
        return "-"
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def fit_columns(headers: list[str], rows: list[list[str]], drop_order: list[str], width: int) -> list[int]:
    """Indexes of the columns to show so the table fits `width` characters: columns in
    `drop_order` are dropped first to last until it fits (each column costs its widest
    cell, or its header's longest word, plus 3 for padding and border)."""
    def need(i: int) -> int:
        cells = [len(r[i]) for r in rows] + [max((len(w) for w in headers[i].split()), default=0)]
        return max(cells) + 3

    keep = list(range(len(headers)))
    for name in drop_order:
        if sum(need(i) for i in keep) + 1 <= width:
            break
        if name in headers:
            keep.remove(headers.index(name))
    return keep
