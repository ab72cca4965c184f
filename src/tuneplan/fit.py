"""Fit verdicts: does a job's per-GPU peak fit a device, and if not, what is the cheapest change.

fits: headroom >= TIGHT_HEADROOM (10%) of usable memory; tight: 0 <= headroom < 10%;
no: the peak exceeds usable memory. Usable memory is the device's (tuneplan.hardware);
the peak includes CUDA context and allocator overhead (tuneplan.memory). On a
unified-memory device what offload keeps in "CPU RAM" is the same memory, so it is
counted with the peak (tuneplan.search.pool_bytes).

A suggested change must itself clear the 10% headroom where any change does; only when
none does is a change that leaves it tight offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneplan import calibration as cal
from tuneplan.checks import check_device_count
from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.memory.components import OVERHEAD
from tuneplan.models import ModelSpec
from tuneplan.search import max_micro_batch, max_seq_len, offloads, pool_bytes
from tuneplan.units import GiB

FITS, TIGHT, NO = "fits", "tight", "no"


def support_notes(device: Device, job: Job) -> tuple[str, ...]:
    """Software caveats of running this job on this device (the memory figures still apply)."""
    out = []
    t = job.training
    rt = job.on_vendor(device.vendor).training.rt
    if rt.note:
        out.append(f"{device.id}: {rt.label}: {rt.note}")
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
    return pool_bytes(spec, job.on_vendor(device.vendor), device.unified) <= device.usable_bytes


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
        peak_bytes: its per-GPU peak (None until evaluated); on a unified-memory device
            plus what it offloads to the same memory (tuneplan.search.pool_bytes).
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


def _step(job: Job, kind: str, description: str, **settings: Any) -> Change | None:
    """The change, or None where the job's stack or runtime refuses it (an 8-bit optimizer on
    MPS, a fused loss or more GPUs under mlx-lm: tuneplan.job._check_stack)."""
    try:
        new = job.with_settings(**settings)
    except TuneplanError:
        return None
    return Change((Step(kind, description, tuple(settings.items())),), new)


@dataclass(frozen=True)
class FitVerdict:
    """Verdict of one job on one device (per-GPU figures).

    Args:
        verdict: fits | tight | no, from peak_bytes + offloaded_bytes against usable_bytes.
        peak_bytes / usable_bytes: bytes per GPU.
        headroom: (usable - peak - offloaded) / usable; negative when it does not fit.
        breaker: (component label, bytes) of the largest component, when it does not fit or is tight.
        change: cheapest change that makes it fit with 10% headroom (or, when no change
            does, that makes it fit at all), with its job and peak; for a tight job, the
            cheapest change to 10% headroom. None if it fits or nothing was found.
        max_micro_batch / max_seq_len: largest that fit at the job's other settings (when asked).
        keep_method_change: when `change` switches method, the cheapest change that keeps it.
        offloaded_bytes: on a unified-memory device, the bytes offload keeps in "CPU RAM",
            which is the same memory (0 elsewhere: there they live in host RAM).
        searched: whether a change was looked for (suggest=True and the job did not fit).
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
    offloaded_bytes: int = 0
    searched: bool = False

    def summary(self, describe: Callable[[Change], str] | None = None) -> str:
        """One line: verdict, peak vs usable (GiB = 2**30 bytes), what breaks it, the fix.

        Args:
            describe: renders a change (default its plain-words description); the CLI
                passes one that adds the command-line flags.
        """
        describe = describe or (lambda ch: ch.description)
        d = self.device
        head = {FITS: "fits", TIGHT: "tight (<10% headroom)", NO: "does not fit"}[self.verdict]
        pool = (f" + {self.offloaded_bytes / GiB:.2f} GiB offloaded into the same unified memory"
                if self.offloaded_bytes else "")
        text = (f"{d.id}: {head}: peak {self.peak_bytes / GiB:.2f} GiB{pool} of {self.usable_bytes / GiB:.2f} GiB "
                f"usable ({self.headroom:+.0%} headroom)")
        if self.breaker and self.verdict == NO:
            text += f"; largest component {self.breaker[0]} {self.breaker[1] / GiB:.2f} GiB"
        within = f"within {d.max_count} x {d.id}"
        if self.change:
            ch = self.change
            label = "cheapest fix" if self.verdict == NO else "for 10% headroom"
            after = verdict_of(ch.peak_bytes, self.usable_bytes)
            text += (f"; {label}: {describe(ch)} -> {ch.peak_bytes / GiB:.2f} GiB"
                     + (" (still tight: no change found gives 10% headroom)" if after == TIGHT else ""))
            if ch.job.method.kind != self.job.method.kind:
                if self.keep_method_change:
                    keep = self.keep_method_change
                    text += (f"; keeping {self.job.method.kind}: {describe(keep)}"
                             + (f" -> {keep.peak_bytes / GiB:.2f} GiB" if keep.peak_bytes is not None else ""))
                else:
                    text += f"; no change keeps {self.job.method.kind} {within}"
        elif self.searched:
            text += f"; no fix found {within}" if self.verdict == NO else f"; no change gives 10% headroom {within}"
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
            "offloaded_bytes": self.offloaded_bytes,
            "summary": self.summary(), "usable_rule": self.device.usable_rule,
        }


