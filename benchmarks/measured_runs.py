"""tuneplan against published measured fine-tuning runs (memory and time).

Scores every row of ../shared/calibration/{memory,throughput}.csv that tuneplan can
express, on the quantity the row measured, and says why each other row is skipped.

Memory: each row is compared on the counter it measured (torch max_memory_allocated or
active bytes -> allocated; max_memory_reserved -> reserved; nvidia-smi / a VRAM capacity
-> device); rows whose counter is unknown are compared on `reserved` (the middle counter:
allocated <= reserved <= device, and torchtune's own tutorials show their "Peak Memory"
equal to max_memory_reserved) and reported as their own counter group. OOM rows are lower
bounds: the verdict is right when the device-level prediction exceeds the bound; a
predicted fit for an OOM row is the most harmful error and is counted apart.
Time: tokens/s (per GPU or total, as the row states) against tuneplan.timing.step_time.

Nothing in the estimate is fitted here: a row's settings come from the row (its columns and
notes), and every approximation is recorded on the row as a caveat. What is fitted to these
rows is the uncertainty band (tuneplan.uncertainty): its table, src/tuneplan/data/uncertainty.json,
is written by the default run, and its leave-one-source-out coverage is reported (band_report).

    python benchmarks/measured_runs.py                      # writes benchmarks/results/measured_runs.{md,json}
                                                            # and src/tuneplan/data/uncertainty.json
    python benchmarks/measured_runs.py --calibration DIR --records probe.jsonl --no-write

No network, no torch; runs in well under 10 s.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tuneplan.uncertainty import LEVEL, fit_table, kind_of, lookup, min_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CALIBRATION = ROOT / "benchmarks" / "data" / "calibration"  # a copy of ../shared/calibration, in the repo
MODELS_DIR = Path(__file__).resolve().parent / "calibration_models"
RESULTS = Path(__file__).resolve().parent / "results"
GiB = 2**30
BAND_TABLE = ROOT / "src" / "tuneplan" / "data" / "uncertainty.json"

# ---------------------------------------------------------------- tuneplan entry points
# Only these are used (they stay stable through refactors): resolve_model, estimate,
# timing.step_time, hardware.resolve_device, and the Job value objects (make_job).


def counters(est: Any) -> dict[str, int]:
    """Peak bytes per GPU as each counter would report them.

    allocated = torch.cuda.max_memory_allocated (every component but allocator overhead and
    CUDA context); reserved = max_memory_reserved (allocated + caching-allocator overhead);
    device = what nvidia-smi shows (reserved + CUDA context) = est.peak_bytes. Prefers the
    named attributes when the MemoryEstimate has them.
    """
    names = ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes")
    if all(hasattr(est, n) for n in names):
        return {"allocated": int(est.peak_allocated_bytes), "reserved": int(est.peak_reserved_bytes),
                "device": int(est.device_bytes)}
    allocated = sum(c.bytes for c in est.components if c.key not in ("allocator", "cuda_context"))
    allocator = sum(c.bytes for c in est.components if c.key == "allocator")
    return {"allocated": int(allocated), "reserved": int(allocated + allocator), "device": int(est.peak_bytes)}


def make_job(settings: dict[str, Any]) -> Any:
    """Build a tuneplan Job from estimate()-style settings (method=, rank, seq_len, num_gpus, ...)."""
    from tuneplan.job import Job

    return Job.from_settings(**settings)


# ---------------------------------------------------------------- models

# Architectures tuneplan cannot build (tuneplan.models.KNOWN_TYPES has no such model_type).
UNSUPPORTED_MODELS = {
    "tiiuae/falcon-40b": "architecture not in tuneplan.models: Falcon (model_type falcon: multi-query groups, "
                         "parallel attention)",
}
# config.json files added for models the bundled catalog lacks (each cites its source).
EXTRA_CONFIGS = {
    "microsoft/phi-1_5": "phi-1_5.json",
    "stabilityai/stablelm-base-alpha-3b": "stablelm-base-alpha-3b.json",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b-hf.json",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b-hf.json",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b-hf.json",
    "meta-llama/Meta-Llama-3-8B": "meta-llama-3-8b.json",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama-3-8b.json",
    "Qwen/Qwen2-7B": "qwen2-7b.json",
    "google/gemma-7b": "gemma-7b.json",
    # Qwen v1 (trust_remote_code) as its shape-identical qwen2 layout; see each file's _source
    "Qwen/Qwen-7B": "qwen-7b-v1.json",
    "Qwen/Qwen-14B": "qwen-14b-v1.json",
}

# Qwen's README speed table (QwenLM/Qwen README "Profiling of Memory and Speed", 2023): its
# finetune.py + finetune/finetune_lora_single_gpu.sh and finetune_qlora_single_gpu.sh:
# --bf16, batch 1, gradient accumulation 8, --gradient_checkpointing, flash-attention 2,
# LoRA r=64 on c_attn, c_proj, w1, w2 (every linear), inputs padded to model_max_length
# (padding="max_length": every micro-batch holds seq_len tokens), HF default AdamW (torch,
# foreach). Q-LoRA rows are not bitsandbytes: finetune.py loads the base with
# GPTQConfig(bits=4, disable_exllama=True) and the README says to use the Int4 (GPTQ) chat
# models, fp16 only (QWEN_GPTQ), a quantisation tuneplan does not model.
QWEN_SCRIPT = re.compile(r"\bqwen finetune\.py\b", re.I)  # the framework column's name for these scripts
QWEN_README_SETTINGS = {
    "micro_batch": 1, "grad_accum": 8, "checkpointing": "full", "attention": "flash", "framework": "hf",
    "rank": 64, "targets": "all-linear", "precision": "bf16", "optimizer": "adamw-foreach",
}


QWEN_GPTQ = ("GPTQ-Int4 base through auto-gptq, not bitsandbytes (Qwen finetune.py: quantization_config="
             "GPTQConfig(bits=4, disable_exllama=True) for --q_lora; README: 'load our provided quantized model, "
             "e.g. Qwen-7B-Chat-Int4'): not a tuneplan quantisation")


def resolve_row_model(hf_id: str) -> tuple[Any | None, str, str]:
    """(ModelSpec or None, how it was resolved, skip reason)."""
    from tuneplan.errors import TuneplanError
    from tuneplan.models import resolve_model

    hf_id = hf_id.strip()
    if hf_id in UNSUPPORTED_MODELS:
        return None, "", UNSUPPORTED_MODELS[hf_id]
    if hf_id in EXTRA_CONFIGS:
        path = MODELS_DIR / EXTRA_CONFIGS[hf_id]
        return resolve_model(str(path)), f"benchmarks/calibration_models/{path.name}", ""
    try:
        return resolve_model(hf_id), "catalog", ""
    except TuneplanError:
        pass
    if hf_id.endswith("-Instruct"):  # Meta's -Instruct configs share every architecture field with the base
        try:
            base = hf_id[: -len("-Instruct")]
            return resolve_model(base), f"catalog ({base}; Instruct has the same architecture)", ""
        except TuneplanError:
            pass
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hf_id):
        return None, "", f"model not a Hugging Face id ({hf_id!r}); architecture not in tuneplan's catalog"
    return None, "", f"no config.json for {hf_id} in the catalog or benchmarks/calibration_models"


# ---------------------------------------------------------------- row interpretation


@dataclass
class Row:
    """One measured run, as tuneplan sees it."""

    id: str
    kind: str  # memory | time
    source: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    model_arg: str = ""
    model_how: str = ""
    caveats: list[str] = field(default_factory=list)
    skip: str = ""
    # memory
    measured_what: str = ""
    counter_group: str = ""  # allocated | active | reserved | device | unknown | capacity
    counter: str = ""  # the predicted counter compared: allocated | reserved | device
    bound: bool = False  # OOM lower bound
    measured_gib: float | None = None
    # time
    device_id: str = ""
    per_gpu: bool = False
    measured_tps: float | None = None
    # results
    predicted: float | None = None
    error: float | None = None
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def framework(self) -> str:
        return self.source.get("framework", "")

    @property
    def confidence(self) -> str:
        return self.source.get("confidence", "").strip() or "n/s"

    @property
    def method(self) -> str:
        return self.settings.get("method", self.source.get("method", ""))

    @property
    def sharding(self) -> str:
        n = self.settings.get("num_gpus", 1)
        if n == 1:
            return "single GPU"
        label = f"{self.settings.get('sharding', 'ddp')}"
        if self.settings.get("offload_params") or self.settings.get("offload_optimizer"):
            label += "+offload"
        return label


def _int(text: str) -> int | None:
    m = re.match(r"\s*<?=?\s*(\d[\d,]*)", text or "")
    return int(m.group(1).replace(",", "")) if m else None


def row_profile(text: str) -> tuple[Any | None, str]:
    """The framework profile a row's `framework` column names: a profile's name or its
    calibration_framework (tuneplan.choices.frameworks), or None and why."""
    from tuneplan.choices.frameworks import FRAMEWORKS

    fw = (text or "").strip().lower().replace("lit-gpt", "litgpt")
    for prof in FRAMEWORKS.values():
        if fw in (prof.name, prof.calibration_framework):
            return prof, ""
    return None, f"framework {text!r} has no tuneplan profile"


_DATE = re.compile(r"\b(20\d\d-[01]\d-[0-3]\d)\b")
_LIB_VERSION = {  # library -> how a row's text names its version
    "bitsandbytes": re.compile(r"\b(?:bitsandbytes|bnb)[ =v:]*(\d+\.\d+(?:\.\d+)?)", re.I),
    "transformers": re.compile(r"\btransformers[ =v:]*(\d+\.\d+(?:\.\d+)?)", re.I),
}


def row_versions(src: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(date, {library: version}) a row states: library version columns (probe records), else
    versions named in its source or notes ("bnb 0.41.1"); the first YYYY-MM-DD in its source
    (the publication or commit date), else in its notes."""
    text = f"{src.get('source', '')} {src.get('notes', '')}"
    versions = {}
    for lib, pat in _LIB_VERSION.items():
        stated = (src.get(lib) or "").strip()
        m = re.fullmatch(r"\d+\.\d+(?:\.\d+)?\S*", stated) or pat.search(text) or pat.search(src.get("versions", ""))
        if m:
            versions[lib] = m.group(1) if m.re is pat else m.group(0)
    date = _DATE.search(src.get("source", "")) or _DATE.search(src.get("notes", ""))
    return (date.group(1) if date else ""), versions


