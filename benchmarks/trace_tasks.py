"""Preference and reward tasks: the analytical estimate vs TRL's own loss step traced on fake tensors.

`tuneplan trace --task` (tuneplan.trace.tasks) replays the installed trl's DPOTrainer._compute_loss,
KTOTrainer._compute_loss, ORPOTrainer.get_batch_loss_metrics and RewardTrainer.compute_loss (trl 1.16.0)
with the policy, the reference (a separate frozen copy, the adapter disabled, or precomputed
log-probs) and the HF Trainer's backward and fused AdamW step. Grid: tasks x {full, lora} x
reference x (seq-len, micro-batch) on Qwen2.5-0.5B (tied embeddings) and a subset on TinyLlama
(untied); bf16, checkpointing full, SDPA, one GPU. Compared quantity: the estimate's allocated
bytes (no CUDA context / allocator overhead) against the traced peak; target |error| <= 5%.

    python benchmarks/trace_tasks.py            # trace everything (~15-25 min on 2 cores)
    python benchmarks/trace_tasks.py --reuse    # re-estimate against saved traces

Writes benchmarks/results/trace_tasks.md; raw traces go to benchmarks/results/traces_tasks.json
(trace results do not depend on the estimator). GiB = 2^30 bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_config
from tuneplan.trace.compare import estimate_allocated

RESULTS = Path(__file__).parent / "results"
TRACES = RESULTS / "traces_tasks.json"
GIB = 2**30

# (task, method, ref_model or None = TRL's default)
SETTINGS = (
    ("dpo", "full", None), ("dpo", "full", "precomputed"),
    ("dpo", "lora", None), ("dpo", "lora", "precomputed"), ("dpo", "lora", "separate"),
    ("kto", "full", None), ("kto", "full", "precomputed"),
    ("kto", "lora", None), ("kto", "lora", "precomputed"), ("kto", "lora", "separate"),
    ("orpo", "full", None), ("orpo", "lora", None),
    ("rm", "full", None), ("rm", "lora", None),
)
SIZES = ((1024, 1), (2048, 2))  # (seq_len, micro-batch: pairs for dpo/orpo/rm, samples for kto)
UNTIED = (("dpo", "full", None), ("dpo", "lora", None), ("kto", "lora", None), ("orpo", "lora", None),
          ("rm", "full", None))

# (model, task, method, ref, seq_len, batch)
Case = tuple[str, str, str, str | None, int, int]


def cases() -> list[Case]:
    out = [("qwen2.5-0.5b", tk, m, ref, s, b) for s, b in SIZES for tk, m, ref in SETTINGS]
    out += [("tinyllama", tk, m, ref, 1024, 1) for tk, m, ref in UNTIED]
    return out


def job_for(case: Case) -> Job:
    _, tk, m, ref, s, b = case
    kw = {"kind": m, "task": tk, "seq_len": s, "micro_batch": b}
    if ref:
        kw["ref_model"] = ref
    return Job.from_settings(**kw)


def key(case: Case) -> str:
    return json.dumps(list(case))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="use saved traces, only re-estimate")
    args = ap.parse_args(argv)
    saved = json.loads(TRACES.read_text()) if TRACES.exists() else {}
    rows = []
    for case in cases():
        spec, config = resolve_config(case[0])
        job = job_for(case)
        k = key(case)
        if k not in saved:
            if args.reuse:
                print(f"no saved trace for {k}; run without --reuse", file=sys.stderr)
                return 1
            from tuneplan.trace.tasks import run_task_trace

            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = run_task_trace(config, job, name=spec.name)
            saved[k] = {"peak_bytes": r.peak_bytes, "peak_phase": r.peak_phase, "at_peak": r.at_peak,
                        "elapsed_s": round(time.perf_counter() - t0, 1)}
            TRACES.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
            print(f"traced {k}: {r.peak_bytes / GIB:.3f} GiB in {saved[k]['elapsed_s']} s", file=sys.stderr)
        tr = saved[k]
        est = estimate_memory(spec, job)
        alloc = estimate_allocated(est)
        rows.append((case, job.reference, tr["peak_bytes"], tr["peak_phase"], alloc, est.peak_phase,
                     (alloc - tr["peak_bytes"]) / tr["peak_bytes"]))
    errs = [abs(r[-1]) for r in rows]
    lines = [
        "# Preference and reward tasks: estimate vs TRL's loss step traced",
        "",
        "`python benchmarks/trace_tasks.py` (tuneplan.trace.tasks: the installed trl 1.16.0's own loss methods on "
        "fake tensors, one GPU, bf16, checkpointing full, SDPA, fused AdamW). Allocated peak in GiB (2^30 bytes); "
        "error = (estimate - trace) / trace. The estimate's CUDA context and allocator overhead are left out "
        "(a trace cannot see them).",
        "",
        f"{len(rows)} cases: max |error| {max(errs):.1%}, median {statistics.median(errs):.1%}, "
        f"{sum(e <= 0.05 for e in errs)} within 5%.",
        "",
        "| model | task | method | reference | seq | batch | trace GiB | phase | estimate GiB | phase | error |",
        "|---|---|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for (model, tk, m, _ref, s, b), ref, tp, tph, ea, eph, err in rows:
        lines.append(f"| {model} | {tk} | {m} | {ref} | {s} | {b} | {tp / GIB:.3f} | {tph} | {ea / GIB:.3f} | "
                     f"{eph} | {err:+.1%} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "trace_tasks.md").write_text(text)
    print(text)
    return 0 if max(errs) <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
