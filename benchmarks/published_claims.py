"""Figures behind docs/published_claims.md: what tuneplan predicts for common published claims.

Run: python benchmarks/published_claims.py   (writes benchmarks/results/published_claims.md)
Every figure comes from the same code paths as the CLI (estimate_memory, fit_verdict,
max_seq_len, run_time); settings are stated per row.
"""

from __future__ import annotations

from pathlib import Path

from tuneplan.fit import fit_verdict
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_model
from tuneplan.search import max_micro_batch, max_seq_len
from tuneplan.timing import Dataset, fmt_duration, run_time
from tuneplan.units import GiB


def J(kind: str, b: int = 1, s: int = 2048, fw: str = "hf", r: int = 16, **kw) -> Job:
    return Job.from_settings(method=kind, rank=r, micro_batch=b, seq_len=s, framework=fw, **kw)


def fit_row(model: str, j: Job, dev: str) -> str:
    spec, d = resolve_model(model), resolve_device(dev)
    v = fit_verdict(spec, j, d)
    t = j.training
    seq = max_seq_len(spec, j, d.usable_bytes, multiple=128)
    mb = max_micro_batch(spec, j, d.usable_bytes)
    method = j.method.kind + (f" r={j.method.rank}" if j.method.is_adapter else "")
    extra = (", fused CE" if t.loss.fused else "") + (f", {t.precision}" if t.precision != "bf16" else "")
    return (f"| {model} | {method} | {t.framework}, {t.optimizer}, ckpt {t.checkpointing}{extra}, "
            f"b={t.micro_batch} x {t.seq_len} | {dev} | {v.peak_bytes / GiB:.2f} / {v.usable_bytes / GiB:.2f} | "
            f"{v.verdict} ({v.headroom:+.0%}) | {mb} | {seq:,} |")


