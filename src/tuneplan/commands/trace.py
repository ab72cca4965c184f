"""`tuneplan trace`: the real model's training step on fake tensors, measured, next to the estimate.

torch/transformers/peft are imported only when the command runs (the trace extra: pip install -e '.[trace]').
"""

from __future__ import annotations

import argparse
import sys
import warnings

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneplan.checks import check_job
from tuneplan.choices.optimizers import OPTIMIZERS
from tuneplan.cli.options import (
    add_from_arguments,
    add_job_arguments,
    job_from_args,
    model_from_args,
)
from tuneplan.cli.output import print_json
from tuneplan.cli.system import available_ram as _available_ram
from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory import MemoryEstimate, estimate_memory
from tuneplan.models import ModelSpec, param_counts, resolve_config
from tuneplan.units import GiB, fmt_gib

# tuneplan is installed from its repository (no PyPI package of that name to trust)
INSTALL_HINT = ("tuneplan: error: trace needs torch, transformers and peft: pip install -e '.[trace]' in the "
                "tuneplan repository (CPU torch: see the README)\n")

DESCRIPTION = ("Build the transformers model from its config (no weights), apply the method, run two "
               "training steps under torch FakeTensorMode with a memory tracker, and print the measured "
               "peak beside the analytical estimate. With --task dpo|kto|orpo|rm (and DPO's loss variants) "
               "the step is TRL's own loss method from the installed trl, with its reference model. "
               "Needs the trace extra: pip install -e '.[trace]' (and trl for --task).")

# Fake tensors cost no memory, but every module is still built and every op dispatched:
# past these sizes a trace takes minutes to hours, so it is refused (the estimate still works).
TRACE_MAX_LAYERS = 256
TRACE_MAX_PARAMS = 2 * 10**12
REAL_RAM_SHARE = 0.8  # --real may use at most this share of the memory available now


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalog id or alias, or a path to config.json (or use --from)")
    add_job_arguments(p, command="trace")
    add_from_arguments(p)
    p.add_argument("--real", action="store_true",
                   help="run on real CPU tensors instead of fake ones (allocates the memory; small models only)")
    p.add_argument("--fsdp-version", dest="fsdp_version", type=int, choices=(1, 2), default=None,
                   help="with --gpus N --sharding fsdp|zero3|zero2: 2 = fully_shard (FSDP2), 1 = "
                        "FullyShardedDataParallel (default: the framework's)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes) instead of tables")


def check_traceable(spec: ModelSpec, job: Job, est: MemoryEstimate, real: bool) -> None:
    """Everything the trace cannot run, refused before torch is imported.

    Raises:
        TuneplanError: several GPUs, offload, checkpoint offload, a bitsandbytes optimizer,
            a model too large to build, or (--real) more memory than this machine has free.
    """
    p, t = job.parallel, job.training
    if p.num_gpus > 1 and real:
        raise TuneplanError("--real runs one process; several GPUs are traced on fake tensors (drop --real)")
    if p.offload_optimizer or p.offload_params:
        raise TuneplanError("trace runs one process on one device and cannot offload; drop --offload-optimizer/"
                            "--offload-params (offload is estimated analytically)")
    if t.checkpointing == "offload":
        raise TuneplanError("trace cannot tell host from device memory on a CPU run; use --checkpointing full or none")
    if t.optim.torch_class is None:
        raise TuneplanError(f"trace does not run optimizer {t.optimizer!r} (bitsandbytes); use one of: "
                            + ", ".join(o.name for o in OPTIMIZERS.values() if o.torch_class))
    params = param_counts(spec).total
    if spec.num_layers > TRACE_MAX_LAYERS or params > TRACE_MAX_PARAMS:
        raise TuneplanError(f"{spec.name} is too large to trace ({spec.num_layers} layers, {params:,} parameters; "
                            f"limits {TRACE_MAX_LAYERS} layers, {TRACE_MAX_PARAMS:,} parameters); "
                            "`tuneplan estimate` gives its figures")
    if real:
        need = est.peak_allocated_bytes
        free = _available_ram()
        if free is not None and need > REAL_RAM_SHARE * free:
            raise TuneplanError(f"--real would allocate about {need / GiB:.1f} GiB of real tensors, more than "
                                f"{REAL_RAM_SHARE:.0%} of the {free / GiB:.1f} GiB this machine has available; "
                                "drop --real (fake tensors cost no memory) or use a smaller model or batch")


def _distributed(job: Job, args: argparse.Namespace) -> bool:
    p = job.parallel
    return p.num_gpus > 1 or getattr(p, "tensor", 1) > 1 or getattr(args, "fsdp_version", None) is not None


