"""docs/guides_2026.md: the 2026 hardware guides' tables (../shared/guides/claims-2026.md) side
by side with tuneplan's figures for the same settings, with a generated reason per row.

    python benchmarks/guides_2026.py            # rewrite docs/guides_2026.md
    python benchmarks/guides_2026.py --check    # exit 1 if the committed doc is not current

Every figure comes from the code paths the CLI uses (estimate_memory, fit_verdict with its
cheapest change, min_gpus, plan, estimate_disk). Where a guide is silent tuneplan's defaults
are used and stated once at the top. Memory is shown in GB (10^9 bytes) because the guides
write GB; device budgets are tuneplan's usable memory (`tuneplan devices`). Re-run after a
change to the time model or the framework profiles (e.g. an MLX profile for Apple silicon):
the doc is regenerated, never edited by hand (tests/test_guides_doc.py checks it is current).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.disk import estimate_disk
from tuneplan.errors import TuneplanError
from tuneplan.fit import FITS, NO, TIGHT, UNCERTAIN, fit_verdict, plan_base
from tuneplan.hardware import Device, resolve_device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import ModelSpec, param_counts, resolve_model
from tuneplan.plan import plan
from tuneplan.search import describe_layout, gpu_counts, max_seq_len, min_gpus
from tuneplan.timing import Dataset, fmt_duration, run_time

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "guides_2026.md"
GB = 1e9
SAMPLES, SEQ = 50_000, 2048  # the second guide's time table: 50K samples, sequence length 2048
DATASET = Dataset.from_samples(SAMPLES, SEQ)
HAS_MLX = "mlx" in FRAMEWORKS  # the MLX profile (issue #13) once it lands

DEFAULTS = ("HF Trainer + PEFT profile (`--framework hf`), bf16 weights (pure bf16: weights, gradients and "
            "AdamW states in bf16), torch AdamW, gradient checkpointing on, SDPA attention, LoRA/QLoRA/DoRA "
            "rank 16 on all linear layers, QLoRA NF4 with double quantisation, micro-batch 1 x 2048 tokens, "
            "one device unless the guide names several (then FSDP). Peaks are tuneplan's device total: "
            "live tensors, 5% caching-allocator overhead and the 0.5 GiB CUDA context.")


def job(method: str, **kw) -> Job:
    base = {"method": method, "micro_batch": 1, "seq_len": SEQ}
    if method in ("lora", "qlora", "dora"):
        base["rank"] = 16
    base.update(kw)
    return Job.from_settings(**base)


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:,.1f}"


def parts(spec: ModelSpec, j: Job) -> dict[str, int]:
    """The estimate's components grouped the way the guides talk about them (bytes)."""
    est = estimate_memory(spec, j)
    c = {x.key: x.bytes for x in est.components}
    return {"weights": c.get("weights", 0) + c.get("quant_constants", 0),
            "trained": c.get("adapters", 0) + c.get("gradients", 0) + c.get("optimizer", 0) + c.get("master", 0),
            "activations": c.get("activations", 0), "logits": c.get("logits", 0),
            "overhead": c.get("allocator", 0) + c.get("cuda_context", 0), "peak": est.peak_bytes}


def why_vs_range(spec: ModelSpec, j: Job, lo: float | None, hi: float | None) -> str:
    """One sentence: where tuneplan's peak sits against the guide's range and which parts explain it."""
    p = parts(spec, j)
    split = (f"weights {gb(p['weights'])}, trained state {gb(p['trained'])}, activations {gb(p['activations'])}, "
             f"logits {gb(p['logits'])}, overhead {gb(p['overhead'])} GB")
    if hi is not None and p["weights"] > hi * GB:
        return (f"above the guide: the base weights alone are {gb(p['weights'])} GB ({split}), more than the guide's "
                f"{hi:g} GB; the guide's figure fits only a 4-bit base or several devices.")
    if hi is not None and p["peak"] > hi * GB:
        extra = sorted((("activations", p["activations"]), ("logits + cross-entropy", p["logits"]),
                        ("allocator + CUDA context", p["overhead"]), ("gradients + optimizer", p["trained"])),
                       key=lambda kv: -kv[1])[:2]
        return (f"above the guide: {split}; the guide's figure leaves out part of "
                + " and ".join(f"{k} ({gb(v)} GB)" for k, v in extra) + f" at {SEQ} tokens.")
    if lo is not None and p["peak"] < lo * GB:
        try:
            s = max_seq_len(spec, j, int(hi * GB), multiple=256) if hi else 0
        except TuneplanError:
            s = 0
        at = f"; tuneplan reaches the guide's {hi:g} GB at about {s:,} tokens (micro-batch 1)" if s else ""
        return f"below the guide at batch 1 x {SEQ}: {split}{at}, so the guide's range holds longer sequences or batches."
    if hi is None:
        return f"at or above the guide's {lo:g} GB floor: {split}."
    return f"within the guide's range: {split}."


