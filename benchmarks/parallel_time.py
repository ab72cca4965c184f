"""Tokens/s per GPU of multi-GPU layouts against the measured rows of parallel.csv.

Each row is expressed as what a user would give tuneplan: the model from its stated
dimensions (a llama-style config for dense rows, a GPT-style gpt_neox config for the vTrain
GPT and llm-foundry MPT rows, the catalog model for the named MoE models), the layout (TP, PP,
VP, CP, EP, sharding, machines), the device from the catalog, --framework megatron for
Megatron-LM/DeepSpeed/NeMo rows and torchtitan for torchtitan and PyTorch-FSDP rows, full
fine-tuning, bf16/fp16. A row tuneplan cannot express (FP8/MXFP8/NVFP4, a GPU not in the
catalog, dimensions or micro-batching not stated) is listed with its reason and not scored.

Nothing here is fitted: every constant is the device's or the link's (tuneplan.calibration,
tuneplan.systems), so in-sample = out-of-sample (no leave-one-source-out needed).

    python benchmarks/parallel_time.py          # table to stdout and benchmarks/results/parallel_time.md
    python benchmarks/parallel_time.py --every 8   # every 8th vTrain row (what the test scores)

Data: benchmarks/data/calibration/parallel.csv (a copy of ../shared/calibration/parallel.csv).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.models import resolve_model, spec_from_config
from tuneplan.timing import step_time

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "calibration" / "parallel.csv"
RESULTS = ROOT / "results" / "parallel_time.md"

# gpu column -> catalog device (None: not in the catalog)
GPUS = {
    "A100 (variant n/s)": "a100-80gb-sxm",  # vTrain: an A100 DGX node; the 40/80 GB SXM parts share FLOPS and NVLink
    "A100 40GB": "a100-40gb-sxm", "A100 80GB": "a100-80gb-sxm",
    "H100 80GB": "h100-sxm", "H100 SXM 80GB": "h100-sxm",
    "H100 96GB HBM2e SXM, 500W power cap (per source)": "h100-sxm",  # power-capped: slower than the catalog's
    "B200": "b200", "B300": "b300", "GB300": "gb300", "GB200": None,
}
# MoE rows name catalog models
MOE_MODELS = {"GPT OSS 120B": "gpt-oss-120b", "DeepSeekV3": "deepseek-v3", "Qwen3_235B_a22B": "qwen3-235b-a22b",
              "Qwen3_30B_a3B": "qwen3-30b-a3b"}


@dataclass
class Case:
    id: str
    group: str
    layout: str
    n_gpus: int
    measured: float
    settings: dict = field(default_factory=dict)
    model: object = None
    device: str = ""
    skip: str = ""
    predicted: float | None = None
    bound_by: str = ""

    @property
    def error(self) -> float | None:
        return None if self.predicted is None else (self.predicted - self.measured) / self.measured


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _group(r: dict) -> str:
    g = r["source_group"]
    return {"vTrain-single": "vTrain (Megatron-DeepSpeed, A100)", "llm-foundry FSDP": "llm-foundry (FSDP)",
            "torchtitan": "torchtitan (H100)"}.get(g, "Megatron-Bridge (NeMo)")


def _spec(r: dict):
    dims = {k: _int(r[k]) for k in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab")}
    seq = _int(r["seq_len"]) or 0
    if r["moe"].strip():
        name = MOE_MODELS.get(r["model"])
        return (resolve_model(name), "") if name else (None, "MoE dimensions not stated in a form tuneplan reads")
    if None in (dims["hidden"], dims["layers"], dims["heads"], dims["ffn"], dims["vocab"]):
        return None, "model dimensions not stated"
    gpt = r["source_group"] in ("vTrain-single", "llm-foundry FSDP")  # GELU MLP of 2 matrices, LayerNorm
    cfg = {"model_type": "gpt_neox" if gpt else "llama", "hidden_size": dims["hidden"],
           "num_hidden_layers": dims["layers"], "num_attention_heads": dims["heads"],
           "num_key_value_heads": dims["kv_heads"] or dims["heads"], "intermediate_size": dims["ffn"],
           "vocab_size": dims["vocab"], "max_position_embeddings": max(seq, 2048), "tie_word_embeddings": gpt}
    if gpt:
        cfg |= {"use_parallel_residual": False, "rotary_pct": 1.0, "hidden_act": "gelu"}
    return spec_from_config(cfg, name=r["model"]), ""


def _sharding(r: dict) -> str | None:
    s = r["sharding"]
    if "SHARD_GRAD_OP" in s:
        return None
    if "FSDP" in s and "FSDP=0" not in s:
        return "fsdp"
    if r["source_group"] == "vTrain-single":
        return "ddp"
    return "zero1"  # Megatron-Bridge recipes: the distributed optimizer (use_distributed_optimizer=True)


def to_case(r: dict) -> Case:
    c = Case(r["id"], _group(r), r["layout"], int(r["n_gpus"]), float(r["tokens_per_s_per_gpu"] or 0))
    prec = r["precision"].lower()
    if "fp8" in prec or "fp4" in prec:
        c.skip = f"{r['precision']}: FP8/FP4 training is not modelled"
        return c
    dev = GPUS.get(r["gpu"])
    if dev is None:
        c.skip = f"{r['gpu']}: no catalog device"
        return c
    spec, why = _spec(r)
    if spec is None:
        c.skip = why
        return c
    degrees = {k: _int(r[k]) for k in ("tp", "pp", "vp", "cp", "ep", "micro_batch", "grad_accum", "seq_len")}
    if None in degrees.values():
        c.skip = "a parallel degree or the micro-batching is not stated"
        return c
    sharding = _sharding(r)
    if sharding is None:
        c.skip = "FSDP SHARD_GRAD_OP (ZeRO-2 inside FSDP) is not a layout of the torchtitan profile"
        return c
    rec = r["recompute"].lower()
    ckpt = "full" if rec.startswith("full") else "selective" if rec.startswith("selective") else "none"
    framework = "torchtitan" if r["source_group"] in ("torchtitan", "llm-foundry FSDP") else "megatron"
    nodes = _int(r["nodes"]) or 1
    c.model, c.device = spec, dev
    c.settings = dict(method="full", framework=framework, sharding=sharding, gpus=c.n_gpus,
                      tp=degrees["tp"], pp=degrees["pp"], vp=degrees["vp"], cp=degrees["cp"], ep=degrees["ep"],
                      seq_len=degrees["seq_len"], micro_batch=degrees["micro_batch"], grad_accum=degrees["grad_accum"],
                      checkpointing=ckpt, nodes=nodes if nodes > 1 else 0,
                      precision="fp16" if "fp16" in prec else "amp" if "amp" in prec else "bf16",
                      compile="inductor" if "compile" in r["notes"].lower() else "none")
    return c


def load(path: Path = DATA, every: int = 1) -> list[Case]:
    """Every row, or every `every`-th vTrain row (deterministic) and all the others."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out, k = [], 0
    for r in rows:
        if r["source_group"] == "vTrain-single":
            k += 1
            if (k - 1) % every:
                continue
        out.append(to_case(r))
    return out