def main() -> None:
    out = ["# Published claims: tuneplan's figures", "",
           "Peak and usable memory per GPU in GiB (2^30 bytes). `max b` = largest micro-batch at the row's "
           "sequence length; `max seq` = longest sequence (multiple of 128) at the row's micro-batch.", "",
           "## Memory claims", "",
           "| model | method | settings | device | peak / usable | verdict | max b | max seq |",
           "|---|---|---|---|---|---|---|---|"]
    rows = [
        ("llama-3.1-70b", J("qlora"), "rtx-a6000"),
        ("llama-3.1-70b", J("qlora", optimizer="paged-adamw-8bit"), "rtx-a6000"),
        ("llama-3.1-70b", J("qlora", fw="unsloth"), "rtx-a6000"),
        ("llama-3.1-70b", J("qlora", fw="unsloth", optimizer="paged-adamw-8bit"), "rtx-a6000"),
        ("qwen2.5-72b", J("qlora"), "rtx-a6000"),
        ("llama-3.1-8b", J("lora"), "rtx-4090"),
        ("llama-3.1-8b", J("lora", checkpointing="none"), "rtx-4090"),
        ("mistral-7b", J("lora"), "rtx-4090"),
        ("qwen2.5-7b", J("lora"), "rtx-4090"),
        ("mistral-7b", J("qlora"), "rtx-4090"),
        ("llama-3.1-8b", J("qlora", b=4, r=64), "rtx-4090"),
        ("llama-3.1-8b", J("qlora", b=4, r=64, fused_ce=True), "rtx-4090"),
        ("llama-3.1-8b", J("full"), "h100"),
        ("llama-3.1-8b", J("full", precision="mixed"), "h100"),
    ]
    out += [fit_row(m, j, d) for m, j, d in rows]

    out += ["", "## Unsloth context-length table (Llama 3.1 8B / 3.3 70B, QLoRA r=32, batch 1)", "",
            "| model | GPU (catalog device) | Unsloth claims | tuneplan unsloth, offloaded ckpt | "
            "HF+FA2 claims | tuneplan hf, flash, ckpt full |", "|---|---|---|---|---|---|"]
    claims = [("llama-3.1-8b", "12 GB", "rtx-3060-12gb", 21_848, 932), ("llama-3.1-8b", "16 GB", "rtx-4060ti-16gb", 40_724, 2_551),
              ("llama-3.1-8b", "24 GB", "rtx-4090", 78_475, 5_789), ("llama-3.1-8b", "40 GB", "a100-40gb-sxm", 153_977, 12_264),
              ("llama-3.1-8b", "48 GB", "rtx-a6000", 191_728, 15_502), ("llama-3.1-8b", "80 GB", "a100-80gb-sxm", 342_733, 28_454),
              ("llama-3.3-70b", "48 GB", "rtx-a6000", 12_106, None), ("llama-3.3-70b", "80 GB", "a100-80gb-sxm", 89_389, 6_916)]
    for model, gb, dev, u_claim, hf_claim in claims:
        spec, d = resolve_model(model), resolve_device(dev)
        u = max_seq_len(spec, J("qlora", fw="unsloth", r=32, attention="flash", checkpointing="offload"),
                        d.usable_bytes, multiple=128)
        h = max_seq_len(spec, J("qlora", r=32, attention="flash"), d.usable_bytes, multiple=128)
        out.append(f"| {model} | {gb} ({dev}) | {u_claim:,} | {u:,} ({u / u_claim - 1:+.0%}) | "
                   f"{'OOM' if hf_claim is None else f'{hf_claim:,}'} | {h:,} |")

    out += ["", "## Time claim: QLoRA 7B, 50K samples x 2048 tokens, one epoch on an RTX 5090", "",
            "| framework profile | micro-batch | tokens/s | MFU (model FLOPs) | epoch |", "|---|---|---|---|---|"]
    spec, d = resolve_model("mistral-7b"), resolve_device("rtx-5090")
    ds = Dataset.from_samples(50_000, 2048)
    for fw in ("hf", "unsloth"):
        for b in (1, 4):
            rt = run_time(spec, J("qlora", b=b, fw=fw), d, ds)
            out.append(f"| {fw} | {b} | {rt.step.tokens_per_s:,.0f} | {rt.step.mfu:.0%} | {fmt_duration(rt.epoch_s)} |")
    best = run_time(spec, J("qlora", b=4, fw="unsloth", checkpointing="none"), d, ds, efficiency=1.0)
    out.append(f"| any, 100% of peak, no checkpointing | 4 | {best.step.tokens_per_s:,.0f} | "
               f"{best.step.mfu:.0%} | {fmt_duration(best.epoch_s)} |")
    need = ds.tokens / (45 * 60)
    flops = need * best.step.model_flops_per_token
    out += ["", f"45 min/epoch needs {need:,.0f} tokens/s = {flops / 1e12:,.0f} TFLOP/s of model FLOPs "
                f"({flops / (d.bf16_tflops * 1e12):.1f}x the RTX 5090's {d.bf16_tflops:g} dense bf16 TFLOPS).",
            f"At the unsloth profile, 45 min covers {45 * 60 * run_time(spec, J('qlora', b=4, fw='unsloth'), d, ds).step.tokens_per_s:,.0f} "
            "tokens: 50K samples of ~" + f"{45 * 60 * run_time(spec, J('qlora', b=4, fw='unsloth'), d, ds).step.tokens_per_s / 50_000:,.0f}"
            " tokens each."]
    est = estimate_memory(resolve_model("llama-3.1-70b"), J("qlora"))
    out += ["", "## Breakdown: Llama-3.1-70B QLoRA r=16, batch 1 x 2048, hf (GiB)", ""]
    out += [f"- {c.label}: {c.bytes / GiB:.2f} ({c.note})" for c in est.components]
    text = "\n".join(out) + "\n"
    print(text)
    (Path(__file__).parent / "results" / "published_claims.md").write_text(text)


if __name__ == "__main__":
    main()
