"""tuneplan against published preference / reward / RL runs (../shared/calibration/tasks.csv).

Scores every row tuneplan can express as a task (tuneplan.choices.tasks) on the counter it
measured, checks OOM rows (a lower bound: the prediction must exceed it) and FITS rows (an
upper bound: the prediction must not exceed the capacity, unless --seq-len is only a cap, in
which case a predicted overflow is inconclusive), and lists every other row with the reason it
is not scored. A row is never scored as another task. Each row's settings are written out
below from its own columns and notes (nothing is fitted, nothing tuned to a row).

    python benchmarks/tasks_runs.py             # writes benchmarks/results/tasks_runs.md
    python benchmarks/tasks_runs.py --no-write  # prints only

No network, no torch; runs in about a second.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tuneplan.api import estimate  # noqa: E402

DEFAULT_CALIBRATION = ROOT / "benchmarks" / "data" / "calibration"  # a copy of ../shared/calibration, in the repo
MODELS_DIR = Path(__file__).resolve().parent / "calibration_models"
RESULTS = Path(__file__).resolve().parent / "results"
GiB = 2**30

# Rows tuneplan can express: settings from the row's columns (model, method, precision,
# optimizer, micro_batch in pairs, seq_len, grad_ckpt, ref_model), with the reading of each
# unstated field said in `caveat`. kind: memory (scored on `counter`), oom (lower bound),
# fits (upper bound; `seq_cap` when --seq-len is a cap the data need not reach). Every offline row
# predates trl 1.16's chunked log-prob trainers (trl PR #7243, 2026-09): --stack trl-full-logits.
EXPRESSIBLE: dict[str, dict[str, Any]] = {
    "tp02": dict(
        kind="memory", counter="allocated", model="Qwen/Qwen2.5-0.5B-Instruct",
        settings=dict(task="dpo", method="full", precision="amp", optimizer="adamw", micro_batch=4, seq_len=512,
                      checkpointing="full", stack="trl-full-logits"),
        caveat="TRL loads the policy and its reference in fp32 by default (create_model_from_path dtype "
               "'float32') with bf16 autocast: --precision amp; seq 512 is max_length (a cap: the 3-step peak "
               "is the longest batch seen); counter likely max_memory_allocated (PR script)"),
    "tp03": dict(
        kind="oom", model="Qwen/Qwen2.5-0.5B-Instruct",
        settings=dict(task="dpo", method="full", precision="fp32", optimizer="adamw", micro_batch=8, seq_len=1024,
                      checkpointing="none", stack="trl-full-logits"),
        caveat="TRL ~0.16 (fp32 weights, bf16 off, no checkpointing, 8 pairs at max_length 1024) modelled as "
               "TRL HEAD's DPO step; the OOM is at the first step, so fp32 logits of 16 rows decide it"),
    "un06": dict(
        kind="fits", seq_cap=True, model="mistral-7b",
        settings=dict(task="dpo", framework="unsloth", method="qlora", rank=64, optimizer="adamw-8bit",
                      micro_batch=2, seq_len=1024, checkpointing="offload", stack="trl-full-logits"),
        caveat="zephyr-sft is Mistral-7B-v0.1 (vocab 32,000); the catalog's Mistral-7B-v0.3 (32,768) stands in; "
               "max_length 1024 is a cap; Unsloth's DPO modelled as TRL's (logits materialised)"),
    "un07": dict(
        kind="fits", seq_cap=True, model=str(MODELS_DIR / "meta-llama-3-8b.json"),
        settings=dict(task="orpo", framework="unsloth", method="qlora", rank=16, optimizer="adamw-8bit",
                      micro_batch=2, seq_len=4096, checkpointing="offload", stack="trl-full-logits"),
        caveat="max_length 4096 is a cap (dataset rows are far shorter); Unsloth's ORPO modelled as TRL's"),
}

# Online rows (GRPO as TRL's GRPOTrainer runs it): settings from the row's columns, on the row's
# device (vLLM's share is a fraction of its memory), with what is assumed in `caveat`. The
# notebook's prompts are not stated: a 256-token prompt is assumed for every tn row (a
# NuminaMath-TIR problem plus the system prompt; chosen before scoring, never tuned). `time` is
# the measured seconds per optimizer step where the row states one.
_TN = dict(task="grpo", method="qlora", rank=32, optimizer="paged_adamw_8bit", micro_batch=8, num_generations=8,
           prompt_len=256, completion_len=256, checkpointing="full", cross_entropy="fused")
_TN_CAVEAT = ("TRL GRPO notebook: 1 prompt x 8 completions, max_completion_length 256, HF generate, beta 0, "
              "QLoRA nf4 r=32; prompt length assumed 256 (not stated); fp16 and bf16 have the same bytes; "
              "use_liger_kernel: Liger's fused linear GRPO loss (--cross-entropy fused)")
ONLINE: dict[str, dict[str, Any]] = {
    "tn01": dict(kind="memory", counter="reserved", model=str(MODELS_DIR / "qwen2-7b.json"), device="t4",
                 settings=_TN, caveat=_TN_CAVEAT),
    "tn02": dict(kind="memory", counter="device", model=str(MODELS_DIR / "qwen2-7b.json"), device="t4",
                 settings=_TN, time=100.0, caveat=_TN_CAVEAT + "; instrument not stated (nvidia-smi-like total)"),
    "tn03": dict(kind="memory", counter="device", model=str(MODELS_DIR / "qwen2-7b.json"), device="a100-40gb",
                 settings=_TN, time=33.0, caveat=_TN_CAVEAT + "; instrument not stated"),
    "tn04": dict(kind="memory", counter="device", model=str(MODELS_DIR / "qwen2-7b.json"), device="a100-80gb",
                 settings=_TN, time=25.0, caveat=_TN_CAVEAT + "; instrument not stated"),
    "tn06": dict(kind="oom", model=str(MODELS_DIR / "qwen2-7b.json"), device="t4",
                 settings={k: v for k, v in _TN.items() if k != "rank"} | dict(method="full", optimizer="adamw",
                                                                               checkpointing="none"),
                 caveat="'naive FP16' full fine-tuning with torch AdamW, no checkpointing (row: low confidence)"),
    "tn07": dict(kind="oom", model=str(MODELS_DIR / "qwen2-7b.json"), device="a100-40gb",
                 settings={k: v for k, v in _TN.items() if k != "rank"} | dict(method="full", optimizer="adamw",
                                                                               checkpointing="none"),
                 caveat="'naive FP16' full fine-tuning with torch AdamW, no checkpointing (row: low confidence)"),
    "tn08": dict(kind="memory", counter="device", model="qwen3-8b", device="t4", settings=_TN,
                 caveat=_TN_CAVEAT + "; '~' value from a code comment"),
    "tn09": dict(kind="memory", counter="device", model="qwen2.5-7b", device="t4", settings=_TN,
                 caveat=_TN_CAVEAT + "; '~' value from a code comment; the catalog's Qwen2.5-7B has the Instruct shape"),
    "tn10": dict(kind="memory", counter="device", model="llama-3.2-3b", device="t4", settings=_TN,
                 caveat=_TN_CAVEAT + "; '~' value from a code comment"),
    "tn11": dict(kind="memory", counter="device", model="llama-3.1-8b", device="t4", settings=_TN,
                 caveat=_TN_CAVEAT + "; '~' value from a code comment"),
    "tn13": dict(kind="oom", model="qwen3-14b", device="t4", settings=_TN,
                 caveat=_TN_CAVEAT + "; pre-quantised 4-bit checkpoint of Qwen3-14B"),
    "tp06": dict(kind="fits", model="deepseek-r1-distill-qwen-7b", device="h100",
                 settings=dict(task="grpo", method="full", micro_batch=8, num_generations=8, prompt_len=256,
                               completion_len=256, ref_model="separate", num_gpus=8, sharding="zero3"),
                 time=119.0, time_scale=16,
                 caveat="TRL 0.14 (open-r1): 1 prompt x 8 completions per device generated every micro-step "
                        "(before PR #2776), so one micro-step is modelled (grad_accum 1) and the step time is 16 x "
                        "it (16 accumulation micro-steps; the 15 extra optimizer updates are not removed); beta "
                        "0.04 then: a separate reference; HF generate; checkpointing assumed full (n/s)"),
}

# verl rows (volcengine/verl@49b08e950 examples/tuning/*, docs/perf/device_tuning.rst): GRPO-LoRA r=32 on
# GSM8K with --framework verl (tuneplan.memory.verl), every setting from the row's columns: prompts/GPU
# as the actor micro-batch in sequences (fsdp_workers.py:145-151 divides ppo_micro_batch_size by the
# world size, not by n) and n = 5 micro-steps per mini-batch, max_prompt_length + max_response_length
# per row, gen_gpu_mem_util, n_gpus, param_offload + optimizer_offload, the reference as the actor with
# its adapter disabled (use_kl_loss). Padding is removed (use_remove_padding), so the stated lengths
# are caps (`seq_cap`): a FITS row predicted over capacity at the caps is inconclusive. `typical` is a
# second reading at GSM8K's mean lengths as verl's own PPO log of the same data set reports them
# (tasks.csv vl17: mean prompt 103.6, mean response 278.4 tokens, Qwen2.5 tokenizer), chosen before
# scoring and shown apart, never used for the verdict.
_VL_TYPICAL = dict(prompt_len=104, completion_len=278)
_VL_CAVEAT = ("verl GRPO-LoRA r=32, {b} prompts/GPU x n 5 (micro-batch {b} sequences, 5 micro-steps), caps "
              "512 + 1024 tokens, vLLM util {u}, {g} GPU(s), param + optimizer offload, reference = adapter "
              "disabled; the catalog's Qwen2.5 shape stands in for the Instruct model")


def _vl(kind: str, model: str, b: int, u: float, g: int) -> dict[str, Any]:
    return dict(kind=kind, seq_cap=True, model=model, device="h100", typical=_VL_TYPICAL,
                settings=dict(task="grpo", framework="verl", method="lora", rank=32, micro_batch=b, grad_accum=5,
                              num_generations=5, prompt_len=512, completion_len=1024, vllm_memory_utilization=u,
                              num_gpus=g, offload_params=True, offload_optimizer=True, ref_model="adapter"),
                caveat=_VL_CAVEAT.format(b=b, u=u, g=g))


def _vl_full(model: str, b: int, accum: int, seq: int, u: float, g: int, caveat: str) -> dict[str, Any]:
    return dict(kind="fits", seq_cap=True, model=model, device="h100",
                settings=dict(task="grpo", framework="verl", method="full", micro_batch=b, grad_accum=accum,
                              num_generations=5, prompt_len=seq, completion_len=seq, vllm_memory_utilization=u,
                              num_gpus=g, offload_params=True, offload_optimizer=True, ref_model="separate"),
                caveat="verl GRPO full fine-tuning, separate FSDP reference with its parameters on the CPU, param + "
                       "optimizer offload; H800 (80 GB, the H100 SXM's memory) priced as h100; " + caveat)


VERL: dict[str, dict[str, Any]] = {
    "vl01": _vl("fits", "qwen2.5-0.5b", 116, 0.1, 1),
    "vl02": _vl("fits", "qwen2.5-1.5b", 128, 0.1, 1),
    "vl03": _vl("fits", "qwen2.5-3b", 62, 0.1, 1),
    "vl04": _vl("fits", "qwen2.5-7b", 100, 0.2, 1),
    "vl05": _vl("oom", "qwen2.5-7b", 101, 0.2, 1),
    "vl06": _vl("fits", "qwen2.5-14b", 58, 0.25, 2),
    "vl07": _vl("oom", "qwen2.5-14b", 59, 0.25, 2),
    "vl08": _vl("fits", "qwen2.5-32b", 44, 0.3, 4),
    "vl09": _vl("oom", "qwen2.5-32b", 45, 0.3, 4),
    "vl10": _vl("fits", "qwen2.5-72b", 22, 0.4, 8),
    "vl11": _vl("oom", "qwen2.5-72b", 23, 0.4, 8),
    "vl12": _vl_full(str(MODELS_DIR / "qwen2-7b.json"), 16, 160, 1024, 0.6, 2,
                     "1024 prompts x 5 / 2 GPUs = 2,560 responses per GPU (micro-batch 16 x 160)"),
    "vl13": _vl_full("qwen2.5-14b", 16, 80, 1024, 0.5, 4,
                     "Qwen2.5-Coder-14B has Qwen2.5-14B's shape; 1024 x 5 / 4 GPUs = 16 x 80 responses per GPU"),
    "vl16": _vl_full("qwen2.5-72b", 23, 5, 512, 0.6, 32,
                     "Qwen2-72B-Instruct has Qwen2.5-72B's shape; use_dynamic_bsz with ppo_max_token_len_per_gpu "
                     "24000 = 23 rows of 1,024 tokens per micro-batch; 5 micro-steps stand for the generation "
                     "batch (its per-token results are the only bytes it moves)"),
}
ONLINE.update(VERL)

# Why each other row is left out (by id, then by prefix); never scored as something else.
SKIP_ROWS = {
    "tp01": "TRL before PR #5926: two .contiguous() copies of the shifted policy and reference logits that "
            "HEAD no longer makes (tuneplan models HEAD; tp02 is the same run after the PR)",
    "tp04": "trl 0.12's DPO (full-vocabulary log_softmax before selective_log_softmax) and the batch size is "
            "not in the stored excerpt (low confidence)",
    "tn05": "the row's own note: a full fine-tuning of 7.6B with AdamW cannot fit in 62 GB (weights, gradients "
            "and Adam states alone exceed 120 GB); the run was probably still LoRA or a smaller model",
    "tn12": "LiquidAI LFM2.5-1.2B (hybrid convolution + attention) is not in the catalog and no config.json is "
            "stored",
    "tp05": "sharding and generation engine not stated: under DDP the OOM is certain, under ZeRO-3 it is not, so "
            "the bracket cannot be scored without guessing",
    "un05": "Unsloth's GRPO (its own generate, offloaded activations, chunked loss) on gpt-oss-20b: not TRL's "
            "trainer as tuneplan models it",
    "vl14": "verl's Megatron actor (TP 8 with parameter, gradient and optimizer offload): tuneplan's verl record "
            "is its FSDP worker",
    "vl15": "H20 (96 GB) is not in the device catalog",
    "vl17": "verl PPO step time on a GPU the log does not name: a time cannot be priced without the device",
    "vl18": "verl PPO step time on a GPU the log does not name: a time cannot be priced without the device",
    "nr25": "NeMo-RL DTensor worker with tensor parallelism 8 and the reference swapped in from CPU: not TRL",
    "nr26": "NeMo-RL DTensor worker with tensor parallelism 8 and the reference swapped in from CPU: not TRL",
}
SKIP_PREFIX = {
    "nr": "NeMo-RL's Megatron-Core policy worker (TP/CP/EP/PP as the row lists, fp32 main grads, sequence "
          "packing) with vLLM generation at its own TP: no stack record for it; tuneplan's online tasks are TRL's "
          "and verl's data-parallel FSDP trainers (--tp/--pp refused), and a step time of another stack would be "
          "priced with an efficiency not fitted for it",
    "un": "Unsloth fast_inference: vLLM shares the training weights and its standby frees only the KV cache; "
          "not TRL's colocated vLLM (a separate copy) as tuneplan models it",
    "lk": "loss-head microbenchmark (lm_head + loss in isolation, Liger's fp32-upcast reference code), not a "
          "training step",
}
TIME_ONLY = "a time or throughput figure (no memory reading) of a run tuneplan does not express"


@dataclass
class Row:
    id: str
    task: str
    source_kind: str  # measured_what (short)
    measured_gib: float | None
    kind: str = "skipped"
    reason: str = ""
    predicted: dict[str, float] = field(default_factory=dict)
    error: float | None = None
    verdict: str = ""
    caveat: str = ""
    components: str = ""
    time_error: float | None = None
    time_verdict: str = ""
    typical: float | None = None
    typical_right: bool | None = None


def _verdict(r: Row, spec: dict[str, Any], gib: float) -> None:
    """The row's memory verdict on its counter (memory), or its bracket (oom, fits)."""
    if r.kind == "memory":
        r.error = r.predicted[spec["counter"]] / gib - 1
        r.verdict = f"{spec['counter']} {r.predicted[spec['counter']]:.2f} vs {gib:.2f} GiB"
    elif r.kind == "oom":
        ok = r.predicted["device"] > gib
        r.verdict = ("right: predicted OOM" if ok else "WRONG: predicted to fit") + \
            f" ({r.predicted['device']:.1f} vs {gib:.1f} GiB)"
    else:
        ok = r.predicted["device"] <= gib
        r.verdict = ("right: predicted to fit" if ok else
                     "inconclusive: predicted over capacity at the seq-len cap" if spec.get("seq_cap") else
                     "WRONG: predicted OOM") + f" ({r.predicted['device']:.1f} vs {gib:.1f} GiB)"