def row_stack(profile: Any, src: dict[str, str]) -> tuple[str, str]:
    """(stack record name, how it was chosen): tuneplan.choices.versions.stack_for on what the
    row states, the same records a user picks with --stack."""
    from tuneplan.choices.versions import stack_for

    date, versions = row_versions(src)
    name = stack_for(profile.name, date, versions, profile.versioned_libraries)
    said = ", ".join([f"dated {date}"] * bool(date) + [f"{k} {v}" for k, v in versions.items()])
    return name, (f"--stack {name} ({said})" if said else "--stack current (no date or library version stated)")


def parse_targets(text: str) -> tuple[tuple[str, ...] | None, list[str]]:
    """LoRA targets from the CSV's free text -> transformers module names (+ caveats)."""
    caveats: list[str] = []
    body = re.sub(r"\(.*?\)", "", text or "").lower()
    if not body.strip():
        return None, caveats
    names: list[str] = []
    if re.search(r"output head|\bhead\b", body):
        caveats.append("LoRA on the output head is not expressible (adds r*(h+v) adapter params, < 0.1 GiB)")
        body = re.sub(r"output head|\bhead\b", " ", body)
    if re.fullmatch(r"\s*all[- _]linear\s*", body):
        return "all-linear", caveats
    unknown = []
    for tok in re.split(r"[\s,+;]+", body):
        tok = tok.strip()
        if not tok:
            continue
        mapped = {
            "q": ["q_proj"], "q_proj": ["q_proj"], "k": ["k_proj"], "k_proj": ["k_proj"],
            "v": ["v_proj"], "v_proj": ["v_proj"], "o": ["o_proj"], "o_proj": ["o_proj"],
            "output_proj": ["o_proj"],  # torchtune's name for the attention output projection
            "mlp": ["gate_proj", "up_proj", "down_proj"], "w1": ["gate_proj"], "w3": ["up_proj"],
            "w2": ["down_proj"], "gate": ["gate_proj"], "gate_proj": ["gate_proj"], "up": ["up_proj"],
            "up_proj": ["up_proj"], "down": ["down_proj"], "down_proj": ["down_proj"],
        }.get(tok)
        if mapped:
            names += [n for n in mapped if n not in names]
        else:
            unknown.append(tok)
    if unknown:  # a name tuneplan cannot place is refused, never dropped
        return None, [f"unrecognised LoRA target {', '.join(map(repr, unknown))}"]
    order = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return tuple(n for n in order if n in names) or None, caveats


def parse_optimizer(text: str) -> tuple[str, list[str]]:
    """Optimizer column -> tuneplan optimizer (+ caveats)."""
    t = text or ""
    low = t.lower()
    cav: list[str] = []
    in_bwd = "optimizer_in_bwd" in low
    if t.startswith("bnb PagedAdamW8bit"):
        opt = "paged-adamw-8bit"
    elif "8-bit" in low or "8bit" in low:
        opt = "adamw-8bit"
        if "unknown" in low:
            cav.append("optimizer not stated; adamw-8bit (the notebooks' default) assumed")
        elif "paged" in low:
            cav.append("8-bit AdamW taken as non-paged (the row names 8-bit AdamW; PagedAdamW8bit is only the config default)")
    elif "pagedadamw" in low.replace(" ", ""):
        opt = "paged-adamw"
    elif "adamw" in low:
        if in_bwd or "foreach=false" in low or "fused" in low:
            opt = "adamw"  # per-parameter or fused step: no full-size temporary
        else:
            # torch.optim.AdamW with neither foreach nor fused given defaults to foreach on CUDA
            opt = "adamw-foreach"
    else:
        opt = "adamw"
        cav.append(f"optimizer {t!r} not recognised; adamw assumed")
    return opt, cav


def parse_checkpointing(text: str) -> tuple[str | None, list[str]]:
    low = (text or "").lower()
    cav = []
    if "unconfirmed" in low or "assumed" in low:
        cav.append("activation checkpointing taken from the framework default (unconfirmed)")
    if low.startswith("unknown"):
        return None, cav
    if "offload" in low or low.startswith("unsloth"):
        return "offload", cav
    if low.startswith("full") or low.startswith("on") or low.startswith("default(on)"):
        return "full", cav
    if low.startswith("none") or low.startswith("off"):
        return "none", cav
    return None, cav


def parse_attention(text: str) -> tuple[str, list[str]]:
    low = (text or "").lower()
    if low.startswith("flash"):
        return "flash", []
    if low.startswith("sdpa/eager"):
        return "sdpa", ["attention sdpa or eager not stated; sdpa assumed"]
    if low.startswith("unknown"):
        return "sdpa", ["attention not stated; transformers' default sdpa assumed"]
    return "sdpa", []


def parse_seq(text: str, dataset_longest: int | None = None) -> tuple[int | None, list[str], str]:
    """(seq_len, caveats, skip reason). '<=N' caps are used as N with a caveat: the peak over a
    run is reached by the longest padded batch, which hits the cap when the data has samples
    longer than it."""
    t = (text or "").strip()
    n = _int(t)
    if n is None:
        return None, [], f"sequence length not stated ({t!r})"
    if t.startswith("<="):
        for name, (longest, said) in DATASET_LONGEST.items():
            if re.search(rf"\bunpacked {name}\b", t.lower()) and n > longest:
                return None, [], (f"padded length unknown: unpacked {name.capitalize()} with a {n} cap, above its "
                                  f"longest sample ({said}), so the padded length of the peak batch is unknown")
        return n, [f"seq_len {n} is a cap on padded variable-length data; the peak reaches it only if some "
                   "batch holds a sample that long"], ""
    return n, [], ""


def counter_of(measured_what: str) -> tuple[str, str, bool]:
    """(counter group, predicted counter to compare, is OOM bound)."""
    w = (measured_what or "").lower()
    if w.startswith("oom"):
        return "oom", "device", True
    if w.startswith("max-context claim"):
        return "capacity", "device", False
    if "max_memory_allocated" in w or "memory snapshot" in w:
        return "allocated", "allocated", False
    if "active_bytes" in w or "active" in w and "not specified" not in w:
        return "active", "allocated", False
    if "max_memory_reserved" in w:
        return "reserved", "reserved", False
    if "nvidia-smi" in w:
        return "device", "device", False
    return "unknown", "reserved", False


COUNTER_RULE = {
    "allocated": "torch max_memory_allocated -> predicted allocated",
    "active": "torch active_bytes.all.peak -> predicted allocated (active = allocated blocks incl. ones "
              "awaiting stream sync)",
    "reserved": "torch max_memory_reserved -> predicted reserved (allocated + caching-allocator overhead)",
    "device": "nvidia-smi -> predicted device (reserved + CUDA context)",
    "unknown": "counter not stated (torchtune get_memory_stats peak, 'GRAM') -> predicted reserved: the middle "
               "of allocated <= reserved <= device, and torchtune's tutorials quote 'Peak Memory' equal to "
               "max_memory_reserved",
    "capacity": "largest context that fits a GPU of this size (peak ~= VRAM) -> predicted device",
    "oom": "OOM: measured value is a lower bound; right when the device-level prediction exceeds it",
}

# Longest sample of a dataset a row names (a fact of the data, not of a source): a padded
# batch reaches a row's length cap only if the data holds a sample that long. Alpaca: 1304
# Llama-2 tokens (lit-gpt finetune/lora.py forces the longest sample into iteration 0; the
# resource tables' sequence lengths: Llama 2 1304, phi-1.5 1044, StableLM 1034, Falcon 1079).
DATASET_LONGEST = {"alpaca": (1304, "1304 Llama-2 tokens")}


# Rows whose figure contradicts their own stated settings or another source. They stay
# scored in every table (nothing is dropped silently); the headline also gives the figures
# without them, and render_md lists each with its reason. Nothing is fitted to them.
JUDGED_WRONG = {
    "tt02": "same stated settings as tt01 (4090) but twice the memory; the data's own note: the A6000 run "
            "used different, unstated settings (likely no activation checkpointing)",
    "tt04": "same stated settings as tt03 (4090) but twice the memory; unstated differences (data note)",
    "TT-02": "the A6000 run of tt02: unstated settings (1.6x the 4090's tokens/s on a slower GPU)",
    "TT-04": "the A6000 run of tt04: unstated settings (1.5x the 4090's tokens/s on a slower GPU)",
    "tt21": "4 x 2048 tokens of Llama-2-7B with activation checkpointing off keep about 25 GiB of "
            "activations per GPU, more than the 15.1 GiB measured in total: checkpointing must have been on",
    "tt24": "the row says sequence 4096 while its own note says the README overrides it to 2048",
    "tt32": "max_memory_reserved never falls: the 9.13 GB reserved at model init (bf16 weights loaded before "
            "NF4 quantisation, same tutorial table) carries into training, so 9.29 GB is init, not the step",
    "lh10": "chart-read Gemma-7B bar: at batch 32 x 512 the bf16 logits of its 256k vocabulary (7.8 GiB) plus "
            "the FSDP shards of weights, gradients and AdamW states (accelerate's fp32 upcast, ~32 GiB) "
            "exceed the 38.4 GiB read off the chart; the same settings fit Llama-3-8B and Qwen2-7B within 8%",
    "lh11": "chart-read Gemma-7B bar, same contradiction as lh10",
    "lh12": "chart-read Gemma-7B bar, same contradiction as lh10",
    "lh13": "chart-read Gemma-7B bar, same contradiction as lh10",
}


