"""Export a job to the config a training stack loads as is, and read such configs back.

    export_job("axolotl", spec, job, device) -> Export    (the file as text, with its header)
    read_config("axolotl.yaml") -> Imported                (settings, fields read and ignored)
    job_from_import(imported, given) -> (Job, notes)

Each target is one record: the stack it runs (a framework profile), its file name, and a
`build` that returns the job as the file runs it (every setting the stack cannot express is
swapped for what runs and named in `cannot`), the config as data and the launch command.
The header (predicted peak per GPU, device verdict, the command that reproduces it, what to
fill in and what the stack cannot express) is computed from that job, so the file and its
figures always agree. Pure functions: the CLI writes the files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tuneplan.choices import lookup
from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.choices.layouts import SHARDINGS
from tuneplan.errors import TuneplanError
from tuneplan.export import axolotl, launchers, llamafactory, tasks, torchtune, trl, unsloth
from tuneplan.export.common import (
    Built,
    canonical,
    comment_block,
    describe,
    dump_json,
    dump_yaml,
    header_lines,
    loss_setting,
    precision_named,
)
from tuneplan.export.read import FORMATS, Imported, job_from_import, read_config
from tuneplan.fit import FitVerdict, fit_verdict
from tuneplan.hardware import Device
from tuneplan.job import Job, Training
from tuneplan.memory import MemoryEstimate, estimate_memory
from tuneplan.model_spec import ModelSpec


@dataclass(frozen=True)
class Target:
    """One export target.

    Args:
        name: the --to value.
        label: the stack for people.
        framework: the framework profile the file runs (None: a launcher config, which runs
            whatever script it launches, so the job keeps its profile).
        file_name: the default file name.
        syntax: yaml | json | python.
        build: (spec, job) -> Built.
        written_for: the library versions the output is checked against.
        writes_fp8: the file can set a low-precision recipe that accelerate names
            (Precision.accelerate_fp8_backend); other low-precision records are swapped for bf16.
    """

    name: str
    label: str
    framework: str | None
    file_name: str
    syntax: str
    build: Callable[[ModelSpec, Job], Built]
    written_for: str
    writes_fp8: bool = False


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("trl", "TRL config (trl sft|dpo|kto|reward)", trl.FRAMEWORK, "trl.yaml", "yaml", trl.build, trl.VERSION),
    Target("axolotl", "Axolotl config", axolotl.FRAMEWORK, "axolotl.yaml", "yaml", axolotl.build, axolotl.VERSION),
    Target("llamafactory", "LLaMA-Factory config", llamafactory.FRAMEWORK, "llamafactory.yaml", "yaml", llamafactory.build,
           llamafactory.VERSION),
    Target("torchtune", "torchtune recipe config", torchtune.FRAMEWORK, "torchtune.yaml", "yaml", torchtune.build,
           torchtune.VERSION),
    Target("unsloth", "Unsloth script", unsloth.FRAMEWORK, "unsloth_train.py", "python", unsloth.build, unsloth.VERSION),
    Target("accelerate", "accelerate config", None, "accelerate.yaml", "yaml", launchers.build_accelerate,
           launchers.ACCELERATE_VERSION, writes_fp8=True),
    Target("deepspeed", "DeepSpeed config", None, "deepspeed.json", "json", launchers.build_deepspeed,
           launchers.DEEPSPEED_VERSION),
)}
TARGET_NAMES = tuple(TARGETS)


@dataclass(frozen=True)
class Export:
    """One exported file and what it says about itself.

    Args:
        target: the Target.
        job: the job as the file runs it (what the header's figures are for).
        estimate / verdict: the estimate of that job; the fit on the device asked for, or None.
        text: the file's content, header included.
        cannot: each setting the stack cannot express (also in the header).
        launch: the command that runs it (with the file name).
        notes: values chosen where the job has none.
    """

    target: Target
    job: Job
    estimate: MemoryEstimate
    verdict: FitVerdict | None
    text: str
    file_name: str
    cannot: tuple[str, ...]
    launch: str
    notes: tuple[str, ...]


def target(name: str) -> Target:
    return lookup(TARGETS, "export target", name)


def target_for_framework(framework: str) -> Target:
    """The training-stack target that runs a framework profile (hf -> trl)."""
    for t in TARGETS.values():
        if t.framework == framework:
            return t
    raise TuneplanError(f"no export target runs the {framework} profile; choose one of: {', '.join(TARGETS)}")


def as_run(t: Target, job: Job) -> Job:
    """The job under the target's framework profile (an unset cross-entropy becomes that
    profile's default), with the cross-entropy written as None when it is the default."""
    if t.framework is not None and t.framework != job.training.framework:
        job = job.with_settings(framework=t.framework)
    return canonical(job.with_settings(cross_entropy=loss_setting(job, job.training.loss.name)))


def build(name: str, spec: ModelSpec, job: Job) -> tuple[Built, list[str]]:
    """The target's rendering of the job, and a note when the job's framework profile was replaced."""
    t = target(name)
    cannot, notes = [], []
    today = Training().versions
    if job.training.versions != today:
        cannot.append(f"--stack {job.training.stack} ({job.training.versions.label}): the file is written for "
                      f"{today.label} (estimated with --stack {today.name})")
        job = job.with_settings(stack=today.name)
    prep = Training().prep
    if job.training.prep != prep:
        cannot.append(f"--kbit-prep {job.training.kbit_prep} ({job.training.prep.label}): the file loads the "
                      f"quantised model as today's stack does, without it (estimated with --kbit-prep {prep.name})")
        job = job.with_settings(kbit_prep=prep.name)
    d = job.training.dtypes
    if d.low_precision and not (t.writes_fp8 and d.accelerate_fp8_backend):  # [lowprec] fp8/fp4 recipes
        bf16 = precision_named("bfloat16", "bfloat16")
        cannot.append(f"--precision {job.training.precision} ({job.training.dtypes.recipe}): the {t.name} file "
                      f"cannot express low-precision linears (estimated with --precision {bf16})")
        job = job.with_settings(precision=bf16)
    job = tasks.writable(t.name, job, cannot)
    job = _writable_layout(t, job, cannot)
    run = as_run(t, job)
    if run.training.framework != job.training.framework:
        notes.append(f"{t.name} runs the {run.training.profile.label} profile, not "
                     f"{job.training.profile.label}: the figures are for {run.training.profile.label}")
    built = t.build(spec, run)
    return replace(built, cannot=tuple(cannot) + built.cannot + tuple(tasks.unexpressed(t.name, built.job))), notes


def _writable_layout(t: Target, job: Job, cannot: list[str]) -> Job:
    """The job with the layout the target's files can say: no config written here sets
    tensor, pipeline, context or expert parallelism, or a hybrid (HSDP) mesh, and a stack
    runs only its own shardings (FrameworkProfile.shardings; the nearest stage instead). Each
    change is a `cannot` line; the GPU count stays, as data parallelism."""
    p = job.parallel
    changes: dict = {}
    if p.model_parallel or p.sequence_parallel:
        dims = ", ".join(f"--{k} {v}" for k, v in (("tp", p.tensor), ("pp", p.pipeline), ("cp", p.context),
                                                    ("ep", p.expert)) if v > 1)
        cannot.append(f"{dims or '--sequence-parallel'}: the {t.name} file sets data parallelism only "
                      "(estimated with those degrees at 1, the GPUs as data-parallel ranks)")
        changes.update(tensor=1, pipeline=1, virtual_stages=1, context=1, expert=1, sequence_parallel=None)
    sharding = SHARDINGS[p.sharding]
    prof = FRAMEWORKS[t.framework] if t.framework is not None else job.training.profile
    allowed = [s for s in SHARDINGS.values() if s.name in prof.shardings and not s.shard_group_node]
    if p.num_gpus > 1 and (sharding.shard_group_node or sharding.name not in prof.shardings) and allowed:
        same = [s for s in allowed if s.stage == sharding.stage] or \
            [s for s in allowed if s.stage > sharding.stage] or allowed[::-1]
        alt = same[0].name
        cannot.append(f"--sharding {p.sharding}: the {t.name} file shards as {alt} "
                      f"({SHARDINGS[alt].label}; estimated as --sharding {alt})")
        changes["sharding"] = alt
    return job.with_settings(**changes) if changes else job


def export_job(name: str, spec: ModelSpec, job: Job, device: Device | None = None,
               command: Callable[[Job], str] = lambda j: "") -> Export:
    """The file `--to name` writes for this job, with its header.

    Args:
        command: the job (as the file runs it) -> the tuneplan command that reproduces the
            header's figures (the CLI renders its flags).
    """
    t = target(name)
    built, notes = build(name, spec, job)
    est = estimate_memory(spec, built.job)
    verdict = fit_verdict(spec, built.job, device) if device is not None else None
    launch = built.launch.replace("{file}", t.file_name)
    task = "" if built.job.task == "sft" else f", task {built.job.task}" + (
        f" (reference: {built.job.reference})" if built.job.reference != "none" else "")
    lines = header_lines(f"tuneplan export --to {t.name}: {t.label} for {describe(spec, built.job)}{task}",
                         est, device, verdict, command(built.job), launch, built.fill_in, built.cannot,
                         t.written_for)
    if t.syntax == "json":
        text = dump_json({"_tuneplan": lines, **built.body})
    elif t.syntax == "python":
        text = comment_block(lines) + built.body
    else:
        text = comment_block(lines) + dump_yaml(built.body)
    return Export(t, built.job, est, verdict, text, t.file_name, built.cannot, launch,
                  tuple(notes) + built.notes)


__all__ = ["TARGETS", "TARGET_NAMES", "FORMATS", "Target", "Export", "Imported", "export_job", "read_config",
           "job_from_import", "target", "target_for_framework"]