# ---------------------------------------------------------------- table 1: VRAM by model and method

VRAM_ROWS = [  # guide row, tuneplan model, {method: (lo, hi) GB or a word}
    ("LLaMA 3.1 8B / Mistral 7B", "llama-3.1-8b", {"qlora": (10, 14), "lora": (24, 32), "full": (56, None)}),
    ("LLaMA 3.1 8B / Mistral 7B", "mistral-7b", {"qlora": (10, 14), "lora": (24, 32), "full": (56, None)}),
    ("Qwen 2.5 14B", "qwen2.5-14b", {"qlora": (16, 20), "lora": (40, 48), "full": (100, None)}),
    ("Qwen 2.5 32B / LLaMA 3.3 70B (LoRA)", "qwen2.5-32b", {"qlora": (24, 32), "lora": (48, 80), "full": "multi-GPU required"}),
    ("Qwen 2.5 32B / LLaMA 3.3 70B (LoRA)", "llama-3.3-70b", {"lora": (48, 80)}),
    ("LLaMA 3.1 70B", "llama-3.1-70b", {"qlora": (48, 48), "lora": (100, 140), "full": "multi-GPU required"}),
    ("LLaMA 3.1 405B", "llama-3.1-405b", {"qlora": "multi-GPU", "lora": "multi-GPU", "full": "cluster-scale"}),
]
GUIDE_TEXT = {(10, 14): "~10-14 GB", (24, 32): "~24-32 GB", (56, None): "~56 GB+", (16, 20): "~16-20 GB",
              (40, 48): "~40-48 GB", (100, None): "~100 GB+", (48, 80): "~48-80 GB", (48, 48): "~48 GB",
              (100, 140): "~100-140 GB"}


def vram_table() -> list[str]:
    h100 = resolve_device("h100")
    out = ["## 1. VRAM by model and method (vendor guide)", "",
           "Guide figure against tuneplan's single-device peak at the defaults above (full fine-tune: pure bf16 "
           "AdamW, the guide's own 2+2+4 bytes per parameter). Where the guide says multi-GPU, tuneplan gives the "
           "single-device peak and the fewest H100 80GB that fit with FSDP.", "",
           "| guide row | model | method | guide | tuneplan peak (GB) | why |", "|---|---|---|---|---|---|"]
    for row, model, claims in VRAM_ROWS:
        spec = resolve_model(model)
        for method in ("qlora", "lora", "full"):
            if method not in claims:
                continue
            claim = claims[method]
            j = job(method)
            pk = estimate_memory(spec, j).peak_bytes
            if isinstance(claim, str):
                found = min_gpus(spec, replace(j, parallel=replace(j.parallel, sharding="fsdp")), h100)
                n = f"{found[0]} x H100 80GB (FSDP)" if found else "more than 8 x H100 80GB (multi-node, not modelled)"
                why = f"one device would need {gb(pk)} GB; fewest that fit: {n}."
                out.append(f"| {row} | {model} | {method} | {claim} | {gb(pk)} | {why} |")
                continue
            lo, hi = claim
            out.append(f"| {row} | {model} | {method} | {GUIDE_TEXT[claim]} | {gb(pk)} | "
                       f"{why_vs_range(spec, j, lo, hi if hi else None)} |")
    s7, j7 = resolve_model("mistral-7b"), job("full")
    e = {c.key: c.bytes for c in estimate_memory(s7, j7).components}
    w, g, o = e.get("weights", 0), e.get("gradients", 0), e.get("optimizer", 0)
    q = estimate_memory(s7, job("qlora"))
    qw = sum(c.bytes for c in q.components if c.key in ("weights", "quant_constants"))
    out += ["", f"The guide's 7B arithmetic (weights 14 + gradients 14 + AdamW 28 = 56 GB before activations): tuneplan "
                f"gives {gb(w)} + {gb(g)} + {gb(o)} = {gb(w + g + o)} GB for Mistral-7B in pure bf16 (same bytes per "
                f"parameter; 7.25B parameters, not 7.0B). \"QLoRA cuts weight memory by ~75%\": NF4 weights plus "
                f"quantisation constants are {gb(qw)} GB against {gb(w)} GB, a {1 - qw / w:.0%} cut (embeddings and "
                "lm_head stay 16-bit)."]
    return out