def score_online(r: Row, spec: dict[str, Any]) -> Row:
    """An online row: the phases' peak on the row's device, and the step time where stated."""
    from tuneplan.hardware import resolve_device
    from tuneplan.job import Job
    from tuneplan.memory import estimate_memory
    from tuneplan.memory.online import on_device
    from tuneplan.models import resolve_model
    from tuneplan.timing_generation import online_time

    r.kind, r.caveat = spec["kind"], spec["caveat"]
    model, device = resolve_model(spec["model"]), resolve_device(spec["device"])
    job = on_device(Job.from_request(**spec["settings"]).on_vendor(device.vendor), device)
    est = estimate_memory(model, job)
    r.predicted = {"allocated": est.peak_allocated_bytes / GiB, "reserved": est.peak_reserved_bytes / GiB,
                   "device": est.device_bytes / GiB}
    phases = ", ".join(f"{k} {v / GiB:.2f}" for k, v in est.phase_bytes)
    r.components = (f"[{device.id}; phases (allocated): {phases}; bound by {est.peak_phase}] "
                    + ", ".join(f"{c.label} {c.bytes / GiB:.2f}" for c in est.components))
    _verdict(r, spec, r.measured_gib)
    if "typical" in spec:  # a second reading at stated typical lengths, shown apart from the verdict
        tj = on_device(Job.from_request(**(spec["settings"] | spec["typical"])).on_vendor(device.vendor), device)
        r.typical = estimate_memory(model, tj).device_bytes / GiB
        fits = r.typical <= r.measured_gib
        r.typical_right = fits if spec["kind"] == "fits" else not fits
    if "time" in spec:
        t = online_time(model, job, device)
        predicted = t.step_s * spec.get("time_scale", 1)
        r.time_error = predicted / spec["time"] - 1
        r.time_verdict = (f"{predicted:.3g} vs {spec['time']:.3g} s per step ("
                          + ", ".join(f"{k} {v:.3g}" for k, v in t.phases) + ")")
    return r


