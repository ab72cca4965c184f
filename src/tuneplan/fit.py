"""Fit verdicts: does a job's per-GPU peak fit a device, and if not, what is the cheapest change.

fits: the upper end of the estimate's uncertainty band (tuneplan.uncertainty: 90% of measured
runs of this kind of job fell below it) is within usable memory, and the peak leaves
TIGHT_HEADROOM (10%) of it; tight: the band's upper end fits but the peak leaves < 10%;
uncertain: the peak fits but the band's upper end does not (a run of this kind may need more
than the device has); no: the peak exceeds usable memory. Usable memory is the device's (tuneplan.hardware);
the peak includes CUDA context and allocator overhead (tuneplan.memory). On a
unified-memory device what offload keeps in "CPU RAM" is the same memory, so it is
counted with the peak (tuneplan.search.pool_bytes).

A suggested change must itself clear the 10% headroom where any change does; only when
none does is a change that leaves it tight offered.

What offload keeps in CPU RAM must also fit the host: every GPU process of a machine
offloads its share, so the machine's total (per-process CPU bytes x GPUs) is checked
against the host RAM assumed for the device's category (HOST_RAM_ASSUMPTION); the catalog
lists no host figures. A job whose offload overflows the host is said so and searched for
a fix like one that does not fit; no suggested change overflows it.

One search (cheapest_change) serves both the fit verdict and the planner: `plan` uses it,
keeping the method, on a device where the job as asked fits no GPU count (plan_base), so
a fix `estimate --gpu` suggests and a setup `plan` finds come from the same space of
changes (smaller micro-batch, fused loss, checkpointing, 8-bit optimizer, LoRA/QLoRA,
framework profile, more GPUs, offload).
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
from tuneplan.model_spec import ModelSpec
from tuneplan.search import (
    describe_layout,
    gpu_counts,
    max_micro_batch,
    max_seq_len,
    min_gpus,
    offloads,
    pool_bytes,
)
from tuneplan.uncertainty import Band, band, high_bytes
from tuneplan.units import GiB

FITS, TIGHT, UNCERTAIN, NO = "fits", "tight", "uncertain", "no"
# the verdicts a job runs with, best first (a plan shows the others' verdict beside them)
RUNS = (FITS, TIGHT, UNCERTAIN)

# Host RAM assumed per machine, for what offload keeps in CPU RAM (the device catalog has no
# host figures). Desktop boards take 192-256 GB in 4 DIMMs, but 4 x 32 GB is the common top
# build; Threadripper PRO / Xeon W workstations have 8 channels, 8 x 64 GB = 512 GB. Server
# and cloud hosts are sized per GPU: DGX A100 1 TB and AWS p4d 1,152 GiB for 8 A100s, GCP
# a2-highgpu-1g 85 GB for one: 128 GiB per device; for the 80+ GB accelerators from 2022 on
# (H100, H200, B200, MI300X) DGX H100/B200 and AWS p5/p5e/p6 hosts have 2 TB for 8, GCP
# a3-highgpu-8g 1,872 GB, Azure ND H100 v5 1,900 GiB: 256 GiB per device. Unified-memory
# machines have no separate host RAM: offload stays in the device pool (search.pool_bytes).
HOST_RAM_GIB_PER_MACHINE = {"consumer": 128, "workstation": 512}
HOST_RAM_GIB_PER_DEVICE = 128  # datacenter (A100 and older, smaller cards), cloud-tpu, any other category
HOST_RAM_GIB_PER_DEVICE_LARGE = 256  # datacenter accelerators of 80+ GiB launched 2022 or later
HOST_RAM_ASSUMPTION = ("Offload must fit the host's RAM: assumed 128 GiB for a consumer machine, 512 GiB for a "
                       "workstation, 256 GiB per device for H100-class servers (80+ GiB, 2022 on: 2 TB per 8 GPUs) "
                       "and 128 GiB per device for other servers and cloud instances (the catalog lists no host "
                       "RAM); every GPU process of a machine offloads its share.")


def host_ram_bytes(device: Device, count: int = 1) -> int | None:
    """Host RAM assumed for one machine of `count` x `device` (None on unified memory, where
    offload stays in the device's pool)."""
    if device.unified:
        return None
    per_machine = HOST_RAM_GIB_PER_MACHINE.get(device.category)
    if per_machine is not None:
        return int(per_machine * GiB)
    large = device.category == "datacenter" and device.memory_gib >= 80 and (device.launch_year or 0) >= 2022
    per_device = HOST_RAM_GIB_PER_DEVICE_LARGE if large else HOST_RAM_GIB_PER_DEVICE
    return int(per_device * GiB) * max(1, count)


def host_bytes(spec: ModelSpec, job: Job, device: Device) -> int:
    """CPU RAM the job's offload takes on the host of one machine: the CPU bytes of each GPU
    process x the GPU count (0 without offload, and on unified memory, where they count in
    the pool instead)."""
    if device.unified or not offloads(job):
        return 0
    return estimate_memory(spec, job).cpu_bytes * job.parallel.num_gpus


def host_fits(spec: ModelSpec, job: Job, device: Device) -> bool:
    """True when what the job offloads fits the host RAM assumed for the device (always on unified memory)."""
    cap = host_ram_bytes(device, job.parallel.num_gpus)
    return cap is None or host_bytes(spec, job, device) <= cap


def support_notes(device: Device, job: Job) -> tuple[str, ...]:
    """Software caveats of running this job on this device (the memory figures still apply)."""
    out = []
    t = job.training
    rt = job.on_vendor(device.vendor).training.rt
    if rt.note:
        out.append(f"{device.id}: {rt.label}: {rt.note}")
    out.extend(note for vendor, note in t.profile.device_notes if vendor == device.vendor)
    # torch dtype names of the precision record: the weights' and the autocast's
    if not device.bf16_tensor and "bfloat16" in (t.dtypes.torch_param_dtype, t.dtypes.torch_autocast_dtype):
        out.append(f"{device.id} has no bf16 tensor cores: bf16 matmuls run without them, far below the "
                   f"{device.bf16_tflops:g} TFLOPS fp16 tensor rate the time assumes; use --precision fp16.")
    if device.category == "cloud-tpu":
        out.append("TPUs train through JAX/XLA or torch-xla; bitsandbytes, PEFT on CUDA and Unsloth do not apply.")
    return tuple(out)


def verdict_of(peak: int, usable: int, high: int | None = None) -> str:
    """fits / tight / uncertain / no from bytes: `high` is the upper end of the peak's
    uncertainty band (tuneplan.uncertainty; None: no band, as before the band existed)."""
    if peak > usable:
        return NO
    if high is not None and high > usable:
        return UNCERTAIN
    return TIGHT if (usable - peak) < cal.TIGHT_HEADROOM * usable else FITS


def job_verdict(job: Job, peak: int, usable: int) -> str:
    """verdict_of with the job's own band (its upper end for this peak)."""
    return verdict_of(peak, usable, high_bytes(job, peak))


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
        host_bytes: what it offloads to the host's RAM, all GPU processes of the machine
            (0 without offload or on unified memory).
    """

    steps: tuple[Step, ...]
    job: Job
    peak_bytes: int | None = None
    host_bytes: int = 0

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
                "steps": [s.to_dict() for s in self.steps], "peak_bytes": self.peak_bytes,
                "host_bytes": self.host_bytes}


def _step(job: Job, kind: str, description: str, **settings: Any) -> Change | None:
    """The change, or None where the job's stack or runtime refuses it (an 8-bit optimizer on
    MPS, a fused loss or more GPUs under mlx-lm: tuneplan.job_checks.check_stack)."""
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
        searched: whether a change was looked for (suggest=True and the job did not fit, was
            tight, or its offload overflows the host).
        host_bytes / host_ram_bytes: what offload keeps in the host's RAM (all GPU processes of
            the machine) and the host RAM assumed for it (HOST_RAM_ASSUMPTION); 0 and None on
            unified memory.
        band: the peak's uncertainty band (tuneplan.uncertainty.Band; None without a table).
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
    host_bytes: int = 0
    host_ram_bytes: int | None = None
    band: Band | None = None

    @property
    def high_bytes(self) -> int | None:
        """The band's upper end plus what is offloaded into the same memory (None without a band)."""
        return None if self.band is None else self.band.high_bytes + self.offloaded_bytes

    @property
    def host_ok(self) -> bool:
        """What the job offloads fits the host RAM assumed (always on unified memory)."""
        return self.host_ram_bytes is None or self.host_bytes <= self.host_ram_bytes

    @property
    def runs(self) -> bool:
        """The job as given runs: it fits the device (tight and uncertain count) and its offload fits the host."""
        return self.verdict != NO and self.host_ok

    def summary(self, describe: Callable[[Change], str] | None = None) -> str:
        """One line: verdict, peak vs usable (GiB = 2**30 bytes), what breaks it, the fix.

        Args:
            describe: renders a change (default its plain-words description); the CLI
                passes one that adds the command-line flags.
        """
        describe = describe or (lambda ch: ch.description)
        d = self.device
        head = {FITS: "fits", TIGHT: "tight (<10% headroom)", NO: "does not fit",
                UNCERTAIN: (f"uncertain (the peak fits, but the {self.band.level:.0%} band's upper end "
                            f"{(self.high_bytes or 0) / GiB:.2f} GiB does not: of {self.band.rows} measured runs of "
                            f"{'this kind' if self.band.own_kind else self.band.kind}, some needed up to "
                            f"{self.band.high_bytes / max(1, self.peak_bytes) - 1:.0%} more than estimated)"
                            if self.band else "uncertain")}[self.verdict]
        pool = (f" + {self.offloaded_bytes / GiB:.2f} GiB offloaded into the same unified memory"
                if self.offloaded_bytes else "")
        text = (f"{d.id}: {head}: peak {self.peak_bytes / GiB:.2f} GiB{pool} of {self.usable_bytes / GiB:.2f} GiB "
                f"usable ({self.headroom:+.0%} headroom)")
        if self.breaker and self.verdict == NO:
            text += f"; largest component {self.breaker[0]} {self.breaker[1] / GiB:.2f} GiB"
        if not self.host_ok:
            text += (f"; but its offload needs {self.host_bytes / GiB:.0f} GiB of host RAM, more than the "
                     f"{self.host_ram_bytes / GiB:.0f} GiB assumed for a {d.category} host")
        within = f"within {d.max_count} x {d.id}"
        if self.change:
            ch = self.change
            label = ("cheapest fix" if not self.runs else
                     "to clear the band" if self.verdict == UNCERTAIN else "for 10% headroom")
            after = job_verdict(ch.job, ch.peak_bytes, self.usable_bytes)
            text += (f"; {label}: {describe(ch)} -> {ch.peak_bytes / GiB:.2f} GiB"
                     + (" (still tight: no change found gives 10% headroom)" if after == TIGHT else
                        " (still uncertain: no change found clears the band)" if after == UNCERTAIN else ""))
            if ch.host_bytes:
                text += f", {ch.host_bytes / GiB:.0f} GiB of host RAM for offload"
            if ch.job.method.kind != self.job.method.kind:
                if self.keep_method_change:
                    keep = self.keep_method_change
                    text += (f"; keeping {self.job.method.kind}: {describe(keep)}"
                             + (f" -> {keep.peak_bytes / GiB:.2f} GiB" if keep.peak_bytes is not None else ""))
                else:
                    text += f"; no change keeps {self.job.method.kind} {within}"
        elif self.searched:
            text += (f"; no fix found {within}" + ("" if d.unified else " and the host RAM assumed")
                     if not self.runs else f"; no change gives 10% headroom {within}")
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
            "offloaded_bytes": self.offloaded_bytes, "host_bytes": self.host_bytes,
            "host_ram_bytes": self.host_ram_bytes, "host_ok": self.host_ok,
            "uncertainty": self.band.to_dict() if self.band else None,
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
        if (prof.name == j.training.framework or not prof.suggest
                or any(v == device.vendor for v, _ in prof.device_notes)):
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


