"""`tuneplan models`: the bundled model catalog."""

from __future__ import annotations

import argparse

from rich.table import Table

from tuneplan.cli.output import make_console, print_json
from tuneplan.models import catalog_rows
from tuneplan.units import fmt_params

DESCRIPTION = "List the bundled model catalog (parameters counted from config.json; text decoder only)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    rows = catalog_rows()
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"Bundled models ({len(rows)})", caption="params counted from config.json; text decoder only")
    for col in ("id", "alias", "type", "params", "active", "layers", "hidden", "vocab", "experts"):
        table.add_column(col, justify="right" if col in ("params", "active", "layers", "hidden", "vocab") else "left")
    for r in rows:
        table.add_row(r["hf_id"], (r["aliases"] or [""])[-1], r["model_type"], fmt_params(r["params"]),
                      fmt_params(r["active_params"]), str(r["layers"]), str(r["hidden"]), str(r["vocab"]), r["moe"])
    make_console().print(table)
    return 0