def score(cases: list[Case]) -> list[Case]:
    for c in cases:
        if c.skip:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                job = Job.from_settings(**c.settings)
                st = step_time(c.model, job, resolve_device(c.device))
        except TuneplanError as e:
            c.skip = f"refused: {e}"
            continue
        c.predicted, c.bound_by = st.tokens_per_s_per_gpu, st.bound_by
    return cases


def stats(cases: list[Case]) -> dict:
    errs = [abs(c.error) for c in cases if c.error is not None]
    signed = [c.error for c in cases if c.error is not None]
    if not errs:
        return {"scored": 0}
    return {"scored": len(errs), "median_abs": statistics.median(errs), "within_25": sum(e <= 0.25 for e in errs) / len(errs),
            "median_signed": statistics.median(signed)}


def by(cases: list[Case], key) -> dict[str, dict]:
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        if c.error is not None:
            groups[key(c)].append(c)
    return {k: stats(v) for k, v in sorted(groups.items())}


def summary(cases: list[Case]) -> dict:
    return {"overall": stats(cases), "group": by(cases, lambda c: c.group), "layout": by(cases, lambda c: c.layout),
            "gpus": by(cases, lambda c: f"{c.n_gpus:>4} GPUs"), "listed": sum(1 for c in cases if c.skip)}


def _line(name: str, s: dict) -> str:
    if not s.get("scored"):
        return f"| {name} | 0 | | | |"
    return (f"| {name} | {s['scored']} | {s['median_abs']:.1%} | {s['within_25']:.0%} | {s['median_signed']:+.1%} |")


def report(cases: list[Case], every: int) -> str:
    s = summary(cases)
    head = "| | rows | median abs error | within 25% | median signed |\n|---|---:|---:|---:|---:|"
    out = ["# Parallel layouts: predicted vs measured tokens/s per GPU", "",
           f"`python benchmarks/parallel_time.py{f' --every {every}' if every > 1 else ''}` over "
           "benchmarks/data/calibration/parallel.csv. tuneplan.timing.step_time with the layout's communication "
           "(tuneplan.timing_comm, tuneplan.collectives) on the device's default system (tuneplan.systems). "
           "Nothing is fitted to these rows: every constant is a device's or a link's, so in-sample = out-of-sample "
           "(leave-one-source-out is the same table). Signed error > 0: tuneplan predicts faster than measured.", "",
           "## Overall", "", head, _line("all scored rows", s["overall"]), "", "## By source", "", head]
    out += [_line(k, v) for k, v in s["group"].items()]
    out += ["", "## By layout", "", head] + [_line(k, v) for k, v in s["layout"].items()]
    out += ["", "## By GPU count", "", head] + [_line(k, v) for k, v in s["gpus"].items()]
    out += ["", "## Non-vTrain rows", "", "| id | layout | GPUs | device | measured | predicted | error | bound by |",
            "|---|---|---:|---|---:|---:|---:|---|"]
    for c in cases:
        if c.error is not None and not c.group.startswith("vTrain"):
            out.append(f"| {c.id} | {c.layout} | {c.n_gpus} | {c.device} | {c.measured:,.0f} | {c.predicted:,.0f} | "
                       f"{c.error:+.0%} | {c.bound_by} |")
    reasons: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        if c.skip:
            reasons[c.skip.split(":")[0] if c.skip.startswith(("FP8", "MXFP8", "NVFP4", "FP8-")) else c.skip].append(c.id)
    out += ["", f"## Not scored ({s['listed']} rows)", "", "| reason | rows | ids |", "|---|---:|---|"]
    for why, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        out.append(f"| {why} | {len(ids)} | {shown} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=1, help="score every Nth vTrain row (default: all)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cases = score(load(every=args.every))
    text = report(cases, args.every)
    sys.stdout.write(text)
    if not args.no_write:
        RESULTS.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
