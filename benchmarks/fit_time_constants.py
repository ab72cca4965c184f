"""Fit the time model's calibration constants from named measured rows, and print residuals.

Every fitted constant in tuneplan.calibration's time section comes from here; the test
tests/test_time_calibration.py re-runs this fit and fails if calibration.py drifts from it.

- SECONDS_PER_KERNEL and FRAMEWORK_EFFICIENCY["hf"]: least squares of the micro-step time
  of the Qwen README LoRA rows QW-01..04 (Qwen-7B, A100-80GB, HF + PEFT, r=64, batch 1,
  256..8192 tokens, checkpointing) as FLOPs / (peak x eff) + kernels x seconds + the
  pointwise kernels' traffic / bandwidth (counted by tuneplan.traffic, not fitted).
- FRAMEWORK_EFFICIENCY["mlx"]: the median implied efficiency of the mlx-examples Apple rows
  MX-01 (M2 Ultra) and MX-02 (M1 Max), as for torchtune.
- SECONDS_PER_KERNEL_BY_FRAMEWORK["Megatron-DeepSpeed"]: the host cost per kernel at which the
  median signed tokens/s error over vTrain's 1,440 Megatron-DeepSpeed rows of parallel.csv is
  zero, everything else modelled (benchmarks/parallel_time.py interprets the rows).
- FRAMEWORK_EFFICIENCY["torchtune"]: the median, over torchtune's README A100 rows that are
  compiled and compute-bound (TT-07, TT-08, TT-11..18), of the efficiency at which tuneplan's
  step time equals the measured tokens/s (bisection on the full time model).

Usage: python benchmarks/fit_time_constants.py   (no torch, no network; reads ../shared/calibration)
"""

from __future__ import annotations

import csv
import importlib.util
import statistics
import sys
from pathlib import Path

from tuneplan import calibration as cal
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.models import resolve_model
from tuneplan.timing import kernel_count, pointwise_traffic, step_time, token_flops

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "benchmarks" / "data" / "calibration"  # a copy of ../shared/calibration, in the repo
QWEN = {"7b": ROOT / "benchmarks" / "calibration_models" / "qwen-7b-v1.json",
        "14b": ROOT / "benchmarks" / "calibration_models" / "qwen-14b-v1.json"}
LORA_ROWS = ("QW-01", "QW-02", "QW-03", "QW-04")
# mlx-lm on Apple silicon: the two mlx-examples README rows (M2 Ultra, M1 Max; confidence med).
# Held out: MX-05/06 (mlx-tune, M4 Pro), MX-07 (mlx_lm, M4 Max), MX-03 (MLX's CUDA backend, A100).
MLX_FIT_ROWS = ("MX-01", "MX-02")
TORCHTUNE_ROWS = ("TT-07", "TT-08", "TT-11", "TT-12", "TT-13", "TT-14", "TT-15", "TT-16", "TT-17", "TT-18")
A100 = "a100-80gb-sxm"


def _rows() -> dict[str, dict[str, str]]:
    with (CALIBRATION / "throughput.csv").open(newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _qwen_job(row: dict[str, str]) -> tuple[object, Job]:
    spec = resolve_model(str(QWEN["14b" if "14B" in row["model_hf_id"] else "7b"]))
    return spec, Job.from_settings(method=row["method"].strip().lower(), rank=64, seq_len=int(row["seq_len"]),
                                   checkpointing="full", attention="flash", grad_accum=8)


def _micro_seconds(row: dict[str, str]) -> float:
    return float(row["value"]) / 8  # s_per_step over 8 accumulated micro-steps


def fit_hf_and_kernel(rows: dict[str, dict[str, str]]) -> tuple[float, float, list[tuple[str, float]]]:
    """(efficiency, seconds per kernel, residuals) from QW-01..04."""
    dev = resolve_device(A100)
    peak = dev.bf16_tflops * 1e12
    bw = dev.bandwidth_gbps * 1e9 * cal.BANDWIDTH_EFFICIENCY
    xs, ks, ys, pws = [], [], [], []
    for rid in LORA_ROWS:
        spec, job = _qwen_job(rows[rid])
        t = job.training
        xs.append(token_flops(spec, job.method, t.checkpointing, t.seq_len).executed * t.seq_len / peak)
        ks.append(kernel_count(spec, job))
        # the pointwise kernels' time is counted, not fitted: the fit explains the rest
        pws.append(pointwise_traffic(spec, job) * t.seq_len / bw)
        ys.append(_micro_seconds(rows[rid]) - pws[-1])
    # least squares for y = a*x + b*k (a = 1/eff, b = seconds per kernel), 2x2 normal equations
    sxx, skk, sxk = sum(x * x for x in xs), sum(k * k for k in ks), sum(x * k for x, k in zip(xs, ks, strict=True))
    sxy, sky = sum(x * y for x, y in zip(xs, ys, strict=True)), sum(k * y for k, y in zip(ks, ys, strict=True))
    det = sxx * skk - sxk * sxk
    a = (sxy * skk - sky * sxk) / det
    b = (sky * sxx - sxy * sxk) / det
    res = [(rid, (a * x + b * k + pw) / (y + pw) - 1)
           for rid, x, k, y, pw in zip(LORA_ROWS, xs, ks, ys, pws, strict=True)]
    return 1 / a, b, res


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks folder is not a package)."""
    spec_ = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec_)
    sys.modules.setdefault(name, mod)
    spec_.loader.exec_module(mod)
    return mod


def _measured_runs():
    return _benchmark("measured_runs")


def _implied_efficiency(spec, job, dev, measured: float, real_tokens: int | None = None) -> float:
    """The efficiency at which tuneplan's step time gives the measured tokens/s (bisection)."""
    lo, hi = 0.01, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        st = step_time(spec, job, dev, efficiency=mid)
        tps = real_tokens / st.step_s if real_tokens else st.tokens_per_s
        if tps < measured:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fit_mlx() -> tuple[float, list[tuple[str, float]]]:
    """FRAMEWORK_EFFICIENCY['mlx']: median implied efficiency over MLX_FIT_ROWS."""
    mr = _measured_runs()
    implied = []
    for r in mr.interpreted_time_rows(CALIBRATION):
        if r.id in MLX_FIT_ROWS and not r.skip:
            dev = mr.row_device(r.device_id)
            job = mr.make_job(r.settings).on_vendor(dev.vendor)
            implied.append((r.id, _implied_efficiency(r.extra["spec"], job, dev, r.measured_tps,
                                                      r.extra.get("real_tokens"))))
    return statistics.median(e for _, e in implied), implied


