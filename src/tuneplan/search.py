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
from functools import lru_cache

from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.model_spec import ModelSpec

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


@lru_cache(maxsize=65536)
def _safe_peak(spec: ModelSpec, job: Job, unified: bool = False) -> int | None:
    # cached: the layout search prices the same (job, layout, count) for every device of a
    # vendor; only the usable memory it is compared with differs
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


# Machines the planner considers beyond one: whole machines, in the sizes clusters are rented
# and built in (a search over every integer would price 3- and 5-machine clusters nobody rents)
MACHINE_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
def machine_counts(device: Device) -> tuple[int, ...]:
    """Machine counts beyond one that the search builds for this device: data-centre GPUs
    span whole clusters; DGX Spark boxes pair and stack over their ConnectX-7 ports (NCCL
    works across them, so FSDP/TP do) up to 8; consumer and workstation cards are bought as
    one box (PCIe, 10-100 GbE between boxes) and Apple / AMD unified-memory machines cluster
    only as MLX data-parallel replicas, which hold the whole model each: one machine."""
    if device.category == "datacenter":
        return MACHINE_COUNTS
    if device.unified and device.vendor == "NVIDIA":
        return tuple(k for k in MACHINE_COUNTS if k <= 8)
    return ()
TP_DEGREES = (2, 4, 8)
PP_DEGREES = (2, 4, 8, 16)
# the order in which data-parallel layouts are tried at one count: least communication first
SHARDING_ORDER = ("ddp", "zero1", "zero2", "fsdp", "zero3", "hsdp")


def gpu_counts(device: Device, max_count: int | None = None) -> list[int]:
    """The GPU counts one can rent or build, ascending: 1, 2, 4, ... up to one machine of the
    device, then whole machines (MACHINE_COUNTS, not for consumer cards), up to `max_count`."""
    per = device.max_count
    counts = [c for c in (1, 2, 4, 8, 16, 32, 64) if c < per] + [per]
    counts += [k * per for k in machine_counts(device)]
    limit = max_count or counts[-1]
    return [c for c in counts if c <= limit]


def at_count(job: Job, n: int, device: Device) -> Job:
    """The job on `n` GPUs of `device`, over as many whole machines as that takes."""
    per = device.max_count
    nodes = n // per if n > per else 0
    return replace(job, parallel=replace(job.parallel, num_gpus=n, nodes=nodes))


def _layouts(spec: ModelSpec, job: Job, per_machine: int) -> list[dict]:
    """Parallel layouts to try for this job, least communication first: the job's own; data
    parallel with each sharding the stack runs; tensor parallel inside a machine; then
    pipeline stages across machines (only what the stack runs: FrameworkProfile)."""
    p, prof = job.parallel, job.training.profile
    shardings = [p.sharding] + [s for s in SHARDING_ORDER if s != p.sharding and s in prof.shardings]
    if p.offload_params:
        shardings = [s for s in shardings if SHARDING_STAGE3(s)]
    if p.model_parallel:  # the user fixed the model-parallel degrees: vary the sharding only
        return [dict(tensor=p.tensor, pipeline=p.pipeline, sharding=s) for s in shardings]
    out = [dict(tensor=1, pipeline=1, sharding=s) for s in shardings]
    if "tp" in prof.model_parallel:
        for tp in TP_DEGREES:
            if tp <= per_machine and spec.num_heads % tp == 0:
                out += [dict(tensor=tp, pipeline=1, sharding=s) for s in shardings]
    if "pp" in prof.model_parallel:
        tp = max([d for d in TP_DEGREES if d <= per_machine and spec.num_heads % d == 0], default=1)
        for pp in PP_DEGREES:
            if spec.num_layers >= 2 * pp:
                out += [dict(tensor=tp, pipeline=pp, sharding=s) for s in shardings]
    return out


def SHARDING_STAGE3(name: str) -> bool:  # noqa: N802 - a predicate over the sharding table
    from tuneplan.choices.layouts import SHARDINGS
    return SHARDINGS[name].stage == 3


