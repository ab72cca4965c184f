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
# fits (upper bound; `seq_cap` when --seq-len is a cap the data need not reach).
EXPRESSIBLE: dict[str, dict[str, Any]] = {
    "tp02": dict(
        kind="memory", counter="allocated", model="Qwen/Qwen2.5-0.5B-Instruct",
        settings=dict(task="dpo", method="full", precision="amp", optimizer="adamw", micro_batch=4, seq_len=512,
                      checkpointing="full"),
        caveat="TRL loads the policy and its reference in fp32 by default (create_model_from_path dtype "
               "'float32') with bf16 autocast: --precision amp; seq 512 is max_length (a cap: the 3-step peak "
               "is the longest batch seen); counter likely max_memory_allocated (PR script)"),
    "tp03": dict(
        kind="oom", model="Qwen/Qwen2.5-0.5B-Instruct",
        settings=dict(task="dpo", method="full", precision="fp32", optimizer="adamw", micro_batch=8, seq_len=1024,
                      checkpointing="none"),
        caveat="TRL ~0.16 (fp32 weights, bf16 off, no checkpointing, 8 pairs at max_length 1024) modelled as "
               "TRL HEAD's DPO step; the OOM is at the first step, so fp32 logits of 16 rows decide it"),
    "un06": dict(
        kind="fits", seq_cap=True, model="mistral-7b",
        settings=dict(task="dpo", framework="unsloth", method="qlora", rank=64, optimizer="adamw-8bit",
                      micro_batch=2, seq_len=1024, checkpointing="offload"),
        caveat="zephyr-sft is Mistral-7B-v0.1 (vocab 32,000); the catalog's Mistral-7B-v0.3 (32,768) stands in; "
               "max_length 1024 is a cap; Unsloth's DPO modelled as TRL's (logits materialised)"),
    "un07": dict(
        kind="fits", seq_cap=True, model=str(MODELS_DIR / "meta-llama-3-8b.json"),
        settings=dict(task="orpo", framework="unsloth", method="qlora", rank=16, optimizer="adamw-8bit",
                      micro_batch=2, seq_len=4096, checkpointing="offload"),
        caveat="max_length 4096 is a cap (dataset rows are far shorter); Unsloth's ORPO modelled as TRL's"),
}

# Why each other row is left out (by id, then by prefix); never scored as something else.
SKIP_ROWS = {
    "tp01": "TRL before PR #5926: two .contiguous() copies of the shifted policy and reference logits that "
            "HEAD no longer makes (tuneplan models HEAD; tp02 is the same run after the PR)",
    "tp04": "trl 0.12's DPO (full-vocabulary log_softmax before selective_log_softmax) and the batch size is "
            "not in the stored excerpt (low confidence)",
    "nr25": "NeMo-RL DTensor worker with tensor parallelism 8 and the reference swapped in from CPU: not TRL",
    "nr26": "NeMo-RL DTensor worker with tensor parallelism 8 and the reference swapped in from CPU: not TRL",
}
SKIP_PREFIX = {
    "lk": "loss-head microbenchmark (lm_head + loss in isolation, Liger's fp32-upcast reference code), not a "
          "training step",
}
TIME_ONLY = "a time or throughput figure (no memory reading); task time is not modelled yet"


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


def score(src: dict[str, str]) -> Row:
    rid = src["id"]
    gib = float(src["measured_gib"]) if src["measured_gib"].strip() else None
    r = Row(rid, src["task"], src["measured_what"][:60], gib)
    if rid in EXPRESSIBLE:
        spec = EXPRESSIBLE[rid]
        r.kind, r.caveat = spec["kind"], spec["caveat"]
        est = estimate(spec["model"], **spec["settings"])
        r.predicted = {"allocated": est.peak_allocated_bytes / GiB, "reserved": est.peak_reserved_bytes / GiB,
                       "device": est.device_bytes / GiB}
        r.components = ", ".join(f"{c.label} {c.bytes / GiB:.2f}" for c in est.components)
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
        f"- OOM brackets: {s['oom_right']} of {s['oom_rows']} predicted to run out of memory",
        f"- FITS brackets: {s['fits_right']} of {s['fits_rows']} predicted to fit, {s['fits_wrong']} wrongly "
        "predicted OOM, the rest inconclusive (sequence length is a cap)",
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
            out.append(f"| {r.id} | {r.task} | {r.kind} | {r.verdict} | {err} | {r.caveat} |")
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
