"""tuneplan vs the rule-of-thumb multipliers seen in guides (x the FP16 weight size).

Guides: full fine-tuning ~6x, LoRA ~1.2x, QLoRA ~0.4x of the FP16 model size. This prints
tuneplan's per-GPU peak for 7B/13B/70B-class models at two context lengths so the
README can say where and why the two differ.
Run: python benchmarks/rule_of_thumb.py   (writes benchmarks/results/rule_of_thumb.md; part of
`make docs`, and tests/test_docs_current.py fails when the committed file is stale)
"""

from __future__ import annotations

from pathlib import Path

from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import param_counts, resolve_model
from tuneplan.units import GiB

RULES = {"full": 6.0, "full-mixed": 6.0, "lora": 1.2, "qlora": 0.4}
MODELS = ("mistral-7b", "llama-3.1-8b", "mistral-nemo-12b", "qwen2.5-14b", "llama-3.1-70b")


OUT = Path(__file__).parent / "results" / "rule_of_thumb.md"


def render() -> str:
    lines = [
        "# tuneplan vs rule-of-thumb multipliers",
        "",
        "Per-GPU peak, GiB (2^30 B). Settings: 1 GPU, micro-batch 1, bf16, AdamW (torch, fused), "
        "gradient checkpointing on, SDPA attention, HF Trainer/PEFT profile, LoRA/QLoRA r=16 all-linear, "
        "NF4 with double quant. full = pure bf16 (bf16 weights, grads and AdamW states, as torchtune and HF with a bf16-loaded model do); full-mixed = bf16 weights + fp32 master weights and fp32 AdamW states (DeepSpeed/FSDP mixed precision). Rule = multiplier x FP16 weight size (2 bytes/param).",
        "",
        "| model | params | FP16 GiB | method | rule GiB | tuneplan 2k GiB | x rule | tuneplan 8k GiB | x rule | biggest part at 8k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        spec = resolve_model(name)
        n = param_counts(spec).total
        fp16 = 2 * n
        for kind, mult in RULES.items():
            rule = mult * fp16
            row = [name, f"{n / 1e9:.1f}B", f"{fp16 / GiB:.1f}", kind, f"{rule / GiB:.1f}"]
            est8 = None
            for seq in (2048, 8192):
                precision = "mixed" if kind == "full-mixed" else "bf16"
                job = Job.from_settings(method=kind.removesuffix("-mixed"), seq_len=seq, precision=precision)
                est = estimate_memory(spec, job)
                row += [f"{est.peak_bytes / GiB:.1f}", f"{est.peak_bytes / rule:.2f}"]
                est8 = est
            top = max(est8.components, key=lambda c: c.bytes)
            row.append(f"{top.label} {top.bytes / GiB:.1f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = render()
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