# ---------------------------------------------------------------- table 2: multipliers

MULT_ROWS = [  # guide method, multiplier, trainable claim, job
    ("full fine-tune (FP16, AdamW)", "~6x", "100%", {"method": "full"}),
    ("full fine-tune (FP16, AdamW), mixed precision", "~6x", "100%", {"method": "full", "precision": "mixed"}),
    ("full fine-tune (BF16 + 8-bit Adam)", "~4x", "100%", {"method": "full", "optimizer": "adamw-8bit"}),
    ("LoRA (r=16, FP16 base)", "~1.2x", "0.1-1%", {"method": "lora"}),
    ("QLoRA (4-bit base, LoRA r=16)", "~0.4x", "0.1-1%", {"method": "qlora"}),
    ("DoRA (4-bit base); tuneplan: DoRA on a bf16 base (no 4-bit DoRA model yet)", "~0.5x", "0.5-2%",
     {"method": "dora"}),
]


def multiplier_table() -> list[str]:
    models = ("llama-3.1-8b", "llama-3.1-70b")
    out = ["## 2. Memory multipliers versus the FP16 model size (second guide)", "",
           "Multiplier = tuneplan's peak / (2 bytes x parameters), at the defaults above; trainable share from "
           "tuneplan's parameter count.", "",
           "| method | guide | " + " | ".join(f"tuneplan {m} (trainable)" for m in models) + " | why |",
           "|---|---|" + "---|" * len(models) + "---|"]
    for label, mult, share, kw in MULT_ROWS:
        cells, why = [], ""
        for model in models:
            spec = resolve_model(model)
            j = job(**kw)
            est = estimate_memory(spec, j)
            fp16 = 2 * param_counts(spec).total
            cells.append(f"{est.peak_bytes / fp16:.2f}x ({est.trainable_params / est.total_params:.2%})")
            if model == models[0]:
                p = parts(spec, j)
                why = (f"8B: weights {p['weights'] / fp16:.2f}x, trained state {p['trained'] / fp16:.2f}x, "
                       f"activations + logits {(p['activations'] + p['logits']) / fp16:.2f}x, overhead "
                       f"{p['overhead'] / fp16:.2f}x of the FP16 size")
        out.append(f"| {label} | {mult} ({share}) | " + " | ".join(cells) + f" | {why} |")
    out += ["", "A multiplier is not a constant: activations and logits grow with tokens per step and the CUDA "
                "context is fixed, so the small model's multiplier is higher; the guide's ~6x for FP16 AdamW sits "
                "between pure 16-bit (4 bytes of state per parameter beyond the weights) and mixed precision "
                "(fp32 master weights and fp32 AdamW states)."]
    return out


# ---------------------------------------------------------------- table 3: fit matrix

def _mac(d: Device, j: Job) -> tuple[Job, str]:
    """The job as tuneplan can run it on this device, and a caveat when it cannot match the guide's stack."""
    if d.vendor != "Apple":
        return j, ""
    if HAS_MLX:
        return j.with_settings(framework="mlx"), "MLX profile"
    note = ("guide stack on Mac is MLX/MPS; tuneplan has no MLX profile yet, so this is the PyTorch/CUDA memory "
            "layout" + ("; bitsandbytes 4-bit does not run on Apple silicon (QLoRA there means MLX)"
                        if j.method.kind == "qlora" else ""))
    return j, note


FIT_MODELS = [("7B", "mistral-7b"), ("13B", "qwen2.5-14b"), ("30B", "qwen2.5-32b"), ("70B", "llama-3.1-70b"),
              ("120B (gpt-oss)", "gpt-oss-120b")]
