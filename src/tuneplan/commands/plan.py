"""`tuneplan devices`, `tuneplan plan` and `tuneplan matrix`: hardware, ranked setups, fit matrix."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.table import Table

from tuneplan import calibration as cal
from tuneplan.cli import add_job_arguments, job_from_args, make_console, print_json
from tuneplan.disk import estimate_disk
from tuneplan.errors import TuneplanError
from tuneplan.fit import support_notes
from tuneplan.hardware import devices, resolve_devices
from tuneplan.matrix import fit_matrix, to_csv, write_png
from tuneplan.models import catalog, resolve_model
from tuneplan.plan import plan
from tuneplan.timing import Dataset, fmt_duration
from tuneplan.units import GiB

DEFAULT_MATRIX_MODELS = "llama-3.2-1b,llama-3.2-3b,llama-3.1-8b,qwen2.5-14b,qwen2.5-32b,llama-3.1-70b"
DEFAULT_MATRIX_DEVICES = ("rtx-3090,rtx-4090,rtx-5090,rtx-a6000,l40s,rtx-pro-6000-blackwell,a100-40gb-sxm,"
                          "a100-80gb-sxm,h100-sxm,h200-sxm,b200,mi300x,dgx-spark,mac-studio-m4-max,strix-halo")
METHODS_ALL = "full,lora,qlora,dora,freeze"


def count(text: str) -> int:
    """'100M' -> 100_000_000; '50k', '2.5B', '1_000' also accepted."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*", text.replace("_", "").replace(",", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"expected a count like 50000, 50k, 100M or 2B, got {text!r}")
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("devices", help="list the hardware catalog (usable memory, bandwidth, TFLOPS, prices)",
                       description="List catalog devices with usable memory (GiB = 2^30 bytes) and prices.")
    d.add_argument("--category", help="consumer | workstation | datacenter | unified | cloud-tpu")
    d.add_argument("--json", action="store_true", help="print JSON (bytes)")
    d.set_defaults(func=run_devices)

    p = sub.add_parser("plan", help="rank device x count x settings for a job by time or cost",
                       description="Which devices, how many, how long and at what cost: ranked setups.")
    p.add_argument("model", help="catalog id or alias, or a path to config.json")
    add_job_arguments(p)
    _add_dataset_arguments(p)
    p.add_argument("--devices", default="all", help="comma list of devices, a category, or all (default)")
    p.add_argument("--rank-by", choices=("time", "cost", "purchase"), default="time",
                   help="order by run time, cloud cost of the run, or purchase price of the devices")
    p.add_argument("--top", type=int, default=15, help="rows to show (default 15)")
    p.add_argument("--max-gpus", type=int, default=None, help="cap on devices per setup (default: device max)")
    p.add_argument("--max-batch", type=int, default=16, help="largest micro-batch the tuner tries (default 16)")
    p.add_argument("--no-tune", action="store_true", help="keep --batch and --checkpointing as given")
    p.add_argument("--efficiency", type=float, default=None,
                   help="override the framework profile's FLOP efficiency (0-1], see calibration.py")
    p.add_argument("--utilisation", type=float, default=cal.DEFAULT_UTILISATION,
                   help=f"share of the week an owned device trains, for break-even (default {cal.DEFAULT_UTILISATION})")
    p.add_argument("--usd-per-kwh", type=float, default=cal.ELECTRICITY_USD_PER_KWH,
                   help=f"electricity price for owned devices (default {cal.ELECTRICITY_USD_PER_KWH})")
    p.add_argument("--saves", type=int, default=3, help="checkpoints kept on disk (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes, seconds, USD)")
    p.set_defaults(func=run_plan)

    m = sub.add_parser("matrix", help="fit matrix: models x methods x devices (table, CSV, PNG heatmap)",
                       description="Fit verdict and largest micro-batch for every model x method x device.")
    m.add_argument("--models", default=DEFAULT_MATRIX_MODELS, help="comma list of models, or all (catalog)")
    m.add_argument("--methods", default="full,lora,qlora", help=f"comma list from {METHODS_ALL} (default full,lora,qlora)")
    m.add_argument("--devices", default=DEFAULT_MATRIX_DEVICES, help="comma list, a category, or all")
    add_job_arguments(m)
    m.add_argument("--csv", metavar="PATH", help="also write the matrix as CSV")
    m.add_argument("--png", metavar="PATH", help="also write a heatmap PNG (needs matplotlib: tuneplan[plot])")
    m.add_argument("--json", action="store_true", help="print JSON instead of the table")
    m.set_defaults(func=run_matrix)