def score(src: dict[str, str]) -> Row:
    rid = src["id"]
    gib = float(src["measured_gib"]) if src["measured_gib"].strip() else None
    r = Row(rid, src["task"], src["measured_what"][:60], gib)
    if rid in ONLINE:
        return score_online(r, ONLINE[rid])
    if rid in EXPRESSIBLE:
        spec = EXPRESSIBLE[rid]
        r.kind, r.caveat = spec["kind"], spec["caveat"]
        est = estimate(spec["model"], **spec["settings"])
        r.predicted = {"allocated": est.peak_allocated_bytes / GiB, "reserved": est.peak_reserved_bytes / GiB,
                       "device": est.device_bytes / GiB}
        r.components = ", ".join(f"{c.label} {c.bytes / GiB:.2f}" for c in est.components)
        _verdict(r, spec, gib)
        return r
    reason = SKIP_ROWS.get(rid) or next((v for k, v in SKIP_PREFIX.items() if rid.startswith(k)), None)
    if reason is None:
        from tuneplan.choices.tasks import TASKS

        t = TASKS.get(src["task"].strip().lower())
        if t is not None and not t.modelled:
            reason = f"task {t.name} is not modelled yet (needs {t.what_differs})"
        elif gib is None:
            reason = TIME_ONLY
        else:
            reason = "not expressible (settings not stated)"
    r.reason = reason
    return r