FIT_GUIDE = {  # (size, method) -> (guide text, [(device, count), ...])
    ("7B", "qlora"): ("RTX 3090 24GB", [("rtx-3090", 1)]),
    ("7B", "lora"): ("RTX 4090 24GB", [("rtx-4090", 1)]),
    ("7B", "full"): ("2x 24GB or single 48GB", [("rtx-4090", 2), ("rtx-a6000", 1)]),
    ("13B", "qlora"): ("RTX 4080 16GB (tight)", [("rtx-4080", 1)]),
    ("13B", "lora"): ("RTX 4090 24GB", [("rtx-4090", 1)]),
    ("13B", "full"): ("2x A100 40GB or single H100 80GB", [("a100-40gb-sxm", 2), ("h100", 1)]),
    ("30B", "qlora"): ("RTX 4090 24GB", [("rtx-4090", 1)]),
    ("30B", "lora"): ("2x 24GB or 48GB", [("rtx-4090", 2), ("rtx-a6000", 1)]),
    ("30B", "full"): ("4x A100 80GB or DGX cluster", [("a100-80gb-sxm", 4)]),
    ("70B", "qlora"): ("DGX Spark 128GB / Mac M5 Max 128GB", [("dgx-spark", 1), ("macbook-pro-m5-max", 1)]),
    ("70B", "lora"): ("DGX Spark / 2x H100", [("dgx-spark", 1), ("h100", 2)]),
    ("70B", "full"): ("8x H100 80GB cluster", [("h100", 8)]),
    ("120B (gpt-oss)", "qlora"): ("DGX Spark / Mac Studio M5 Ultra 192GB", [("dgx-spark", 1), ("mac-studio-m5-ultra-192gb", 1)]),
    ("120B (gpt-oss)", "lora"): ("DGX Spark cluster", [("dgx-spark", 2)]),
    ("120B (gpt-oss)", "full"): ("16x H100 cluster", [("h100", 8)]),
}
SHORT = {FITS: "fits", TIGHT: "tight", UNCERTAIN: "uncertain", NO: "no"}


def verdict_cell(spec: ModelSpec, method: str, dev: str, n: int) -> tuple[str, str, str]:
    """(short verdict, long text with peak/usable, cheapest change and caveat, why from the breakdown)."""
    d = resolve_device(dev)
    j = job(method, **({"num_gpus": n, "sharding": "fsdp"} if n > 1 else {}))
    j, note = _mac(d, j)
    v = fit_verdict(spec, j, d)
    text = f"{SHORT[v.verdict]}: {gb(v.peak_bytes + v.offloaded_bytes)} of {gb(v.usable_bytes)} GB usable per device"
    if v.change:
        text += f"; cheapest change: {v.change.description} ({gb(v.change.peak_bytes)} GB)"
        if v.keep_method_change:
            k = v.keep_method_change
            text += f"; keeping {method}: {k.description} ({gb(k.peak_bytes)} GB)"
    elif v.searched:
        text += f"; no change found within {d.max_count} x {d.id}"
    if note:
        text += f"; {note}"
    p = parts(spec, j)
    why = (f"per device: weights {gb(p['weights'])}, trained state {gb(p['trained'])}, activations + logits "
           f"{gb(p['activations'] + p['logits'])}, overhead {gb(p['overhead'])} GB")
    if n > 1 and j.training.framework == "hf":
        why += " (FSDP under the HF Trainer: accelerate keeps trained shards, gradients and AdamW states in fp32)"
    return SHORT[v.verdict], text, why


def fit_tables() -> list[str]:
    compact = ["## 3. Hardware fit matrix (second guide)", "",
               "The guide's matrix reproduced, each cell the guide's hardware and tuneplan's verdict on it at the "
               "defaults (fits = at least 10% headroom; tight = under 10%; no = does not fit). Models: 7B = "
               "Mistral-7B, 13B = Qwen2.5-14B (no 13B in the catalog), 30B = Qwen2.5-32B, 70B = Llama-3.1-70B, "
               "120B = gpt-oss-120b (MoE; experts stay bf16 under bitsandbytes QLoRA).", "",
               "| model | QLoRA | LoRA | full FT |", "|---|---|---|---|"]
    long = ["", "Per cell, with the peak, the budget and the cheapest change (fit.py):", "",
            "| model | method | guide hardware | tuneplan | why |", "|---|---|---|---|---|"]
    for size, model in FIT_MODELS:
        spec = resolve_model(model)
        cells = []
        for method in ("qlora", "lora", "full"):
            text, devs = FIT_GUIDE[(size, method)]
            shorts = []
            for dev, n in devs:
                short, detail, why = verdict_cell(spec, method, dev, n)
                label = f"{n}x {resolve_device(dev).id}" if n > 1 else resolve_device(dev).id
                shorts.append(f"{label}: {short}")
                if (size, method) == ("120B (gpt-oss)", "full"):
                    why += "; the guide's 16x H100 is two nodes (multi-node is not modelled): 8x shown"
                long.append(f"| {size} | {method} | {text} | {label}: {detail} | {why} |")
            cells.append(f"{text} -> " + "; ".join(shorts))
        compact.append(f"| {size} | " + " | ".join(cells) + " |")
    return compact + long


