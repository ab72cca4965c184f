"""Searches over the memory estimate: largest micro-batch, longest sequence, fewest GPUs, cheapest setup.

Each search relies on the per-GPU peak growing with micro-batch and sequence length and
not growing with the GPU count under sharding; it checks its answer directly (the found
value fits, the next one does not) rather than trusting that.

On unified-memory devices (Apple silicon, DGX Spark, Strix Halo) "CPU RAM" is the same
memory as the GPU's, so what offload moves there still counts against the device's usable
memory: :func:`pool_bytes` is the figure every search and verdict compares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.models import ModelSpec

MAX_BATCH = 4096
MAX_SEQ = 1 << 22  # 4M tokens


def largest_fitting(fits: Callable[[int], bool], hi_cap: int, start: int = 1) -> int:
    """Largest x in [1, hi_cap] with fits(x), assuming fits is monotone (True then False); 0 if none.

    From `start` (clamped to [1, hi_cap]): gallop up by doubling while it fits, or halve down
    until it does, then bisect: O(log x) calls. The planner starts at 1; `tuneplan probe`
    starts at the estimate's answer, so a good estimate costs few real runs.
    """
    start = min(max(1, start), hi_cap)
    if fits(start):
        lo, hi = start, start * 2
        while hi <= hi_cap and fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, hi_cap + 1)
    else:
        hi, lo = start, start // 2
        while lo >= 1 and not fits(lo):
            hi, lo = lo, lo // 2
        if lo < 1:
            return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def offloads(job: Job) -> bool:
    """True when the job keeps something in CPU RAM (optimizer/parameter or checkpoint offload)."""
    p = job.parallel
    return p.offload_optimizer or p.offload_params or job.training.checkpointing == "offload"


def pool_bytes(spec: ModelSpec, job: Job, unified: bool = False) -> int:
    """Bytes that must fit the device's usable memory: the per-GPU peak, plus on a
    unified-memory device what offload keeps in "CPU RAM" (the same memory there)."""
    if unified and offloads(job):
        est = estimate_memory(spec, job)
        return est.peak_bytes + est.cpu_bytes
    return peak_bytes(spec, job)


def _safe_peak(spec: ModelSpec, job: Job, unified: bool = False) -> int | None:
    try:
        return pool_bytes(spec, job, unified)
    except TuneplanError:
        return None


def max_micro_batch(spec: ModelSpec, job: Job, usable_bytes: int, cap: int = MAX_BATCH,
                    memo: dict[int, int] | None = None, unified: bool = False) -> int:
    """Largest micro-batch whose per-GPU peak fits `usable_bytes` (0 if batch 1 does not fit).

    Args:
        memo: optional {micro_batch: bytes} shared between devices of one job (the
            planner and matrix search many devices for the same model and settings); one
            memo per value of `unified` when the job offloads.
        unified: the device has unified memory (offloaded bytes count, see pool_bytes).
    """
    memo = {} if memo is None else memo
    t = job.training

    def fits(b: int) -> bool:
        if b not in memo:
            memo[b] = pool_bytes(spec, replace(job, training=replace(t, micro_batch=b)), unified)
        return memo[b] <= usable_bytes

    return largest_fitting(fits, cap)


def max_seq_len(spec: ModelSpec, job: Job, usable_bytes: int, multiple: int = 1, cap: int = MAX_SEQ,
                unified: bool = False) -> int:
    """Longest sequence length (a multiple of `multiple`) that fits at the job's micro-batch; 0 if none.

    Not capped by the model's max_position: the caller compares with it.
    """
    t = job.training

    def fits(k: int) -> bool:
        pk = _safe_peak(spec, replace(job, training=replace(t, seq_len=k * multiple)), unified)
        return pk is not None and pk <= usable_bytes

    return largest_fitting(fits, cap // multiple) * multiple


def min_gpus(spec: ModelSpec, job: Job, device: Device, max_count: int | None = None) -> tuple[int, Job] | None:
    """Fewest devices of this kind that fit the job, and the sharding that does it.

    Tries the job's own sharding first; if that does not fit at some count, the lowest ZeRO
    stage that does (zero1 -> zero2 -> fsdp), so a fit is found with the least communication.
    Returns (count, job with that parallel setup) or None up to `max_count` (device max).
    """
    limit = max_count or device.max_count
    usable = device.usable_bytes
    job = job.on_vendor(device.vendor)  # the runtime the framework runs there (no CUDA context on MLX)
    p = job.parallel
    stages = [p.sharding] + [s for s in ("zero1", "zero2", "fsdp") if s != p.sharding]
    if p.offload_params:
        stages = [s for s in stages if s in ("zero3", "fsdp")]
    for n in range(1, limit + 1):
        for s in stages if n > 1 else [p.sharding]:
            j = replace(job, parallel=replace(p, num_gpus=n, sharding=s))
            pk = _safe_peak(spec, j, device.unified)
            if pk is not None and pk <= usable:
                return n, j
    return None


@dataclass(frozen=True)
class Option:
    """One device x count that runs the job, with its price figures (None where unknown)."""

    device: Device
    count: int
    job: Job
    peak_bytes: int
    purchase_usd: float | None
    cloud_usd_per_hour: float | None


def cheapest(spec: ModelSpec, job: Job, devices: list[Device], by: str = "cloud") -> list[Option]:
    """Every device (fewest GPUs each) that fits the job, cheapest first.

    Args:
        by: "cloud" ranks by cloud $/hour of the cluster, "purchase" by purchase price;
            devices without that price come last.
    """
    if by not in ("cloud", "purchase"):
        raise TuneplanError(f"unknown price basis {by!r}; use cloud or purchase")
    out = []
    for d in devices:
        found = min_gpus(spec, job, d)
        if found is None:
            continue
        n, j = found
        out.append(Option(d, n, j, pool_bytes(spec, j, d.unified), d.price_usd * n if d.price_usd else None,
                          d.cloud_usd_per_hour * n if d.cloud_usd_per_hour else None))

    def key(o: Option):
        price = o.cloud_usd_per_hour if by == "cloud" else o.purchase_usd
        return (price is None, price or 0.0, o.count)

    return sorted(out, key=key)
