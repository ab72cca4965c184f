"""Rank setups (device x count x settings) for one model and job by run time or cost.

For each device: the fewest devices that fit (tuneplan.search.min_gpus), then doublings
of that count up to the device's max; at each count, with tuning on, the largest
micro-batch that fits with 10% headroom (up to `max_batch`) with and without gradient checkpointing; the
faster variant that fits is kept. The global batch is kept near the job's
(micro-batch x grad-accum x GPUs) by adjusting gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuneplan import calibration as cal
from tuneplan.cost import CostEstimate, estimate_cost
from tuneplan.errors import TuneplanError
from tuneplan.fit import support_notes, verdict_of
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import peak_bytes
from tuneplan.models import ModelSpec
from tuneplan.search import max_micro_batch, min_gpus
from tuneplan.timing import Dataset, RunTime, run_time


@dataclass(frozen=True)
class Setup:
    """One ranked way to run the job."""

    device: Device
    count: int
    job: Job
    verdict: str
    peak_bytes: int
    run: RunTime
    cost: CostEstimate

    def to_dict(self) -> dict:
        t, p = self.job.training, self.job.parallel
        return {
            "device": self.device.id, "count": self.count, "method": self.job.method.kind,
            "micro_batch": t.micro_batch, "grad_accum": t.grad_accum, "seq_len": t.seq_len,
            "checkpointing": t.checkpointing, "sharding": p.sharding, "offload_optimizer": p.offload_optimizer,
            "offload_params": p.offload_params, "verdict": self.verdict, "peak_bytes": self.peak_bytes,
            "usable_bytes": self.device.usable_bytes, "time": self.run.to_dict(), "cost": self.cost.to_dict(),
            "notes": list(support_notes(self.device, self.job)),
        }


@dataclass(frozen=True)
class PlanResult:
    """Ranked setups, and the devices that cannot run the job (with why)."""

    setups: tuple[Setup, ...]
    unfit: tuple[tuple[str, str], ...]
    rank_by: str


def _global_batch(job: Job) -> int:
    t = job.training
    return t.micro_batch * t.grad_accum * job.parallel.num_gpus


def _variants(spec: ModelSpec, base: Job, device: Device, tune: bool, max_batch: int) -> list[Job]:
    """Jobs to time on one device count: the job itself, or tuned batch x checkpointing."""
    if not tune:
        return [base]
    t = base.training
    out = []
    ckpts = [t.checkpointing] + (["none"] if t.checkpointing != "none" else [])
    target = _global_batch(base)
    n = base.parallel.num_gpus
    for ck in ckpts:
        j = replace(base, training=replace(t, checkpointing=ck))
        cap = max(max_batch, t.micro_batch)
        # prefer a batch that leaves the 10% headroom; accept a tight fit only at batch 1
        b = max_micro_batch(spec, j, int(device.usable_bytes * (1 - cal.TIGHT_HEADROOM)), cap=cap)
        if b == 0 and max_micro_batch(spec, j, device.usable_bytes, cap=1):
            b = 1
        if b == 0:
            continue
        accum = max(1, round(target / (b * n)))
        out.append(replace(j, training=replace(j.training, micro_batch=b, grad_accum=accum)))
    return out


def plan(spec: ModelSpec, job: Job, dataset: Dataset, devices: list[Device], rank_by: str = "time",
         max_gpus: int | None = None, tune: bool = True, max_batch: int = 16,
         utilisation: float = cal.DEFAULT_UTILISATION, usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH,
         efficiency: float | None = None) -> PlanResult:
    """Rank every fitting setup by run time ("time"), cloud cost of the run ("cost") or
    purchase price of the devices ("purchase").

    Devices without a FLOPS figure are listed as unfit ("no FLOPS figure"); setups without
    a cloud price sort after priced ones when ranking by cost.
    """
    if rank_by not in ("time", "cost", "purchase"):
        raise TuneplanError(f"unknown ranking {rank_by!r}; use time, cost or purchase")
    setups: list[Setup] = []
    unfit: list[tuple[str, str]] = []
    for d in devices:
        limit = min(d.max_count, max_gpus) if max_gpus else d.max_count
        found = min_gpus(spec, job, d, max_count=limit)
        if found is None:
            unfit.append((d.id, f"does not fit on {limit} x {d.id}"))
            continue
        if not d.bf16_tflops:
            unfit.append((d.id, f"fits on {found[0]} but no published FLOPS figure to time it"))
            continue
        n0, j0 = found
        counts, n = [], n0
        while n <= limit:
            counts.append(n)
            n *= 2
        for n in counts:
            base = replace(j0, parallel=replace(j0.parallel, num_gpus=n))
            best: Setup | None = None
            for j in _variants(spec, base, d, tune, max_batch):
                pk = peak_bytes(spec, j)
                if pk > d.usable_bytes:
                    continue
                rt = run_time(spec, j, d, dataset, efficiency=efficiency)
                s = Setup(d, n, j, verdict_of(pk, d.usable_bytes), pk, rt,
                          estimate_cost(d, n, rt.run_s, utilisation, usd_per_kwh))
                if best is None or s.run.run_s < best.run.run_s:
                    best = s
            if best is not None:
                setups.append(best)

    def key(s: Setup):
        if rank_by == "time":
            return (s.run.run_s, s.count)
        c = s.cost.cloud_usd if rank_by == "cost" else s.cost.purchase_usd
        return (c is None, c if c is not None else 0.0, s.run.run_s)

    return PlanResult(tuple(sorted(setups, key=key)), tuple(unfit), rank_by)