# ---------------------------------------------------------------- table 4: time per epoch

TIME_ROWS = [("QLoRA 7B", "qlora", "mistral-7b", ("~30 min", "~2 h", "~45 min")),
             ("LoRA 13B", "lora", "qwen2.5-14b", ("~1.5 h", "~6 h", "~2 h (with offload)")),
             ("QLoRA 32B", "qlora", "qwen2.5-32b", ("~6 h", "~26 h", "~9 h (with offload)")),
             ("QLoRA 70B", "qlora", "llama-3.1-70b", ("~12 h", "~52 h", "not feasible")),
             ("QLoRA 120B", "qlora", "gpt-oss-120b", ("~24 h", "~96 h (M5 Ultra only)", "not feasible"))]
TIME_DEVICES = ("dgx-spark", "mac-studio-m5-max-128gb", "rtx-5090")


def epoch(spec: ModelSpec, j: Job, d: Device) -> tuple[str, object]:
    """Epoch time of the best single-device setup `plan` finds (tuned micro-batch and checkpointing);
    on a discrete GPU that cannot hold it, the same with optimizer, then parameter offload."""
    tries = [j]
    if not d.unified:
        tries += [j.with_settings(offload_optimizer=True),
                  j.with_settings(offload_optimizer=True, offload_params=True, sharding="zero3")]
    for k, t in enumerate(tries):
        res = plan(spec, t, DATASET, [d], max_gpus=1)
        if res.setups:
            s = res.setups[0]
            how = ["", " with optimizer offload", " with parameter + optimizer offload"][k]
            tt = s.job.training
            return (f"{fmt_duration(s.run.epoch_s)}{how} (b={tt.micro_batch}, ckpt {tt.checkpointing}, "
                    f"{s.tokens_per_s:,.0f} tok/s, {s.verdict})"), s
    return "does not fit" + ("" if d.unified else ", even with offload"), None


def time_table() -> list[str]:
    out = ["## 4. Wall-clock time per epoch, 50K samples x 2048 tokens (second guide)", "",
           f"{SAMPLES:,} samples of {SEQ} tokens = {DATASET.tokens / 1e6:.1f}M tokens per epoch, packed. tuneplan "
           "runs its planner on one device (largest micro-batch with 10% headroom up to 16, with and without "
           "checkpointing, the faster kept); on the RTX 5090 a job that does not fit is retried with offload, as the "
           "guide does. Mac Studio M5 Max = mac-studio-m5-max-128gb (not announced; taken equal to the MacBook Pro "
           "M5 Max: 614 GB/s, FP32-rate TFLOPS, Neural Accelerators not counted)"
           + ("." if HAS_MLX else "; tuneplan has no MLX profile yet, so the Mac column is PyTorch (MPS) at the "
              "FP32 rate and QLoRA there assumes bitsandbytes, which does not run on Apple silicon."), "",
           "| workload | DGX Spark: guide | tuneplan | Mac Studio M5 Max: guide | tuneplan | RTX 5090: guide | tuneplan |",
           "|---|---|---|---|---|---|---|"]
    notes = []
    for label, method, model, guide in TIME_ROWS:
        spec = resolve_model(model)
        cells = []
        for dev, g in zip(TIME_DEVICES, guide, strict=True):
            d = resolve_device(dev)
            if label == "QLoRA 120B" and dev.startswith("mac-studio-m5-max"):
                d = resolve_device("mac-studio-m5-ultra-192gb")  # "M5 Ultra only"
            j, _ = _mac(d, job(method))
            text, s = epoch(spec, j, d)
            cells += [g, ("M5 Ultra: " if "ultra" in d.id else "") + text]
            if dev == "dgx-spark" and s is not None:
                hours = {"~30 min": 0.5, "~1.5 h": 1.5, "~6 h": 6, "~12 h": 12, "~24 h": 24}[g]
                need = DATASET.tokens / (hours * 3600)
                tf = need * s.step.model_flops_per_token / 1e12
                notes.append(f"- {label} on DGX Spark: the guide's {g} needs {need:,.0f} tokens/s = {tf:,.0f} TFLOP/s "
                             f"of model FLOPs, {tf / d.bf16_tflops:.1f}x the Spark's {d.bf16_tflops:g} dense bf16 "
                             f"TFLOPS; tuneplan predicts {s.tokens_per_s:,.0f} tokens/s "
                             f"({s.step.mfu:.0%} MFU, bound: {s.step.bound}).")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    per = 1805 / 500
    out += ["", "Why they differ:", ""] + notes + [
        f"- Published measurement (claims-2026.md): Llama-3.3-70B QLoRA on one DGX Spark took 1,805 s for 500 Alpaca "
        f"samples ({per:.1f} s per sample); 50K samples at that rate is {fmt_duration(per * SAMPLES)} for Alpaca-length "
        "samples, shorter than 2048 tokens, so the guide's ~12 h at 2048 tokens is at least that far off.",
        "- The guide's Mac column is ~4x its Spark column throughout; tuneplan's Mac/Spark ratio follows from the "
        "FLOPS and bandwidth in the catalog (FP32-rate TFLOPS for Apple), and will change when an Apple time model "
        "(MLX, Neural Accelerators) lands."]
    return out