def run(calibration: Path) -> dict[str, Any]:
    rows = [score(src) for src in csv.DictReader((calibration / "tasks.csv").open(encoding="utf-8"))]
    errors = [abs(r.error) for r in rows if r.error is not None]
    online = [abs(r.error) for r in rows if r.error is not None and r.id in ONLINE]
    ooms = [r for r in rows if r.kind == "oom"]
    fits = [r for r in rows if r.kind == "fits"]
    summary = {
        "rows": len(rows),
        "memory_scored": len(errors),
        "memory_median_abs_error": statistics.median(errors) if errors else None,
        "memory_mean_signed_error": statistics.mean(r.error for r in rows if r.error is not None) if errors else None,
        "oom_rows": len(ooms), "oom_right": sum(r.verdict.startswith("right") for r in ooms),
        "fits_rows": len(fits), "fits_right": sum(r.verdict.startswith("right") for r in fits),
        "fits_wrong": sum(r.verdict.startswith("WRONG") for r in fits),
        "skipped": sum(r.kind == "skipped" for r in rows),
        "online_memory_scored": len(online),
        "online_memory_median_abs_error": statistics.median(online) if online else None,
        "verl_rows": sum(r.id in VERL for r in rows),
        "verl_right": sum(r.id in VERL and r.verdict.startswith("right") for r in rows),
        "verl_wrong": sum(r.id in VERL and r.verdict.startswith("WRONG") for r in rows),
        "verl_typical": sum(r.typical is not None for r in rows),
        "verl_typical_right": sum(bool(r.typical_right) for r in rows),
        "time_scored": sum(r.time_error is not None for r in rows),
        "time_median_abs_error": (statistics.median(abs(r.time_error) for r in rows if r.time_error is not None)
                                  if any(r.time_error is not None for r in rows) else None),
    }
    return {"summary": summary, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    s, rows = result["summary"], result["rows"]
    med = s["memory_median_abs_error"]
    out = [
        "# tuneplan vs published preference / reward / RL runs (tasks.csv)",
        "",
        "Generated by `python benchmarks/tasks_runs.py`; nothing fitted. Error = predicted / measured - 1 on the "
        "counter the row measured. OOM rows are lower bounds (right when the prediction exceeds them); FITS rows "
        "are upper bounds (right when the prediction fits; inconclusive when --seq-len is only a cap).",
        "",
        f"- Memory rows scored: {s['memory_scored']} of {s['rows']}; median |error| "
        + (f"{med:.1%} (mean signed {s['memory_mean_signed_error']:+.1%})" if med is not None else "-"),
        f"- Online (GRPO) memory rows: {s['online_memory_scored']}; median |error| "
        + (f"{s['online_memory_median_abs_error']:.1%}" if s["online_memory_median_abs_error"] is not None else "-"),
        f"- OOM brackets: {s['oom_right']} of {s['oom_rows']} predicted to run out of memory",
        f"- FITS brackets: {s['fits_right']} of {s['fits_rows']} predicted to fit, {s['fits_wrong']} wrongly "
        "predicted OOM, the rest inconclusive (sequence length is a cap)",
        f"- verl brackets (--framework verl, lengths at the caps): {s['verl_right']} of {s['verl_rows']} on the "
        f"right side, {s['verl_wrong']} wrong, the rest inconclusive (FITS rows over capacity at the caps); at "
        f"GSM8K's mean lengths (shown apart): {s['verl_typical_right']} of {s['verl_typical']} on the right side "
        "(padding is removed, so the real micro-batches lie between the two readings: an OOM predicted at the caps "
        "is an upper-bound reading)",
        f"- Step times scored: {s['time_scored']}; median |error| "
        + (f"{s['time_median_abs_error']:.1%}" if s["time_median_abs_error"] is not None else "-"),
        f"- Not scored: {s['skipped']} rows (reasons below)",
        "",
        "## Scored rows",
        "",
        "| id | task | kind | result | error | caveat |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.kind != "skipped":
            err = f"{r.error:+.1%}" if r.error is not None else "-"
            typ = (f"; at mean lengths {r.typical:.1f} GiB ({'right' if r.typical_right else 'wrong'} side)"
                   if r.typical is not None else "")
            out.append(f"| {r.id} | {r.task} | {r.kind} | {r.verdict}{typ} | {err} | {r.caveat} |")
    timed = [r for r in rows if r.time_error is not None]
    if timed:
        out += ["", "## Step times", "", "| id | task | predicted vs measured | error |", "|---|---|---|---|"]
        out += [f"| {r.id} | {r.task} | {r.time_verdict} | {r.time_error:+.1%} |" for r in timed]
    out += ["", "Breakdowns (GiB):", ""]
    for r in rows:
        if r.kind != "skipped":
            out.append(f"- {r.id}: {r.components}")
    out += ["", "## Not scored", "", "| id | task | reason |", "|---|---|---|"]
    for r in rows:
        if r.kind == "skipped":
            out.append(f"| {r.id} | {r.task} | {r.reason} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.calibration)
    text = markdown(result)
    if args.no_write:
        print(text)
    else:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tasks_runs.md").write_text(text, encoding="utf-8")
        print(text.split("## Scored rows")[0])
        print(f"wrote {RESULTS / 'tasks_runs.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