def _framework_change(spec: ModelSpec, j: Job, device: Device) -> Change | None:
    """Another framework profile with a smaller peak for this job (e.g. Unsloth's fused loss
    and quantised MoE experts, torchtune's bf16 adapters), the smallest first; profiles
    with a caveat for this device's vendor, and TPUs, are not suggested."""
    if device.category == "cloud-tpu":
        return None
    now = _pool(spec, j, device)
    best: tuple[int, Change] | None = None
    for prof in FRAMEWORKS.values():
        if prof.name == j.training.framework or any(v == device.vendor for v, _ in prof.device_notes):
            continue
        try:
            ch = _step(j, "setting", f"the {prof.label} framework profile", framework=prof.name)
        except TuneplanError:
            continue
        if ch is None:
            continue
        pk = _pool(spec, ch.job, device)
        if pk is not None and now is not None and pk < now and (best is None or pk < best[0]):
            best = (pk, ch)
    return best[1] if best else None


def _setting_steps(device: Device, spec: ModelSpec | None = None) -> list[Callable[[Job], Change | None]]:
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

    def profile(j: Job) -> Change | None:
        return _framework_change(spec, j, device) if spec is not None else None

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

    return [fused, ckpt, opt8, lora, qlora, profile, off_opt, off_params]


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
    return [c for c in batch if c], [c for c in gpus if c]


def candidate_changes(job: Job, device: Device, spec: ModelSpec | None = None) -> list[Change]:
    """Single changes, cheapest first (least loss of speed, quality or money).

    Order: smaller micro-batch (same global batch through accumulation), fused
    cross-entropy, gradient checkpointing, 8-bit optimizer, LoRA instead of full, QLoRA,
    another framework profile with a smaller peak (needs `spec`), more GPUs of this kind
    with FSDP/ZeRO-3, optimizer offload, parameter offload. Offload is not offered on
    unified-memory machines (it frees nothing there).
    """
    batch, gpus = _size_changes(job, device)
    settings = [ch for fn in _setting_steps(device, spec) if (ch := fn(job)) is not None]
    cheap = [ch for ch in settings if ch.steps[0].kind != "offload"]
    offload = [ch for ch in settings if ch.steps[0].kind == "offload"]
    return batch + cheap + gpus + offload


def _pool(spec: ModelSpec, job: Job, device: Device) -> int | None:
    try:
        return pool_bytes(spec, job, device.unified)
    except TuneplanError:
        return None


def _evaluated(ch: Change, peak: int) -> Change:
    return Change(ch.steps, ch.job, peak)


