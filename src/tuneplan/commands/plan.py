"""`tuneplan plan`: which devices, how many, how long and at what cost, ranked."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table

from tuneplan import calibration as cal
from tuneplan.checks import check_job
from tuneplan.cli.files import check_output, write_output
from tuneplan.cli.options import (
    add_dataset_arguments,
    add_from_arguments,
    add_job_arguments,
    count,
    dataset_from_args,
    job_command,
    job_from_args,
    model_from_args,
    name,
    number,
)
from tuneplan.cli.output import fit_columns, make_console, money, print_json
from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_devices
from tuneplan.models import ModelSpec, resolve_model
from tuneplan.plan import PER_TOKENS, PlanReport, plan_report
from tuneplan.search import describe_layout
from tuneplan.timing import fmt_duration
from tuneplan.units import GiB

DESCRIPTION = ("Which devices, how many, how long and at what cost: ranked setups. Without a dataset size, "
               "ranked by throughput and cost per million tokens.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalog id or alias, or a path to config.json (or use --from)")
    add_job_arguments(p, command="plan")
    add_from_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("--devices", default="all", help="comma list of devices, a category, or all (default)")
    p.add_argument("--rank-by", type=name, choices=("time", "cost", "purchase"), default="time",
                   help="order by run time, cloud cost of the run, or purchase price of the devices")
    p.add_argument("--top", type=count, default=15, help="rows to show (default 15)")
    p.add_argument("--max-gpus", type=count, default=None, help="cap on devices per setup (default: device max)")
    p.add_argument("--max-batch", type=count, default=16, help="largest micro-batch the tuner tries (default 16)")
    p.add_argument("--no-tune", action="store_true", help="keep --batch and --checkpointing as given")
    p.add_argument("--efficiency", type=number, default=None,
                   help="override the framework profile's FLOP efficiency (0-1], see calibration.py")
    p.add_argument("--utilisation", type=number, default=cal.DEFAULT_UTILISATION,
                   help=f"share of the week an owned device trains, for break-even (default {cal.DEFAULT_UTILISATION})")
    p.add_argument("--usd-per-kwh", type=number, default=cal.ELECTRICITY_USD_PER_KWH,
                   help=f"electricity price for owned devices (default {cal.ELECTRICITY_USD_PER_KWH})")
    p.add_argument("--saves", type=count, default=3, help="checkpoints kept on disk (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes, seconds, USD)")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write the configs of the top-ranked setup into DIR (see --export-to)")
    p.add_argument("--export-to", metavar="TARGETS", default=None,
                   help="comma list of export targets for --export (default: the stack of --framework: hf -> trl)")
    p.add_argument("--png", metavar="PATH", default=None,
                   help="also write the ranked setups' time split (compute, communication, bubble, optimizer) as a "
                        "bar chart PNG (.png added if the name has no suffix; needs matplotlib: pip install -e '.[plot]')")
    p.add_argument("--force", action="store_true", help="with --export or --png, overwrite existing files")


def plan_data(args: argparse.Namespace, spec: ModelSpec | None = None) -> tuple[ModelSpec, PlanReport]:
    """The model and the ranked report a `plan` command line asks for, checked first.

    Args:
        spec: the model already resolved (the web page's catalog names and uploads); None
            resolves MODEL or the --from config's model (the Hub with --hub).
    """
    if args.num_gpus is not None:
        raise TuneplanError("plan chooses the GPU count for each device; drop --gpus (cap it with --max-gpus)")
    if args.export_to is not None and args.export is None:
        raise TuneplanError("--export-to needs --export DIR")
    job = job_from_args(args, optional=("num_gpus",))
    ds = dataset_from_args(args)
    if spec is None:
        spec = resolve_model(model_from_args(args), hub=args.hub)
    check_job(spec, job, args.allow_long_context)
    devices = resolve_devices(args.devices)
    report = plan_report(spec, job, ds, devices, rank_by=args.rank_by, max_gpus=args.max_gpus,
                         tune=not args.no_tune, max_batch=args.max_batch, utilisation=args.utilisation,
                         usd_per_kwh=args.usd_per_kwh, efficiency=args.efficiency, saves=args.saves, top=args.top)
    return spec, report


def plan_json(spec: ModelSpec, report: PlanReport) -> dict[str, Any]:
    """The document `plan --json` prints (bytes, seconds, USD), shared with `tuneplan serve`'s /api/plan."""
    return report.to_dict() | ({"model_note": spec.note} if spec.note else {})


def run(args: argparse.Namespace) -> int:
    png = None
    if args.png is not None:  # checked before anything is computed
        from tuneplan.cli.heatmap import check_matplotlib

        check_matplotlib()
        png = check_output("PNG", args.png, args.force, suffix=".png", stdout_ok=False)
    if png is None and args.export is None and _online_job(args) is not None:
        return run_online(args)  # online RL: where generation and training go on one machine
    spec, report = plan_data(args)
    if png is not None:
        from tuneplan.cli.timebars import render_png, time_bars

        write_output(png, render_png(time_bars(report, args.top)))
    if args.json:
        print_json(plan_json(spec, report))
    else:
        if spec.note:
            sys.stderr.write(f"tuneplan: note: {spec.note}\n")
        render_plan(report, args.top)
    if png is not None:  # stdout may hold JSON: then the path goes to stderr
        make_console(stderr=args.json).print(f"PNG written to {png.path}", markup=False, highlight=False)
    if args.export is not None:
        export_top(report, spec, args)
    return 0


def _online_job(args: argparse.Namespace) -> Any:
    """The job when its task generates online (grpo, rloo), else None."""
    task = getattr(args, "task", None)
    if task is None and getattr(args, "from_config", None) is None:
        return None
    job = job_from_args(args, optional=("num_gpus",))
    return job if job.task_record.online else None


def run_online(args: argparse.Namespace) -> int:
    """Each device's machine split between generation and training (tuneplan.timing_generation.placements)."""
    from tuneplan.timing_generation import placements

    if args.num_gpus is not None:
        raise TuneplanError("plan chooses the GPU count for each device; drop --gpus (cap it with --max-gpus)")
    job = _online_job(args)
    spec = resolve_model(model_from_args(args), hub=args.hub)
    check_job(spec, job, args.allow_long_context)
    found = {d.id: placements(spec, job, d, min(d.max_count, args.max_gpus or d.max_count))
             for d in resolve_devices(args.devices)}
    if args.json:
        print_json({"unit": "seconds, bytes, tokens/s", "task": job.task,
                    "placements": {k: [p.to_dict() for p in v] for k, v in found.items()}})
        return 0
    console = make_console()
    for dev, rows in found.items():
        n = rows[0].training_gpus + rows[0].generation_gpus if rows else 0
        table = Table(title=f"{spec.name}: {job.task} on one {n} x {dev} machine: generation vs training GPUs",
                      caption="TRL runs the phases one after another (server mode included); 'overlapped' is an "
                              "asynchronous stack's figure; GiB = 2^30 bytes")
        for col in ("#", "generation", "train GPUs", "gen GPUs", "step s", "bound by", "completion tok/s",
                    "overlapped tok/s", "peak GiB", "fits"):
            table.add_column(col, justify="right" if col not in ("generation", "bound by", "fits") else "left")
        for i, p in enumerate(rows[:args.top] if args.top else rows, 1):
            table.add_row(str(i), p.engine, str(p.training_gpus), str(p.generation_gpus), f"{p.time.step_s:.3g}",
                          p.time.bound_by, f"{p.generated_tokens_per_s:,.0f}", f"{p.overlapped_tokens_per_s:,.0f}",
                          f"{p.peak_bytes / GiB:.1f}", "yes" if p.fits else f"no: {p.why}")
        console.print(table)
    unit = "prompts" if job.task_record.per_micro_step else "completions"  # Online DPO: completions per prompt
    console.print(f"Per training GPU: --batch {job.training.micro_batch} {unit} x --grad-accum "
                  f"{job.training.grad_accum}, {job.generations} per prompt; a vLLM server GPU generates the "
                  "training GPUs' completions split over the server GPUs.", markup=False)
    return 0


def export_top(report: PlanReport, spec: ModelSpec, args: argparse.Namespace) -> None:
    """--export DIR: the configs of the top-ranked setup (its job, device and GPU count)."""
    from tuneplan.cli.exports import outputs_in_folder, write
    from tuneplan.export import export_job, target, target_for_framework

    if not report.result.setups:
        raise TuneplanError("--export: no setup in the list can run this job, so there is nothing to export")
    top = report.result.setups[0]
    names = ([n for n in (name(x) for x in args.export_to.split(",")) if n] if args.export_to
             else [target_for_framework(top.job.training.framework).name])
    exports = [export_job(target(n).name, spec, top.job, top.device,
                          command=lambda j: job_command(spec.name, j, top.device)) for n in names]
    for exp, out in zip(exports, outputs_in_folder(args.export, exports, args.force), strict=True):
        write(exp, out)


# columns dropped first to last when the terminal is narrow
_DROP_ORDER = ["bound", "break-even", "ckpt", "buy $", "epoch", "batch x accum", "tok/s"]


def render_plan(report: PlanReport, top: int) -> None:
    """The ranked table, unfit devices, disk and assumptions (fewer columns on a narrow terminal)."""
    console = make_console()
    res, job, ds, disk = report.result, report.job, report.dataset, report.disk
    m = job.method
    size = (f"{ds.tokens:,} tokens x {ds.epochs:g} epoch(s)" if ds else
            f"no dataset size: throughput and cloud $ per {PER_TOKENS // 1_000_000}M tokens")
    title = (f"{report.model}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", seq {job.training.seq_len}, {size}, ranked by "
             + (res.rank_by if ds or res.rank_by != "time" else "throughput"))
    headers = ["#", "setup", "batch x accum", "ckpt", "peak/usable", "fit", "tok/s"]
    headers += ["epoch", "run", "cloud $"] if ds else ["cloud $/Mtok"]
    headers += ["buy $", "break-even", "bound"]
    rows = []
    for i, s in enumerate(res.setups[:top], 1):
        t, p = s.job.training, s.job.parallel
        setup = f"{s.count} x {s.device.id}" + (f" {describe_layout(s.job)}" if s.count > 1 else "")
        if p.offload_optimizer or p.offload_params:
            setup += " +offload"
        be = s.cost.breakeven_weeks
        unconfirmed = "?" if "unconfirmed" in s.cost.cloud_quote else ""
        row = [str(i), setup, f"{t.micro_batch} x {t.grad_accum}", t.checkpointing,
               f"{(s.peak_bytes + s.offloaded_bytes) / GiB:.1f}/{s.device.usable_bytes / GiB:.1f}", s.verdict,
               f"{s.tokens_per_s:,.0f}"]
        if ds:
            row += [fmt_duration(s.run.epoch_s), fmt_duration(s.run.run_s), money(s.cost.cloud_usd) + unconfirmed]
        else:
            row += [money(s.usd_per_million_tokens) + unconfirmed]
        row += [money(s.cost.purchase_usd), "-" if be is None else ("never" if be == float("inf") else f"{be:.0f} wk"),
                (s.step or s.run.step).bound]
        rows.append(row)
    keep = fit_columns(headers, rows, _DROP_ORDER, console.width)
    hidden = [h for i, h in enumerate(headers) if i not in keep]
    caption = ("peak/usable per GPU in GiB (2^30 bytes); cloud $ at the first confirmed catalog quote (? = unconfirmed); "
               f"break-even at {report.utilisation:.0%} utilisation, ${report.usd_per_kwh}/kWh")
    if hidden:
        caption += f"; narrow terminal: {', '.join(hidden)} not shown (--json has every figure)"
    table = Table(title=title, caption=caption)
    right = {"#", "tok/s", "epoch", "run", "cloud $", "cloud $/Mtok", "buy $"}
    for i in keep:
        table.add_column(headers[i], justify="right" if headers[i] in right else "left")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    if res.setups:
        console.print(f"Why #1: {report.why}.", markup=False)
    else:
        console.print("[red]No device in the list can run this job.[/red]")
    if res.unfit:
        console.print(f"Cannot run it ({len(res.unfit)}): " + "; ".join(f"{d} ({w})" for d, w in res.unfit[:12])
                      + (" ..." if len(res.unfit) > 12 else ""))
    dataset = (f"dataset {disk.dataset_raw / GiB:.2f} raw + {disk.dataset_tokenized / GiB:.2f} tokenized, " if ds
               else "dataset not given, ")
    console.print(f"Disk (GiB): base model {disk.base_model / GiB:.1f}, {dataset}checkpoints {disk.saves} x "
                  f"{disk.checkpoint_each / GiB:.2f} ({'adapter' if disk.adapter_only else 'full'}), merged export "
                  f"{disk.merged_model / GiB:.1f}; total {disk.total / GiB:.1f}")
    if res.setups:
        console.print(f"Assumes (for #1, {res.setups[0].device.id}; each device its own peak and bandwidth):")
        for a in report.assumptions:
            console.print(f"  - {a}")
        for n in report.notes:
            console.print(f"  - Note: {n}")