def _try(spec: ModelSpec, job: Job, layout: dict, n: int, device: Device, usable: int | None = None,
         accept: Callable[[Job], bool] | None = None) -> Job | None:
    """The job with `layout` on n GPUs if that layout is valid there and fits, else None."""
    tp, pp = layout["tensor"], layout["pipeline"]
    if n % (tp * pp):
        return None
    per = device.max_count
    sharding = layout["sharding"] if n // (tp * pp) > 1 else job.parallel.sharding
    try:
        p = replace(job.parallel, tensor=tp, pipeline=pp, sharding=sharding, num_gpus=n,
                    nodes=n // per if n > per else 0)
        j = replace(job, parallel=p)
    except TuneplanError:
        return None
    pk = _safe_peak(spec, j, device.unified)
    if pk is None or pk > (usable or device.usable_bytes):
        return None
    return j if accept is None or accept(j) else None


def min_gpus(spec: ModelSpec, job: Job, device: Device, max_count: int | None = None,
             usable: int | None = None, accept: Callable[[Job], bool] | None = None) -> tuple[int, Job] | None:
    """Fewest GPUs of this kind that fit the job, and the layout that does it.

    Counts are the ones clusters come in (gpu_counts: 1, 2, 4, 8 in a machine, then whole
    machines). For each layout the stack runs (_layouts: data parallel with each sharding,
    then TP inside a machine, then PP stages), the per-GPU peak falls as GPUs are added, so
    the smallest fitting count is found by bisection over the counts and checked directly;
    the fewest GPUs win, and at equal counts the layout with the least communication (the
    earlier one). Returns (count, job with that layout) or None up to `max_count`; `usable`
    overrides the device's usable bytes (a fit with headroom); `accept` is a further test of a
    fitting job (the host RAM its offload needs: tuneplan.fit.host_fits).
    """
    try:
        job = job.on_vendor(device.vendor)  # the runtime the framework runs there (no CUDA context on MLX)
    except TuneplanError:  # a setting that runtime does not have (bitsandbytes on MPS)
        return None
    counts = gpu_counts(device, max_count)
    if not counts:
        return None
    first = _try(spec, job, dict(tensor=job.parallel.tensor, pipeline=job.parallel.pipeline,
                                 sharding=job.parallel.sharding), counts[0], device, usable, accept)
    if first is not None and counts[0] == 1:
        return 1, first
    best: tuple[int, int, Job] | None = None  # (count, layout order, job)
    for order, layout in enumerate(_layouts(spec, job, device.max_count)):
        hi = len(counts) if best is None else counts.index(best[0]) + 1
        fits = [(k, _try(spec, job, layout, counts[k], device, usable, accept)) for k in (hi - 1,)] if hi else []
        if not fits or fits[0][1] is None:
            continue
        lo_k, hi_k, found = -1, hi - 1, fits[0][1]
        while hi_k - lo_k > 1:
            mid = (lo_k + hi_k) // 2
            j = _try(spec, job, layout, counts[mid], device, usable, accept)
            if j is None:
                lo_k = mid
            else:
                hi_k, found = mid, j
        n = counts[hi_k]
        if best is None or n < best[0]:
            best = (n, order, found)
    return (best[0], best[2]) if best else None


def layout_at(spec: ModelSpec, job: Job, device: Device, n: int) -> Job | None:
    """The first layout (least communication, _layouts' order) that fits the job on exactly n
    GPUs of the device, or None."""
    try:
        job = job.on_vendor(device.vendor)
    except TuneplanError:
        return None
    for layout in _layouts(spec, job, device.max_count):
        j = _try(spec, job, layout, n, device)
        if j is not None:
            return j
    return None


def describe_layout(job: Job) -> str:
    """The layout in one phrase: 'TP 8 x PP 2 x fsdp 4 over 2 machines'."""
    p = job.parallel
    parts = [f"{name} {d}" for name, d in (("TP", p.tensor), ("PP", p.pipeline), ("CP", p.context), ("EP", p.expert))
             if d > 1]
    if p.data > 1:
        parts.append(f"{p.sharding} {p.data}")
    text = " x ".join(parts) or "1 GPU"
    if p.nodes > 1:
        text += f" over {p.nodes} machines"
    return text


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