def _first_change(spec: ModelSpec, job: Job, device: Device, ok: Callable[[int], bool]) -> Change | None:
    """The first single change (cheapest first) whose bytes pass `ok`; else the first cumulative chain."""
    for ch in candidate_changes(job, device, spec):
        pk = _pool(spec, ch.job, device)
        if pk is not None and ok(pk):
            return _evaluated(ch, pk)
    cur: Change = Change((), job)
    steps = _setting_steps(device, spec)
    # the chain switches framework profile last, once nothing else was enough
    for fn in [f for f in steps if f.__name__ != "profile"] + [f for f in steps if f.__name__ == "profile"]:
        nxt = fn(cur.job)
        if nxt is None:
            continue
        cur = Change(cur.steps + nxt.steps, nxt.job)
        batch, gpus = _size_changes(cur.job, device)
        for extra in [None, *batch, *gpus]:
            ch = cur if extra is None else Change(cur.steps + extra.steps, extra.job)
            pk = _pool(spec, ch.job, device)
            if pk is not None and ok(pk):
                return _evaluated(ch, pk)
    return None


def cheapest_change(spec: ModelSpec, job: Job, device: Device, headroom_only: bool = False) -> Change | None:
    """The cheapest change that fits with 10% headroom; if no change does, the cheapest that
    fits at all (tight), unless `headroom_only`.

    Single changes are tried cheapest first (candidate_changes), then a cumulative chain
    applying the setting changes in order (fused CE, checkpointing, 8-bit optimizer, LoRA,
    QLoRA, offload, then another framework profile), trying smaller batches and more GPUs
    at each stage. Returns the change with its job and new peak, or None when nothing fits.
    """
    usable = device.usable_bytes
    found = _first_change(spec, job, device, lambda pk: verdict_of(pk, usable) == FITS)
    if found is None and not headroom_only:
        found = _first_change(spec, job, device, lambda pk: pk <= usable)
    return found


def _keep_method(spec: ModelSpec, job: Job, device: Device, headroom_only: bool) -> Change | None:
    """The cheapest single change that keeps the job's method (same headroom rule)."""
    usable = device.usable_bytes
    rules = [lambda pk: verdict_of(pk, usable) == FITS] + ([] if headroom_only else [lambda pk: pk <= usable])
    same = [c for c in candidate_changes(job, device, spec) if c.job.method.kind == job.method.kind]
    for ok in rules:
        for c in same:
            pk = _pool(spec, c.job, device)
            if pk is not None and ok(pk):
                return _evaluated(c, pk)
    return None


def fit_verdict(spec: ModelSpec, job: Job, device: Device, suggest: bool = True, limits: bool = False) -> FitVerdict:
    """Verdict of `job` on one `device` (per GPU), with the breaking component and a fix.

    Args:
        suggest: look for the cheapest change when it does not fit, or for one that gives
            10% headroom when it is tight.
        limits: also search the largest micro-batch and the longest sequence (multiple of
            128) that fit at the job's other settings.

    Raises:
        TuneplanError: more GPUs than one machine of this device holds (multi-node is not
            modelled), or a job the model cannot take.
    """
    job = job.on_vendor(device.vendor)  # the framework's runtime there (tuneplan.choices.runtimes)
    check_device_count(job, device)
    est = estimate_memory(spec, job)
    usable = device.usable_bytes
    peak = est.peak_bytes
    offloaded = est.cpu_bytes if device.unified and offloads(job) else 0
    v = verdict_of(peak + offloaded, usable)
    breaker = None
    if v != FITS:
        top = max((c for c in est.components if c.key not in OVERHEAD), key=lambda c: c.bytes)
        breaker = (top.label, top.bytes)
    change = keep = None
    searched = suggest and v != FITS
    if searched:
        change = cheapest_change(spec, job, device, headroom_only=v == TIGHT)
        if change and change.job.method.kind != job.method.kind:
            keep = _keep_method(spec, job, device, headroom_only=v == TIGHT)
    mb = ms = None
    if limits:
        mb = max_micro_batch(spec, job, usable, unified=device.unified)
        ms = max_seq_len(spec, job, usable, multiple=128, unified=device.unified)
    return FitVerdict(device, job, v, peak, usable, (usable - peak - offloaded) / usable, breaker, change, mb, ms,
                      keep, offloaded, searched)
