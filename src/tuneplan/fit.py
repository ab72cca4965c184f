"""Fit verdicts: does a job's per-GPU peak fit a device, and if not, what is the cheapest change.

fits: headroom >= TIGHT_HEADROOM (10%) of usable memory; tight: 0 <= headroom < 10%;
no: the peak exceeds usable memory. Usable memory is the device's (tuneplan.hardware);
the peak includes CUDA context and allocator overhead (tuneplan.memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.memory.components import OVERHEAD
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
    out.extend(note for vendor, note in t.profile.device_notes if vendor == device.vendor)
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
class Step:
    """One setting change, as data: what it is in words and the flat settings it sets.

    Args:
        kind: batch (smaller micro-batch, same global batch) | setting | gpus | offload.
        description: plain words, no command-line syntax (shells render the flags).
        settings: (name, value) pairs in Job.from_settings names.
    """

    kind: str
    description: str
    settings: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "settings": dict(self.settings)}


@dataclass(frozen=True)
class Change:
    """A change to a job (one step, or several applied in order), the job it gives and its peak.

    Args:
        steps: the setting changes, cheapest first.
        job: the changed job.
        peak_bytes: its per-GPU peak (None until evaluated).
    """

    steps: tuple[Step, ...]
    job: Job
    peak_bytes: int | None = None

    @property
    def description(self) -> str:
        """The steps in words, joined with ' + '."""
        return " + ".join(s.description for s in self.steps)

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting the change sets (later steps win)."""
        out: dict[str, Any] = {}
        for s in self.steps:
            out.update(s.settings)
        return out

    def to_dict(self) -> dict:
        return {"description": self.description, "settings": self.settings,
                "steps": [s.to_dict() for s in self.steps], "peak_bytes": self.peak_bytes}


def _step(job: Job, kind: str, description: str, **settings: Any) -> Change:
    return Change((Step(kind, description, tuple(settings.items())),), job.with_settings(**settings))


@dataclass(frozen=True)
class FitVerdict:
    """Verdict of one job on one device (per-GPU figures).

    Args:
        verdict: fits | tight | no.
        peak_bytes / usable_bytes: bytes per GPU.
        headroom: (usable - peak) / usable; negative when it does not fit.
        breaker: (component label, bytes) of the largest component, when it does not fit or is tight.
        change: cheapest change that makes it fit (with its job and peak), None if it fits
            or nothing was found.
        max_micro_batch / max_seq_len: largest that fit at the job's other settings (when asked).
        keep_method_change: when `change` switches method, the cheapest change that keeps it.
    """

    device: Device
    job: Job
    verdict: str
    peak_bytes: int
    usable_bytes: int
    headroom: float
    breaker: tuple[str, int] | None
    change: Change | None
    max_micro_batch: int | None = None
    max_seq_len: int | None = None
    keep_method_change: Change | None = None

    def summary(self, describe: Callable[[Change], str] | None = None) -> str:
        """One line: verdict, peak vs usable (GiB = 2**30 bytes), what breaks it, the fix.

        Args:
            describe: renders a change (default its plain-words description); the CLI
                passes one that adds the command-line flags.
        """
        describe = describe or (lambda ch: ch.description)
        d = self.device
        head = {FITS: "fits", TIGHT: "tight (<10% headroom)", NO: "does not fit"}[self.verdict]
        text = (f"{d.id}: {head}: peak {self.peak_bytes / GiB:.2f} GiB of {self.usable_bytes / GiB:.2f} GiB usable "
                f"({self.headroom:+.0%} headroom)")
        if self.breaker and self.verdict == NO:
            text += f"; largest component {self.breaker[0]} {self.breaker[1] / GiB:.2f} GiB"
        if self.change:
            text += f"; cheapest fix: {describe(self.change)} -> {self.change.peak_bytes / GiB:.2f} GiB"
        if self.keep_method_change:
            text += f"; keeping {self.job.method.kind}: {describe(self.keep_method_change)}"
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
            "change": self.change.to_dict() if self.change else None,
            "max_micro_batch": self.max_micro_batch, "max_seq_len": self.max_seq_len,
            "keep_method_change": self.keep_method_change.to_dict() if self.keep_method_change else None,
            "summary": self.summary(), "usable_rule": self.device.usable_rule,
        }


