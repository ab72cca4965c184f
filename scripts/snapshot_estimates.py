"""Snapshot every estimate a refactor must not change, to compare before and after.

Writes one JSON object (bytes, seconds) keyed by job: every catalog model x method
(full, lora, qlora, qlora int8, dora, freeze) at 2k and 8k tokens, plus a grid of
settings variants (framework, cross-entropy, optimizer, precision, checkpointing,
attention, sharding, offload) on three models, and the step time of each variant on
two devices. Usage:

    python scripts/snapshot_estimates.py before.json
    ... change the code ...
    python scripts/snapshot_estimates.py after.json --compare before.json

`--compare` prints how many jobs were compared and every difference; exit code 1 if any.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import catalog, resolve_model
from tuneplan.timing import step_time

METHODS = ({"method": "full"}, {"method": "lora"}, {"method": "qlora"}, {"method": "qlora", "quant": "int8"},
           {"method": "dora"}, {"method": "freeze"})
VARIANT_MODELS = ("llama-3.1-8b", "qwen2.5-0.5b", "mixtral-8x7b")
VARIANTS = {
    "framework": [{"framework": f} for f in ("hf", "unsloth", "torchtune", "axolotl", "llamafactory")],
    "ce": [{}, {"fused_ce": True}],
    "optimizer": [{"optimizer": o} for o in ("adamw", "adamw-foreach", "adamw-8bit", "paged-adamw-8bit",
                                             "adafactor", "sgd", "sgd-momentum", "lion", "lion-8bit")],
    "precision": [{"precision": p} for p in ("bf16", "fp32", "amp", "mixed")],
    "ckpt": [{"checkpointing": c} for c in ("none", "full", "offload")],
    "attention": [{"attention": a} for a in ("sdpa", "eager")],
    "parallel": [{}, {"num_gpus": 4, "sharding": "zero2"}, {"num_gpus": 8, "sharding": "fsdp"},
                 {"num_gpus": 2, "sharding": "ddp"},
                 {"num_gpus": 4, "sharding": "zero3", "offload_optimizer": True, "offload_params": True}],
}


def _job(settings: dict) -> Job:
    from_settings = getattr(Job, "from_settings", None)
    if from_settings is not None:
        return from_settings(**settings)
    from dataclasses import fields

    from tuneplan import estimate  # noqa: F401  (old layout: build the Job like the API did)
    from tuneplan.job import Method, Parallel, Training, parse_targets  # noqa: F401

    s = dict(settings)
    s["kind"] = s.pop("method", "lora")
    groups = {Method: {}, Training: {}, Parallel: {}}
    for k, v in s.items():
        for cls in groups:
            if k in {f.name for f in fields(cls)}:
                groups[cls][k] = v
                break
    return Job(Method(**groups[Method]), Training(**groups[Training]), Parallel(**groups[Parallel]))


def _strip(d: dict) -> dict:
    """Drop the echo of the job's settings (its fields may grow); keep every figure."""
    return {k: v for k, v in d.items() if k not in ("method", "training", "parallel")}


def snapshot() -> dict:
    out: dict[str, object] = {}
    jobs: list[tuple[str, dict]] = []
    for name in catalog():
        for m in METHODS:
            for seq in (2048, 8192):
                jobs.append((name, {**m, "seq_len": seq}))
    for name in VARIANT_MODELS:
        for combo in itertools.product(VARIANTS["framework"], VARIANTS["ce"], VARIANTS["precision"],
                                       VARIANTS["ckpt"], VARIANTS["attention"]):
            for m in ({"method": "full"}, {"method": "lora"}, {"method": "qlora"}):
                s = {**m}
                for part in combo:
                    s.update(part)
                jobs.append((name, s))
        for m in ({"method": "full"}, {"method": "lora"}, {"method": "dora"}):
            for o in VARIANTS["optimizer"]:
                for par in VARIANTS["parallel"]:
                    jobs.append((name, {**m, **o, **par, "micro_batch": 2, "grad_accum": 2}))
    devices = [resolve_device("h100"), resolve_device("rtx-4090")]
    for name, s in jobs:
        key = json.dumps([name, s], sort_keys=True)
        try:
            spec = resolve_model(name)
            job = _job(s)
            entry = {"estimate": _strip(estimate_memory(spec, job).to_dict())}
            for d in devices:
                entry[d.id] = step_time(spec, job, d).to_dict()
        except TuneplanError as e:
            entry = {"error": str(e)}
        out[key] = entry
    # fit verdicts (verdict, peaks, the job each fix gives) and ranked plans
    from tuneplan.fit import fit_verdict
    from tuneplan.plan import plan
    from tuneplan.timing import Dataset

    fit_devices = [resolve_device(d) for d in ("rtx-3090", "rtx-4090", "a100-40gb", "h100", "m4-max")]
    for name in ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-14b", "llama-3.1-70b", "mixtral-8x7b"):
        spec = resolve_model(name)
        for m in ({"method": "full"}, {"method": "lora"}, {"method": "qlora"}):
            for extra in ({}, {"micro_batch": 8, "seq_len": 4096}, {"checkpointing": "none"}):
                s = {**m, **extra}
                for d in fit_devices:
                    v = fit_verdict(spec, _job(s), d, limits=True)
                    cj = v.change_job if hasattr(v, "change_job") and v.change_job is not None else (
                        v.change.job if v.change is not None and not isinstance(v.change, str) else None)
                    out[json.dumps(["fit", name, s, d.id], sort_keys=True)] = {
                        "verdict": v.verdict, "peak": v.peak_bytes, "max_mb": v.max_micro_batch,
                        "max_seq": v.max_seq_len, "change_job": _job_view(cj),
                        "change_peak": (v.change_peak_bytes if hasattr(v, "change_peak_bytes")
                                        else (v.change.peak_bytes if v.change else None)),
                        "keeps": v.keep_method_change is not None}
            res = plan(spec, _job(m), Dataset(10_000_000), fit_devices)
            out[json.dumps(["plan", name, m], sort_keys=True)] = [
                [s.device.id, s.count, _job_view(s.job), s.peak_bytes, s.run.run_s, s.cost.to_dict()]
                for s in res.setups]
    return out


def _job_view(j: Job | None) -> dict | None:
    """The settings a fix or a plan changes, in a form both layouts share."""
    if j is None:
        return None
    t, p = j.training, j.parallel
    fused = getattr(t, "fused_ce", False) or getattr(t, "cross_entropy", None) == "fused"
    return {"kind": j.method.kind, "mb": t.micro_batch, "ga": t.grad_accum, "ck": t.checkpointing,
            "opt": t.optimizer, "fused": fused, "n": p.num_gpus, "sh": p.sharding,
            "oo": p.offload_optimizer, "op": p.offload_params}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--compare", metavar="BEFORE")
    args = ap.parse_args()
    snap = snapshot()
    with open(args.out, "w") as f:
        json.dump(snap, f, sort_keys=True)
    print(f"{len(snap)} jobs written to {args.out}")
    if not args.compare:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    after = json.loads(json.dumps(snap, sort_keys=True))
    diffs = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    print(f"compared {len(set(before) & set(after))} jobs: {len(diffs)} differences")
    for k in diffs[:20]:
        print("  ", k, "\n    before:", json.dumps(before.get(k))[:300], "\n    after: ", json.dumps(after.get(k))[:300])
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
