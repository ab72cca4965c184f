"""Checks that need the model and the job (and the device) together, made once at the
boundary where a user's request enters (the API and the CLI), each a one-line refusal.

- the sequence length against the model's context (max_position_embeddings), unless the
  caller allows longer contexts (the CLI refuses, the Python API warns);
- LoRA target names against the model's own module names;
- the method against the model (rank, targets, trainable layers: tuneplan.memory.check_method);
- the GPU count against how many of a device one machine holds (several machines: whole ones).
"""

from __future__ import annotations

import warnings

from tuneplan import lowprec
from tuneplan.errors import TuneplanError, TuneplanWarning
from tuneplan.hardware import Device
from tuneplan.job import TARGET_PRESETS, Job, Method
from tuneplan.memory import check_method, is_target
from tuneplan.model_spec import ModelSpec, layer_linears


def check_context(spec: ModelSpec, seq_len: int, allow_long_context: bool = False, warn: bool = False) -> None:
    """Refuse a sequence longer than the model's context unless `allow_long_context`; with
    `warn` (the Python API) say it as a TuneplanWarning and go on.

    A config.json without max_position_embeddings states no context, so nothing is checked.
    """
    if allow_long_context or not spec.max_position_stated or seq_len <= spec.max_position:
        return
    text = (f"sequence length {seq_len:,} is longer than {spec.name}'s context of {spec.max_position:,} tokens "
            "(max_position_embeddings)")
    if warn:
        warnings.warn(f"{text}; estimated anyway (allow_long_context=True silences this)", TuneplanWarning,
                      stacklevel=4)
        return
    raise TuneplanError(f"{text}; pass --allow-long-context to estimate it anyway, e.g. with RoPE scaling")


def _layer_kinds(spec: ModelSpec) -> list[int]:
    """One layer index per distinct layer shape (dense and MoE layers)."""
    if not spec.moe_layers:
        return [0]
    first: dict[bool, int] = {}
    for i, flag in enumerate(spec.moe_layers):
        first.setdefault(bool(flag), i)
    return list(first.values())


def check_targets(spec: ModelSpec, method: Method) -> None:
    """Refuse LoRA target names that name no adaptable module of this model (a typo such
    as q_proj,foo would otherwise be dropped without a word)."""
    if not method.is_adapter or isinstance(method.targets, str) or method.targets in TARGET_PRESETS.values():
        return  # presets (attn, mlp, ...) may name modules a layout lacks; check_method refuses if none match
    linears = [lin for i in _layer_kinds(spec) for lin in layer_linears(spec, i)]
    unknown = [t for t in method.targets
               if not any(is_target(lin, Method(kind="lora", targets=(t,))) for lin in linears)]
    if unknown:
        names = sorted({lin.name for lin in linears if lin.group not in ("router", "expert")})
        extra = ", experts" if spec.is_moe else ""
        raise TuneplanError(f"--targets {','.join(unknown)}: no such module in {spec.name} (its linears: "
                            f"{', '.join(names)}{extra}; presets: {', '.join(k for k in TARGET_PRESETS if k != 'all')})")


def check_job(spec: ModelSpec, job: Job, allow_long_context: bool = False, warn: bool = False) -> None:
    """Every check of a job against a model, in the order a user would fix them.

    Raises:
        TuneplanError: context too long (unless `warn`: a TuneplanWarning), unknown targets,
            or a method the model cannot take.
    """
    check_context(spec, job.training.seq_len, allow_long_context, warn)
    check_targets(spec, job.method)
    check_method(spec, job.method)


def machines_for(job: Job, device: Device) -> int:
    """Machines a job on `device` spans: --nodes if given, else as few as hold its GPUs."""
    p = job.parallel
    return p.nodes or -(-p.num_gpus // device.max_count)


def check_device_count(job: Job, device: Device) -> None:
    """Refuse GPU counts that are not whole machines of this device: up to one machine holds
    any count; beyond it (or with --nodes) every machine holds the same number, at most what
    one machine of the device holds, and the tensor-parallel group stays inside one machine
    unless the machine is smaller than it (then a warning is in the estimate's assumptions).
    Also refuses a low-precision --precision the device does not run (tuneplan.lowprec)."""
    why = lowprec.unsupported(device, job.training.dtypes)
    if why:
        raise TuneplanError(why)
    p = job.parallel
    n, per = p.num_gpus, device.max_count
    if p.nodes:
        if n // p.nodes > per:
            raise TuneplanError(f"{n} x {device.id} over {p.nodes} machines is {n // p.nodes} per machine; one "
                                f"machine holds {per}")
        return
    if n > per and n % per:
        raise TuneplanError(f"{n} x {device.id} is not whole machines: one machine holds {per}, so use a multiple "
                            f"of {per} (e.g. {n // per * per or per} or {(n // per + 1) * per}), or say --nodes")