def _setting_steps(device: Device) -> list[Callable[[Job], Change | None]]:
    """Setting changes (not batch size or GPU count), cheapest first; each gives None if n/a."""

    def fused(j: Job) -> Change | None:
        return None if j.training.loss.fused else _step(j, "setting", "fused cross-entropy", cross_entropy="fused")

    def ckpt(j: Job) -> Change | None:
        if j.training.checkpointing != "none":
            return None
        return _step(j, "setting", "gradient checkpointing", checkpointing="full")

    def opt8(j: Job) -> Change | None:
        alt = j.training.optim.eight_bit_alternative
        return _step(j, "setting", "8-bit optimizer states", optimizer=alt) if alt else None

    def lora(j: Job) -> Change | None:
        kind = j.method.kind
        return _step(j, "setting", f"LoRA instead of {kind}", method="lora") if kind in ("full", "freeze") else None

    def qlora(j: Job) -> Change | None:
        return _step(j, "setting", "QLoRA 4-bit base", method="qlora") if j.method.kind != "qlora" else None

    def off_opt(j: Job) -> Change | None:
        p = j.parallel
        if device.unified or p.offload_optimizer:
            return None
        return _step(j, "offload", "optimizer states in CPU RAM", offload_optimizer=True)

    def off_params(j: Job) -> Change | None:
        p = j.parallel
        if device.unified or p.offload_params:
            return None
        sharding = p.sharding if p.shard_stage == 3 else "zero3"
        return _step(j, "offload", "parameters + optimizer in CPU RAM (ZeRO-3)", sharding=sharding,
                     offload_params=True, offload_optimizer=True)

    return [fused, ckpt, opt8, lora, qlora, off_opt, off_params]


def _size_changes(job: Job, device: Device) -> tuple[list[Change], list[Change]]:
    """(smaller micro-batches, global batch kept through accumulation; more GPUs with FSDP)."""
    t, p = job.training, job.parallel
    batch: list[Change] = []
    b = t.micro_batch
    while b > 1:
        b //= 2
        accum = t.grad_accum * -(-t.micro_batch // b)
        batch.append(_step(job, "batch", f"micro-batch {b} with gradient accumulation {accum}",
                           micro_batch=b, grad_accum=accum))
    gpus: list[Change] = []
    for n in (2, 4, 8, 16):
        if p.num_gpus < n <= device.max_count:
            sharding = p.sharding if p.shard_stage == 3 else "fsdp"
            gpus.append(_step(job, "gpus", f"{n} x {device.id} with FSDP", num_gpus=n, sharding=sharding))
    return batch, gpus


def candidate_changes(job: Job, device: Device) -> list[Change]:
    """Single changes, cheapest first (least loss of speed, quality or money).

    Order: smaller micro-batch (same global batch through accumulation), fused
    cross-entropy, gradient checkpointing, 8-bit optimizer, LoRA instead of full, QLoRA,
    more GPUs of this kind with FSDP/ZeRO-3, optimizer offload, parameter offload.
    Offload is not offered on unified-memory machines (it frees nothing there).
    """
    batch, gpus = _size_changes(job, device)
    settings = [ch for fn in _setting_steps(device) if (ch := fn(job)) is not None]
    cheap = [ch for ch in settings if ch.steps[0].kind != "offload"]
    offload = [ch for ch in settings if ch.steps[0].kind == "offload"]
    return batch + cheap + gpus + offload


def _peak(spec: ModelSpec, job: Job) -> int | None:
    try:
        return peak_bytes(spec, job)
    except TuneplanError:
        return None


def _evaluated(ch: Change, peak: int) -> Change:
    return Change(ch.steps, ch.job, peak)


def cheapest_change(spec: ModelSpec, job: Job, device: Device) -> Change | None:
    """First single change (cheapest first) that fits; else the first cumulative chain.

    The chain applies the setting changes in order (fused CE, checkpointing, 8-bit
    optimizer, LoRA, QLoRA, offload), trying smaller batches and more GPUs at each stage.
    Returns the change with its job and new peak, or None when nothing fits.
    """
    usable = device.usable_bytes
    for ch in candidate_changes(job, device):
        pk = _peak(spec, ch.job)
        if pk is not None and pk <= usable:
            return _evaluated(ch, pk)
    cur: Change = Change((), job)
    for fn in _setting_steps(device):
        nxt = fn(cur.job)
        if nxt is None:
            continue
        cur = Change(cur.steps + nxt.steps, nxt.job)
        batch, gpus = _size_changes(cur.job, device)
        for extra in [None, *batch, *gpus]:
            ch = cur if extra is None else Change(cur.steps + extra.steps, extra.job)
            pk = _peak(spec, ch.job)
            if pk is not None and pk <= usable:
                return _evaluated(ch, pk)
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
        top = max((c for c in est.components if c.key not in OVERHEAD), key=lambda c: c.bytes)
        breaker = (top.label, top.bytes)
    change = keep = None
    if v == NO and suggest:
        change = cheapest_change(spec, job, device)
        if change and change.job.method.kind != job.method.kind:
            keep = next((_evaluated(c, pk) for c in candidate_changes(job, device)
                         if c.job.method.kind == job.method.kind and (pk := _peak(spec, c.job)) is not None
                         and pk <= usable), None)
    mb = ms = None
    if limits:
        mb = max_micro_batch(spec, job, usable)
        ms = max_seq_len(spec, job, usable, multiple=128)
    return FitVerdict(device, job, v, peak, usable, (usable - peak) / usable, breaker, change, mb, ms, keep)
