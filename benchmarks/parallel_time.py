"""Tokens/s per GPU of multi-GPU layouts against the measured rows of parallel.csv.

Each row is expressed as what a user would give tuneplan: the model from its stated
dimensions (a llama-style config for dense rows, a GPT-style gpt_neox config for the vTrain
GPT and llm-foundry MPT rows, the catalog model for the named MoE models), the layout (TP, PP,
VP, CP, EP, sharding, machines), the device from the catalog, the stack the row ran (STACKS:
--framework megatron-deepspeed for vTrain's Megatron-DeepSpeed rows, megatron for
Megatron-Core/NeMo rows, torchtitan for torchtitan and PyTorch-FSDP rows), full
fine-tuning, bf16/fp16. A row tuneplan cannot express (FP8/MXFP8/NVFP4, a GPU not in the
catalog, dimensions or micro-batching not stated) is listed with its reason and not scored.

One constant is fitted on these rows: the host cost per kernel of Megatron-DeepSpeed
(calibration.SECONDS_PER_KERNEL_BY_FRAMEWORK, per library, from vTrain's rows); every other
is a device's, a link's or fitted on single-GPU rows (tuneplan.calibration, tuneplan.systems).
The report gives leave-one-source-out beside in-sample: each source scored with that constant
refitted without its rows (the default when no other source runs the library).

    python benchmarks/parallel_time.py          # table to stdout and benchmarks/results/parallel_time.md
    python benchmarks/parallel_time.py --every 8   # every 8th vTrain row (what the test scores)

Data: benchmarks/data/calibration/parallel.csv (a copy of ../shared/calibration/parallel.csv).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tuneplan import calibration as cal
from tuneplan import timing
from tuneplan.choices.frameworks import framework
from tuneplan.choices.precision import PRECISIONS as PRECISION_RECORDS
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
    "B200": "b200", "B300": "b300", "GB300": "gb300", "GB200": "gb200",
}
# gpu column -> (why no catalog device represents it, the nearest catalog card): such rows are not
# scored; report() shows them apart against the nearest card, which bounds them from the fast side.
# torchtitan's Grand Teton H100s: "96GB HBM2e with 2.4 TB/sec peak memory bandwidth", "the default
# 500W power limit" and "the actual peak TFLOPs number is between SXM and NVL, and we don't know its
# exact value" (pytorch/torchtitan@b5bcd76c6 benchmarks/llama3_h100_202412_torchtitan.md, Hardware
# and footnote 2): no published peak, so no cited device can be added.
OFF_CATALOG = {
    "H100 96GB HBM2e SXM, 500W power cap (per source)": (
        "device not in catalog: H100 96GB HBM2e at a 500 W cap (2.4 TB/s; peak matmul rate unpublished, "
        "'between SXM and NVL' per the source)", "h100-sxm"),
}
# framework column -> --framework (the stack the row ran; Megatron-LM/NeMo/Megatron-Bridge: megatron)
# (llm-foundry's Composer + PyTorch FSDP runs torch FSDP like torchtitan's profile)
STACKS = (("Megatron-DeepSpeed", "megatron-deepspeed"), ("torchtitan", "torchtitan"), ("Composer", "torchtitan"))
# precision column (lower case, prefix) -> --precision of a low-precision recipe (tuneplan.choices.precision):
# Megatron-Bridge "FP8" = Megatron-LM's default --fp8-recipe delayed, "FP8-CS" current (tensorwise) scaling,
# "FP8-MX"/"MXFP8" MXFP8 block scaling, "NVFP4"; torchtitan's Float8 linears = torchao tensorwise
LOWPREC = (("fp8 linears (float8)", "fp8-torchao"), ("fp8-cs", "fp8-current"), ("fp8-mx", "mxfp8"),
           ("mxfp8", "mxfp8"), ("nvfp4", "nvfp4"), ("fp8", "fp8"))
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
    apart: bool = False  # on a card the catalog lacks: shown against the nearest one, not scored
    predicted: float | None = None
    bound_by: str = ""

    @property
    def library(self) -> str:
        """The stack's library name (FrameworkProfile.calibration_framework): what a fitted
        per-library constant is keyed by."""
        if not self.settings:
            return ""
        prof = framework(self.settings["framework"])
        return prof.calibration_framework or prof.name

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
    lowprec = next((v for k, v in LOWPREC if prec.startswith(k)), None)  # [lowprec hook]
    off = OFF_CATALOG.get(r["gpu"])
    dev = off[1] if off else GPUS.get(r["gpu"])
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
    framework = next((v for k, v in STACKS if r["framework"].startswith(k)), "megatron")
    nodes = _int(r["nodes"]) or 1
    c.model, c.device = spec, dev
    c.settings = dict(method="full", framework=framework, sharding=sharding, gpus=c.n_gpus,
                      tp=degrees["tp"], pp=degrees["pp"], vp=degrees["vp"], cp=degrees["cp"], ep=degrees["ep"],
                      seq_len=degrees["seq_len"], micro_batch=degrees["micro_batch"], grad_accum=degrees["grad_accum"],
                      checkpointing=ckpt, nodes=nodes if nodes > 1 else 0,
                      precision=lowprec or ("fp16" if "fp16" in prec else "amp" if "amp" in prec else "bf16"),
                      # torchtitan's Table 4-6 rows say "+ compile" in the table title (source), not the notes
                      compile="inductor" if "compile" in (r["notes"] + r["source"]).lower() else "none")
    if off:
        c.skip, c.apart = off[0], True
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


def clear_caches() -> None:
    """Forget cached step times (after a calibration constant changed)."""
    timing._step_time.cache_clear()


def score(cases: list[Case], fresh: bool = False) -> list[Case]:
    """Predict every case that is not listed; fresh: recompute (the constants changed)."""
    if fresh:
        clear_caches()
    for c in cases:
        if c.skip or (c.predicted is not None and not fresh):
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


def _fit_script():
    spec_ = importlib.util.spec_from_file_location("fit_time_constants", ROOT / "fit_time_constants.py")
    fit = importlib.util.module_from_spec(spec_)
    sys.modules.setdefault("fit_time_constants", fit)
    spec_.loader.exec_module(fit)
    return fit


def leave_one_source_out(cases: list[Case]) -> dict[str, dict]:
    """Per source: its rows scored with every constant fitted on parallel.csv refitted without
    them (calibration.SECONDS_PER_KERNEL_BY_FRAMEWORK, per library; benchmarks/
    fit_time_constants.py). A constant only that source informs falls back to its default
    (calibration.SECONDS_PER_KERNEL). Returns {source: stats | {"constants": ...}}."""
    fit = _fit_script()
    saved = dict(cal.SECONDS_PER_KERNEL_BY_FRAMEWORK)
    out: dict[str, dict] = {}
    try:
        for group in sorted({c.group for c in cases if c.error is not None}):
            mine = [c for c in cases if c.group == group and not c.skip]
            used = {}
            for lib in saved:
                if any(c.library == lib for c in mine):
                    refit = fit.fit_seconds_per_kernel(lib, [c for c in cases if c.group != group])
                    used[lib] = refit
                    if refit is None:
                        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.pop(lib, None)
                    else:
                        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK[lib] = refit
            if used:
                held = [Case(c.id, c.group, c.layout, c.n_gpus, c.measured, c.settings, c.model, c.device) for c in mine]
                scored = score(held, fresh=True)
            else:  # no fitted constant reaches this source: out-of-sample already
                scored = mine
            out[group] = {**stats(scored), "constants": used, "errors": [c.error for c in scored if c.error is not None]}
            cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.clear()
            cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.update(saved)
    finally:
        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.clear()
        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.update(saved)
        clear_caches()
    return out


def loso_lines(cases: list[Case], loso: dict[str, dict]) -> list[str]:
    """The leave-one-source-out table beside the in-sample figures."""
    ins = by(cases, lambda c: c.group)
    out = ["", "## Leave-one-source-out", "",
           "Each source scored with every constant fitted on parallel.csv refitted without its rows "
           "(benchmarks/fit_time_constants.py fit_seconds_per_kernel); a constant only that source informs falls "
           "back to its default (calibration.SECONDS_PER_KERNEL, the HF fit). Constants fitted on other data "
           "(single-GPU rows, device and link measurements) are not parallel.csv's and stay.", "",
           "| source | rows | in-sample median abs | LOSO median abs | LOSO within 25% | LOSO median signed | "
           "constants refitted |", "|---|---:|---:|---:|---:|---:|---|"]
    for g, s in loso.items():
        consts = ", ".join(f"{k} {'default' if v is None else f'{v * 1e6:.1f} us'}" for k, v in s["constants"].items())
        out.append(f"| {g} | {s['scored']} | {ins[g]['median_abs']:.1%} | {s['median_abs']:.1%} | "
                   f"{s['within_25']:.0%} | {s['median_signed']:+.1%} | {consts or 'none'} |")
    errs = [e for s in loso.values() for e in s["errors"]]
    if errs:  # every row scored by its own source's leave-out constants
        ab = [abs(e) for e in errs]
        out.append(f"| all scored rows | {len(errs)} | {stats(cases)['median_abs']:.1%} | {statistics.median(ab):.1%} | "
                   f"{sum(e <= 0.25 for e in ab) / len(ab):.0%} | {statistics.median(errs):+.1%} | |")
    return out


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
           "One constant is fitted to these rows (Megatron-DeepSpeed's host cost per kernel, "
           "calibration.SECONDS_PER_KERNEL_BY_FRAMEWORK, from vTrain's rows): the tables are in-sample, and "
           "leave-one-source-out is at the end. Signed error > 0: tuneplan predicts faster than measured.", "",
           "vTrain's rows run --framework megatron-deepspeed, whose record carries what that stack does "
           "differently (tuneplan.choices.frameworks; tuneplan.timing_host): unfused attention whose "
           "[b, heads, s, s] scores go through DRAM, 16 kernels per layer forward dispatched from the host at a "
           "fitted cost that the GPU work hides when longer, and the gradient all-reduce after the backward. "
           "Every stack: lm_head and the loss on the last pipeline stage.", "",
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
    out += apart_lines(cases)
    out += lowprec_lines(cases)  # [lowprec hook]
    out += loso_lines(cases, leave_one_source_out(cases))
    out += ["", f"## Not scored ({s['listed']} rows)", "", "| reason | rows | ids |", "|---|---:|---|"]
    for why, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        out.append(f"| {why} | {len(ids)} | {shown} |")
    return "\n".join(out) + "\n"


def apart_cases(cases: list[Case]) -> list[Case]:
    """Scored copies of the rows kept apart (OFF_CATALOG), predicted on the nearest catalog card."""
    return score([Case(c.id, c.group, c.layout, c.n_gpus, c.measured, c.settings, c.model, c.device, apart=True)
                  for c in cases if c.apart])


def apart_lines(cases: list[Case]) -> list[str]:
    """Rows on a card the catalog lacks (OFF_CATALOG), predicted on the nearest catalog card:
    not scored, shown so the mechanisms can be read (the real card is slower than the one shown)."""
    apart = apart_cases(cases)
    if not apart:
        return []
    out = ["", "## Kept apart: rows on a card the catalog lacks, against the nearest catalog card", "",
           "Not in the scores above (OFF_CATALOG gives the reason). torchtitan's H100s are 96 GB HBM2e parts "
           "at 2.4 TB/s under a 500 W cap, slower than the h100-sxm (3.35 TB/s, 700 W) they are shown on, "
           "so these errors overstate the model's. They grow with the sequence (8k: about +50-75%; 32k-262k: "
           "+117-276%): attention is timed at the GEMM rate (~650 TFLOPS on an h100-sxm here), while torch SDPA's "
           "flash backend (FlashAttention-2) reaches 335 TFLOPS forward (causal) and 322 backward at head dim 128 "
           "on an H100 SXM (Shah et al. 2024, FlashAttention-3, Fig. 5): an attention-kernel rate per device is "
           "not modelled yet.", "",
           "| id | layout | GPUs | precision | compile | checkpointing | nearest card | measured | predicted | error |",
           "|---|---|---:|---|---|---|---|---:|---:|---:|"]
    for c in apart:
        s = c.settings
        err = f"{c.error:+.0%}" if c.error is not None else c.skip
        pred = f"{c.predicted:,.0f}" if c.predicted is not None else ""
        out.append(f"| {c.id} | {c.layout} | {c.n_gpus} | {s['precision']} | {s['compile']} | {s['checkpointing']} | "
                   f"{c.device} | {c.measured:,.0f} | {pred} | {err} |")
    st = stats(apart)
    if st.get("scored"):
        out.append(f"| all | | {st['scored']} | | | | | | median abs {st['median_abs']:.1%} | "
                   f"{st['median_signed']:+.1%} |")
    return out


def lowprec_lines(cases: list[Case]) -> list[str]:
    """The low-precision rows by precision and device, and the pairs measured at bf16 and at a
    low precision with the same model, device and layout: measured vs predicted speed-up."""
    lp = [c for c in cases if c.settings.get("precision", "bf16") in dict(LOWPREC).values()]
    head = "| | rows | median abs error | within 25% | median signed |\n|---|---:|---:|---:|---:|"
    out = ["", "## Low-precision rows (FP8 / MXFP8 / NVFP4) by precision and device", "",
           "tuneplan.lowprec: the blocks' linear GEMMs at the device's fp8/fp4 rate, casts at the memory "
           "bandwidth; precision column -> --precision in LOWPREC.", "", head]
    out += [_line(k, v) for k, v in by(lp, lambda c: f"{c.settings['precision']} on {c.device}").items()]
    out += [_line("all low-precision rows", stats(lp))]
    out += [_line(f"{k} models", v) for k, v in by(lp, lambda c: "MoE" if c.model.moe_layers else "dense").items()]
    key = lambda c: (getattr(c.model, "name", ""), c.device,  # noqa: E731
                     tuple(sorted((k, v) for k, v in c.settings.items() if k != "precision")))
    # every pair of rows with the same model, device and layout at two precisions, the one with
    # more GEMM bits (bf16 16, fp8/mxfp8 8, nvfp4 4) as the baseline
    bits = lambda c: PRECISION_RECORDS[c.settings.get("precision", "bf16")].gemm_bits  # noqa: E731
    groups: dict = defaultdict(list)
    for c in cases + apart_cases(cases):  # the pairs on a card kept apart too, marked
        if c.error is not None:
            groups[key(c)].append(c)
    pairs = [(b, c) for g in groups.values() for b in g for c in g if bits(b) > bits(c)]
    out += ["", "### Same layout measured at two precisions", "",
            "| baseline row | low-precision row | precisions | device | measured speed-up | predicted speed-up |",
            "|---|---|---|---|---:|---:|"]
    out += [f"| {b.id} | {c.id} | {b.settings['precision']} -> {c.settings['precision']} | "
            f"{c.device}{' (nearest card, kept apart)' if c.apart else ''} | "
            f"{c.measured / b.measured:.2f}x | {c.predicted / b.predicted:.2f}x |" for b, c in pairs]
    if not pairs:
        out.append("| (none with the same stated layout) | | | | | |")
    return out


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