# ---------------------------------------------------------------- table 5: disk

def disk_table() -> list[str]:
    spec = resolve_model("llama-3.1-70b")
    dk = estimate_disk(spec, job("qlora"), DATASET.tokens, saves=5)
    full = estimate_disk(spec, job("full"), DATASET.tokens, saves=5)
    return ["## 5. Disk and I/O (second guide)", "",
            "| claim | tuneplan (Llama-3.1-70B, 50K x 2048 tokens, 5 saves) | why |", "|---|---|---|",
            f"| 70B QLoRA with 5 checkpoints writes ~60 GB per checkpoint | {gb(dk.checkpoint_each)} GB per "
            f"checkpoint, {gb(dk.checkpoints)} GB for 5 | HF Trainer saves the adapter and its optimizer state, not "
            f"the base model; a base-model copy per save ({gb(dk.base_model)} GB bf16) is only written by a full "
            f"fine-tune ({gb(full.checkpoint_each)} GB per save with optimizer state) or a merge. |",
            f"| base model cache 200-500 GB | {gb(dk.base_model)} GB | the bf16 safetensors download of one 70B model "
            "(QLoRA quantises at load time); several models or a 405B fill the guide's range. |",
            f"| datasets and preprocessing 50-200 GB | {gb(dk.dataset_raw + dk.dataset_tokenized)} GB | "
            f"{DATASET.tokens / 1e6:.1f}M tokens: raw text (4 B/token) + tokenized Arrow cache (24 B/token). |",
            f"| checkpoints 200-1000 GB; 4 TB NVMe minimum | {gb(dk.total)} GB for this QLoRA run, {gb(full.total)} "
            "GB for a full fine-tune with 5 saves | totals include the merged 16-bit export. |",
            "| preprocessing and checkpoint writing add 20-40% wall-clock | not modelled | tuneplan's epoch time is "
            "compute, memory and link bound only; I/O time is not estimated. |"]


# ---------------------------------------------------------------- verdicts a user can act on

ACT_JOBS = [("llama-3.1-8b", "qlora"), ("llama-3.1-8b", "lora"), ("llama-3.1-8b", "full"), ("qwen2.5-14b", "lora"),
            ("qwen2.5-32b", "qlora"), ("qwen2.5-32b", "lora"), ("llama-3.1-70b", "qlora"), ("llama-3.1-70b", "lora"),
            ("gpt-oss-120b", "qlora")]
ACT_DEVICES = ("dgx-spark", "macbook-pro-m5-max", "macbook-pro-m5-max-64gb", "mac-studio-m5-ultra-192gb")


