"""Whether the job's stack runs it: task, framework, runtime and layout, refused in one line.

Called by tuneplan.job when a Job is built (and, for what only a user's request is refused,
by Job.from_request), so a job no stack runs never reaches an estimate. Each refusal names
the alternative: the stacks, quantisation formats or settings that do run it. The facts
come from the choice records (FrameworkProfile, Runtime, QuantFormat, Task).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.choices.quantisation import QUANT_FORMATS
from tuneplan.choices.tasks import GENERATION_ENGINES, TASKS, Task, reference_for
from tuneplan.errors import TuneplanError

if TYPE_CHECKING:
    from tuneplan.job import Job


def check_task(job: Job, t: Task) -> None:
    """One-line refusal of a task the chosen stack or settings cannot run as modelled."""
    reference_for(t, job.ref_model, job.method.is_adapter)
    if t.trainers and job.training.framework not in t.trainers:
        why = f" ({t.what_differs})" if t.modelled and t.what_differs else ""
        raise TuneplanError(f"task {t.name} is modelled as these stacks run it; --framework "
                            f"{job.training.framework} is not one of: {', '.join(t.trainers)}{why}")
    loss = job.training.loss
    if (not t.is_sft and t.head == "lm" and job.training.cross_entropy and not loss.fused
            and (loss.chunks or loss.chunk_tokens)):
        raise TuneplanError(f"task {t.name}: TRL computes the log-probabilities itself; --cross-entropy "
                            f"{loss.name} does not apply (plain, or fused for use_liger_kernel)")


# transformers TrainingArguments.per_device_train_batch_size default (training_args.py), which
# GRPOConfig keeps: for an online task it counts completions, so 8 is one prompt's group of 8
TRL_PER_DEVICE_BATCH = 8


def online_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat settings with an online task's defaults filled in where the user gave none: the
    micro-batch (TRL's per_device_train_batch_size, 8 completions), the row length (--seq-len =
    prompt + completion tokens) and one server GPU for vllm-server. A --num-generations 0 is
    refused here (0 stands for the task's default inside Rollout)."""
    name = settings.get("task")
    tk = TASKS.get(name.strip().lower()) if isinstance(name, str) else None
    if tk is None or not tk.online:
        return settings
    out = dict(settings)
    n = out.get("num_generations")
    if n is not None and not isinstance(n, bool) and isinstance(n, int) and n < tk.min_generations:
        raise TuneplanError(f"--num-generations must be at least {tk.min_generations}: {tk.name} compares each "
                            f"completion with the others of its prompt (TRL grpo_config.py:1134), got {n}")
    if tk.fixed_generations and isinstance(n, int) and not isinstance(n, bool) and n != tk.generations:
        raise TuneplanError(f"{tk.name} generates {tk.generations} completions per prompt (fixed by TRL's trainer); "
                            f"drop --num-generations {n}")
    if n == tk.generations:
        out.pop("num_generations")  # the task's default, kept as 0 so equal jobs compare equal
    if "micro_batch" not in out and "batch" not in out:
        out["micro_batch"] = TRL_PER_DEVICE_BATCH
    if "seq_len" not in out:
        p, c = out.get("prompt_len", 512), out.get("completion_len", 512)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (p, c)):
            out["seq_len"] = p + c
    fw = out.get("framework")
    prof = FRAMEWORKS.get(fw.strip().lower()) if isinstance(fw, str) else None
    if prof is not None and prof.rl_engines and "generation_engine" not in out:
        out["generation_engine"] = prof.rl_engines[0]  # the stack's own rollout (verl: vLLM colocated)
    if prof is not None and prof.rl_vllm_memory_utilization and "vllm_memory_utilization" not in out:
        out["vllm_memory_utilization"] = prof.rl_vllm_memory_utilization
    engine = out.get("generation_engine")
    if isinstance(engine, str) and engine.strip().lower() in GENERATION_ENGINES and "generation_gpus" not in out:
        if not GENERATION_ENGINES[engine.strip().lower()].colocated:
            out["generation_gpus"] = 1
    return out


