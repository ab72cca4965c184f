"""The README's rule-of-thumb table (block `rule-table`), from the current estimator.

    python scripts/readme_rule_table.py    # print the table
    make docs                              # rewrite it in README.md with every other generated figure

tests/test_docs_current.py fails when the README block differs from table().
"""

from __future__ import annotations

from pathlib import Path

from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import param_counts, resolve_model
from tuneplan.units import GiB

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("llama-3.1-8b", "7-8B"), ("qwen2.5-14b", "13-14B"), ("llama-3.1-70b", "70B")]
METHODS = [("full", "bf16", 6.0), ("full", "mixed", 6.0), ("lora", "bf16", 1.2), ("qlora", "bf16", 0.4)]


def table() -> str:
    out = ["| model | method | rule (GiB) | tuneplan 2k tokens (GiB) | tuneplan 8k tokens (GiB) |",
           "|---|---|---|---|---|"]
    for name, cls in ROWS:
        spec = resolve_model(name)
        fp16 = 2 * param_counts(spec).total
        for kind, prec, mult in METHODS:
            peaks = [estimate_memory(spec, Job.from_settings(method=kind, seq_len=s, precision=prec)).peak_bytes
                     for s in (2048, 8192)]
            label = kind + (" (mixed precision)" if prec == "mixed" else " (pure bf16)" if kind == "full" else "")
            out.append(f"| {name} ({cls}) | {label} | {mult * fp16 / GiB:.1f} | "
                       f"{peaks[0] / GiB:.1f} ({peaks[0] / (mult * fp16):.2f}x) | "
                       f"{peaks[1] / GiB:.1f} ({peaks[1] / (mult * fp16):.2f}x) |")
    return "\n".join(out)


def main() -> None:
    print(table())


if __name__ == "__main__":
    main()
