"""`tuneplan matrix`: fit verdict and largest micro-batch for every model x method x device."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rich.table import Table

from tuneplan.checks import check_context, check_targets
from tuneplan.cli.files import check_output, check_outputs, write_output
from tuneplan.cli.options import add_job_arguments, given_settings
from tuneplan.cli.output import make_console, print_json
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device, resolve_devices
from tuneplan.job import METHODS, Job, Method
from tuneplan.matrix import Cell, fit_matrix, to_csv
from tuneplan.models import ModelSpec, catalog, resolve_model

DESCRIPTION = "Fit verdict and largest micro-batch for every model x method x device."
DEFAULT_MODELS = "llama-3.2-1b,llama-3.2-3b,llama-3.1-8b,qwen2.5-14b,qwen2.5-32b,llama-3.1-70b"
DEFAULT_DEVICES = ("rtx-3090,rtx-4090,rtx-5090,rtx-a6000,l40s,rtx-pro-6000-blackwell,a100-40gb-sxm,"
                   "a100-80gb-sxm,h100-sxm,h200-sxm,b200,mi300x,dgx-spark,mac-studio-m4-max,strix-halo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma list of models, or all (catalog)")
    p.add_argument("--methods", default="full,lora,qlora",
                   help=f"comma list from {','.join(METHODS)} (default full,lora,qlora)")
    p.add_argument("--devices", default=DEFAULT_DEVICES, help="comma list, a category, or all")
    add_job_arguments(p, command="matrix")
    p.add_argument("--csv", metavar="PATH", help="also write the matrix as CSV ('-': CSV to stdout instead of the table)")
    p.add_argument("--png", metavar="PATH",
                   help="also write a heatmap PNG (.png added if the name has no suffix; needs matplotlib: "
                        "pip install -e '.[plot]')")
    p.add_argument("--force", action="store_true", help="overwrite existing --csv/--png files")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _job(args: argparse.Namespace, methods: list[str]) -> Job:
    """The job's settings (its method is replaced per column); a given setting that none of the
    chosen methods reads is refused."""
    given = given_settings(args)
    if "method" in given:
        raise TuneplanError("matrix compares methods: use --methods (a comma list), not --method")
    job = Job.from_settings(**given)
    names = [k for k in given if k != "method"]
    unused = [n for n in names if all(n in Method(kind=k).ignored([n]) for k in methods)]
    if unused:
        raise TuneplanError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to any of the "
                            f"methods {','.join(methods)}")
    return job


def model_names(text: str) -> list[str]:
    """--models as a list of names: a comma list, or all (the catalog)."""
    names = [m for m in catalog()] if text.strip().lower() == "all" else \
        [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise TuneplanError("--models is empty")
    return names


def method_kinds(text: str) -> list[str]:
    """--methods as a list of method kinds, each once."""
    methods = list(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    bad = [x for x in methods if x not in METHODS]
    if bad or not methods:
        raise TuneplanError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {','.join(METHODS)}")
    return methods


def matrix_request(args: argparse.Namespace, resolve: Callable[[str], ModelSpec] | None = None
                   ) -> tuple[list[ModelSpec], list[str], list[Device], Job]:
    """The models, methods, devices and job of a `matrix` command line, checked together.

    Args:
        resolve: model name -> ModelSpec (default: catalog, path or, with --hub, the Hub);
            the web page passes one that reads catalog names only.
    """
    names = model_names(args.models)
    methods = method_kinds(args.methods)
    job = _job(args, methods)
    resolve = resolve or (lambda n: resolve_model(n, hub=args.hub))
    specs = [resolve(n) for n in names]
    for spec in specs:
        check_context(spec, job.training.seq_len, args.allow_long_context)
        if any(Method(kind=k).is_adapter for k in methods):
            check_targets(spec, Method(kind="lora", targets=job.method.targets))
    return specs, methods, resolve_devices(args.devices), job


def matrix_json(job: Job, cells: list[Cell]) -> dict[str, Any]:
    """The document `matrix --json` prints (bytes), shared with `tuneplan serve`'s /api/matrix."""
    t = job.training
    return {"settings": {"micro_batch": t.micro_batch, "seq_len": t.seq_len, "precision": t.precision,
                         "optimizer": t.optimizer, "checkpointing": t.checkpointing,
                         "framework": t.framework, "num_gpus": job.parallel.num_gpus},
            "unit": "bytes", "cells": [c.to_dict() for c in cells]}


