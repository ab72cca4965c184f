"""`tuneplan matrix`: fit verdict and largest micro-batch for every model x method x device."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from tuneplan.cli.options import add_job_arguments, job_from_args
from tuneplan.cli.output import make_console, print_json
from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_devices
from tuneplan.job import METHODS
from tuneplan.matrix import fit_matrix, to_csv
from tuneplan.models import catalog, resolve_model

DESCRIPTION = "Fit verdict and largest micro-batch for every model x method x device."
DEFAULT_MODELS = "llama-3.2-1b,llama-3.2-3b,llama-3.1-8b,qwen2.5-14b,qwen2.5-32b,llama-3.1-70b"
DEFAULT_DEVICES = ("rtx-3090,rtx-4090,rtx-5090,rtx-a6000,l40s,rtx-pro-6000-blackwell,a100-40gb-sxm,"
                   "a100-80gb-sxm,h100-sxm,h200-sxm,b200,mi300x,dgx-spark,mac-studio-m4-max,strix-halo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma list of models, or all (catalog)")
    p.add_argument("--methods", default="full,lora,qlora",
                   help=f"comma list from {','.join(METHODS)} (default full,lora,qlora)")
    p.add_argument("--devices", default=DEFAULT_DEVICES, help="comma list, a category, or all")
    add_job_arguments(p)
    p.add_argument("--csv", metavar="PATH", help="also write the matrix as CSV")
    p.add_argument("--png", metavar="PATH", help="also write a heatmap PNG (needs matplotlib: tuneplan[plot])")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    names = [m for m in catalog()] if args.models.strip().lower() == "all" else \
        [x.strip() for x in args.models.split(",") if x.strip()]
    if not names:
        raise TuneplanError("--models is empty")
    specs = [resolve_model(n, hub=args.hub) for n in names]
    methods = [x.strip().lower() for x in args.methods.split(",") if x.strip()]
    bad = [x for x in methods if x not in METHODS]
    if bad or not methods:
        raise TuneplanError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {','.join(METHODS)}")
    devs = resolve_devices(args.devices)
    job = job_from_args(args)
    cells = fit_matrix(specs, methods, devs, job)
    t = job.training
    title = (f"Fit per GPU at micro-batch {t.micro_batch} x {t.seq_len} tokens, {t.precision}, {t.optimizer}, "
             f"checkpointing {t.checkpointing}, {t.framework}; number = largest micro-batch that fits")
    if args.csv:
        try:
            Path(args.csv).write_text(to_csv(cells))
        except OSError as e:
            raise TuneplanError(f"cannot write {args.csv}: {e.strerror or e}") from None
    if args.png:
        from tuneplan.cli.heatmap import write_png

        write_png(cells, args.png, title)
    if args.json:
        print_json({"settings": {"micro_batch": t.micro_batch, "seq_len": t.seq_len, "precision": t.precision,
                                 "optimizer": t.optimizer, "checkpointing": t.checkpointing,
                                 "framework": t.framework}, "unit": "bytes", "cells": [c.to_dict() for c in cells]})
        return 0
    table = Table(title=title, caption="✓ fits (≥10% headroom), ~ tight (<10%), ✗ does not fit; usable memory per "
                                       "device as in `tuneplan devices`")
    table.add_column("model")
    table.add_column("method")
    for d in devs:
        table.add_column(d.id, justify="center")
    by_row: dict[tuple[str, str], list] = {}
    for c in cells:
        by_row.setdefault((c.model, c.method), []).append(c)
    style = {"fits": ("green", "✓"), "tight": ("yellow", "~"), "no": ("red", "✗"), "n/a": ("dim", "n/a")}
    for (model, method), row in by_row.items():
        out = []
        for c in row:
            colour, mark = style[c.verdict]
            out.append(f"[{colour}]{mark}{' ' + str(c.max_micro_batch) if c.max_micro_batch else ''}[/{colour}]")
        table.add_row(model.split("/")[-1], method, *out)
    console = make_console()
    console.print(table)
    if args.csv:
        console.print(f"CSV written to {args.csv}")
    if args.png:
        console.print(f"PNG written to {args.png}")
    return 0