def run(args: argparse.Namespace) -> int:
    # validate the model and the settings first: torch is imported only for a job it can run
    job = job_from_args(args)
    spec, config = resolve_config(model_from_args(args), hub=args.hub)
    check_job(spec, job, args.allow_long_context)
    task = not job.task_record.is_sft
    if task:
        _check_task(job, args)
    if _distributed(job, args):
        return _run_distributed(args, spec, config, job)
    est = estimate_memory(spec, job)
    check_traceable(spec, job, est, args.real)
    replay = "" if task else job.training.profile.trace_replay  # the stack's own modules (trace/stacks.py)
    if replay:
        from tuneplan.trace.stacks import check_replay  # torch-free

        check_replay(replay, config, job, args.real)

    from tuneplan.trace import available

    if not available():
        sys.stderr.write(INSTALL_HINT)
        return 2
    from tuneplan.trace.compare import comparison_dict, estimate_allocated, relative_error, rows

    console = Console(stderr=True)
    if task:
        from tuneplan.trace.tasks import run_task_trace

        result = _traced(lambda progress: run_task_trace(config, job, name=spec.name, progress=progress),
                         console, args.json)
    elif replay:
        from tuneplan.trace.stacks import run_replay

        result = _traced(lambda progress: run_replay(replay, config, job, name=spec.name, progress=progress),
                         console, args.json)
    else:
        from tuneplan.trace.run import run_trace

        result = _traced(lambda progress: run_trace(config, job, name=spec.name, fake=not args.real,
                                                    progress=progress), console, args.json)
    if args.json:
        print_json(comparison_dict(result.to_dict(), est))
        return 0
    out = Console()
    m, t = job.method, job.training
    title = (f"{spec.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", batch {t.micro_batch} x {t.seq_len}, {t.precision}, checkpointing {t.checkpointing}, "
             + f"{t.optimizer}" + (f"; task {job.task}, reference {job.reference}" if task else ""))
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


def _check_task(job: Job, args: argparse.Namespace) -> None:
    """A preference/reward task is replayed on one GPU, on fake tensors, for the trainers
    tuneplan.trace.tasks replays; anything else is refused in one line before torch runs."""
    if args.real:
        raise TuneplanError(f"--task {job.task} is traced on fake tensors only; drop --real")
    if _distributed(job, args):
        raise TuneplanError(f"trace replays --task {job.task} on one GPU; drop --gpus/--tp/--fsdp-version "
                            "(sharded preference steps are estimated analytically)")
    if not job.training.versions.trl_chunked_logps:
        raise TuneplanError(f"trace replays the installed trl (>= 1.16); --stack {job.training.stack} "
                            "estimates an older TRL's step: drop --stack to compare")
    if job.method.kind == "qlora" and job.reference == "separate":
        raise TuneplanError("trace does not build a quantised separate reference; use --ref-model adapter "
                            "(TRL's default with PEFT) or precomputed")
    from tuneplan.trace import check_task  # torch-free

    check_task(job)
    import importlib.util

    trl = importlib.util.find_spec("trl")  # the installed library, not a --framework name
    if trl is None:
        raise TuneplanError(f"trace --task {job.task} replays TRL's trainer and needs trl: pip install trl")