def act_table() -> list[str]:
    out = ["## 6. Verdicts for DGX Spark and the M5 Macs", "",
           "One device each, at the defaults (micro-batch 1 x 2048); the epoch is tuneplan's planner on "
           f"{SAMPLES:,} x {SEQ} tokens (tuned micro-batch). `cheapest change` is what fit.py suggests "
           "(offload is never suggested on unified memory: there it lands in the same pool).", "",
           "| model | method | device | verdict (peak / usable GB) | epoch | cheapest change |", "|---|---|---|---|---|---|"]
    for model, method in ACT_JOBS:
        spec = resolve_model(model)
        for dev in ACT_DEVICES:
            d = resolve_device(dev)
            j, note = _mac(d, job(method))
            v = fit_verdict(spec, j, d)
            ep, _ = epoch(spec, j, d) if v.verdict != NO else ("-", None)
            ch = v.change.description + f" ({gb(v.change.peak_bytes)} GB)" if v.change else (
                "none needed" if v.verdict == FITS else f"none within {d.max_count} x {d.id}")
            if d.id.startswith("dgx-spark") and v.verdict == NO:
                pair = min_gpus(spec, j.with_settings(sharding="fsdp"), d)
                if pair:
                    each = gb(estimate_memory(spec, pair[1]).peak_bytes)
                    ch += f"; or two Sparks over ConnectX-7 (`--gpus 2 --sharding fsdp`): {each} GB each"
            out.append(f"| {model} | {method} | {d.id} | {SHORT[v.verdict]} ({gb(v.peak_bytes + v.offloaded_bytes)} / "
                       f"{gb(v.usable_bytes)}){' *' if note else ''} | {ep} | {ch} |")
    out += ["", "`*`: " + ("MLX profile." if HAS_MLX else
                           "no MLX profile in tuneplan yet: PyTorch/CUDA memory layout (and bitsandbytes for QLoRA, "
                           "which Apple silicon does not run); re-run this script once `--framework mlx` exists.")]
    return out


def unified_section() -> list[str]:
    rows = ["## Usable memory on the unified machines", "",
            "What tuneplan budgets on each (from `tuneplan devices --category unified`); offloaded optimizer or "
            "parameters count in the same pool.", "", "| device | memory GB | usable GB | rule |", "|---|---|---|---|"]
    for dev in ("dgx-spark", "macbook-pro-m5-max", "mac-studio-m5-max-128gb", "mac-studio-m5-ultra-192gb",
                "mac-studio-m3-ultra-256gb", "strix-halo"):
        d = resolve_device(dev)
        rows.append(f"| {d.id} | {gb(d.memory_gib * 2**30)} | {gb(d.usable_bytes)} | {d.usable_rule} |")
    return rows


# The guides' cluster rows (issue 23): (claim, model, method, device, [(stack label, settings)])
CLUSTER_ROWS = (
    ("70B full fine-tune: 8x H100 80GB cluster", "llama-3.1-70b", "full", "h100", (
        ("torchtune, FSDP2 pure bf16", dict(framework="torchtune", sharding="fsdp")),
        ("torchtitan, FSDP2 (fp32 shards)", dict(framework="torchtitan", sharding="fsdp")),
        ("HF + DeepSpeed ZeRO-3", dict(sharding="zero3")),
        ("HF + DeepSpeed ZeRO-3 + CPU offload", dict(sharding="zero3", offload_optimizer=True, offload_params=True)),
        ("HF + accelerate FSDP", dict(sharding="fsdp")),
        ("HF, layout searched (TP inside a machine)", dict()),
    )),
    ("120B (gpt-oss) full: 16x H100 cluster", "gpt-oss-120b", "full", "h100", (
        ("HF + DeepSpeed ZeRO-3", dict(sharding="zero3")),
        ("torchtitan, FSDP2", dict(framework="torchtitan", sharding="fsdp")),
        ("HF, layout searched", dict()),
    )),
    ("405B full: cluster-scale", "llama-3.1-405b", "full", "h100", (
        ("HF + DeepSpeed ZeRO-3", dict(sharding="zero3")),
        ("torchtitan, layout searched (TP x PP x FSDP)", dict(framework="torchtitan")),
        ("Megatron-Core, layout searched", dict(framework="megatron")),
    )),
    ("405B LoRA: cluster-scale", "llama-3.1-405b", "lora", "h100", (
        ("HF + PEFT, layout searched", dict()),
    )),
    ("405B QLoRA: multi-GPU", "llama-3.1-405b", "qlora", "h100", (
        ("HF + PEFT, layout searched", dict()),
    )),
    ("70B LoRA on 2 GPUs with tensor parallelism (2 x 96 GB)", "llama-3.1-70b", "lora", "rtx-pro-6000-blackwell", (
        ("HF + PEFT, TP 2", dict(tensor=2)),
        ("HF + PEFT, layout searched", dict()),
    )),
    ("70B full on 4 x 96 GB", "llama-3.1-70b", "full", "rtx-pro-6000-blackwell", (
        ("HF, TP 4", dict(tensor=4)),
        ("torchtune, FSDP2 pure bf16", dict(framework="torchtune", sharding="fsdp")),
    )),
    ("70B LoRA: DGX Spark / 2x H100", "llama-3.1-70b", "lora", "h100", (
        ("HF + PEFT, TP 2", dict(tensor=2)),
    )),
    ("120B (gpt-oss) LoRA: DGX Spark cluster", "gpt-oss-120b", "lora", "dgx-spark", (
        ("HF + PEFT, layout searched", dict()),
    )),
)