def interpret_memory(src: dict[str, str]) -> Row:
    r = Row(id=src["id"], kind="memory", source=src, measured_what=src.get("measured_what", ""))
    r.counter_group, r.counter, r.bound = counter_of(r.measured_what)
    try:
        r.measured_gib = float(src["measured_gib"])
    except (KeyError, ValueError):
        r.skip = "no measured value"
        return r
    _common_settings(r, src)
    return r


def parse_precision(text: str) -> tuple[str | None, list[str], str]:
    """(precision setting, caveats, skip reason) from the precision column's wording.

    "bf16-true"/"pure"/"bf16": bf16 weights (the framework profile decides autocast: litgpt and
    torchtune none, HF Trainer --bf16 autocasts); "no AMP": bf16 weights without autocast;
    "bf16-mixed" (Lightning) or "mixed": fp32 weights under bf16 autocast, which is tuneplan's
    `amp` (Lightning MixedPrecision.forward_context: torch.autocast(dtype=bfloat16) over an
    fp32 module: linear outputs bf16, embeddings, residual stream and norms fp32); fp32 /
    "32-true"; fp16 / "16-true". Anything else is refused, not mapped.
    """
    low = (text or "").strip().lower()
    if not low:
        return None, [], "precision not stated"
    if "not specified" in low or low.startswith("bf16/fp16"):
        return "bf16", ["16-bit dtype not stated; bf16 assumed (fp16 has the same bytes)"], ""
    if "no amp" in low:
        return "bf16-true", ["custom loop without autocast (--precision bf16-true): PEFT casts each adapter's input "
                             "to fp32 and keeps that copy"], ""
    if re.match(r"(bf16-mixed|bf16 mixed|mixed)\b", low):
        return "amp", ["fp32 weights under bf16 autocast (Lightning bf16-mixed): --precision amp"], ""
    if re.match(r"(16-mixed|fp16-mixed|fp16 mixed)\b", low):
        return "amp", ["fp32 weights under fp16 autocast: --precision amp (bf16 autocast, the same bytes)"], ""
    if re.match(r"(bf16-true|bf16)\b", low):
        return "bf16", [], ""
    if re.match(r"(16-true|fp16)\b", low):
        return "fp16", [], ""
    if re.match(r"(32-true|fp32|32)\b", low):
        return "fp32", [], ""
    return None, [], f"precision {text!r} not understood"


# Quantised-base wordings -> tuneplan --quant (bitsandbytes / torchao NF4, LLM.int8, FP4);
# GPTQ, AWQ, HQQ, FP8 and other bases are refused by name.
QUANT_WORDS = (("nf4", "nf4"), ("fp4", "fp4"), ("int8", "int8"), ("8-bit", "int8"), ("8bit", "int8"))
QUANT_REFUSED = ("gptq", "awq", "hqq", "fp8", "mlx", "int4", "gguf", "eetq", "aqlm")


def parse_quant(text: str) -> tuple[str | None, str]:
    """(tuneplan quant or None for an unquantised base, skip reason)."""
    low = (text or "").strip().lower()
    if not low or low.startswith("none") or low.startswith("n/s"):
        return None, ""
    for word in QUANT_REFUSED:
        if word in low:
            return None, f"quantisation {text!r} not expressible ({word}: not a tuneplan --quant)"
    for word, quant in QUANT_WORDS:
        if word in low:
            return quant, ""
    return None, f"quantisation {text!r} not understood"


def parse_offload(text: str) -> tuple[dict[str, bool], bool, str]:
    """({offload_params, offload_optimizer}, activations offloaded, skip reason) from the offload
    column: none | activations | optimizer | params | both (params + optimizer)."""
    low = (text or "").strip().lower()
    if not low or re.match(r"(none|no|off)\b", low):
        return {}, False, ""
    if low.startswith("activations"):
        return {}, True, ""
    if low.startswith("both"):
        return {"offload_params": True, "offload_optimizer": True}, False, ""
    out = {}
    if re.search(r"\bparam", low):
        out["offload_params"] = True
    if re.search(r"\boptimi[sz]er", low):
        out["offload_optimizer"] = True
    if out:
        return out, False, ""
    return {}, False, f"offload {text!r} not understood"


def parse_sharding(text: str) -> tuple[str | None, str]:
    """Multi-GPU strategy wording -> tuneplan --sharding, or the skip reason."""
    low = (text or "").strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    m = re.search(r"zero(?:stage)?([123])", low)
    if m and "n/s" not in low:
        return f"zero{m.group(1)}", ""
    for name in ("hsdp", "fsdp", "ddp"):
        if low.startswith(name):
            return name, ""
    return None, f"multi-GPU strategy {text!r} not expressible"


def parse_mlp(src: dict[str, str], spec: Any) -> str:
    """A refusal where the row names an MLP (litgpt's mlp_class_name: GptNeoxMLP = plain GELU,
    LLaMAMLP / GemmaMLP = gated) that the resolved config does not have."""
    text = f"{src.get('notes', '')} {src.get('model_hf_id', '')}"
    m = re.search(r"\b(GptNeoxMLP|LLaMAMLP|GemmaMLP|LLaMAMoE)\b", text)
    if not m:
        return ""
    gated = m.group(1) != "GptNeoxMLP"
    if gated != spec.gated_mlp:
        return (f"the row's MLP ({m.group(1)}) is not the resolved config's "
                f"({'gated' if spec.gated_mlp else 'plain GELU'}) MLP")
    return ""


