"""Whether the job's stack runs it: task, framework, runtime and layout, refused in one line.

Called by tuneplan.job when a Job is built (and, for what only a user's request is refused,
by Job.from_request), so a job no stack runs never reaches an estimate. Each refusal names
the alternative: the stacks, quantisation formats or settings that do run it. The facts
come from the choice records (FrameworkProfile, Runtime, QuantFormat, Task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.choices.quantisation import QUANT_FORMATS
from tuneplan.choices.tasks import Task, reference_for
from tuneplan.errors import TuneplanError

if TYPE_CHECKING:
    from tuneplan.job import Job


def check_task(job: Job, t: Task) -> None:
    """One-line refusal of a task the chosen stack or settings cannot run as modelled."""
    reference_for(t, job.ref_model, job.method.is_adapter)
    if t.trainers and job.training.framework not in t.trainers:
        raise TuneplanError(f"task {t.name} is modelled as TRL's trainer runs it; --framework "
                            f"{job.training.framework} is not one of: {', '.join(t.trainers)}")
    loss = job.training.loss
    if (not t.is_sft and t.head == "lm" and job.training.cross_entropy and not loss.fused
            and (loss.chunks or loss.chunk_tokens)):
        raise TuneplanError(f"task {t.name}: TRL computes the log-probabilities itself; --cross-entropy "
                            f"{loss.name} does not apply (plain, or fused for use_liger_kernel)")


def check_stack(job: Job) -> None:
    """One-line refusal of a job its framework or runtime cannot run, with the alternative."""
    m, t = job.method, job.training
    prof, rt = t.profile, t.rt
    if rt.name not in dict((r, v) for v, r in prof.runtimes):
        names = ", ".join(dict.fromkeys(r for _, r in prof.runtimes))
        raise TuneplanError(f"--framework {prof.name} does not run on runtime {rt.name}; choose one of: {names}")
    lib = t.prep.library
    if lib is not None and (m.kind != "qlora" or m.fmt.library != lib):
        quants = ", ".join(q.name for q in QUANT_FORMATS.values() if q.library == lib)
        raise TuneplanError(f"--kbit-prep {t.kbit_prep} prepares a {lib}-quantised model; it needs "
                            f"--method qlora with --quant {quants} (or drop it)")
    if m.kind == "qlora":
        fmt = m.fmt
        if fmt.library not in prof.quant_libraries:
            alts = ", ".join(q.name for q in QUANT_FORMATS.values() if q.library in prof.quant_libraries)
            raise TuneplanError(f"--quant {fmt.name} is {fmt.label}, which {prof.label} does not use; "
                                f"use --quant {alts}")
        if fmt.library not in rt.quant_libraries:
            raise TuneplanError(f"QLoRA ({fmt.label}) does not run on {rt.label}; use --framework mlx "
                                "(MLX affine 4/8-bit)")
    if (t.optim.eight_bit or t.optim.paged) and not rt.bnb_optimizers:
        raise TuneplanError(f"--optimizer {t.optimizer} (bitsandbytes) does not run on {rt.label}; use adamw, "
                            "or --framework mlx")
    if prof.optimizers and t.optimizer not in prof.optimizers:
        raise TuneplanError(f"{prof.label} has no optimizer {t.optimizer}; choose one of: {', '.join(prof.optimizers)}")
    for what, value, allowed in (("precision", t.precision, prof.precisions),
                                 ("checkpointing mode", t.checkpointing, prof.checkpointing_modes),
                                 ("cross-entropy", t.loss.name, prof.cross_entropies)):
        if allowed and value not in allowed:
            raise TuneplanError(f"{prof.label} has no {what} {value}; choose one of: {', '.join(allowed)}")
    if t.checkpointing == "selective" and not prof.selective_checkpointing:
        runs = ", ".join(f.name for f in FRAMEWORKS.values() if f.selective_checkpointing)
        raise TuneplanError(f"--checkpointing selective is torchtitan's op-level selective checkpointing; "
                            f"{prof.label} does not run it (stacks that do: {runs})")
    if m.lora_layers and not prof.layer_subset:
        raise TuneplanError(f"--lora-layers is mlx-lm's num_layers; {prof.label} adapts every layer (drop it, or "
                            "use --framework mlx)")
    if t.optimizer_in_backward and not prof.data_parallel:
        raise TuneplanError(f"{prof.label} has no optimizer in backward")
    check_layout(job)


def check_layout(job: Job) -> None:
    """One-line refusal of a layout the stack does not run (FrameworkProfile.shardings,
    model_parallel), with what it does run."""
    prof, p = job.training.profile, job.parallel
    if prof.data_parallel and p.data * p.context > 1 and p.sharding not in prof.shardings:
        raise TuneplanError(f"{prof.label} does not run --sharding {p.sharding}; choose one of: "
                            f"{', '.join(prof.shardings)}")
    for dim, degree, flag in (("tp", p.tensor, "--tp"), ("pp", p.pipeline, "--pp"), ("cp", p.context, "--cp"),
                              ("ep", p.expert, "--ep"), ("sp", 2 if p.sequence_parallel else 1, "--sequence-parallel")):
        if degree > 1 and dim not in prof.model_parallel:
            runs = ", ".join(f.name for f in FRAMEWORKS.values() if dim in f.model_parallel)
            raise TuneplanError(f"{prof.label} does not run {flag}; stacks that do: {runs}")
    if (p.tensor > 1 or p.pipeline > 1) and p.data * p.context > 1 and p.sharding not in prof.model_parallel_shardings:
        raise TuneplanError(f"{prof.label} does not combine --tp/--pp with --sharding {p.sharding}; with model "
                            f"parallelism use --sharding {' or '.join(prof.model_parallel_shardings)}")
    if p.sequence_parallel is False and prof.sequence_parallel_default and p.tensor > 1 and "sp" not in prof.model_parallel:
        raise TuneplanError(f"{prof.label} always runs sequence parallelism with TP")


def check_request_parallel(job: Job) -> None:
    """A user's request for a layout the stack does not shard (mlx-lm's distributed training is
    data parallel: every process holds the whole model, mlx_lm/tuner/trainer.py
    average_gradients); the planner may still try device counts, which the memory model
    prices as replicas."""
    prof, p = job.training.profile, job.parallel
    if not prof.data_parallel and (p.shard_stage or p.offload_optimizer or p.offload_params):
        raise TuneplanError(f"{prof.label} does not shard or offload (its multi-device training is data "
                            "parallel); use --sharding ddp without offload")
