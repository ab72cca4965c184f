"""Time one optimizer update on this GPU for each optimizer tuneplan models (needs CUDA).

tuneplan times the update as memory traffic (tuneplan.timing.step_time: weights, states and
gradients read and written once) at the device's streaming bandwidth. This measures what each
optimizer's real kernels take for a dense model's parameter tensors (the shapes of its
config.json, bf16 parameters and gradients, as the probe builds them), so the traffic share
each one reaches is a measurement, not a guess:

    python benchmarks/optimizer_update.py                   # on a CUDA GPU: writes results/
    python benchmarks/optimizer_update.py --summarize       # rewrite the table from the JSON

Results: benchmarks/results/optimizer_update.json and .md. tuneplan.calibration reads nothing
from here at run time; the share it states for an optimizer cites the figure in the .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tuneplan.hardware import resolve_device  # noqa: E402
from tuneplan.job import Job  # noqa: E402
from tuneplan.memory.static import static_memory  # noqa: E402
from tuneplan.memory.trained import trainable  # noqa: E402
from tuneplan.models import resolve_config  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
# (model, optimizers); the paged ones only on the small model (managed memory, kept well
# below the card's free memory)
GRID = (
    ("llama-3.2-1b", ("adamw", "adamw-foreach", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd-momentum",
                      "lion", "lion-8bit", "adafactor")),
    ("llama-3.2-3b", ("adamw", "adamw-foreach", "adamw-8bit", "lion-8bit")),
    ("llama-3.1-8b", ("adamw-8bit",)),
)


def shapes(config: dict[str, Any]) -> list[tuple[int, ...]]:
    """Parameter shapes of a dense Llama-style decoder (modeling_llama.py, transformers 5)."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    d = config.get("head_dim") or h // heads
    v = config["vocab_size"]
    out: list[tuple[int, ...]] = [(v, h)]
    for _ in range(n):
        out += [(heads * d, h), (kv * d, h), (kv * d, h), (h, heads * d), (i, h), (i, h), (h, i), (h,), (h,)]
    out.append((h,))
    if not config.get("tie_word_embeddings", False):
        out.append((v, h))
    return out


def modelled_bytes(model: str, optimizer: str) -> int:
    """The update's traffic as tuneplan.timing counts it (one GPU, full fine-tune, bf16)."""
    from tuneplan.models import resolve_model

    spec = resolve_model(model)
    job = Job.from_settings(method="full", optimizer=optimizer)
    st = static_memory(spec, job)
    tr = trainable(spec, job.method)
    trained_w = job.training.param_bytes * tr.base
    return int(2 * (trained_w + st.optimizer + st.master) + st.gradients)


def time_one(model: str, optimizer: str, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    from tuneplan.trace.run import make_optimizer

    _spec, config = resolve_config(model)
    job = Job.from_settings(method="full", optimizer=optimizer)
    torch.manual_seed(0)
    params = []
    for s in shapes(config):
        p = torch.nn.Parameter(torch.randn(s, device="cuda", dtype=torch.bfloat16) * 0.02)
        p.grad = torch.randn_like(p) * 1e-3
        params.append(p)
    opt = make_optimizer(params, job.training, bitsandbytes=True)
    for _ in range(warmup):  # first steps allocate the states
        opt.step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    n = sum(p.numel() for p in params)
    del opt, params
    torch.cuda.empty_cache()
    return {"model": model, "optimizer": optimizer, "params": n, "tensors": len(shapes(config)),
            "step_s": statistics.median(times), "step_times_s": [round(t, 6) for t in times],
            "modelled_bytes": modelled_bytes(model, optimizer)}


def summarize(data: dict[str, Any]) -> str:
    dev = resolve_device(data["catalog_device"]) if data.get("catalog_device") else None
    bw = dev.bandwidth_gbps * 1e9 if dev else None
    rows = ["| model | optimizer | params | tensors | update (ms, median) | ns per param | modelled traffic (GB) "
            "| achieved (GB/s) | share of spec bandwidth |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        gbs = r["modelled_bytes"] / r["step_s"] / 1e9
        share = f"{gbs * 1e9 / bw:.3f}" if bw else "-"
        rows.append(f"| {r['model']} | {r['optimizer']} | {r['params'] / 1e9:.2f} B | {r['tensors']} | "
                    f"{r['step_s'] * 1e3:.1f} | {r['step_s'] / r['params'] * 1e9:.3f} | "
                    f"{r['modelled_bytes'] / 1e9:.1f} | {gbs:,.0f} | {share} |")
    head = [
        "# Optimizer update time on a GPU, measured",
        "",
        f"Generated by `python benchmarks/optimizer_update.py` on {data['device']} (catalog "
        f"`{data.get('catalog_device')}`, spec bandwidth {dev.bandwidth_gbps:,.0f} GB/s); "
        f"{data['versions']}. One `optimizer.step()` over bf16 parameters with bf16 gradients of "
        "the model's shapes, median of the timed steps after the warm-up (states allocated). "
        "Modelled traffic: what tuneplan.timing counts for the update (weights, states, master "
        "copy read and written, gradients read); achieved = modelled traffic / measured time.",
        "",
    ] if dev else ["# Optimizer update time on a GPU, measured", ""]
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    args = ap.parse_args(argv)
    js = args.out / "optimizer_update.json"
    if args.summarize:
        md = summarize(json.loads(js.read_text()))
    else:
        import torch

        if not torch.cuda.is_available():
            print("optimizer_update: torch sees no CUDA device; run it on a GPU machine", file=sys.stderr)
            return 2
        import importlib.metadata as md_

        from tuneplan.probe.system import match_catalog

        name = torch.cuda.get_device_name(0)
        catalog = match_catalog(name, torch.cuda.get_device_properties(0).total_memory)
        versions = ", ".join(f"{p} {md_.version(p)}" for p in ("torch", "bitsandbytes", "transformers"))
        data: dict[str, Any] = {"device": name, "catalog_device": catalog.id if catalog else None, "versions": versions,
                                "runs": []}
        for model, opts in GRID:
            for o in opts:
                r = time_one(model, o, args.steps, args.warmup)
                print(f"{model:14s} {o:18s} {r['step_s'] * 1e3:8.1f} ms", flush=True)
                data["runs"].append(r)
                args.out.mkdir(parents=True, exist_ok=True)
                js.write_text(json.dumps(data, indent=1) + "\n")
        md = summarize(data)
    (args.out / "optimizer_update.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