def _size_changes(job: Job, device: Device, max_count: int | None = None,
                  spec: ModelSpec | None = None) -> tuple[list[Change], list[Change]]:
    """(smaller micro-batches, global batch kept through accumulation; more GPUs: with the
    model, the fewest that fit and their layout, from the planner's own search
    (tuneplan.search.min_gpus: node-sized counts, whole machines beyond one, up to `max_count`),
    else FSDP on 2-16 GPUs of one machine)."""
    t, p = job.training, job.parallel
    limit = max_count or gpu_counts(device)[-1]
    batch: list[Change] = []
    b = t.micro_batch
    while b > 1:
        b //= 2
        accum = t.grad_accum * -(-t.micro_batch // b)
        batch.append(_step(job, "batch", f"micro-batch {b} with gradient accumulation {accum}",
                           micro_batch=b, grad_accum=accum))
    gpus: list[Change] = []
    if spec is not None:
        # the fewest GPUs that fit (10% headroom, the uncertainty band within usable memory),
        # then the fewest whose peak fits at all
        def clears(j: Job) -> bool:
            pk = _pool(spec, j, device)
            return pk is not None and job_verdict(j, pk, device.usable_bytes) == FITS

        for usable, band_too in ((int(device.usable_bytes * (1 - cal.TIGHT_HEADROOM)), True),
                                 (device.usable_bytes, False)):
            found = min_gpus(spec, job, device, max_count=limit, usable=usable,
                             accept=lambda j, b=band_too: host_fits(spec, j, device) and (not b or clears(j)))
            if found is not None and found[0] > p.num_gpus:
                n, j = found
                q = j.parallel
                gpus.append(_step(job, "gpus", f"{n} x {device.id} ({describe_layout(j)})", num_gpus=n,
                                  sharding=q.sharding, tensor=q.tensor, pipeline=q.pipeline, nodes=q.nodes))
        return [c for c in batch if c], [c for c in gpus if c]
    for n in (2, 4, 8, 16):
        if p.num_gpus < n <= min(limit, device.max_count):
            sharding = p.sharding if p.shard_stage == 3 else "fsdp"
            gpus.append(_step(job, "gpus", f"{n} x {device.id} with FSDP", num_gpus=n, sharding=sharding))
    return [c for c in batch if c], [c for c in gpus if c]


def candidate_changes(job: Job, device: Device, spec: ModelSpec | None = None,
                      max_count: int | None = None) -> list[Change]:
    """Single changes, cheapest first (least loss of speed, quality or money).

    Order: smaller micro-batch (same global batch through accumulation), fused
    cross-entropy, gradient checkpointing, 8-bit optimizer, LoRA instead of full, QLoRA,
    another framework profile with a smaller peak (needs `spec`), more GPUs of this kind
    with FSDP/ZeRO-3 (up to `max_count`), optimizer offload, parameter offload. Offload is
    not offered on unified-memory machines (it frees nothing there).
    """
    batch, gpus = _size_changes(job, device, max_count, spec)
    settings = [ch for fn in _setting_steps(device, spec) if (ch := fn(job)) is not None]
    cheap = [ch for ch in settings if ch.steps[0].kind != "offload"]
    offload = [ch for ch in settings if ch.steps[0].kind == "offload"]
    return batch + cheap + gpus + offload


def _pool(spec: ModelSpec, job: Job, device: Device) -> int | None:
    try:
        return pool_bytes(spec, job, device.unified)
    except TuneplanError:
        return None


def _measure(spec: ModelSpec, job: Job, device: Device) -> tuple[int, int] | None:
    """(device pool bytes, host RAM bytes of offload) of a job, None where it cannot be
    estimated or its offload overflows the host RAM assumed (host_ram_bytes)."""
    if device.unified or not offloads(job):
        pk = _pool(spec, job, device)
        return None if pk is None else (pk, 0)
    try:
        est = estimate_memory(spec, job)
    except TuneplanError:
        return None
    pk, host = est.peak_bytes, est.cpu_bytes * job.parallel.num_gpus
    cap = host_ram_bytes(device, job.parallel.num_gpus)
    if cap is not None and host > cap:
        return None
    return pk, host


def _first_change(spec: ModelSpec, job: Job, device: Device, ok: Callable[[Job, int], bool], keep_method: bool,
                  max_count: int | None) -> Change | None:
    """The first single change (cheapest first) whose job and device bytes pass `ok` and whose
    offload fits the host; else the first cumulative chain that does."""
    kind = job.method.kind

    def passes(ch: Change) -> Change | None:
        if keep_method and ch.job.method.kind != kind:
            return None
        m = _measure(spec, ch.job, device)
        return Change(ch.steps, ch.job, m[0], m[1]) if m is not None and ok(ch.job, m[0]) else None

    for ch in candidate_changes(job, device, spec, max_count):
        if (found := passes(ch)) is not None:
            return found
    cur: Change = Change((), job)
    steps = _setting_steps(device, spec)
    # the chain switches framework profile last, once nothing else was enough
    for fn in [f for f in steps if f.__name__ != "profile"] + [f for f in steps if f.__name__ == "profile"]:
        nxt = fn(cur.job)
        if nxt is None or (keep_method and nxt.job.method.kind != kind):
            continue
        cur = Change(cur.steps + nxt.steps, nxt.job)
        batch, gpus = _size_changes(cur.job, device, max_count, spec)
        for extra in [None, *batch, *gpus]:
            ch = cur if extra is None else Change(cur.steps + extra.steps, extra.job)
            if (found := passes(ch)) is not None:
                return _pruned(job, found, passes)
    return None


def _pruned(job: Job, found: Change, passes: Callable[[Change], Change | None]) -> Change:
    """A chain without the setting steps it does not need: each, the most costly first, is
    dropped where the job still passes without it (LoRA once QLoRA follows, optimizer offload
    once ZeRO-3 offloads it too, a fused loss or 8-bit states that the offload made moot)."""
    steps = list(found.steps)
    for i in range(len(steps) - 1, -1, -1):
        if steps[i].kind not in ("setting", "offload") or len(steps) == 1:
            continue
        rest = steps[:i] + steps[i + 1:]
        settings: dict[str, Any] = {}
        for st in rest:
            settings.update(st.settings)
        try:
            new = job.with_settings(**settings)
        except TuneplanError:
            continue
        kept = passes(Change(tuple(rest), new))
        if kept is not None:
            steps, found = rest, kept
    return found


def cheapest_change(spec: ModelSpec, job: Job, device: Device, headroom_only: bool = False,
                    keep_method: bool = False, max_count: int | None = None) -> Change | None:
    """The one search for a change that makes a job run on a device (the fit verdict's fix,
    the fix that keeps the method, and the planner's fallback: plan_base).

    The cheapest change that fits (its band's upper end within usable memory and 10% headroom
    at the peak); if no change does, the cheapest whose peak fits at all (tight or uncertain),
    unless `headroom_only`. Every change's offload must fit the host
    RAM assumed for the device (host_ram_bytes).

    Single changes are tried cheapest first (candidate_changes), then a cumulative chain
    applying the setting changes in order (fused CE, checkpointing, 8-bit optimizer, LoRA,
    QLoRA, offload, then another framework profile), trying smaller batches and more GPUs
    at each stage.

    Args:
        keep_method: only changes that keep the job's method (no LoRA/QLoRA switch).
        max_count: most GPUs of the device a change may use (default the device's max).

    Returns the change with its job, new peak and host bytes, or None when nothing fits.
    """
    usable = device.usable_bytes
    found = _first_change(spec, job, device, lambda j, pk: job_verdict(j, pk, usable) == FITS, keep_method,
                          max_count)
    if found is None and not headroom_only:
        found = _first_change(spec, job, device, lambda j, pk: pk <= usable, keep_method, max_count)
    return found


def plan_base(spec: ModelSpec, job: Job, device: Device, max_count: int | None = None
              ) -> tuple[int, Job, Change | None] | None:
    """Where `plan` starts on one device: the fewest GPUs that run the job as asked
    (tuneplan.search.min_gpus) when its offload fits the host; else the job changed by the
    fit verdict's own search, keeping the method (cheapest_change(keep_method=True)), so
    plan finds a setup exactly where `estimate --gpu` finds a way to run this method.

    Returns (GPU count, job, the change applied or None), or None when nothing runs it
    within `max_count` (default the device's max) x device.
    """
    job = job.on_vendor(device.vendor)
    found = min_gpus(spec, job, device, max_count=max_count, accept=lambda j: host_fits(spec, j, device))
    if found is not None:
        return found[0], found[1], None
    ch = cheapest_change(spec, job, device, keep_method=True, max_count=max_count)
    if ch is None:
        return None
    return ch.job.parallel.num_gpus, ch.job, ch


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
    bd = band(job, peak)
    v = verdict_of(peak + offloaded, usable, None if bd is None else bd.high_bytes + offloaded)
    breaker = None
    if v != FITS:
        top = max((c for c in est.components if c.key not in OVERHEAD), key=lambda c: c.bytes)
        breaker = (top.label, top.bytes)
    host = 0 if device.unified or not offloads(job) else est.cpu_bytes * job.parallel.num_gpus  # = host_bytes()
    host_cap = host_ram_bytes(device, job.parallel.num_gpus)
    host_ok = host_cap is None or host <= host_cap
    change = keep = None
    searched = suggest and (v != FITS or not host_ok)
    if searched:
        headroom_only = v in (TIGHT, UNCERTAIN) and host_ok  # a job that runs only looks for headroom
        change = cheapest_change(spec, job, device, headroom_only=headroom_only)
        if change and change.job.method.kind != job.method.kind:
            keep = cheapest_change(spec, job, device, headroom_only=headroom_only, keep_method=True)
    mb = ms = None
    if limits:
        mb = max_micro_batch(spec, job, usable, unified=device.unified)
        ms = max_seq_len(spec, job, usable, multiple=128, unified=device.unified)
    return FitVerdict(device, job, v, peak, usable, (usable - peak - offloaded) / usable, breaker, change, mb, ms,
                      keep, offloaded, searched, host, host_cap, bd)
