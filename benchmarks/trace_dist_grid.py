"""Per-rank memory of multi-GPU layouts, traced on fake tensors under a fake process group,
next to the estimator where it computes the layout.

Grid: 1, 2, 4, 8 ranks x tensor parallel 1/2/4 x FSDP2 (fully_shard) on/off (DDP) x LoRA/full
x two small architectures (a Llama and a Qwen2 config.json, built here). Each row is rank 0 of
`tuneplan trace MODEL --gpus N --tp T --sharding fsdp|ddp --fsdp-version 2` (tuneplan.trace.dist);
the estimator is asked for the same Job (Job.from_settings(num_gpus=N, tensor=T, sharding=...))
and "estimator refuses" is written where it raises TuneplanError.

    .venv/bin/python benchmarks/trace_dist_grid.py            # writes benchmarks/results/trace_dist_grid.md
    .venv/bin/python benchmarks/trace_dist_grid.py --quick    # one architecture, 1/2/4 ranks
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import spec_from_config

OUT = Path(__file__).resolve().parent / "results" / "trace_dist_grid.md"
MiB = 2**20

COMMON = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096, rms_norm_eps=1e-6)
MODELS = {
    "tiny-llama": dict(model_type="llama", head_dim=32, tie_word_embeddings=False, rope_theta=500000.0, **COMMON),
    "tiny-qwen2": dict(model_type="qwen2", tie_word_embeddings=False, rope_theta=1000000.0, **COMMON),
}
SEQ, BATCH = 512, 1
CATS = ("weights", "trainable", "gathered", "gradients", "optimizer", "activations", "logits", "temporaries")
SHORT = {"weights": "frozen", "trainable": "train", "gathered": "gath", "gradients": "grad", "optimizer": "opt",
         "activations": "act", "logits": "logit", "temporaries": "tmp"}


def layouts(ranks: tuple[int, ...]):
    """(ranks, tp, sharding): FSDP on and off for each data-parallel degree above 1."""
    for n in ranks:
        for tp in (1, 2, 4):
            if tp > n or n % tp:
                continue
            if n // tp == 1:
                yield n, tp, "ddp"  # no data parallelism: nothing to shard
            else:
                yield n, tp, "ddp"
                yield n, tp, "fsdp"


def run_row(name: str, cfg: dict, kind: str, n: int, tp: int, sharding: str) -> dict:
    from tuneplan.trace.dist import run_dist_trace

    settings = dict(method=kind, seq_len=SEQ, micro_batch=BATCH, checkpointing="none", num_gpus=n, sharding=sharding)
    if kind != "full":
        settings["rank"] = 16
    row = {"model": name, "method": kind, "ranks": n, "tp": tp, "sharding": sharding}
    try:
        job = Job.from_settings(**settings, tensor=tp)
    except TuneplanError as e:  # the Job itself refuses tensor parallelism (estimator not there yet)
        job = None
        row["estimate"] = f"estimator refuses: {e}"
    est_job = job if job is not None else Job.from_settings(**settings)
    if job is not None:
        try:
            row["estimate_bytes"] = estimate_memory(spec_from_config(cfg, name=name), job).peak_allocated_bytes
        except TuneplanError as e:
            row["estimate"] = f"estimator refuses: {e}"
    try:
        r = run_dist_trace(cfg, est_job, tp=tp, fsdp_version=2, name=name)
    except TuneplanError as e:
        row["trace"] = f"trace refuses: {e}"
        return row
    row.update(peak=r.peak_bytes, phase=r.peak_phase, at_peak=r.at_peak, wrapper=r.layout["wrapper"],
               elapsed=r.elapsed_s)
    if "estimate_bytes" in row:
        row["error"] = row["estimate_bytes"] / r.peak_bytes - 1
    return row


def fmt(row: dict) -> str:
    lay = f"{row['ranks']} | {row['tp']} | {'FSDP2' if row['sharding'] == 'fsdp' and row['ranks'] > row['tp'] else ('DDP' if row['ranks'] > row['tp'] else '-')}"
    head = f"| {row['model']} | {row['method']} | {lay} |"
    if "peak" not in row:
        return head + f" {row['trace']} | | | | |"
    cats = " ".join(f"{SHORT[c]} {row['at_peak'].get(c, 0) / MiB:.2f}" for c in CATS if row["at_peak"].get(c))
    est = (f"{row['estimate_bytes'] / MiB:.2f} | {row['error']:+.1%}" if "estimate_bytes" in row
           else f"{row.get('estimate', '')[:90]} | -")
    return head + f" {row['peak'] / MiB:.2f} | {row['phase']} | {cats} | {est} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama only, 1/2/4 ranks")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    models = {"tiny-llama": MODELS["tiny-llama"]} if args.quick else MODELS
    ranks = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    warnings.simplefilter("ignore")
    rows, start = [], time.perf_counter()
    header = ("| model | method | ranks | tp | data-parallel | traced peak MiB (rank 0) | phase | breakdown at peak MiB "
              "| estimate MiB | estimate error |")
    sep = "|---|---|---|---|---|---:|---|---|---:|---:|"
    print(header)
    print(sep)
    for name, cfg in models.items():
        for kind in ("full", "lora"):
            for n, tp, sharding in layouts(ranks):
                row = run_row(name, cfg, kind, n, tp, sharding)
                rows.append(row)
                print(fmt(row), flush=True)
    took = time.perf_counter() - start
    errs = [abs(r["error"]) for r in rows if "error" in r]
    lines = [
        "# Traced per-rank memory of multi-GPU layouts (fake process group) vs the estimator",
        "",
        "`python benchmarks/trace_dist_grid.py` (tuneplan.trace.dist): the real transformers/PEFT step of each "
        "rank, replayed on fake tensors under `dist.init_process_group(\"fake\", store=FakeStore(), rank=0, "
        f"world_size=N)` on the CPU; {len(rows)} layouts in {took:.0f} s.",
        "",
        f"Models: {', '.join(models)} (config.json built in the script: hidden {COMMON['hidden_size']}, "
        f"{COMMON['num_hidden_layers']} layers, {COMMON['num_attention_heads']} heads / "
        f"{COMMON['num_key_value_heads']} kv heads, vocabulary {COMMON['vocab_size']}); batch {BATCH} x {SEQ} "
        "tokens, bf16 with autocast (HF Trainer), no checkpointing, fused AdamW, LoRA r=16 all-linear.",
        "",
        "- Rank 0 is traced: under the fake process group every rank of a data/tensor group runs the same shapes "
        "(FSDP's torch.chunk gives rank 0 the largest shard when a size does not divide), so rank 0 is the "
        "per-rank peak.",
        "- FSDP2: fully_shard per decoder layer and the root, reshard_after_forward=True, trainable parameters as "
        "fp32 shards gathered in bf16 (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), the HF "
        "profile's FSDP upcast). The estimator's HF profile may model FSDP1 (accelerate's default) for the same "
        "Job; the trace always runs FSDP2 here.",
        "- TP: DTensor parallelize_module, transformers' base_model_tp_plan (q/k/v/gate/up colwise, o/down "
        "rowwise), lm_head colwise with gathered logits, embeddings and norms replicated; DDP with TP > 1 and "
        "data > 1 is refused (DDP's reducer cannot copy DTensor gradients).",
        "- Breakdown (tracker categories at the peak): frozen = frozen weights and buffers, train = trainable "
        "parameters (local shards), gath = parameters FSDP gathered, grad = gradients (DDP: + buckets), opt = "
        "optimizer states, act = activations, logit = logits and loss, tmp = backward/optimizer temporaries.",
        "- Estimate = the estimator's allocated peak (no CUDA context, no allocator overhead) for the same Job; "
        "error = estimate / trace - 1.",
        "",
        header,
        sep,
        *(fmt(r) for r in rows),
        "",
        (f"Estimator compared on {len(errs)} of {len(rows)} layouts: median |error| "
         f"{sorted(errs)[len(errs) // 2]:.1%}, max {max(errs):.1%}." if errs else "The estimator computed none."),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} ({took:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