def run(args: argparse.Namespace) -> int:
    specs, methods, devs, job = matrix_request(args)
    # every output is checked before anything is computed or written
    outputs = []
    if args.csv:
        outputs.append(check_output("CSV", args.csv, args.force))
    if args.png:
        from tuneplan.cli.heatmap import check_matplotlib

        check_matplotlib()
        outputs.append(check_output("PNG", args.png, args.force, suffix=".png", stdout_ok=False))
    check_outputs(outputs)
    if args.json and any(o.to_stdout for o in outputs):
        raise TuneplanError("--json and --csv - both write to stdout; choose one")

    cells = fit_matrix(specs, methods, devs, job)
    t = job.training
    title = (f"Fit per GPU at micro-batch {t.micro_batch} x {t.seq_len} tokens, {t.precision}, {t.optimizer}, "
             f"checkpointing {t.checkpointing}, {t.framework}"
             + (f", {job.parallel.num_gpus} GPUs {job.parallel.sharding}" if job.parallel.num_gpus > 1 else "")
             + "; number = largest micro-batch that fits")
    data = {}
    for o in outputs:  # render everything first, then write
        if o.what == "CSV":
            data[o.path] = to_csv(cells).encode()
        else:
            from tuneplan.cli.heatmap import render_png

            data[o.path] = render_png(cells, title)
    for o in outputs:
        write_output(o, data[o.path])
    if args.json:
        print_json(matrix_json(job, cells))
        return 0
    if any(o.to_stdout for o in outputs):  # stdout holds the CSV: say where the files went on stderr
        for o in outputs:
            if not o.to_stdout:
                make_console(stderr=True).print(f"{o.what} written to {o.path}")
        return 0
    console = make_console()
    render_matrix(cells, [d.id for d in devs], title, console)
    for o in outputs:
        console.print(f"{o.what} written to {o.path}")
    return 0


def render_matrix(cells, device_ids: list[str], title: str, console) -> None:
    """The matrix as tables of device columns, as many as the console width holds per table."""
    by_row: dict[tuple[str, str], dict[str, object]] = {}
    for c in cells:
        by_row.setdefault((c.model, c.method), {})[c.device] = c
    style = {"fits": ("green", "✓"), "tight": ("yellow", "~"), "uncertain": ("yellow", "?"), "no": ("red", "✗"),
             "n/a": ("dim", "n/a")}
    model_w = max((len(m.split("/")[-1]) for m, _ in by_row), default=5)
    fixed = (model_w + 3) + (6 + 3) + 1
    per_table = max(1, (console.width - fixed) // 10)
    chunks = [device_ids[i:i + per_table] for i in range(0, len(device_ids), per_table)] or [[]]
    caption = ("✓ fits (≥10% headroom, 90% band within usable memory), ~ tight (<10%), ? uncertain (the peak fits, "
               "the band's upper end does not), ✗ does not fit, n/a: method does not apply or more GPUs "
               "than one machine holds; usable memory per device as in `tuneplan devices`")
    for k, chunk in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=title + part if k == 0 else f"devices{part}",
                      caption=caption if k == len(chunks) - 1 else None)
        table.add_column("model", no_wrap=True)
        table.add_column("method", no_wrap=True)
        for d in chunk:
            table.add_column(d, justify="center", min_width=5, overflow="fold")
        for (model, method), row in by_row.items():
            out = []
            for d in chunk:
                c = row[d]
                colour, mark = style[c.verdict]
                out.append(f"[{colour}]{mark}{' ' + str(c.max_micro_batch) if c.max_micro_batch else ''}[/{colour}]")
            table.add_row(model.split("/")[-1], method, *out)
        console.print(table)
