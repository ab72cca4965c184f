"""Fit verdicts: does a job's per-GPU peak fit a device, and if not, what is the cheapest change.

fits: headroom >= TIGHT_HEADROOM (10%) of usable memory; tight: 0 <= headroom < 10%;
no: the peak exceeds usable memory. Usable memory is the device's (tuneplan.hardware);
the peak includes CUDA context and allocator overhead (tuneplan.memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.models import ModelSpec
from tuneplan.search import max_micro_batch, max_seq_len
from tuneplan.units import GiB

FITS, TIGHT, NO = "fits", "tight", "no"


def support_notes(device: Device, job: Job) -> tuple[str, ...]:
    """Software caveats of running this job on this device (the memory figures still apply)."""
    out = []
    m, t = job.method, job.training
    if device.vendor == "Apple":
        out.append(f"{device.id}: PyTorch runs on MPS (no CUDA); figures assume the CUDA memory layout.")
        if m.kind == "qlora":
            out.append("bitsandbytes 4/8-bit needs CUDA or ROCm; on Apple silicon QLoRA means MLX (mlx-lm).")
        if t.framework == "unsloth":
            out.append("Unsloth's kernels target NVIDIA GPUs; the unsloth profile is not available on Apple silicon.")
    elif device.vendor == "AMD" and t.framework == "unsloth":
        out.append("Unsloth on AMD (ROCm) is newer than on NVIDIA; its speed profile is not validated there.")
    if device.category == "cloud-tpu":
        out.append("TPUs train through JAX/XLA or torch-xla; bitsandbytes, PEFT on CUDA and Unsloth do not apply.")
    return tuple(out)


def verdict_of(peak: int, usable: int) -> str:
    """fits / tight / no from bytes."""
    if peak > usable:
        return NO
    return TIGHT if (usable - peak) < cal.TIGHT_HEADROOM * usable else FITS


def fits(spec: ModelSpec, job: Job, device: Device) -> bool:
    """True when the peak is within usable memory (tight counts as fitting)."""
    return peak_bytes(spec, job) <= device.usable_bytes


@dataclass(frozen=True)
class Change:
    """One candidate change: what to tell the user, and the job it gives."""

    label: str
    job: Job


@dataclass(frozen=True)
class FitVerdict:
    """Verdict of one job on one device (per-GPU figures).

    Args:
        verdict: fits | tight | no.
        peak_bytes / usable_bytes: bytes per GPU.
        headroom: (usable - peak) / usable; negative when it does not fit.
        breaker: (component label, bytes) of the largest component, when it does not fit or is tight.
        change: cheapest change that makes it fit (label), None if it fits or nothing found.
        change_peak_bytes: the peak after that change.
    """

    device: Device
    job: Job
    verdict: str
    peak_bytes: int
    usable_bytes: int
    headroom: float
    breaker: tuple[str, int] | None
    change: str | None
    change_job: Job | None
    change_peak_bytes: int | None
    max_micro_batch: int | None = None
    max_seq_len: int | None = None
    keep_method_change: str | None = None

    def summary(self) -> str:
        """One line: verdict, peak vs usable (GiB = 2**30 bytes), what breaks it, the fix."""
        d = self.device
        head = {FITS: "fits", TIGHT: "tight (<10% headroom)", NO: "does not fit"}[self.verdict]
        text = (f"{d.id}: {head}: peak {self.peak_bytes / GiB:.2f} GiB of {self.usable_bytes / GiB:.2f} GiB usable "
                f"({self.headroom:+.0%} headroom)")
        if self.breaker and self.verdict == NO:
            text += f"; largest component {self.breaker[0]} {self.breaker[1] / GiB:.2f} GiB"
        if self.change:
            text += f"; cheapest fix: {self.change} -> {self.change_peak_bytes / GiB:.2f} GiB"
        if self.keep_method_change:
            text += f"; keeping {self.job.method.kind}: {self.keep_method_change}"
        elif self.verdict == NO:
            text += f"; no single fix found within {d.max_count} x {d.id}"
        if self.max_micro_batch is not None:
            t = self.job.training
            text += (f"; largest micro-batch at {t.seq_len} tokens: {self.max_micro_batch}, longest sequence at "
                     f"micro-batch {t.micro_batch}: {self.max_seq_len:,} tokens")
        return text

    def to_dict(self) -> dict:
        return {
            "device": self.device.id, "verdict": self.verdict, "peak_bytes": self.peak_bytes,
            "usable_bytes": self.usable_bytes, "headroom": self.headroom,
            "breaker": {"component": self.breaker[0], "bytes": self.breaker[1]} if self.breaker else None,
            "change": self.change, "change_peak_bytes": self.change_peak_bytes,
            "max_micro_batch": self.max_micro_batch, "max_seq_len": self.max_seq_len,
            "keep_method_change": self.keep_method_change, "summary": self.summary(),
            "usable_rule": self.device.usable_rule,
        }


def _with(job: Job, method=None, training=None, parallel=None) -> Job:
    return Job(method or job.method, training or job.training, parallel or job.parallel)


def _steps(device: Device) -> list[tuple[str, Callable[[Job], Job | None]]]:
    """Setting changes (not batch size or GPU count), cheapest first; each returns None if n/a."""

    def fused(j: Job) -> Job | None:
        t = j.training
        return None if t.fused_ce or t.framework == "unsloth" else _with(j, training=replace(t, fused_ce=True))

    def ckpt(j: Job) -> Job | None:
        t = j.training
        return _with(j, training=replace(t, checkpointing="full")) if t.checkpointing == "none" else None

    def opt8(j: Job) -> Job | None:
        t = j.training
        ok = t.optimizer in ("adamw", "adamw-foreach", "paged-adamw")
        return _with(j, training=replace(t, optimizer="adamw-8bit")) if ok else None

    def lora(j: Job) -> Job | None:
        return _with(j, method=replace(j.method, kind="lora")) if j.method.kind in ("full", "freeze") else None

    def qlora(j: Job) -> Job | None:
        return _with(j, method=replace(j.method, kind="qlora")) if j.method.kind != "qlora" else None

    def off_opt(j: Job) -> Job | None:
        p = j.parallel
        return None if device.unified or p.offload_optimizer else _with(j, parallel=replace(p, offload_optimizer=True))

    def off_params(j: Job) -> Job | None:
        p = j.parallel
        if device.unified or p.offload_params:
            return None
        sharding = p.sharding if p.shard_stage == 3 else "zero3"
        return _with(j, parallel=replace(p, sharding=sharding, offload_params=True, offload_optimizer=True))

    return [
        ("chunked cross-entropy (--fused-ce)", fused),
        ("gradient checkpointing (--checkpointing full)", ckpt),
        ("8-bit AdamW (--optimizer adamw-8bit)", opt8),
        ("LoRA instead of full (--method lora)", lora),
        ("QLoRA 4-bit base (--method qlora)", qlora),
        ("optimizer states in CPU RAM (--offload-optimizer)", off_opt),
        ("parameters + optimizer in CPU RAM (--sharding zero3 --offload-params --offload-optimizer)", off_params),
    ]


def _size_changes(job: Job, device: Device) -> list[Change]:
    """Smaller micro-batches (global batch kept through accumulation), then more GPUs with FSDP."""
    t, p = job.training, job.parallel
    out: list[Change] = []
    b = t.micro_batch
    while b > 1:
        b //= 2
        accum = t.grad_accum * -(-t.micro_batch // b)
        out.append(Change(f"micro-batch {b} (--batch {b} --grad-accum {accum})",
                          _with(job, training=replace(t, micro_batch=b, grad_accum=accum))))
    for n in (2, 4, 8, 16):
        if p.num_gpus < n <= device.max_count:
            sharding = p.sharding if p.shard_stage == 3 else "fsdp"
            out.append(Change(f"{n} x {device.id} with FSDP (--gpus {n} --sharding {sharding})",
                              _with(job, parallel=replace(p, num_gpus=n, sharding=sharding))))
    return out


def candidate_changes(job: Job, device: Device) -> list[Change]:
    """Single changes, cheapest first (least loss of speed, quality or money).

    Order: smaller micro-batch (same global batch through accumulation), chunked
    cross-entropy, gradient checkpointing, 8-bit optimizer, LoRA instead of full, QLoRA,
    more GPUs of this kind with FSDP/ZeRO-3, optimizer offload, parameter offload.
    Offload is not offered on unified-memory machines (it frees nothing there).
    """
    size = _size_changes(job, device)
    batch = [c for c in size if c.label.startswith("micro-batch")]
    gpus = [c for c in size if not c.label.startswith("micro-batch")]
    settings = [Change(label, j) for label, fn in _steps(device) if (j := fn(job)) is not None]
    cheap = [c for c in settings if "CPU RAM" not in c.label]
    offload = [c for c in settings if "CPU RAM" in c.label]
    return batch + cheap + gpus + offload


def _peak(spec: ModelSpec, job: Job) -> int | None:
    try:
        return peak_bytes(spec, job)
    except TuneplanError:
        return None


def cheapest_change(spec: ModelSpec, job: Job, device: Device) -> tuple[str, Job, int] | None:
    """First single change (cheapest first) that fits; else the first cumulative chain.

    The chain applies the setting changes in order (chunked CE, checkpointing, 8-bit
    optimizer, LoRA, QLoRA, offload), trying smaller batches and more GPUs at each stage.
    Returns (label, changed job, new peak bytes) or None when nothing fits.
    """
    usable = device.usable_bytes
    for ch in candidate_changes(job, device):
        pk = _peak(spec, ch.job)
        if pk is not None and pk <= usable:
            return ch.label, ch.job, pk
    cur, labels = job, []
    for label, fn in _steps(device):
        nxt = fn(cur)
        if nxt is None:
            continue
        cur, labels = nxt, labels + [label]
        for extra in [None, *_size_changes(cur, device)]:
            j = cur if extra is None else extra.job
            pk = _peak(spec, j)
            if pk is not None and pk <= usable:
                return " + ".join(labels + ([extra.label] if extra else [])), j, pk
    return None


def fit_verdict(spec: ModelSpec, job: Job, device: Device, suggest: bool = True, limits: bool = False) -> FitVerdict:
    """Verdict of `job` on one `device` (per GPU), with the breaking component and a fix.

    Args:
        suggest: look for the cheapest change when it does not fit.
        limits: also search the largest micro-batch and the longest sequence (multiple of
            128) that fit at the job's other settings.
    """
    est = estimate_memory(spec, job)
    usable = device.usable_bytes
    peak = est.peak_bytes
    v = verdict_of(peak, usable)
    breaker = None
    if v != FITS:
        top = max((c for c in est.components if c.key not in ("cuda_context", "allocator")), key=lambda c: c.bytes)
        breaker = (top.label, top.bytes)
    change = None
    keep = None
    if v == NO and suggest:
        change = cheapest_change(spec, job, device)
        if change and change[1].method.kind != job.method.kind:
            keep = next((c.label for c in candidate_changes(job, device)
                         if c.job.method.kind == job.method.kind and (pk := _peak(spec, c.job)) is not None
                         and pk <= usable), None)
    mb = ms = None
    if limits:
        mb = max_micro_batch(spec, job, usable)
        ms = max_seq_len(spec, job, usable, multiple=128)
    return FitVerdict(device, job, v, peak, usable, (usable - peak) / usable, breaker,
                      change[0] if change else None, change[1] if change else None, change[2] if change else None,
                      mb, ms, keep)