def _torchtune_jobs():
    """(row id, spec, job, device, measured tokens/s) for the torchtune rows, via the
    measured-runs benchmark's own interpretation of each row."""
    spec_ = importlib.util.spec_from_file_location("measured_runs", ROOT / "benchmarks" / "measured_runs.py")
    mr = importlib.util.module_from_spec(spec_)
    sys.modules.setdefault("measured_runs", mr)
    spec_.loader.exec_module(mr)
    for r in mr.interpreted_time_rows(CALIBRATION):
        if r.id in TORCHTUNE_ROWS and not r.skip:
            yield r.id, r.extra["spec"], mr.make_job(r.settings), resolve_device(r.device_id), r.measured_tps


def fit_torchtune() -> tuple[float, list[tuple[str, float]]]:
    implied = []
    for rid, spec, job, dev, measured in _torchtune_jobs():
        lo, hi = 0.05, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if step_time(spec, job, dev, efficiency=mid).tokens_per_s < measured:
                lo = mid
            else:
                hi = mid
        implied.append((rid, (lo + hi) / 2))
    eff = statistics.median(e for _, e in implied)
    return eff, implied


def _parallel_time():
    return _benchmark("parallel_time")


def fit_seconds_per_kernel(library: str, cases) -> float | None:
    """SECONDS_PER_KERNEL_BY_FRAMEWORK[library]: the per-kernel host cost at which the median
    signed error of tokens/s over `cases` (parallel_time.Case rows run by that library) is zero
    (bisection: a larger cost only slows a step). None when no case runs the library."""
    pt = _parallel_time()
    mine = [c for c in cases if not c.skip and c.library == library]
    if not mine:
        return None
    saved = dict(cal.SECONDS_PER_KERNEL_BY_FRAMEWORK)
    lo, hi = 1e-6, 500e-6
    try:
        for _ in range(24):
            mid = (lo + hi) / 2
            cal.SECONDS_PER_KERNEL_BY_FRAMEWORK[library] = mid
            errs = [c.error for c in pt.score(mine, fresh=True) if c.error is not None]
            if statistics.median(errs) > 0:  # still predicted too fast
                lo = mid
            else:
                hi = mid
    finally:
        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.clear()
        cal.SECONDS_PER_KERNEL_BY_FRAMEWORK.update(saved)
        pt.clear_caches()
    return (lo + hi) / 2


def fit_megatron_deepspeed(every: int = 1) -> float:
    """SECONDS_PER_KERNEL_BY_FRAMEWORK['Megatron-DeepSpeed'] from vTrain's rows (parallel.csv VT-S)."""
    pt = _parallel_time()
    return fit_seconds_per_kernel("Megatron-DeepSpeed", pt.load(every=every))


def main() -> int:
    rows = _rows()
    eff, sec, res = fit_hf_and_kernel(rows)
    print(f"FRAMEWORK_EFFICIENCY['hf'] = {eff:.3f}; SECONDS_PER_KERNEL = {sec:.3e}")
    print("  residuals (predicted / measured micro-step - 1): " + ", ".join(f"{i} {r:+.1%}" for i, r in res))
    tt, implied = fit_torchtune()
    print(f"FRAMEWORK_EFFICIENCY['torchtune'] = {tt:.3f} (median of implied efficiencies)")
    print("  implied per row: " + ", ".join(f"{i} {e:.3f}" for i, e in implied))
    mlx, implied = fit_mlx()
    print(f"FRAMEWORK_EFFICIENCY['mlx'] = {mlx:.3f} (median of implied efficiencies)")
    print("  implied per row: " + ", ".join(f"{i} {e:.3f}" for i, e in implied))
    mds = fit_megatron_deepspeed()
    print(f"SECONDS_PER_KERNEL_BY_FRAMEWORK['Megatron-DeepSpeed'] = {mds:.3e} (median signed error 0 over "
          "parallel.csv's 1,440 vTrain rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
