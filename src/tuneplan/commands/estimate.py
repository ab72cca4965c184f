"""`tuneplan estimate`: the per-GPU memory breakdown of one step, and a fit verdict with --gpu."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from tuneplan.cli.options import add_from_arguments, add_job_arguments, checked_request
from tuneplan.cli.output import describe_change, make_console, print_json
from tuneplan.errors import TuneplanError
from tuneplan.fit import FitVerdict, fit_verdict, support_notes
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import MemoryEstimate, estimate_memory
from tuneplan.memory.online import on_device
from tuneplan.model_spec import ModelSpec
from tuneplan.search import describe_layout
from tuneplan.timing import StepTime, step_time
from tuneplan.timing_generation import OnlineTime, online_time
from tuneplan.units import GiB, fmt_gib, fmt_params

DESCRIPTION = "Estimate per-GPU memory of a fine-tuning step, by component."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalog id or alias (see `tuneplan models`), or a path to config.json "
                                             "(or use --from)")
    add_job_arguments(p, command="estimate")
    add_from_arguments(p)
    p.add_argument("--gpu", metavar="DEVICE", help="also give the fit verdict on this device (`tuneplan devices`)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes) instead of a table")


def estimate_data(spec: ModelSpec, job: Job, device: Device | None) -> tuple[MemoryEstimate, FitVerdict | None]:
    """What `estimate` reports, as data: the breakdown and, with a device, the fit verdict
    with its cheapest fix and the largest micro-batch and sequence that fit. With a device the
    job runs on the framework's runtime for that vendor (HF on Apple: MPS, no CUDA context)."""
    if device:
        job = on_device(job.on_vendor(device.vendor), device)  # online RL: vLLM's share
    est = estimate_memory(spec, job)
    return est, (fit_verdict(spec, job, device, limits=True) if device else None)


def estimate_time(spec: ModelSpec, job: Job, device: Device | None) -> StepTime | OnlineTime | None:
    """One optimizer step's time on `device` (tuneplan.timing.step_time: compute, exposed
    communication by kind, pipeline bubble, optimizer), or None without a device or a FLOPS
    figure for it."""
    if device is None:
        return None
    try:
        if job.task_record.online:  # generation, scoring and training phases (tuneplan.timing_generation)
            return online_time(spec, on_device(job.on_vendor(device.vendor), device), device)
        return step_time(spec, job.on_vendor(device.vendor), device)
    except TuneplanError:
        return None


def estimate_json(spec: ModelSpec, est: MemoryEstimate, verdict: FitVerdict | None,
                  time: StepTime | OnlineTime | None = None) -> dict[str, Any]:
    """The document `estimate --json` prints (bytes, seconds), shared with `tuneplan serve`'s /api/estimate."""
    return (est.to_dict() | ({"model_note": spec.note} if spec.note else {})
            | ({"fit": verdict.to_dict()} if verdict else {}) | ({"time": time.to_dict()} if time else {}))


def run(args: argparse.Namespace) -> int:
    spec, job, device = checked_request(args)
    est, verdict = estimate_data(spec, job, device)
    time = estimate_time(spec, job, device)
    if args.json:
        print_json(estimate_json(spec, est, verdict, time))
        return 0
    if spec.note:
        sys.stderr.write(f"tuneplan: note: {spec.note}\n")
    console = make_console()
    render_estimate(est, console, device.unified if device else False)
    if verdict:
        colour = {"fits": "green", "tight": "yellow", "uncertain": "yellow", "no": "red"}[verdict.verdict]
        console.print(f"[{colour}]Fit: {verdict.summary(describe_change)}[/{colour}]")
        for note in support_notes(device, job):
            console.print(f"  note: {note}")
    if isinstance(time, OnlineTime):
        render_online_time(time, job, device.id, console)
    elif time is not None:
        parts = ", ".join(f"{k} {v:.3g}" for k, v in time.breakdown if v > 0)
        where = f"{job.parallel.num_gpus} x {device.id}" + (f", {time.system}" if time.system else "")
        console.print(f"Time (one optimizer step of {time.tokens_per_step:,} tokens on {where}): {time.step_s:.3g} s, "
                      f"{time.tokens_per_s_per_gpu:,.0f} tokens/s "
                      f"per GPU; bound by {time.bound_by}; seconds: {parts}", markup=False)
    return 0


