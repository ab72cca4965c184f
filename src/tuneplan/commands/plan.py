"""`tuneplan plan`: which devices, how many, how long and at what cost, ranked."""

from __future__ import annotations

import argparse

from rich.table import Table

from tuneplan import calibration as cal
from tuneplan.cli.options import add_dataset_arguments, add_job_arguments, dataset_from_args, job_from_args
from tuneplan.cli.output import make_console, money, print_json
from tuneplan.hardware import resolve_devices
from tuneplan.models import resolve_model
from tuneplan.plan import PlanReport, plan_report
from tuneplan.timing import fmt_duration
from tuneplan.units import GiB

DESCRIPTION = "Which devices, how many, how long and at what cost: ranked setups."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog id or alias, or a path to config.json")
    add_job_arguments(p)
    add_dataset_arguments(p)
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


def run(args: argparse.Namespace) -> int:
    spec = resolve_model(args.model, hub=args.hub)
    job = job_from_args(args)
    ds = dataset_from_args(args)
    report = plan_report(spec, job, ds, resolve_devices(args.devices), rank_by=args.rank_by, max_gpus=args.max_gpus,
                         tune=not args.no_tune, max_batch=args.max_batch, utilisation=args.utilisation,
                         usd_per_kwh=args.usd_per_kwh, efficiency=args.efficiency, saves=args.saves, top=args.top)
    if args.json:
        print_json(report.to_dict())
        return 0
    render_plan(report, args.top)
    return 0


def render_plan(report: PlanReport, top: int) -> None:
    """The ranked table, unfit devices, disk and assumptions."""
    console = make_console()
    res, job, ds, disk = report.result, report.job, report.dataset, report.disk
    m = job.method
    title = (f"{report.model}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", seq {job.training.seq_len}, {ds.tokens:,} tokens x {ds.epochs:g} epoch(s), "
             + f"ranked by {res.rank_by}")
    table = Table(title=title, caption="peak/usable per GPU in GiB (2^30 bytes); cloud $ = run on rented devices "
                                       "at the first confirmed catalog quote (? = unconfirmed); break-even at "
                                       f"{report.utilisation:.0%} utilisation, ${report.usd_per_kwh}/kWh")
    for col in ("#", "setup", "batch x accum", "ckpt", "peak/usable", "fit", "tok/s", "epoch", "run",
                "cloud $", "buy $", "break-even", "bound"):
        table.add_column(col, justify="right" if col in ("#", "tok/s", "epoch", "run", "cloud $", "buy $") else "left")
    for i, s in enumerate(res.setups[:top], 1):
        t, p = s.job.training, s.job.parallel
        setup = f"{s.count} x {s.device.id}" + (f" {p.sharding}" if s.count > 1 else "")
        if p.offload_optimizer or p.offload_params:
            setup += " +offload"
        be = s.cost.breakeven_weeks
        table.add_row(str(i), setup, f"{t.micro_batch} x {t.grad_accum}", t.checkpointing,
                      f"{s.peak_bytes / GiB:.1f}/{s.device.usable_bytes / GiB:.1f}", s.verdict,
                      f"{s.run.step.tokens_per_s:,.0f}", fmt_duration(s.run.epoch_s), fmt_duration(s.run.run_s),
                      money(s.cost.cloud_usd) + ("?" if "unconfirmed" in s.cost.cloud_quote else ""),
                      money(s.cost.purchase_usd), "-" if be is None else ("never" if be == float("inf") else f"{be:.0f} wk"),
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
        for a in report.assumptions:
            console.print(f"  - {a}")
        for n in report.notes:
            console.print(f"  - Note: {n}")
