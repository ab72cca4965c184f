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
from tuneplan.disk import DiskEstimate, estimate_disk
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


TUNING_ASSUMPTION = ("Tuning picks the largest micro-batch that fits with 10% headroom (up to --max-batch), with "
                     "and without checkpointing; gradient accumulation keeps the job's global batch where it is "
                     "larger (--batch x --grad-accum x --gpus), else the global batch grows.")


@dataclass(frozen=True)
class PlanReport:
    """Everything `plan` answers for one job: ranked setups, devices that cannot run it,
    disk, and the assumptions behind the figures. Shells render it; `to_dict` is the JSON.

    Args:
        model: model name.
        job: the job as asked.
        dataset: tokens per epoch and epochs.
        result: ranked setups and unfit devices.
        disk: disk needs of the run.
        assumptions: sentences for the top setup's time model and the tuning rule.
        notes: software caveats of the devices in the top `top` setups, each once.
        utilisation / usd_per_kwh: the break-even basis used for cost.
    """

    model: str
    job: Job
    dataset: Dataset
    result: PlanResult
    disk: DiskEstimate
    assumptions: tuple[str, ...]
    notes: tuple[str, ...]
    utilisation: float
    usd_per_kwh: float

    def to_dict(self) -> dict:
        """JSON view (bytes, seconds, USD)."""
        r = self.result
        return {"model": self.model, "rank_by": r.rank_by, "dataset_tokens": self.dataset.tokens,
                "epochs": self.dataset.epochs, "setups": [s.to_dict() for s in r.setups],
                "unfit": [{"device": d, "why": w} for d, w in r.unfit], "disk": self.disk.to_dict(),
                "assumptions": list(self.assumptions), "notes": list(self.notes),
                "utilisation": self.utilisation, "usd_per_kwh": self.usd_per_kwh}


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


def plan_report(spec: ModelSpec, job: Job, dataset: Dataset, devices: list[Device], rank_by: str = "time",
                max_gpus: int | None = None, tune: bool = True, max_batch: int = 16,
                utilisation: float = cal.DEFAULT_UTILISATION, usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH,
                efficiency: float | None = None, saves: int = 3, top: int = 15) -> PlanReport:
    """The whole `plan` answer: ranked setups (see `plan`), disk for `saves` checkpoints,
    the assumptions of the top setup and the caveats of the first `top` setups."""
    if top < 1:
        raise TuneplanError(f"--top must be positive, got {top}")
    if max_gpus is not None and max_gpus < 1:
        raise TuneplanError(f"--max-gpus must be positive, got {max_gpus}")
    res = plan(spec, job, dataset, devices, rank_by=rank_by, max_gpus=max_gpus, tune=tune, max_batch=max_batch,
               utilisation=utilisation, usd_per_kwh=usd_per_kwh, efficiency=efficiency)
    disk = estimate_disk(spec, job, dataset.tokens, saves=saves)
    assumptions: tuple[str, ...] = ()
    if res.setups:
        assumptions = res.setups[0].run.step.assumptions + ((TUNING_ASSUMPTION,) if tune else ())
    notes = tuple(dict.fromkeys(n for s in res.setups[:top] for n in support_notes(s.device, s.job)))
    return PlanReport(spec.name, job, dataset, res, disk, assumptions, notes, utilisation, usd_per_kwh)