def cluster_section() -> list[str]:
    """The guides' multi-GPU and cluster rows: the fewest GPUs of the named device that run the
    job per stack (tuneplan.search.min_gpus: node-sized counts, whole machines beyond one,
    the stack's layouts), with the per-GPU peak there; a fixed degree (TP 2) is kept."""
    rows = ["## Clusters: the guides' multi-GPU rows by stack", "",
            "The fewest GPUs of the named device that run the job under each stack (`tuneplan plan` / `min_gpus`: "
            "1, 2, 4, 8 GPUs in a machine, then whole machines; data parallel with each sharding the stack runs, "
            "TP inside a machine, PP across), with the layout and the per-GPU peak of the rank that peaks. "
            "DeepSpeed keeps fp32 master weights and Adam states next to a bf16 model; torchtune's FSDP2 is pure bf16. "
            "The epoch is the second guide's 50,000 samples x 2048 tokens on that many GPUs at micro-batch 1 and no "
            "gradient accumulation (tuneplan.timing.run_time: compute, the layout's exposed communication and bubble on "
            "the device's default machine type, tuneplan.systems), with tokens/s per GPU and the term that bounds the step.",
            "", "| guide's claim | stack | fewest GPUs | layout | peak GB / usable | machines | epoch (tok/s/GPU, bound by) |",
            "|---|---|---|---|---|---|---|"]
    for claim, model, method, dev, stacks in CLUSTER_ROWS:
        spec, d = resolve_model(model), resolve_device(dev)
        for label, settings in stacks:
            try:
                j = job(method, **({"num_gpus": settings["tensor"]} if "tensor" in settings else {}), **settings)
                found = plan_base(spec, j, d, max_count=gpu_counts(d)[-1])
            except TuneplanError as e:
                rows.append(f"| {claim} | {label} | refused | {e} | | | |")
                continue
            if found is None:
                rows.append(f"| {claim} | {label} | does not fit | up to {gpu_counts(d)[-1]} x {d.id}, with any "
                            "change that keeps the method (host RAM for offload included) | | | |")
                continue
            n, fj, change = found
            if change is not None:
                label += f" (+ {change.description})"
            est = estimate_memory(spec, fj)
            rt = run_time(spec, fj, d, DATASET)
            when = (f"{fmt_duration(rt.epoch_s)} ({rt.step.tokens_per_s_per_gpu:,.0f}, {rt.step.bound})"
                    if d.bf16_tflops else "no FLOP/s figure")
            rows.append(f"| {claim} | {label} | {n} x {d.id} | {describe_layout(fj)} | "
                        f"{gb(est.peak_bytes)} / {gb(d.usable_bytes)} ({est.rank}) | {fj.parallel.machines} | {when} |")
    return rows


def render() -> str:
    out = ["# The 2026 fine-tuning guides, checked with tuneplan", "",
           "Generated by `python benchmarks/guides_2026.py` from ../shared/guides/claims-2026.md; do not edit by "
           "hand. Two widely read 2026 guides (a workstation vendor's, April 2026, and an AI company's, May 2026) "
           "publish the tables below; each is reproduced with tuneplan's figure for the same settings and a "
           "sentence on why they differ.", "",
           f"Settings tuneplan assumes where a guide is silent: {DEFAULTS}", "",
           f"Memory in GB (10^9 bytes) as the guides write it. MLX profile available: {'yes' if HAS_MLX else 'no'}.", ""]
    for section in (vram_table, multiplier_table, fit_tables, cluster_section, time_table, disk_table, act_table,
                    unified_section):
        out += section() + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/guides_2026.md is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is not current: run python benchmarks/guides_2026.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