def mark_cumulative_compile(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Marks (`_compile_from_earlier_row`) the rows of a cumulative table ("each technique added
    on top of the previous one": the row's own statement that earlier techniques stay on) below
    a row that turned torch.compile on. Returns the rows."""
    on = set()
    for src in rows:
        notes = src.get("notes") or ""
        if "added on top of the previous one" not in notes:
            continue
        table = (src.get("source") or "").split(" | ")[0]
        if table in on:
            src["_compile_from_earlier_row"] = "yes"
        if _states_compile(src):
            on.add(table)
    return rows


def _states_compile(src: dict[str, str]) -> bool:
    text = f"{src.get('notes', '')} {src.get('source', '')}"
    return bool(re.search(r"compile", text, re.I)) and not re.search(r"\b(no|without) (torch\.)?compile", text, re.I)


def _common_settings(r: Row, src: dict[str, str]) -> None:
    """Fill r.settings / r.caveats / r.skip from the memory.csv-style columns."""
    method = (src.get("method") or "").strip().lower()
    if method in ("adapter-other",):
        r.skip = f"not a tuneplan method: {src.get('lora_targets') or method}"
        return
    if method == "pretrain":
        method = "full"
    if method not in ("full", "lora", "qlora", "dora", "freeze"):
        r.skip = f"method {method!r} not expressible"
        return
    quant, why = parse_quant(src.get("quant", ""))
    if why:
        r.skip = why
        return
    if quant and method == "lora":  # LoRA on a quantised base is QLoRA, whatever the method column says
        method = "qlora"
        r.caveats.append(f"LoRA on a {quant} base: --method qlora --quant {quant}")
    elif quant and method != "qlora":
        r.skip = f"{method} on a quantised base ({src.get('quant')!r}) not expressible"
        return
    elif method == "qlora" and not quant:
        r.skip = f"QLoRA without a stated quantisation ({src.get('quant')!r})"
        return
    if method == "freeze":
        n = re.search(r"(?:top|last) (\d+) layers", (src.get("lora_targets") or "").lower())
        if not n:
            r.skip = (f"not a tuneplan method: {src.get('lora_targets') or 'freeze'} (freeze trains whole top layers; "
                      "the row states no layer count)")
            return
    spec, how, reason = resolve_row_model(src.get("model_hf_id", ""))
    if spec is None:
        r.skip = reason
        return
    why = parse_mlp(src, spec)
    if why:
        r.skip = why
        return
    r.model_how = how
    r.extra["spec"] = spec
    prof, why = row_profile(src.get("framework", ""))
    if prof is None:
        r.skip = why
        return
    s: dict[str, Any] = {"method": method, "framework": prof.name}
    if method == "freeze":
        s["trainable_layers"] = int(n.group(1))
    prec, cav, why = parse_precision(src.get("precision", ""))
    if why:
        r.skip = why
        return
    s["precision"] = prec
    r.caveats += cav
    from tuneplan.choices.versions import stack as stack_record
    from tuneplan.errors import TuneplanError

    try:
        s["stack"], said = row_stack(prof, src)
    except TuneplanError as e:
        r.skip = f"library versions: {e}"
        return
    versions = stack_record(s["stack"])
    if s["stack"] != "current":
        r.caveats.append(f"{said}: {versions.label}")
    if method in ("lora", "qlora", "dora"):
        rank = _int(src.get("lora_rank", ""))
        if rank is None:
            r.skip = "LoRA rank not stated"
            return
        s["rank"] = rank
        targets, cav = parse_targets(src.get("lora_targets", ""))
        if targets is None:
            r.skip = f"LoRA targets not understood ({src.get('lora_targets')!r}" + (f": {cav[0]}" if cav else "") + ")"
            return
        s["targets"] = targets
        r.caveats += cav
        if "unconfirmed" in (src.get("lora_targets") or ""):
            r.caveats.append("LoRA targets are the framework default at the time (unconfirmed)")
        stated = re.search(r"lora[_ ]dropout[ =:]*([\d.]+)", f"{src.get('lora_targets', '')} {src.get('notes', '')}", re.I)
        dropout = float(stated.group(1)) if stated else (
            versions.lora_dropout if versions.lora_dropout is not None else prof.lora_dropout_default)
        if dropout:
            s["lora_dropout"] = dropout
            if not stated:
                r.caveats.append(f"LoRA dropout {dropout}: the stack's default (not stated by the row)")
    if method == "qlora":
        q = (src.get("quant") or "").lower()
        s["quant"] = quant
        if quant != "int8":
            if prof.name == "litgpt":  # litgpt names the variants: bnb.nf4 and bnb.nf4-dq
                s["double_quant"] = "double quant" in q or "nf4-dq" in q
            elif "torchao" in q:
                s["double_quant"] = True  # torchao NF4Tensor quantises its per-64 scalers to int8 per 256 blocks
            else:
                s["double_quant"] = "no double" not in q
                if "double" not in q:
                    r.caveats.append("bitsandbytes double quantisation not stated; on assumed")
    opt, cav = parse_optimizer(src.get("optimizer", ""))
    fused = versions.adamw_fused if versions.adamw_fused is not None else prof.adamw_fused
    if opt == "adamw-foreach" and fused and "foreach" not in (src.get("optimizer") or "").lower():
        opt = "adamw"
        cav.append("torch AdamW built with fused=True by the stack's recipes (no foreach full-size temporary)")
    s["optimizer"] = opt
    r.caveats += cav
    if "optimizer_in_bwd" in (src.get("optimizer") or ""):
        s["optimizer_in_backward"] = True
    mb = _int(src.get("micro_batch", ""))
    if not mb:
        r.skip = "micro-batch not stated"
        return
    s["micro_batch"] = mb
    seq, cav, why = parse_seq(src.get("seq_len", ""))
    if why:
        r.skip = why
        return
    s["seq_len"] = seq
    r.caveats += cav
    ckpt, cav = parse_checkpointing(src.get("grad_ckpt", ""))
    r.caveats += cav
    if ckpt is None:
        r.skip = f"activation checkpointing not stated ({src.get('grad_ckpt')!r})"
        return
    offload, act_offload, why = parse_offload(src.get("offload", ""))
    if why:
        r.skip = why
        return
    if act_offload and ckpt == "full":
        ckpt = "offload"
    s["checkpointing"] = ckpt
    s["attention"], cav = parse_attention(src.get("attention", ""))
    r.caveats += cav
    ce = (src.get("fused_ce") or "").lower()
    if ce.startswith("yes"):
        s["fused_ce"] = True  # cross_entropy="fused" where tuneplan has it (Job.from_settings maps it)
        if "kernels" in ce:
            r.caveats.append("Liger's other kernels (RMSNorm, SwiGLU, RoPE) are not modelled; only its fused "
                             "linear cross-entropy")
    elif ce.startswith("chunked"):
        s["cross_entropy"] = "lm-head-chunked" if "lm_head_chunk_size" in ce else "chunked"
    elif prof.name == "unsloth":
        # Unsloth's fast_cross_entropy_loss (unsloth/kernels/cross_entropy_loss.py, since its first
        # release) is not a fused linear+CE: the bf16 logits exist, the kernel keeps a per-row
        # logsumexp and writes the gradient in place, with no fp32 copy. The row's "no" says
        # "not fused"; the closest tuneplan choice is "chunked" (bf16 logits + a small upcast).
        s["cross_entropy"] = "chunked"
        r.caveats.append("Unsloth's Triton cross-entropy keeps bf16 logits without an fp32 copy: modelled as "
                         "'chunked' (the row's fused_ce 'no' means no fused linear+CE)")
    else:
        s["cross_entropy"] = "plain"
    if _states_compile(src) or src.get("_compile_from_earlier_row"):
        s["compile"] = "inductor"
        r.caveats.append("torch.compile on" + (" (a cumulative table: turned on in an earlier row)"
                                               if not _states_compile(src) else "")
                         + ": saved activations per tuneplan.choices.compilation; time counts its fused pointwise "
                         "traffic (tuneplan.traffic), not other kernel gains")
    n = _int(src.get("n_gpus", "")) or 1
    s["num_gpus"] = n
    if n > 1:
        s["sharding"], why = parse_sharding(src.get("sharding", ""))
        if why:
            r.skip = why
            return
    s.update(offload)
    ga = re.search(r"gradient accumulation:\s*(\d+)", (src.get("notes") or "").lower())
    if ga:
        s["grad_accum"] = int(ga.group(1))
    m = re.search(r"global batch (\d+) via grad accumulation", (src.get("notes") or "").lower())
    if m:
        s["grad_accum"] = max(1, int(m.group(1)) // (mb * n))
    if re.search(r"periodic eval", f"{src.get('measured_what', '')} {src.get('notes', '')}", re.I):
        r.caveats.append("peak over the whole run including periodic eval/generation")
    if s["stack"] == "current":
        del s["stack"]
    r.settings = s


# ---------------------------------------------------------------- time rows

DEVICE_MAP = [  # (pattern in the CSV device text, catalog id, note)
    (r"^rtx 4090", "rtx-4090", ""),
    (r"^rtx a6000", "rtx-a6000", ""),
    (r"^a100 sxm4 80gb", "a100-80gb-sxm", ""),
    (r"^a100 80gb", "a100-80gb-sxm", ""),
    (r"^a100 40gb", "a100-40gb-sxm", ""),
    (r"^a100-sxm4-40gb", "a100-40gb-sxm", ""),
    (r"^a100", "a100-80gb-sxm", "A100 variant not stated; 80GB SXM assumed"),
    (r"^h100 80gb sxm", "h100-sxm", ""),
    (r"^nvidia h100 80gb hbm3", "h100-sxm", ""),  # torch.cuda.get_device_name of the SXM part (probe records)
    (r"^rtx pro 6000 blackwell", "rtx-pro-6000-blackwell", ""),
]


def map_device(text: str) -> tuple[str | None, str]:
    low = (text or "").strip().lower()
    if low.startswith("apple") or low.startswith("m1") or low.startswith("m2"):
        return None, "Apple silicon / MLX: tuneplan's time model is a PyTorch/CUDA step"
    for pat, dev, note in DEVICE_MAP:
        if re.search(pat, low):
            return dev, note
    return None, f"device {text!r} is not in tuneplan's device catalog"


def interpret_time(src: dict[str, str], linked: dict[str, str] | None) -> Row:
    """A throughput.csv row -> settings, device and the measured tokens/s (or the skip reason).

    The torchtune README rows are linked to the memory.csv row of the same table row, which
    holds the config read at the publishing commit; other rows carry their own settings.
    """
    r = Row(id=src["id"], kind="time", source=src)
    fw = (src.get("framework") or "").lower()
    model = src.get("model_hf_id") or ""
    prec = (src.get("precision") or "").lower()
    measured = (src.get("measured") or "").strip()
    shard = src.get("sharding") or ""
    reasons = []  # every reason that applies, most basic first
    if "mlx" in fw:
        return _interpret_mlx(r, src)
    if "mpt" in model.lower():
        reasons.append("architecture not in tuneplan.models: MPT (llm-foundry: ALiBi, non-gated GELU MLP)")
    if "fp8" in prec:
        reasons.append("FP8 training (Transformer Engine): tuneplan times bf16 steps only")
    if re.search(r"\b(TP|PP)\d", shard) and "TP1 PP1" not in shard:
        reasons.append(f"tensor/pipeline parallelism ({shard}) is not expressible")
    n = _int(src.get("n_gpus", "")) or 1
    if n > 8:
        reasons.append(f"multi-node ({n} GPUs): inter-node links are not modelled")
    if not reasons and linked is None:
        spec, _, why = resolve_row_model(model)
        if spec is None:
            reasons.append(why)
    if measured not in ("tokens_per_s_total", "tokens_per_s_per_gpu"):
        if measured == "epoch_time":
            reasons.append("epoch time with no token count: tokens per epoch not stated")
        elif measured == "s_per_step" and not src.get("derived_tokens_per_s_total", "").strip()[:1].isdigit():
            reasons.append("seconds per step with no token count per step")
    if not reasons and linked is None and QWEN_SCRIPT.search(fw):
        return _interpret_qwen_readme(r, src)
    if not reasons and linked is None:
        reasons.append("settings not stated: sequence length, micro-batch, packing, LoRA config")
    dev, dev_note = map_device(src.get("device", ""))
    if dev is None and "MLX" not in " ".join(reasons):
        reasons.append(dev_note)
    if reasons:
        r.skip = "; ".join(dict.fromkeys(reasons))
        return r
    assert linked is not None
    if (src.get("packing") or "").lower().startswith("no"):
        r.skip = "unpacked variable-length data: real tokens per step unknown"
        return r
    mem = interpret_memory(linked)
    if mem.skip:
        r.skip = f"config (memory row {linked['id']}): {mem.skip}"
        return r
    r.settings = dict(mem.settings)
    r.extra["spec"] = mem.extra["spec"]
    r.model_how = mem.model_how
    r.caveats = [c for c in mem.caveats if "peak" not in c and "cap on padded" not in c and "counter" not in c]
    r.caveats.append("settings from the probe record's own columns" if linked is src
                     else f"settings from memory.csv row {linked['id']} (same published table row)")
    ga = _int(src.get("grad_accum", ""))
    if ga:
        r.settings["grad_accum"] = ga
    if dev_note:
        r.caveats.append(dev_note)
    r.device_id = dev
    r.per_gpu = measured == "tokens_per_s_per_gpu"
    r.measured_tps = float(src["value"])
    return r


# mlx-lm / mlx-examples LoRA runs (throughput.csv MX rows): lora.py's and mlx_lm.lora's
# defaults at the time (rank 8, adapters on q_proj and v_proj of the last --lora-layers layers:
# the rows' own trainable-parameter counts, 1.311M for Llama-3.2-3B and 1.704M for Llama-3-8B,
# are exactly rank 8 on q and v of 16 layers), no checkpointing, the model's 16-bit dtype.
MLX_SETTINGS = {"framework": "mlx", "method": "lora", "rank": 8, "targets": "qv", "precision": "bf16",
                "checkpointing": "none", "optimizer": "adamw"}
# WikiSQL rows state no sequence length: MX-03's log gives ~310 tokens per iteration at batch 4,
# i.e. ~78 tokens per sample; mlx-lm pads each batch to 1 + a multiple of 32 (tuner/trainer.py
# iterate_batches, pad_to = 32) and feeds all but the last position, so the step computes 96
# positions per sample while tokens/s counts the ~78 real ones (default_loss ntoks = mask.sum()).
WIKISQL_TOKENS, WIKISQL_PADDED = 78, 96
# per row: (model, --lora-layers, micro-batch, sequence length or None for WikiSQL, device)
MLX_ROWS = {
    "MX-01": ("meta-llama/Llama-2-7b-hf", 16, 4, None, "mac-studio-m2-ultra"),
    "MX-02": ("mistral-7b", 4, 1, None, "m1-max-32c"),  # v0.3 config: vocab 32768 vs v0.1 32000
    "MX-03": ("meta-llama/Llama-3.2-3B", 16, 4, None, "a100-80gb-sxm"),
    "MX-05": ("Qwen/Qwen3-0.6B", 16, 1, 1024, "m4-pro-20c"),
    "MX-06": ("Qwen/Qwen3-0.6B", 16, 1, 4096, "m4-pro-20c"),
    "MX-07": ("meta-llama/Meta-Llama-3-8B", 16, 2, None, "mac-studio-m4-max"),
}
MLX_JUDGED_WRONG = {"MX-04": "judged wrong by its own notes: the forward alone at 1,996 tokens/s would need ~2x the "
                             "M3 Max's peak FLOP/s (implausible; a reporting artifact); not scored, not fitted"}
# Apple chips the device catalog lacks (hardware.py is another engineer's): facts for these rows
# only. M1 Max 32-core GPU: 400 GB/s and 10.4 TFLOPS FP32 (Apple newsroom, "Introducing M1 Pro
# and M1 Max", 2021-10-18). M4 Pro 20-core GPU: 273 GB/s (Apple M4 Pro tech specs); Apple
# publishes no TFLOPS: half the catalog's 40-core M4 Max figure (same GPU cores and clock).
LOCAL_APPLE = {"m1-max-32c": ("mac-studio-m4-max", 400.0, 10.4, "Apple M1 Max (32-core GPU)"),
               "m4-pro-20c": ("mac-studio-m4-max", 273.0, 9.0, "Apple M4 Pro (20-core GPU)")}


def row_device(device_id: str) -> Any:
    """A catalog device, or one of LOCAL_APPLE's stand-ins."""
    from dataclasses import replace

    from tuneplan.hardware import resolve_device

    if device_id in LOCAL_APPLE:
        base, bw, tf, name = LOCAL_APPLE[device_id]
        return replace(resolve_device(base), id=device_id, name=name, bandwidth_gbps=bw, bf16_tflops=tf)
    return resolve_device(device_id)


def _interpret_mlx(r: Row, src: dict[str, str]) -> Row:
    """An MLX row: settings from mlx-lm's defaults (MLX_SETTINGS) and the row."""
    if r.id in MLX_JUDGED_WRONG:
        r.skip = MLX_JUDGED_WRONG[r.id]
        return r
    if r.id not in MLX_ROWS:
        r.skip = "MLX row without stated settings"
        return r
    model, layers, batch, seq, dev = MLX_ROWS[r.id]
    spec, how, why = resolve_row_model(model)
    if spec is None:
        r.skip = why
        return r
    r.settings = {**MLX_SETTINGS, "lora_layers": layers, "micro_batch": batch,
                  "seq_len": seq or WIKISQL_PADDED}
    r.extra["spec"] = spec
    r.model_how = how
    r.device_id = dev
    r.caveats = ["settings: mlx-lm defaults of the time (MLX_SETTINGS)"]
    if seq is None:
        r.extra["real_tokens"] = WIKISQL_TOKENS * batch
        r.caveats.append(f"WikiSQL: {WIKISQL_TOKENS} real tokens per sample in {WIKISQL_PADDED} padded positions "
                         "(MX-03's log)")
    if dev in LOCAL_APPLE:
        r.caveats.append(f"device not in the catalog: {LOCAL_APPLE[dev][3]} facts in LOCAL_APPLE")
    measured = (src.get("measured") or "").strip()
    if measured == "s_per_step":
        tokens = r.extra.get("real_tokens", batch * (seq or 0))
        r.measured_tps = tokens / float(src["value"])
        r.caveats.append("tokens/s = tokens per step / s per step" + (
            " (every step a full-length sequence)" if seq else ""))
    else:
        r.measured_tps = float(src["value"])
    return r


def _interpret_qwen_readme(r: Row, src: dict[str, str]) -> Row:
    """A Qwen README speed row: settings from Qwen's own fine-tuning scripts (QWEN_README_SETTINGS)."""
    method = (src.get("method") or "").strip().lower()
    if method not in ("lora", "qlora"):
        r.skip = "DeepSpeed ZeRO stage not stated and the row's tokens per step are ambiguous (notes)"
        return r
    if method == "qlora":
        r.skip = QWEN_GPTQ
        return r
    spec, how, why = resolve_row_model(src.get("model_hf_id", ""))
    if spec is None:
        r.skip = why
        return r
    dev, dev_note = map_device(src.get("device", ""))
    if dev is None:
        r.skip = dev_note
        return r
    r.settings = {**QWEN_README_SETTINGS, "method": method, "seq_len": _int(src.get("seq_len", ""))}
    r.extra["spec"] = spec
    r.model_how = how
    r.caveats = ["settings from Qwen's finetune scripts (QWEN_README_SETTINGS)",
                 "tokens/s counts padded tokens: inputs are padded to the sequence length"]
    if dev_note:
        r.caveats.append(dev_note)
    r.device_id = dev
    r.measured_tps = float(src["derived_tokens_per_s_total"])
    return r


def link_time_rows(mem_rows: list[dict[str, str]], time_rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """throughput.csv id -> the memory.csv row of the same published table row (same framework,
    same tokens/s figure)."""
    out = {}
    for t in time_rows:
        if not (t.get("framework") or "").startswith("torchtune"):
            continue
        for m in mem_rows:
            if m.get("framework") == "torchtune" and m.get("tokens_per_s") and t.get("value") \
                    and float(m["tokens_per_s"]) == float(t["value"]):
                out[t["id"]] = m
                break
    return out


def memory_only_time_rows(mem_rows: list[dict[str, str]], linked: dict[str, dict[str, str]]) -> list[Row]:
    """memory.csv rows that report tokens/s but have no throughput.csv twin: listed, not scored."""
    used = {m["id"] for m in linked.values()}
    out = []
    for m in mem_rows:
        if not m.get("tokens_per_s") or m["id"] in used:
            continue
        r = Row(id=m["id"], kind="time", source=m)
        seq = (m.get("seq_len") or "").lower()
        if "packed" in seq and "unpacked" not in seq:
            r.skip = "no throughput.csv twin with the same tokens/s; the row's config alone is not linked"
        elif re.search(r"unpacked|padded|<=", seq):
            r.skip = "unpacked variable-length data: padded to the longest in each batch, real tokens per step unknown"
        else:
            r.skip = f"packing not stated (sequence length {m.get('seq_len')!r}): real tokens per step unknown"
        out.append(r)
    return out


# ---------------------------------------------------------------- scoring


def score_memory(r: Row) -> None:
    import tuneplan
    from tuneplan.errors import TuneplanError

    try:
        est = tuneplan.estimate(r.extra["spec"], **r.settings)
    except TuneplanError as e:
        r.skip = f"tuneplan rejects the settings: {e}"
        return
    c = counters(est)
    r.extra["kind"] = kind_of(est.job)
    r.extra["peak_bytes"] = est.peak_bytes
    r.extra["counters_gib"] = {k: v / GiB for k, v in c.items()}
    r.extra["peak_phase"] = est.peak_phase
    r.predicted = c[r.counter] / GiB
    r.error = r.predicted / r.measured_gib - 1
    if r.bound:
        r.verdict = "right (predicted OOM)" if r.predicted > r.measured_gib else "WRONG (predicted fit)"
        from tuneplan.uncertainty import high_bytes

        r.extra["fit_verdict"] = _fit_verdict(r, est.peak_bytes, high_bytes(est.job, est.peak_bytes))
        if r.extra["fit_verdict"]:
            r.verdict += f"; tuneplan's verdict on the device: {r.extra['fit_verdict']}"


def _fit_verdict(r: Row, peak_bytes: int, high: int | None = None) -> str:
    """What `tuneplan estimate --gpu` would tell the user for this row's device: fits (the band's
    upper end `high` clears usable memory with >= 10% headroom), tight, uncertain (the peak fits,
    the band's upper end does not) or no (tuneplan.fit.verdict_of against the device's usable
    memory). Without `high`, the band of the committed table (tuneplan.uncertainty)."""
    from tuneplan.fit import verdict_of
    from tuneplan.hardware import resolve_device
    from tuneplan.uncertainty import high_bytes

    dev_id, _ = map_device(r.source.get("device", ""))
    if dev_id is None:
        return ""
    usable = resolve_device(dev_id).usable_bytes
    if high is None:
        high = high_bytes(make_job(r.settings), peak_bytes)
    return (f"{verdict_of(peak_bytes, usable, high)} ({(usable - peak_bytes) / usable:+.0%} headroom of "
            f"{usable / GiB:.1f} GiB usable)")


def score_time(r: Row) -> None:
    from tuneplan.errors import TuneplanError
    from tuneplan.timing import step_time

    try:
        device = row_device(r.device_id)
        st = step_time(r.extra["spec"], make_job(r.settings).on_vendor(device.vendor), device)
    except TuneplanError as e:
        r.skip = f"tuneplan rejects the settings: {e}"
        return
    total = st.tokens_per_s
    if "real_tokens" in r.extra:  # padded positions computed, real tokens counted
        total = r.extra["real_tokens"] / st.step_s
    pred = total / r.settings.get("num_gpus", 1) if r.per_gpu else total
    r.predicted = pred
    r.error = pred / r.measured_tps - 1
    r.extra["bound_by"] = st.bound
    r.extra["mfu"] = st.mfu


def stats(errors: list[float]) -> dict[str, Any]:
    if not errors:
        return {"n": 0}
    ab = [abs(e) for e in errors]
    return {
        "n": len(errors),
        "median_abs": statistics.median(ab),
        "mean_signed": statistics.fmean(errors),
        "worst": max(errors, key=abs),
        "within_5": sum(a <= 0.05 for a in ab) / len(ab),
        "within_10": sum(a <= 0.10 for a in ab) / len(ab),
        "within_20": sum(a <= 0.20 for a in ab) / len(ab),
    }


def _stats_rows(rows: list[Row]) -> dict[str, Any]:
    s = stats([r.error for r in rows])
    if rows:
        s["worst_id"] = max(rows, key=lambda r: abs(r.error)).id
    return s


def _group(rows: list[Row], key) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k in sorted(groups):
        s = stats([r.error for r in groups[k]])
        worst = max(groups[k], key=lambda r: abs(r.error))
        s["worst_id"] = worst.id
        out[k] = s
    return out


def breakdowns(rows: list[Row], kind: str) -> dict[str, Any]:
    out = {
        "overall": _stats_rows(rows),
        "by_framework": _group(rows, lambda r: r.framework),
        "by_method": _group(rows, lambda r: r.method),
        "by_sharding": _group(rows, lambda r: r.sharding),
        "by_confidence": _group(rows, lambda r: r.confidence),
        "excluding_low_confidence": _stats_rows([r for r in rows if r.confidence != "low"]),
        "not_used_in_fits": _stats_rows([r for r in rows if r.id not in FITTED_ROWS]),
        "excluding_judged_wrong": _stats_rows([r for r in rows if r.id not in JUDGED_WRONG]),
    }
    if kind == "time":  # MLX rows apart, so the PyTorch/CUDA figures stay comparable over time
        mlx = [r for r in rows if r.settings.get("framework") == "mlx"]
        out["pytorch_stacks"] = _stats_rows([r for r in rows if r not in mlx])
        out["mlx_apple"] = _stats_rows([r for r in mlx if r.device_id != "a100-80gb-sxm"])
        out["mlx_apple_held_out"] = _stats_rows([r for r in mlx if r.device_id != "a100-80gb-sxm"
                                                 and r.id not in FITTED_ROWS])
    if kind == "memory":
        out["by_counter"] = _group(rows, lambda r: r.counter_group)
    return out


# ---------------------------------------------------------------- uncertainty band, leave-one-source-out
# A row's source is the repository that published its measurement: the owner/name the `source`
# column opens with (owner/name@commit ... or github.com/owner/name/pull/N ...), kept by its
# name alone so an organisation's rename (pytorch/torchtune -> meta-pytorch/torchtune) stays
# one source. Two tables of one repository (torchtune's README at three commits, its
# tutorials, its pull requests) are one source: they share the stack and the people measuring.
# A row without a repository (a probe record) is its own source "records".
_REPO = re.compile(r"^\s*(?:https?://)?(?:github\.com/)?[\w.-]+/([\w.-]+?)(?:@|/|\s|$)")


def source_group(src: dict[str, str]) -> str:
    """The repository name a row's `source` column opens with ("records" when it names none)."""
    m = _REPO.match(src.get("source", ""))
    return m.group(1) if m else "records"


def _band_rows(rows: list[Row]) -> list[Row]:
    """The rows the band is fitted on: scored point measurements, the rows judged wrong left out."""
    return [r for r in rows if not r.skip and not r.bound and r.id not in JUDGED_WRONG and r.predicted]


def _ratio(r: Row) -> float:
    return r.measured_gib / r.predicted


def _fit(rows: list[Row]) -> dict[str, dict[str, Any]]:
    return fit_table((r.id, r.extra["kind"], _ratio(r)) for r in rows)


def _judge(table: dict[str, dict[str, Any]], r: Row) -> dict[str, Any]:
    found = lookup(table, r.extra["kind"])
    if found is None:
        return {"key": None, "covered": False}
    key, e = found
    return {"key": key, "low": e["low"], "high": e["high"], "rows": e["rows"],
            "covered": e["low"] <= _ratio(r) <= e["high"]}


def _coverage(rows: list[Row], judged: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    covered = sum(judged[r.id]["covered"] for r in rows)
    return {"n": len(rows), "covered": covered, "share": covered / len(rows),
            "missed": sorted(r.id for r in rows if not judged[r.id]["covered"])}


def band_report(mem_rows: list[Row]) -> dict[str, Any]:
    """The band table fitted on every calibration row (what tuneplan ships), its in-sample
    coverage, and its leave-one-source-out coverage: each source's rows judged by the table
    fitted on the other sources' rows alone (the cross-validated figure). The point estimate
    has nothing fitted to these rows, so its leave-one-source-out error equals the in-sample one."""
    rows = _band_rows(mem_rows)
    for r in mem_rows:
        r.extra["source"] = source_group(r.source)
    table = _fit(rows)
    inside = {r.id: _judge(table, r) for r in rows}
    loso: dict[str, dict[str, Any]] = {}
    for src in sorted({r.extra["source"] for r in rows}):
        held_in = _fit([r for r in rows if r.extra["source"] != src])
        loso.update({r.id: _judge(held_in, r) for r in rows if r.extra["source"] == src})
    for r in rows:
        r.extra["band"] = {"in_sample": inside[r.id], "loso": loso[r.id]}

    def by(key) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[Row]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r)
        return {k: {"error": _stats_rows(v), "in_sample": _coverage(v, inside), "loso": _coverage(v, loso)}
                for k, v in sorted(groups.items())}

    wrong = [r for r in mem_rows if not r.skip and not r.bound and r.id in JUDGED_WRONG]
    return {
        "level": LEVEL, "min_rows": min_rows(LEVEL), "rows": len(rows),
        "sources": {s: sorted(r.id for r in rows if r.extra["source"] == s)
                    for s in sorted({r.extra["source"] for r in rows})},
        "table": table,
        "overall": {"error": _stats_rows(rows), "in_sample": _coverage(rows, inside), "loso": _coverage(rows, loso)},
        "by_method": by(lambda r: r.method), "by_sharding": by(lambda r: r.sharding),
        "by_framework": by(lambda r: r.framework), "by_source": by(lambda r: r.extra["source"]),
        "judged_wrong_in_band": sorted(r.id for r in wrong
                                       if (f := lookup(table, r.extra["kind"])) and
                                       f[1]["low"] <= _ratio(r) <= f[1]["high"]),
    }


def band_table_json(band: dict[str, Any], commit: str, date: str) -> dict[str, Any]:
    """tuneplan/data/uncertainty.json: the fitted table with what it was fitted on."""
    return {
        "generated_by": "python benchmarks/measured_runs.py (tuneplan.uncertainty.fit_table)",
        "date": date, "commit": commit,
        "fitted_on": ("benchmarks/data/calibration/memory.csv: scored point measurements, the rows judged wrong in "
                      "the data left out; ratio = measured / estimated on the counter each row measured"),
        "level": band["level"], "min_rows": band["min_rows"], "rows": band["rows"], "sources": band["sources"],
        "levels": ["method x quant x sharding x framework", "method x quant x sharding", "method x quant", "quant",
                   "any job"],
        "loso_coverage": band["overall"]["loso"]["share"], "in_sample_coverage": band["overall"]["in_sample"]["share"],
        "kinds": band["table"],
    }


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def load_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def load_records(path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Probe records (JSONL, or a JSON list): dicts with memory.csv fields (measured_gib) and/or
    throughput.csv fields (measured, value). Values are stringified like CSV cells."""
    text = path.read_text()
    items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    mem, tput = [], []
    for i, d in enumerate(items):
        d = {k: ("" if v is None else str(v)) for k, v in d.items()}
        d.setdefault("id", f"rec{i + 1:03d}")
        if d.get("measured_gib"):
            mem.append(d)
        if d.get("measured") and d.get("value"):
            tput.append(d)
    return mem, tput


def _fitted_rows() -> frozenset[str]:
    """Rows that tuneplan.calibration's fitted constants were fitted on (benchmarks/fit_time_constants.py)."""
    spec = importlib.util.spec_from_file_location("fit_time_constants", Path(__file__).with_name("fit_time_constants.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return frozenset(mod.LORA_ROWS) | frozenset(mod.TORCHTUNE_ROWS) | frozenset(mod.MLX_FIT_ROWS)


FITTED_ROWS = _fitted_rows()


def interpreted_time_rows(calibration: Path = DEFAULT_CALIBRATION) -> list[Row]:
    """The throughput rows as tuneplan reads them (settings, device, measured tokens/s), unscored."""
    mem_src = mark_cumulative_compile(load_csv(calibration / "memory.csv"))
    tput_src = load_csv(calibration / "throughput.csv")
    linked = link_time_rows(mem_src, tput_src)
    return [interpret_time(s, linked.get(s["id"])) for s in tput_src]


def run(calibration: Path = DEFAULT_CALIBRATION, records: Path | None = None) -> dict[str, Any]:
    """Score every row. Returns the JSON-ready result (summary + per-row)."""
    mem_src = mark_cumulative_compile(load_csv(calibration / "memory.csv"))
    tput_src = load_csv(calibration / "throughput.csv")
    if records:
        m, t = load_records(records)
        mem_src += m
        tput_src += t
    mem_rows = [interpret_memory(s) for s in mem_src]
    for r in mem_rows:
        if not r.skip:
            score_memory(r)
    linked = link_time_rows(mem_src, tput_src)
    if records:  # a probe record holds its job's settings in its memory fields: its own twin
        linked.update({d["id"]: d for d in t if d.get("measured_gib")})
    time_rows = [interpret_time(s, linked.get(s["id"])) for s in tput_src]
    time_rows += memory_only_time_rows(mem_src, linked)
    for r in time_rows:
        if not r.skip:
            score_time(r)
    point = [r for r in mem_rows if not r.skip and not r.bound]
    bounds = [r for r in mem_rows if not r.skip and r.bound]
    band = band_report(mem_rows)
    timed = [r for r in time_rows if not r.skip]
    summary = {
        "memory": {
            "rows": len(mem_rows), "scored": len(point), "oom_rows_scored": len(bounds),
            "skipped": sum(1 for r in mem_rows if r.skip),
            **breakdowns(point, "memory"),
            "oom": {"n": len(bounds), "right": sum(r.verdict.startswith("right") for r in bounds),
                    "predicted_fit_wrong": sum(r.verdict.startswith("WRONG") for r in bounds),
                    "wrong_ids": [r.id for r in bounds if r.verdict.startswith("WRONG")],
                    # what the user is told: an OOM row that tuneplan calls "fits" (>= 10% headroom)
                    "verdict_fits": [r.id for r in bounds if r.extra.get("fit_verdict", "").startswith("fits")],
                    "verdict_tight": [r.id for r in bounds if r.extra.get("fit_verdict", "").startswith("tight")],
                    "verdict_uncertain": [r.id for r in bounds
                                          if r.extra.get("fit_verdict", "").startswith("uncertain")]},
            "counter_rules": COUNTER_RULE,
            "band": band,
        },
        "time": {
            "rows": len(time_rows), "scored": len(timed), "skipped": sum(1 for r in time_rows if r.skip),
            **breakdowns(timed, "time"),
        },
    }
    return {"calibration": str(calibration), "summary": summary,
            "rows": [row_json(r) for r in mem_rows + time_rows]}


def row_json(r: Row) -> dict[str, Any]:
    d: dict[str, Any] = {"id": r.id, "kind": r.kind, "framework": r.framework, "model": r.source.get("model_hf_id", ""),
                         "confidence": r.confidence}
    if r.skip:
        d["skipped"] = r.skip
        return d
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.settings.items()}
    d.update(settings=settings, model_resolved=r.model_how, method=r.method, sharding=r.sharding, caveats=r.caveats)
    if r.kind == "memory":
        d.update(measured_what=r.measured_what, counter_group=r.counter_group, counter=r.counter,
                 measured_gib=r.measured_gib, predicted_gib=r.predicted, error=r.error,
                 counters_gib=r.extra.get("counters_gib"), peak_phase=r.extra.get("peak_phase"))
        d["source"] = r.extra.get("source")
        if "band" in r.extra:
            d["band"] = r.extra["band"]
        if r.bound:
            d["verdict"] = r.verdict
    else:
        d.update(device=r.device_id, per_gpu=r.per_gpu, measured_tokens_per_s=r.measured_tps,
                 predicted_tokens_per_s=r.predicted, error=r.error, bound_by=r.extra.get("bound_by"),
                 predicted_mfu=r.extra.get("mfu"))
    return d


# ---------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


def _stat_table(groups: dict[str, dict[str, Any]], title: str) -> list[str]:
    out = [f"| {title} | n | median abs err | mean signed | worst | within 5% | within 10% | within 20% |",
           "|---|---|---|---|---|---|---|---|"]
    for k, s in groups.items():
        if not s.get("n"):
            out.append(f"| {k} | 0 | | | | | | |")
            continue
        out.append(f"| {k} | {s['n']} | {100 * s['median_abs']:.1f}% | {_pct(s['mean_signed'])} | "
                   f"{_pct(s['worst'])} ({s.get('worst_id', '')}) | {100 * s['within_5']:.0f}% | "
                   f"{100 * s['within_10']:.0f}% | {100 * s['within_20']:.0f}% |")
    return out


def _esc(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render_md(result: dict[str, Any], analysis: str = "") -> str:
    s = result["summary"]
    mem, tim = s["memory"], s["time"]
    o, t = mem["overall"], tim["overall"]
    lines = [
        "# tuneplan vs published measured runs",
        "",
        "Generated by `python benchmarks/measured_runs.py` from `benchmarks/data/calibration/memory.csv` (a copy of ../shared/calibration) and "
        "`throughput.csv`. Error = predicted / measured - 1 (positive: tuneplan predicts more memory / more "
        "tokens per second than measured). Nothing in the estimate is fitted to these rows (the uncertainty band is: "
        "see 'Leave-one-source-out and the uncertainty band'); each row's settings come from its own columns and "
        "notes, approximations are listed per row as caveats.",
        "",
        "## Headline",
        "",
        "| | rows | scored | skipped | median abs err | mean signed | within 10% | within 20% |",
        "|---|---|---|---|---|---|---|---|",
        f"| memory (point measurements) | {mem['rows']} | {mem['scored']} (+{mem['oom_rows_scored']} OOM bounds) | "
        f"{mem['skipped']} | {100 * o.get('median_abs', 0):.1f}% | {_pct(o.get('mean_signed'))} | "
        f"{100 * o.get('within_10', 0):.0f}% | {100 * o.get('within_20', 0):.0f}% |",
        f"| time (tokens/s; throughput.csv + memory.csv rows reporting tokens/s) | {tim['rows']} | {tim['scored']} | {tim['skipped']} | "
        f"{100 * t.get('median_abs', 0):.1f}% | {_pct(t.get('mean_signed'))} | "
        f"{100 * t.get('within_10', 0):.0f}% | {100 * t.get('within_20', 0):.0f}% |",
        f"| memory, excluding the {sum(1 for k in JUDGED_WRONG if k[1].islower())} rows judged wrong in the data "
        f"(below) | | {mem['excluding_judged_wrong']['n']} | | "
        f"{100 * mem['excluding_judged_wrong'].get('median_abs', 0):.1f}% | "
        f"{_pct(mem['excluding_judged_wrong'].get('mean_signed'))} | "
        f"{100 * mem['excluding_judged_wrong'].get('within_10', 0):.0f}% | "
        f"{100 * mem['excluding_judged_wrong'].get('within_20', 0):.0f}% |",
        f"| time, excluding the {sum(1 for k in JUDGED_WRONG if k[1].isupper())} rows judged wrong | | "
        f"{tim['excluding_judged_wrong']['n']} | | {100 * tim['excluding_judged_wrong'].get('median_abs', 0):.1f}% | "
        f"{_pct(tim['excluding_judged_wrong'].get('mean_signed'))} | "
        f"{100 * tim['excluding_judged_wrong'].get('within_10', 0):.0f}% | "
        f"{100 * tim['excluding_judged_wrong'].get('within_20', 0):.0f}% |",
        "",
        f"OOM rows (lower bounds): {mem['oom']['n']} scored, {mem['oom']['right']} right, "
        f"**{mem['oom']['predicted_fit_wrong']} predicted to fit** "
        f"({', '.join(mem['oom']['wrong_ids']) or 'none'}). What `tuneplan estimate --gpu` tells the user for "
        f"these runs: 'fits' (10% headroom or more) for {len(mem['oom']['verdict_fits'])} "
        f"({', '.join(mem['oom']['verdict_fits']) or 'none'}), 'tight' for {len(mem['oom']['verdict_tight'])} "
        f"({', '.join(mem['oom']['verdict_tight']) or 'none'}), 'does not fit' for the rest.",
        "",
        "## Memory",
        "",
        "How each row's counter is compared:",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in mem["counter_rules"].items()]
    lines += [""]
    for key, title in (("by_counter", "counter measured"), ("by_framework", "framework"), ("by_method", "method"),
                       ("by_sharding", "sharding"), ("by_confidence", "confidence")):
        lines += _stat_table(mem[key], title) + [""]
    lines += _stat_table({"excluding low confidence": mem["excluding_low_confidence"]}, "subset") + [""]
    lines += render_band(mem["band"], mem["oom"])
    lines += ["## Time", ""]
    lines += _stat_table({"excluding low confidence": tim["excluding_low_confidence"],
                          "not used in any fit (held out)": tim["not_used_in_fits"]}, "subset") + [""]
    for key, title in (("by_framework", "framework"), ("by_method", "method"), ("by_sharding", "sharding"),
                       ("by_confidence", "confidence")):
        lines += _stat_table(tim[key], title) + [""]
    lines += ["## Rows judged wrong in the data", "",
              "Scored in every table above; listed here with the reason, and nothing is fitted to them.", "",
              "| id | why |", "|---|---|"]
    lines += [f"| {k} | {_esc(v)} |" for k, v in JUDGED_WRONG.items()] + [""]
    lines += ["## Why rows are skipped", "", "| kind | reason | rows |", "|---|---|---|"]
    tally: dict[tuple[str, str], list[str]] = {}
    for d in result["rows"]:
        if "skipped" in d:
            reason = re.split(r"[;:(]", d["skipped"])[0].strip()
            tally.setdefault((d["kind"], reason), []).append(d["id"])
    for (kind, reason), ids in sorted(tally.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        lines.append(f"| {kind} | {_esc(reason)} | {len(ids)}: {', '.join(ids)} |")
    lines += [""]
    lines += ["## Per row: memory", "",
              "| id | framework | model | method | measured (counter) | measured GiB | predicted GiB "
              "(alloc / reserved / device) | error | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    for d in rows:
        if d["kind"] != "memory":
            continue
        if "skipped" in d:
            lines.append(f"| {d['id']} | {d['framework']} | {d['model']} | | | | | skipped | {_esc(d['skipped'])} |")
            continue
        c = d["counters_gib"]
        note = d.get("verdict", "")
        lines.append(f"| {d['id']} | {d['framework']} | {d['model']} | {d['method']} | "
                     f"{d['counter_group']} -> {d['counter']} | {d['measured_gib']:.2f} | "
                     f"**{d['predicted_gib']:.2f}** ({c['allocated']:.2f} / {c['reserved']:.2f} / {c['device']:.2f}) | "
                     f"{_pct(d['error'])} | {_esc(note + ('; ' if note and d['caveats'] else '') + '; '.join(d['caveats']))} |")
    lines += ["", "## Per row: time", "",
              "| id | framework | model | method | device | measured tok/s | predicted tok/s | error | bound by | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        if d["kind"] != "time":
            continue
        if "skipped" in d:
            lines.append(f"| {d['id']} | {d['framework']} | {d['model']} | | | | | skipped | | {_esc(d['skipped'])} |")
            continue
        unit = "/GPU" if d["per_gpu"] else " total"
        lines.append(f"| {d['id']} | {d['framework']} | {d['model']} | {d['method']} | "
                     f"{d['settings'].get('num_gpus', 1)}x {d['device']} | {d['measured_tokens_per_s']:.0f}{unit} | "
                     f"{d['predicted_tokens_per_s']:.0f} | {_pct(d['error'])} | {d['bound_by']} | "
                     f"{_esc('; '.join(d['caveats']))} |")
    if analysis:
        lines += ["", analysis.strip()]
    return "\n".join(lines) + "\n"


def _cov(c: dict[str, Any]) -> str:
    return f"{100 * c['share']:.1f}% ({c['covered']}/{c['n']})" if c.get("n") else "-"


def render_band(band: dict[str, Any], oom: dict[str, Any]) -> list[str]:
    """The leave-one-source-out section of measured_runs.md."""
    o = band["overall"]
    lines = [
        "## Leave-one-source-out and the uncertainty band", "",
        "**What is fitted to these rows.** Nothing in the memory estimate: every memory constant in "
        "src/tuneplan/calibration.py is a library or hardware fact (cited) or measured apart from this file "
        "(the allocator overhead on the H100 probe grid), and each row's settings come from its own columns. "
        "So the leave-one-source-out (LOSO) point error of every row equals its in-sample error, and the error "
        "columns below are the same figure twice. What IS fitted to these rows is the uncertainty band "
        "(tuneplan.uncertainty, src/tuneplan/data/uncertainty.json): its LOSO coverage is the cross-validated figure.",
        "",
        f"**Sources.** A row's source is the repository its `source` column opens with ({len(band['sources'])}: "
        + ", ".join(f"{k} {len(v)}" for k, v in band["sources"].items())
        + " rows). LOSO: each source's rows are judged by a band fitted on the other sources' rows alone.",
        "",
        f"**Band.** {band['level']:.0%} split-conformal band of measured / estimated (one side at "
        f"{(1 + band['level']) / 2:.0%} each), fitted on {band['rows']} point rows (judged-wrong rows left out), per "
        f"kind of job with at least {band['min_rows']} rows (fewer cannot give a finite {band['level']:.0%} band), "
        "else the next coarser kind: method x quant x sharding x framework -> method x quant x sharding -> "
        "method x quant -> quant -> any job.",
        "",
        "| rows | n | median abs err, in-sample | median abs err, LOSO | band coverage, in-sample | "
        "band coverage, LOSO | LOSO misses |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(label: str, g: dict[str, Any]) -> str:
        e = g["error"]
        med = f"{100 * e['median_abs']:.1f}%" if e.get("n") else "-"
        return (f"| {label} | {e.get('n', 0)} | {med} | {med} (nothing fitted) | {_cov(g['in_sample'])} | "
                f"{_cov(g['loso'])} | {', '.join(g['loso'].get('missed', [])) or '-'} |")

    lines.append(line("**all**", o))
    for key, label in (("by_method", "method"), ("by_sharding", "sharding"), ("by_framework", "framework"),
                       ("by_source", "source")):
        lines += [line(f"{label}: {k}", g) for k, g in band[key].items()]
    lines += ["", "The band table shipped (src/tuneplan/data/uncertainty.json):", "",
              "| kind | rows | low (measured/estimated) | high |", "|---|---|---|---|"]
    lines += [f"| {k} | {e['rows']} | {e['low']:.3f} | {e['high']:.3f} |" for k, e in band["table"].items()]
    lines += ["", f"Rows judged wrong in the data that the band would hold anyway: "
              f"{', '.join(band['judged_wrong_in_band']) or 'none'}. OOM rows: 'uncertain' (the peak fits, the "
              f"band's upper end does not) for {', '.join(oom.get('verdict_uncertain', [])) or 'none'}; "
              f"'fits' for {', '.join(oom['verdict_fits']) or 'none'}.", ""]
    return lines


ANALYSIS_MARK = "## Systematic errors and their mechanisms"


def existing_analysis(md_path: Path) -> str:
    """The hand-written analysis section of a previous report (kept across re-runs)."""
    if not md_path.exists():
        return ""
    text = md_path.read_text()
    i = text.find(ANALYSIS_MARK)
    return text[i:] if i >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION,
                    help="folder with memory.csv and throughput.csv (default benchmarks/data/calibration)")
    ap.add_argument("--records", type=Path, help="extra measured runs (JSONL or JSON list of CSV-like dicts)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where measured_runs.{md,json} go")
    ap.add_argument("--no-write", action="store_true", help="print the headline only")
    args = ap.parse_args(argv)
    if not (args.calibration / "memory.csv").exists():
        print(f"no memory.csv under {args.calibration}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = run(args.calibration, args.records)
    result["runtime_s"] = round(time.perf_counter() - t0, 2)
    s = result["summary"]
    m, t = s["memory"], s["time"]
    print(f"memory: {m['scored']} scored + {m['oom_rows_scored']} OOM bounds, {m['skipped']} skipped; "
          f"median |err| {100 * m['overall'].get('median_abs', 0):.1f}%, mean signed "
          f"{_pct(m['overall'].get('mean_signed'))}; OOM predicted to fit: {m['oom']['predicted_fit_wrong']}")
    b = m["band"]["overall"]
    print(f"band:   {LEVEL:.0%} band over {b['in_sample']['n']} rows covers {_cov(b['in_sample'])} in-sample, "
          f"{_cov(b['loso'])} leave-one-source-out")
    print(f"time:   {t['scored']} scored, {t['skipped']} skipped; median |err| "
          f"{100 * t['overall'].get('median_abs', 0):.1f}%, mean signed {_pct(t['overall'].get('mean_signed'))}")
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        md = args.out / "measured_runs.md"
        analysis = existing_analysis(md)
        md.write_text(render_md(result, analysis))
        (args.out / "measured_runs.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {md} and measured_runs.json ({result['runtime_s']} s)")
        if args.records is None and args.calibration == DEFAULT_CALIBRATION:  # the table tuneplan ships
            table = band_table_json(m["band"], _git_commit(), time.strftime("%Y-%m-%d", time.gmtime()))
            BAND_TABLE.write_text(json.dumps(table, indent=1) + "\n")
            print(f"wrote {BAND_TABLE.relative_to(ROOT)} ({table['rows']} rows, {len(table['kinds'])} kinds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