def check_rollout(job: Job, t: Task) -> None:
    """One-line refusal of rollout settings that do not apply, or that TRL refuses."""
    r = job.rollout
    if not t.online:
        given = [f.name for f in fields(r) if getattr(r, f.name) != f.default]
        if given:
            flags = ", ".join("--" + g.replace("_", "-") for g in given)
            online = ", ".join(n for n, x in TASKS.items() if x.online and x.modelled)
            raise TuneplanError(f"{flags} set how an online task generates; they apply to --task {online} only")
        return
    e, tr, p = r.engine, job.training, job.parallel
    if job.generations < t.min_generations:
        raise TuneplanError(f"--num-generations must be at least {t.min_generations} for {t.name} (TRL "
                            f"grpo_config.py:1134), got {job.generations}")
    prof = tr.profile
    if prof.rl_engines and e.name not in prof.rl_engines:
        raise TuneplanError(f"--framework {prof.name} generates with {', '.join(prof.rl_engines)}; "
                            f"--generation-engine {e.name} is not modelled for it")
    if tr.rt.name not in e.runtimes:
        raise TuneplanError(f"--generation-engine {e.name} ({e.label}) does not run on {tr.rt.label}; it runs on: "
                            f"{', '.join(e.runtimes)}")
    if e.colocated and r.generation_gpus:
        raise TuneplanError(f"--generation-gpus places a vLLM server on other GPUs; --generation-engine {e.name} "
                            "generates on the training GPUs (use vllm-server, or drop it)")
    if not e.colocated and not r.generation_gpus:
        raise TuneplanError("--generation-engine vllm-server needs at least one --generation-gpus")
    if r.vllm_sleep and not (e.share and e.colocated):
        raise TuneplanError("--vllm-sleep is vLLM's sleep mode on the training GPUs; it needs --generation-engine "
                            "vllm-colocate")
    if p.tensor * p.pipeline * p.context > 1:
        raise TuneplanError(f"task {t.name} is modelled as TRL's or verl's FSDP trainer runs it, data parallel (with ZeRO/FSDP "
                            "sharding); drop --tp, --pp and --cp")


def check_request_rollout(job: Job) -> None:
    """A user's online job whose generation batch does not hold whole groups (TRL refuses it;
    the planner and the fit search may still price such micro-batches)."""
    if not job.task_record.online:
        return
    tr, p, r = job.training, job.parallel, job.rollout
    rows = r.prompt_len + r.completion_len
    if rows > tr.seq_len:
        raise TuneplanError(f"prompt + completion is {rows:,} tokens, longer than --seq-len {tr.seq_len:,}; raise "
                            "--seq-len or shorten --prompt-len / --completion-len")
    if rows < tr.seq_len:
        raise TuneplanError(f"for {job.task} --seq-len is a row of prompt + completion ({rows:,} tokens); give "
                            "--completion-len (or --seq-len) alone, or the two that agree")
    global_batch = tr.micro_batch * p.data * tr.grad_accum
    if not job.task_record.per_micro_step and global_batch % job.generations:
        raise TuneplanError(f"the generation batch ({tr.micro_batch} completions x {p.data} GPUs x {tr.grad_accum} "
                            f"accumulation steps = {global_batch}) must hold whole groups of {job.generations} "
                            "completions (TRL grpo_config.py:1129); change --batch or --num-generations")


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
    if m.kind == "qlora" and t.dtypes.low_precision:  # [lowprec] quantised recipes cast bf16 weights
        raise TuneplanError(f"--precision {t.precision} ({t.dtypes.recipe}) quantises bf16 linear weights; a QLoRA "
                            f"base is already {m.fmt.label}: use --method lora or full, or --precision bf16")
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
    for what, value, allowed in (("method", m.kind, prof.methods), ("precision", t.precision, prof.precisions),
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
