"""`tuneplan trace`: the real model's training step on fake tensors, measured, next to the estimate.

torch/transformers/peft are imported only when the command runs (extra: tuneplan[trace]).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneplan.cli.options import add_job_arguments, job_from_args
from tuneplan.cli.output import print_json
from tuneplan.errors import TuneplanError
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_config
from tuneplan.units import GiB, fmt_gib

INSTALL_HINT = "tuneplan: error: trace needs torch, transformers and peft: pip install 'tuneplan[trace]'\n"


DESCRIPTION = ("Build the transformers model from its config (no weights), apply the method, run two "
               "training steps under torch FakeTensorMode with a memory tracker, and print the measured "
               "peak beside the analytical estimate. Needs pip install 'tuneplan[trace]'.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog id or alias, or a path to config.json")
    add_job_arguments(p)
    p.add_argument("--real", action="store_true",
                   help="run on real CPU tensors instead of fake ones (allocates the memory; small models only)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes) instead of tables")


def run(args: argparse.Namespace) -> int:
    from tuneplan.trace import available

    if not available():
        sys.stderr.write(INSTALL_HINT)
        return 2
    from tuneplan.trace.compare import comparison_dict, estimate_allocated, relative_error, rows
    from tuneplan.trace.run import run_trace

    job = job_from_args(args)
    spec, config = resolve_config(args.model, hub=args.hub)
    est = estimate_memory(spec, job)
    console = Console(stderr=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.json or not console.is_terminal:
            result = run_trace(config, job, name=spec.name, fake=not args.real)
        else:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task("tracing", total=None)
                result = run_trace(config, job, name=spec.name, fake=not args.real,
                                   progress=lambda s: bar.update(task, description=s))
    if args.json:
        print_json(comparison_dict(result.to_dict(), est))
        return 0
    out = Console()
    m, t = job.method, job.training
    title = (f"{spec.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", batch {t.micro_batch} x {t.seq_len}, {t.precision}, checkpointing {t.checkpointing}, "
             + f"{t.optimizer}")
    table = Table(title=title, caption="GiB = 2^30 bytes; each side's breakdown at its own peak")
    table.add_column("at peak")
    table.add_column("trace GiB", justify="right")
    table.add_column("estimate GiB", justify="right")
    table.add_column("diff GiB", justify="right")
    for r in rows(result.at_peak, est):
        table.add_row(r.label, fmt_gib(r.trace), fmt_gib(r.estimate), f"{(r.estimate - r.trace) / GiB:+.2f}")
    table.add_section()
    alloc = estimate_allocated(est)
    err = relative_error(result.peak_bytes, est)
    table.add_row("[bold]Allocated peak[/bold]", f"[bold]{fmt_gib(result.peak_bytes)}[/bold]",
                  f"[bold]{fmt_gib(alloc)}[/bold]", f"[bold]{(alloc - result.peak_bytes) / GiB:+.2f} ({err:+.1%})[/bold]")
    table.add_row("Peak phase", result.peak_phase, est.peak_phase, "")
    table.add_row("CUDA context + allocator overhead", "not traced", fmt_gib(est.peak_bytes - alloc), "")
    table.add_row("Device memory needed", "", fmt_gib(est.peak_bytes), "")
    out.print(table)
    phases = ", ".join(f"{k} {v / GiB:.2f}" for k, v in result.phase_peaks)
    out.print(f"Traced phase peaks (GiB): {phases}; first step peak {fmt_gib(result.first_step_peak)} GiB")
    kind = "fake" if result.fake else "real CPU"
    out.print(f"Trace: {kind} tensors, {result.ops:,} ops, {result.trainable_params:,} of "
              f"{result.total_params:,} params trainable, took {result.elapsed_s:.1f} s")
    out.print("Trace assumes:")
    for n in result.notes:
        out.print(f"  - {n}")
    return 0


__all__ = ["add_arguments", "run", "TuneplanError"]