def render_online_time(time: OnlineTime, job: Job, device: str, console: Console) -> None:
    """The online step's time line: phases, the longest, tokens per second."""
    r = job.rollout
    parts = ", ".join(f"{k} {v:.3g}" for k, v in time.phases if v > 0)
    where = f"{job.parallel.num_gpus} x {device}" + (f" + {r.generation_gpus} generating" if r.generation_gpus else "")
    console.print(f"Time (one optimizer step on {where}): {time.step_s:.3g} s; bound by {time.bound_by}; seconds: "
                  f"{parts}; {time.generated_tokens_per_s:,.0f} generated tokens/s, "
                  f"{time.tokens_per_s_per_gpu:,.0f} trained tokens/s per GPU", markup=False)
    if time.overlapped_s < time.step_s:
        console.print(f"  (generation overlapped with training, as an asynchronous stack runs it: {time.overlapped_s:.3g} s)",
                      markup=False)


def render_estimate(est: MemoryEstimate, console: Console, unified: bool = False) -> None:
    """Print the breakdown table, total and assumptions."""
    job = est.job
    m, t, p = job.method, job.training, job.parallel
    title = (f"{est.model.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", batch {t.micro_batch} x {t.seq_len} tokens"
             + (f", {p.num_gpus} GPUs {describe_layout(job)}" if p.num_gpus > 1 else ""))
    rank = "" if est.rank == "every rank" else f" on the {est.rank}, the rank that peaks"
    table = Table(title=title, caption=f"memory per GPU{rank}, GiB = 2^30 bytes")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    table.add_column("assumes")
    for c in est.components:
        table.add_row(c.label, fmt_gib(c.bytes), f"{c.bytes / est.peak_bytes:.0%}", c.note)
    table.add_section()
    rt = job.training.rt  # the counters by the runtime's own names (MLX, Metal, CUDA, ROCm)
    counter = dict(rt.counters)
    for key, label, value, adds in (("allocated", "Peak allocated", est.peak_allocated_bytes, "live tensors"),
                                    ("reserved", "Peak reserved", est.peak_reserved_bytes,
                                     "+ caching-allocator overhead")):
        if key in counter:
            table.add_row(label, fmt_gib(value), "", f"{counter[key]}: {adds}")
    context = f": + {rt.context_label}" if rt.context_bytes else ""
    table.add_row(f"[bold]Device total ({est.peak_phase})[/bold]", f"[bold]{fmt_gib(est.device_bytes)}[/bold]", "100%",
                  f"{counter['device']}{context}; {fmt_params(est.trainable_params)} of "
                  f"{fmt_params(est.total_params)} params trainable")
    console.print(table)
    if (b := est.uncertainty) is not None:  # measured runs of this kind of job (tuneplan.uncertainty)
        console.print(f"Peak {est.peak_bytes / GiB:.1f} GiB ({b.text()}; benchmarks/results/measured_runs.md)",
                      markup=False)
    phases = ", ".join(f"{k} {v / GiB:.2f}" for k, v in est.phase_bytes)
    if job.task_record.online:
        console.print(f"Phase peaks (GiB, allocated + vLLM's share, before overhead): {phases}; the {est.peak_phase} "
                      "phase bounds the GPU (the breakdown above is that phase's)")
    else:
        console.print(f"Phase peaks (GiB, allocated, before overhead): {phases}")
    if est.cpu_bytes:
        n = p.num_gpus
        text = f"CPU RAM for offload: {fmt_gib(est.cpu_bytes)} GiB per GPU process"
        if n > 1:
            text += f" ({n} processes on {n} GPUs: {fmt_gib(n * est.cpu_bytes)} GiB of host RAM in all)"
        if unified:
            text += "; on this unified-memory device it is the same memory as the GPU's, counted in the fit"
        console.print(text)
    console.print("Assumes:")
    for a in est.assumptions:
        console.print(f"  - {a}")