def _add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset-tokens", type=count, help="tokens per epoch, e.g. 100M (packed)")
    g.add_argument("--samples", type=count, help="number of samples (with --mean-tokens)")
    g.add_argument("--mean-tokens", type=float, help="mean tokens per sample (with --samples)")
    g.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    if args.samples is not None or args.mean_tokens is not None:
        if args.samples is None or args.mean_tokens is None:
            raise TuneplanError("--samples and --mean-tokens go together")
        if args.dataset_tokens is not None:
            raise TuneplanError("give either --dataset-tokens or --samples with --mean-tokens, not both")
        return Dataset.from_samples(args.samples, args.mean_tokens, args.epochs)
    if args.dataset_tokens is None:
        raise TuneplanError("give the dataset size: --dataset-tokens 100M, or --samples 50k --mean-tokens 2048")
    return Dataset(args.dataset_tokens, args.epochs)


def _money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def run_devices(args: argparse.Namespace) -> int:
    devs = list(devices().values())
    if args.category:
        devs = [d for d in devs if d.category == args.category]
        if not devs:
            raise TuneplanError(f"no devices in category {args.category!r}; "
                                "use consumer, workstation, datacenter, unified or cloud-tpu")
    if args.json:
        print_json([d.to_dict() for d in devs])
        return 0
    table = Table(title=f"Devices ({len(devs)})",
                  caption="memory per device in GiB (2^30 bytes); usable = what a framework can allocate, before "
                          "its CUDA context; TFLOPS dense bf16 (Apple: FP32); * = some facts unconfirmed")
    for col in ("id", "name", "kind", "GiB", "usable", "GB/s", "TFLOPS", "price", "cloud $/h (date)"):
        table.add_column(col, justify="right" if col in ("GiB", "usable", "GB/s", "TFLOPS", "price") else "left",
                         no_wrap=col == "id", max_width=28 if col == "name" else None,
                         overflow="ellipsis" if col == "name" else "fold")
    for d in devs:
        q = d.cloud_quote
        cloud = f"{q.usd_per_hour:.2f} {q.provider} ({q.date or 'undated'}{'?' if q.unconfirmed else ''})" if q else "-"
        table.add_row(d.id + ("*" if d.unconfirmed else ""), d.name, d.category, f"{d.memory_gib:g}",
                      f"{d.usable_bytes / GiB:.1f}", f"{d.bandwidth_gbps:g}",
                      f"{d.bf16_tflops:g}" if d.bf16_tflops else "-", _money(d.price_usd), cloud)
    make_console().print(table)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    spec = resolve_model(args.model)
    job = job_from_args(args)
    ds = dataset_from_args(args)
    if args.top < 1:
        raise TuneplanError(f"--top must be positive, got {args.top}")
    if args.max_gpus is not None and args.max_gpus < 1:
        raise TuneplanError(f"--max-gpus must be positive, got {args.max_gpus}")
    devs = resolve_devices(args.devices)
    res = plan(spec, job, ds, devs, rank_by=args.rank_by, max_gpus=args.max_gpus, tune=not args.no_tune,
               max_batch=args.max_batch, utilisation=args.utilisation, usd_per_kwh=args.usd_per_kwh,
               efficiency=args.efficiency)
    disk = estimate_disk(spec, job, ds.tokens, saves=args.saves)
    if args.json:
        print_json({"model": spec.name, "rank_by": res.rank_by, "dataset_tokens": ds.tokens, "epochs": ds.epochs,
                    "setups": [s.to_dict() for s in res.setups],
                    "unfit": [{"device": d, "why": w} for d, w in res.unfit], "disk": disk.to_dict()})
        return 0
    console = make_console()
    m = job.method
    title = (f"{spec.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", seq {job.training.seq_len}, {ds.tokens:,} tokens x {ds.epochs:g} epoch(s), "
             + f"ranked by {res.rank_by}")
    table = Table(title=title, caption="peak/usable per GPU in GiB (2^30 bytes); cloud $ = run on rented devices "
                                       "at the first confirmed catalog quote (? = unconfirmed); break-even at "
                                       f"{args.utilisation:.0%} utilisation, ${args.usd_per_kwh}/kWh")
    for col in ("#", "setup", "batch x accum", "ckpt", "peak/usable", "fit", "tok/s", "epoch", "run",
                "cloud $", "buy $", "break-even", "bound"):
        table.add_column(col, justify="right" if col in ("#", "tok/s", "epoch", "run", "cloud $", "buy $") else "left")
    for i, s in enumerate(res.setups[: args.top], 1):
        t, p = s.job.training, s.job.parallel
        setup = f"{s.count} x {s.device.id}" + (f" {p.sharding}" if s.count > 1 else "")
        if p.offload_optimizer or p.offload_params:
            setup += " +offload"
        be = s.cost.breakeven_weeks
        table.add_row(str(i), setup, f"{t.micro_batch} x {t.grad_accum}", t.checkpointing,
                      f"{s.peak_bytes / GiB:.1f}/{s.device.usable_bytes / GiB:.1f}", s.verdict,
                      f"{s.run.step.tokens_per_s:,.0f}", fmt_duration(s.run.epoch_s), fmt_duration(s.run.run_s),
                      _money(s.cost.cloud_usd) + ("?" if "unconfirmed" in s.cost.cloud_quote else ""),
                      _money(s.cost.purchase_usd), "-" if be is None else ("never" if be == float("inf") else f"{be:.0f} wk"),
                      s.run.step.bound)
    console.print(table)
    if not res.setups:
        console.print("[red]No device in the list can run this job.[/red]")
    if res.unfit:
        console.print(f"Cannot run it ({len(res.unfit)}): " + "; ".join(f"{d} ({w})" for d, w in res.unfit[:12])
                      + (" ..." if len(res.unfit) > 12 else ""))
    console.print(f"Disk (GiB): base model {disk.base_model / GiB:.1f}, dataset {disk.dataset_raw / GiB:.2f} raw + "
                  f"{disk.dataset_tokenized / GiB:.2f} tokenized, checkpoints {disk.saves} x "
                  f"{disk.checkpoint_each / GiB:.2f} ({'adapter' if disk.adapter_only else 'full'}), merged export "
                  f"{disk.merged_model / GiB:.1f}; total {disk.total / GiB:.1f}")
    if res.setups:
        console.print(f"Assumes (for #1, {res.setups[0].device.id}; each device its own peak and bandwidth):")
        for a in res.setups[0].run.step.assumptions:
            console.print(f"  - {a}")
        console.print("  - Tuning picks the largest micro-batch that fits with 10% headroom (up to --max-batch), with "
                      "and without checkpointing; gradient accumulation keeps the job's global batch where it is "
                      "larger (--batch x --grad-accum x --gpus), else the global batch grows.")
        notes = dict.fromkeys(n for s in res.setups[: args.top] for n in support_notes(s.device, s.job))
        for n in notes:
            console.print(f"  - Note: {n}")
    return 0


def run_matrix(args: argparse.Namespace) -> int:
    names = [m for m in catalog()] if args.models.strip().lower() == "all" else \
        [x.strip() for x in args.models.split(",") if x.strip()]
    if not names:
        raise TuneplanError("--models is empty")
    specs = [resolve_model(n) for n in names]
    methods = [x.strip().lower() for x in args.methods.split(",") if x.strip()]
    bad = [x for x in methods if x not in METHODS_ALL.split(",")]
    if bad or not methods:
        raise TuneplanError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {METHODS_ALL}")
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