def _traced(fn, console: Console, quiet: bool):
    """Run fn(progress) with warnings silenced and a spinner on a terminal; torch/transformers
    failures become one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if quiet or not console.is_terminal:
                return fn(None)
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task("tracing", total=None)
                return fn(lambda s: bar.update(task, description=s))
    except (TuneplanError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise TuneplanError("the trace ran out of memory; use a smaller model or batch") from None
    except Exception as e:  # torch/transformers/peft on a config they cannot run: one line, not a C++ trace
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TuneplanError(f"trace failed inside torch/transformers ({type(e).__name__}: {first}); "
                            "`tuneplan estimate` still gives the figures") from None


def _run_distributed(args: argparse.Namespace, spec: ModelSpec, config: dict, job: Job) -> int:
    """One rank of an N-GPU layout on a fake process group (tuneplan.trace.dist), beside the
    estimate of the same layout where the estimator computes it."""
    est: MemoryEstimate | None = None
    refused = ""
    try:
        est = estimate_memory(spec, job)
    except TuneplanError as e:
        refused = str(e)
    if est is not None:
        check_traceable(spec, job, est, args.real)
    else:
        _check_size(spec, job, args.real)
    from tuneplan.trace import available

    if not available():
        sys.stderr.write(INSTALL_HINT)
        return 2
    from tuneplan.trace.compare import comparison_dict, estimate_allocated, relative_error
    from tuneplan.trace.dist import dist_rows, layout_of, run_dist_trace

    layout = layout_of(job, fsdp_version=args.fsdp_version)  # refuses what it cannot replay before torch runs
    console = Console(stderr=True)
    result = _traced(lambda progress: run_dist_trace(config, job, fsdp_version=layout.fsdp_version, name=spec.name,
                                                     progress=progress), console, args.json)
    if args.json:
        if est is None:
            print_json({"unit": "bytes", "trace": result.to_dict(), "estimate": None, "estimator_refuses": refused})
        else:
            out = comparison_dict(result.to_dict(), est)
            out["rows"] = [r.__dict__ for r in dist_rows(result.at_peak, est)]
            print_json(out)
        return 0
    out = Console()
    m, t = job.method, job.training
    title = (f"{spec.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", batch {t.micro_batch} x {t.seq_len}, {t.precision}, checkpointing {t.checkpointing}, "
             + f"{t.optimizer}; {layout.describe()}")
    table = Table(title=title, caption="GiB = 2^30 bytes, per rank; each side's breakdown at its own peak")
    table.add_column(f"at peak (rank {layout.rank})")
    table.add_column("trace GiB", justify="right")
    table.add_column("estimate GiB", justify="right")
    table.add_column("diff GiB", justify="right")
    if est is not None:
        for r in dist_rows(result.at_peak, est):
            table.add_row(r.label, fmt_gib(r.trace), fmt_gib(r.estimate), f"{(r.estimate - r.trace) / GiB:+.2f}")
        table.add_section()
        alloc = estimate_allocated(est)
        err = relative_error(result.peak_bytes, est)
        table.add_row("[bold]Allocated peak[/bold]", f"[bold]{fmt_gib(result.peak_bytes)}[/bold]",
                      f"[bold]{fmt_gib(alloc)}[/bold]",
                      f"[bold]{(alloc - result.peak_bytes) / GiB:+.2f} ({err:+.1%})[/bold]")
        table.add_row("Peak phase", result.peak_phase, est.peak_phase, "")
    else:
        for label, cats in (("Parameters (weights, adapters)", ("weights", "trainable")),
                            ("Gathered parameters (FSDP)", ("gathered",)), ("Gradients", ("gradients",)),
                            ("Optimizer states", ("optimizer",)), ("Activations", ("activations",)),
                            ("Logits + loss", ("logits",)), ("Backward / optimizer temporaries", ("temporaries",))):
            table.add_row(label, fmt_gib(sum(result.at_peak.get(c, 0) for c in cats)), "-", "")
        table.add_section()
        table.add_row("[bold]Allocated peak[/bold]", f"[bold]{fmt_gib(result.peak_bytes)}[/bold]", "-", "")
        table.add_row("Peak phase", result.peak_phase, "-", "")
    out.print(table)
    if est is None:
        out.print(f"Estimator refuses this layout: {refused}")
    elif result.at_peak.get("gathered"):
        out.print(f"  of the parameters row, FSDP's gathered (unsharded) parameters: "
                  f"{fmt_gib(result.at_peak['gathered'])} GiB")
    phases = ", ".join(f"{k} {v / GiB:.2f}" for k, v in result.phase_peaks)
    out.print(f"Traced phase peaks (GiB): {phases}; first step peak {fmt_gib(result.first_step_peak)} GiB")
    out.print(f"Trace: fake tensors on a fake process group, {result.ops:,} ops, {result.trainable_params:,} of "
              f"{result.total_params:,} params on this rank trainable, took {result.elapsed_s:.1f} s")
    out.print("Trace assumes:")
    for n in result.notes:
        out.print(f"  - {n}")
    return 0


def _check_size(spec: ModelSpec, job: Job, real: bool) -> None:
    """check_traceable's checks that need no estimate (the estimator refused the layout)."""
    p, t = job.parallel, job.training
    if real:
        raise TuneplanError("--real runs one process; several GPUs are traced on fake tensors (drop --real)")
    if p.offload_optimizer or p.offload_params:
        raise TuneplanError("trace runs one process on one device and cannot offload; drop --offload-optimizer/"
                            "--offload-params (offload is estimated analytically)")
    if t.optim.torch_class is None:
        raise TuneplanError(f"trace does not run optimizer {t.optimizer!r} (bitsandbytes); use one of: "
                            + ", ".join(o.name for o in OPTIMIZERS.values() if o.torch_class))
    params = param_counts(spec).total
    if spec.num_layers > TRACE_MAX_LAYERS or params > TRACE_MAX_PARAMS:
        raise TuneplanError(f"{spec.name} is too large to trace ({spec.num_layers} layers, {params:,} parameters)")


__all__ = ["add_arguments", "run", "TuneplanError"]
