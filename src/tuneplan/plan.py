"""Rank setups (device x count x settings) for one model and job by run time or cost.

For each device: the fewest devices that fit (tuneplan.search.min_gpus; where none does, the
job as the fit verdict's own search changes it, keeping the method: tuneplan.fit.plan_base,
said in the setup's `change`; counts are node-sized: 1, 2, 4, 8 in a machine, then whole
machines, and the layout is searched too: data x TP inside a machine x PP), then doublings
of that count up to one machine (or 4 x the fewest when that already spans machines; up
to --max-gpus when given), each with the layout that fits there with the least
communication; at each count, with tuning on, the largest
micro-batch that fits with 10% headroom (up to `max_batch`) with and without gradient checkpointing; the
faster variant that fits is kept (one with 10% headroom over a tight one). The global batch is kept near the job's
(micro-batch x grad-accum x GPUs) by adjusting gradient accumulation.

Setups that fit (10% headroom, and the estimate's uncertainty band within usable memory) rank
before tight or uncertain ones (the peak fits, the band's upper end does not), whatever the ranking. Without a
dataset size the plan still ranks fit, throughput (tokens/s) and cost per million tokens;
epoch and run figures need the size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tuneplan import calibration as cal
from tuneplan import lowprec
from tuneplan.bounds import MAX_COUNT, MAX_SEQ_LEN, show_value
from tuneplan.cost import CostEstimate, estimate_cost
from tuneplan.disk import DiskEstimate, estimate_disk
from tuneplan.errors import TuneplanError
from tuneplan.fit import FITS, HOST_RAM_ASSUMPTION, Change, host_fits, plan_base, support_notes, verdict_of
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.model_spec import ModelSpec
from tuneplan.search import (
    at_count,
    describe_layout,
    gpu_counts,
    layout_at,
    max_micro_batch,
    offloads,
    pool_bytes,
)
from tuneplan.timing import Dataset, RunTime, StepTime, run_time, step_time
from tuneplan.uncertainty import high_bytes
from tuneplan.units import GiB, parse_number

PER_TOKENS = 1_000_000  # cost basis without a dataset: USD per million tokens


@dataclass(frozen=True)
class Setup:
    """One ranked way to run the job.

    Args:
        run: epoch and run time (None when no dataset size was given).
        cost: of the run, or of PER_TOKENS tokens when no dataset size was given.
        step: the optimizer step's time and throughput (always set).
        offloaded_bytes: on unified memory, what offload keeps in the same memory (counted
            in the verdict with peak_bytes).
        change: the change the fit search made to run the job on this device when it fits
            no GPU count as asked (tuneplan.fit.plan_base), else None.
    """

    device: Device
    count: int
    job: Job
    verdict: str
    peak_bytes: int
    run: RunTime | None
    cost: CostEstimate
    step: StepTime | None = None
    offloaded_bytes: int = 0
    change: Change | None = None

    @property
    def tokens_per_s(self) -> float:
        return (self.step or self.run.step).tokens_per_s

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Cloud cost of training on a million tokens with this setup."""
        rate = self.cost.cloud_usd_per_hour
        return rate * self.count / 3600 / self.tokens_per_s * 1e6 if rate else None

    def to_dict(self) -> dict:
        t, p = self.job.training, self.job.parallel
        step = self.step or self.run.step
        return {
            "device": self.device.id, "count": self.count, "method": self.job.method.kind,
            "micro_batch": t.micro_batch, "grad_accum": t.grad_accum, "seq_len": t.seq_len,
            "checkpointing": t.checkpointing, "sharding": p.sharding, "offload_optimizer": p.offload_optimizer,
            "framework": t.framework, "layout": describe_layout(self.job), "tensor": p.tensor,
            "pipeline": p.pipeline, "context": p.context, "expert": p.expert, "machines": p.machines,
            "offload_params": p.offload_params, "verdict": self.verdict, "peak_bytes": self.peak_bytes,
            "offloaded_bytes": self.offloaded_bytes, "usable_bytes": self.device.usable_bytes,
            "time": self.run.to_dict() if self.run else {"step": step.to_dict()}, "cost": self.cost.to_dict(),
            "cloud_usd_per_million_tokens": self.usd_per_million_tokens,
            "notes": list(support_notes(self.device, self.job)),
            "change": self.change.to_dict() if self.change else None,
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
        dataset: tokens per epoch and epochs; None ranks by throughput and cost per
            PER_TOKENS tokens (each setup's cost is then for that many tokens).
        result: ranked setups and unfit devices.
        disk: disk needs of the run.
        assumptions: sentences for the top setup's time model and the tuning rule.
        notes: software caveats of the devices in the top `top` setups, each once.
        utilisation / usd_per_kwh: the break-even basis used for cost.
    """

    model: str
    job: Job
    dataset: Dataset | None
    result: PlanResult
    disk: DiskEstimate
    assumptions: tuple[str, ...]
    notes: tuple[str, ...]
    utilisation: float
    usd_per_kwh: float

    @property
    def why(self) -> str:
        """One line on why the first setup won: its layout and what forced it."""
        if not self.result.setups:
            return ""
        top = self.result.setups[0]
        fewest = min(s.count for s in self.result.setups if s.device.id == top.device.id)
        return why_line(top, self.result.rank_by, fewest)

    def to_dict(self) -> dict:
        """JSON view (bytes, seconds, USD)."""
        r, ds = self.result, self.dataset
        return {"model": self.model, "rank_by": r.rank_by, "why": self.why, "dataset_tokens": ds.tokens if ds else None,
                "epochs": ds.epochs if ds else None,
                "cost_basis": "run" if ds else f"{PER_TOKENS:,} tokens", "setups": [s.to_dict() for s in r.setups],
                "unfit": [{"device": d, "why": w} for d, w in r.unfit], "disk": self.disk.to_dict(),
                "assumptions": list(self.assumptions), "notes": list(self.notes),
                "utilisation": self.utilisation, "usd_per_kwh": self.usd_per_kwh}


MAX_DATASET_TOKENS = 10**15  # a quadrillion tokens per epoch
MAX_EPOCHS = 10_000


def make_dataset(dataset_tokens: int | str | None = None, samples: int | str | None = None,
                 mean_tokens: float | str | None = None, epochs: float | str | None = None) -> Dataset | None:
    """The dataset of a plan from what a user gave (the CLI's and the API's one boundary):
    tokens per epoch, or samples x mean tokens per sample, and epochs. Counts may be
    typed ('100M', '2k', 1e8); None everywhere gives None (plan without a size).

    Raises:
        TuneplanError: both kinds of size, half of samples x mean tokens, epochs without a
            size, or a value that is not a finite positive number in range.
    """
    def value(name: str, v: object, whole: bool, hi: float) -> int | float | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = parse_number(v, whole=whole)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise TuneplanError(f"{name} must be a finite number, got {show_value(v)}")
        if whole and isinstance(v, float):
            if not v.is_integer():
                raise TuneplanError(f"{name} must be a whole number, got {show_value(v)}")
            v = int(v)
        if not 0 < v <= hi:
            raise TuneplanError(f"{name} must be positive and at most {hi:,}, got {show_value(v)}")
        return v

    tokens = value("--dataset-tokens", dataset_tokens, True, MAX_DATASET_TOKENS)
    n = value("--samples", samples, True, MAX_DATASET_TOKENS)
    mean = value("--mean-tokens", mean_tokens, False, MAX_SEQ_LEN)
    ep = value("--epochs", epochs, False, MAX_EPOCHS)
    if n is not None or mean is not None:
        if n is None or mean is None:
            raise TuneplanError("--samples and --mean-tokens go together")
        if tokens is not None:
            raise TuneplanError("give either --dataset-tokens or --samples with --mean-tokens, not both")
        if n * mean > MAX_DATASET_TOKENS:
            raise TuneplanError(f"--samples x --mean-tokens is above {MAX_DATASET_TOKENS:,} tokens")
        return Dataset.from_samples(n, mean, 1.0 if ep is None else ep)
    if tokens is None:
        if ep is not None:
            raise TuneplanError("--epochs needs the dataset size: --dataset-tokens 100M, or --samples 50k "
                                "--mean-tokens 600")
        return None
    return Dataset(tokens, 1.0 if ep is None else ep)


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
        # prefer a batch that leaves the 10% headroom and whose uncertainty band's upper end
        # (tuneplan.uncertainty: a ratio of the peak per kind of job) fits; accept a tight or
        # uncertain fit only at batch 1
        limit = device.usable_bytes * (1 - cal.TIGHT_HEADROOM)
        if (hi := high_bytes(j, GiB)) is not None and hi > 0:
            limit = min(limit, device.usable_bytes * GiB / hi)
        b = max_micro_batch(spec, j, int(limit), cap=cap, unified=device.unified)
        if b == 0 and max_micro_batch(spec, j, device.usable_bytes, cap=1, unified=device.unified):
            b = 1
        if b == 0:
            continue
        accum = max(1, round(target / (b * n)))
        out.append(replace(j, training=replace(j.training, micro_batch=b, grad_accum=accum)))
    return out


def plan(spec: ModelSpec, job: Job, dataset: Dataset | None, devices: list[Device], rank_by: str = "time",
         max_gpus: int | None = None, tune: bool = True, max_batch: int = 16,
         utilisation: float = cal.DEFAULT_UTILISATION, usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH,
         efficiency: float | None = None) -> PlanResult:
    """Rank every fitting setup by run time ("time"), cloud cost of the run ("cost") or
    purchase price of the devices ("purchase"); setups with 10% headroom first.

    Without a `dataset`, "time" ranks by throughput and "cost" by cloud cost per
    PER_TOKENS tokens. Devices without a FLOPS figure are listed as unfit ("no FLOPS
    figure"); setups without a cloud price sort after priced ones when ranking by cost.
    """
    if rank_by not in ("time", "cost", "purchase"):
        raise TuneplanError(f"unknown ranking {rank_by!r}; use time, cost or purchase")
    setups: list[Setup] = []
    unfit: list[tuple[str, str]] = []
    for d in devices:
        why = lowprec.unsupported(d, job.training.dtypes)  # [lowprec hook] fp8/mxfp8/nvfp4 not run there
        if why:
            unfit.append((d.id, why))
            continue
        try:  # the job on this vendor's runtime may be refused (e.g. vLLM on Apple's MPS): listed, not fatal
            job.on_vendor(d.vendor)
        except TuneplanError as e:
            unfit.append((d.id, str(e)))
            continue
        counts_all = gpu_counts(d, max_gpus)
        limit = counts_all[-1] if counts_all else 0
        found = plan_base(spec, job, d, max_count=limit) if limit else None
        if found is None:
            unfit.append((d.id, f"does not fit on {limit} x {d.id}, with any change that keeps "
                                f"{job.method.kind} either (host RAM for offload included)"))
            continue
        if not d.bf16_tflops:
            unfit.append((d.id, f"fits on {found[0]} but no published FLOPS figure to time it"))
            continue
        n0, j0, change = found
        # the fewest GPUs that fit, then doublings of it (node-sized: whole machines beyond one)
        # up to one machine, or 4 x the fewest when that already spans machines (--max-gpus: up to it)
        top = limit if max_gpus else max(d.max_count, 4 * n0)
        counts = [c for c in counts_all if n0 <= c <= top and c % n0 == 0 and (c // n0) & (c // n0 - 1) == 0]
        for n in counts:
            # at each count the layout with the least communication that fits there (a
            # replica count that doubles may need another sharding than the fewest GPUs did)
            base = (layout_at(spec, j0, d, n) if n != n0 and change is None else None) or at_count(j0, n, d)
            best: Setup | None = None
            for j in _variants(spec, base, d, tune, max_batch):
                if d.unified and offloads(j):
                    est = estimate_memory(spec, j)
                    pk, off = est.peak_bytes, est.cpu_bytes
                else:
                    pk, off = pool_bytes(spec, j), 0
                if pk + off > d.usable_bytes or (offloads(j) and not host_fits(spec, j, d)):
                    continue
                if dataset is not None:
                    rt = run_time(spec, j, d, dataset, efficiency=efficiency)
                    st, seconds = rt.step, rt.run_s
                else:
                    rt, st = None, step_time(spec, j, d, efficiency=efficiency)
                    seconds = PER_TOKENS / st.tokens_per_s
                high = high_bytes(j, pk)  # the band's upper end (tuneplan.uncertainty)
                s = Setup(d, n, j, verdict_of(pk + off, d.usable_bytes, None if high is None else high + off), pk, rt,
                          estimate_cost(d, n, seconds, utilisation, usd_per_kwh), st, off, change)
                if best is None or _faster(s, best):
                    best = s
            if best is not None:
                setups.append(best)

    def key(s: Setup):
        tight = s.verdict != FITS  # 10% headroom first, whatever the ranking
        slow = s.run.run_s if s.run else -s.tokens_per_s
        if rank_by == "time":
            return (tight, slow, s.count)
        c = s.cost.cloud_usd if rank_by == "cost" else s.cost.purchase_usd
        return (tight, c is None, c if c is not None else 0.0, slow)

    return PlanResult(tuple(sorted(setups, key=key)), tuple(unfit), rank_by)


def why_line(s: Setup, rank_by: str, fewest: int | None = None) -> str:
    """'TP 8 x fsdp 4 over 4 machines on h100-sxm: ...' - the layout and the reason for it.
    `fewest`: the fewest GPUs of that device that run the job (more than it are for speed)."""
    p, per = s.job.parallel, s.device.max_count
    fewest = fewest or s.count
    reasons = []
    if s.count > fewest:
        where = f"over {p.machines} machines" if p.machines > 1 else "in one machine"
        reasons.append(f"{fewest} GPU{'s' if fewest > 1 else ''} run{'' if fewest > 1 else 's'} it; {s.count} {where} "
                       + ("finish sooner" if rank_by == "time" else "cost no more and finish sooner"))
    elif p.machines > 1:
        reasons.append(f"the job does not fit one machine ({per} x {s.device.id})")
    if p.pipeline > 1:
        reasons.append("pipeline stages split the layers where a tensor-parallel group inside a machine is not enough")
    elif p.tensor > 1:
        reasons.append(f"TP {p.tensor} inside a machine splits every layer, so the states fit in fewer GPUs than "
                       "data-parallel sharding alone")
    if p.data > 1 and p.shard_stage:
        reasons.append(f"{p.layout.label} over the data-parallel ranks")
    basis = {"time": "fastest run", "cost": "cheapest run", "purchase": "cheapest to buy"}[rank_by]
    return (f"{s.count} x {s.device.id} ({describe_layout(s.job)}, {s.job.training.profile.label}) ranks first as the "
            f"{basis}" + (": " + "; ".join(reasons) if reasons else ""))


def _faster(a: Setup, b: Setup) -> bool:
    """a beats b at one device count: 10% headroom first, then speed."""
    if (a.verdict == FITS) != (b.verdict == FITS):
        return a.verdict == FITS
    if a.run and b.run:
        return a.run.run_s < b.run.run_s
    return a.tokens_per_s > b.tokens_per_s


def plan_report(spec: ModelSpec, job: Job, dataset: Dataset | None, devices: list[Device], rank_by: str = "time",
                max_gpus: int | None = None, tune: bool = True, max_batch: int = 16,
                utilisation: float = cal.DEFAULT_UTILISATION, usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH,
                efficiency: float | None = None, saves: int = 3, top: int = 15) -> PlanReport:
    """The whole `plan` answer: ranked setups (see `plan`), disk for `saves` checkpoints,
    the assumptions of the top setup and the caveats of the first `top` setups.

    Raises:
        TuneplanError: a count outside 1..MAX_COUNT, a price or share that is not a finite
            number in range, or an unknown ranking.
    """
    for name, value, lo in (("--top", top, 1), ("--max-gpus", max_gpus, 1), ("--max-batch", max_batch, 1),
                            ("--saves", saves, 0)):
        if value is None and name == "--max-gpus":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_COUNT:
            raise TuneplanError(f"{name} must be a whole number from {lo} to {MAX_COUNT:,}, got {show_value(value)}")
    for name, value in (("--utilisation", utilisation), ("--usd-per-kwh", usd_per_kwh), ("--efficiency", efficiency)):
        if value is None and name == "--efficiency":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise TuneplanError(f"{name} must be a finite number, got {show_value(value)}")
    if efficiency is not None and not 0 < efficiency <= 1:
        raise TuneplanError(f"--efficiency must be in (0, 1], got {efficiency}")
    if not 0 < utilisation <= 1:
        raise TuneplanError(f"utilisation must be in (0, 1], got {utilisation}")
    if usd_per_kwh < 0:
        raise TuneplanError(f"electricity price must not be negative, got {usd_per_kwh}")
    if dataset is not None and not isinstance(dataset, Dataset):
        raise TuneplanError(f"dataset must be a tuneplan.timing.Dataset or None, got {type(dataset).__name__}")
    res = plan(spec, job, dataset, devices, rank_by=rank_by, max_gpus=max_gpus, tune=tune, max_batch=max_batch,
               utilisation=utilisation, usd_per_kwh=usd_per_kwh, efficiency=efficiency)
    disk = estimate_disk(spec, job, dataset.tokens if dataset else 0, saves=saves)
    assumptions: tuple[str, ...] = ()
    if res.setups:
        top_step = res.setups[0].step or res.setups[0].run.step
        assumptions = top_step.assumptions + ((TUNING_ASSUMPTION,) if tune else ())
        if dataset is None:
            assumptions += (f"No dataset size given: ranked by throughput and cloud cost per {PER_TOKENS:,} "
                            "tokens; give one for epoch and run time and the cost of the run.",)
    notes = tuple(dict.fromkeys(n for s in res.setups[:top] for n in support_notes(s.device, s.job)))
    changed = [s for s in res.setups[:top] if s.change is not None]
    notes += tuple(dict.fromkeys(f"{s.device.id}: the job as asked fits no GPU count; planned with "
                                 f"{s.change.description}" for s in changed))
    if any(offloads(s.job) and not s.device.unified for s in res.setups[:top]):
        notes += (HOST_RAM_ASSUMPTION,)
    return PlanReport(spec.name, job, dataset, res, disk, assumptions, notes, utilisation, usd_per_kwh)
