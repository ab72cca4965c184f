"""Run the probe grid of issue #9 on a CUDA machine and tabulate predicted against measured.

Each job is one `tuneplan probe ... --json` in its own process (so the GPU is empty between
jobs); every probe appends its record to benchmarks/results/probe/records.jsonl, and this
script writes runs.json (one entry per job: the probe's JSON, or the refusal / error line)
and summary.md (predicted vs measured allocated, reserved, device and tokens/s, with the
error figures). Jobs already in runs.json are skipped unless --again.

    python scripts/probe_grid.py                 # the whole grid (about an hour on one H100)
    python scripts/probe_grid.py --quick         # 21 jobs, about 20 minutes
    python scripts/probe_grid.py --only qlora --dry-run
    python scripts/probe_grid.py --summarize     # rewrite summary.md from runs.json

Needs the probe extra with a CUDA torch (pip install -e '.[probe]'); flash-attn is used when
installed (else SDPA, which saves the same tensors).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "probe"
GiB = 2**30


def grid() -> list[tuple[str, list[str], bool]]:
    """(name, probe arguments, in the --quick subset)."""
    jobs: list[tuple[str, list[str], bool]] = []
    llama = "llama-3.1-8b"
    for method, extra in (("lora", []), ("qlora", []), ("full", ["--optimizer", "adamw-8bit"])):
        for seq in (2048, 4096, 8192):
            batches = (1, 2, 4) if method != "full" else (1, 2)
            for b in batches:
                quick = b == 1 or (b == 2 and seq == 2048)
                jobs.append((f"{llama} {method} s{seq} b{b} gc-full",
                             [llama, "--method", method, *extra, "--seq-len", str(seq), "--batch", str(b),
                              "--checkpointing", "full"], quick))
            jobs.append((f"{llama} {method} s{seq} b1 gc-none",
                         [llama, "--method", method, *extra, "--seq-len", str(seq), "--batch", "1",
                          "--checkpointing", "none"], seq == 2048))
    for model, seq, b in (("qwen2.5-7b", 4096, 1), ("qwen2.5-7b", 2048, 4), ("qwen2.5-14b", 4096, 1),
                          ("qwen2.5-14b", 2048, 2), ("qwen3-30b-a3b", 2048, 1)):
        jobs.append((f"{model} qlora s{seq} b{b}", [model, "--method", "qlora", "--seq-len", str(seq), "--batch",
                                                    str(b)], b == 1))
    jobs.append(("llama-3.2-1b full s2048 b4", ["llama-3.2-1b", "--method", "full", "--seq-len", "2048", "--batch",
                                                "4"], True))
    jobs.append(("qwen2.5-3b full s2048 b1", ["qwen2.5-3b", "--method", "full", "--seq-len", "2048"], True))
    jobs.append((f"{llama} qlora b1 search-seq", [llama, "--method", "qlora", "--seq-len", "2048", "--search", "seq",
                                                  "--steps", "2"], True))
    jobs.append((f"{llama} lora b1 search-seq", [llama, "--method", "lora", "--seq-len", "2048", "--search", "seq",
                                                 "--steps", "2"], False))
    jobs.append(("qwen2.5-7b qlora b1 search-seq", ["qwen2.5-7b", "--method", "qlora", "--seq-len", "2048",
                                                    "--search", "seq", "--steps", "2"], False))
    return jobs


def run_job(args: list[str], record: Path, timeout: float) -> dict[str, Any]:
    code = "import sys; from tuneplan.cli import main; raise SystemExit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "probe", *args, "--device", "cuda", "--json", "--record", str(record)]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "seconds": timeout}
    took = round(time.perf_counter() - start, 1)
    if p.returncode == 0:
        return {"outcome": "ran", "seconds": took, "probe": json.loads(p.stdout)}
    last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"outcome": "refused" if p.returncode == 2 else "error", "seconds": took, "message": last}


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GiB:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _stats(errs: list[float]) -> str:
    if not errs:
        return "-"
    return (f"median abs {statistics.median(abs(e) for e in errs):.1%}, mean signed "
            f"{statistics.fmean(errs):+.1%} (n={len(errs)})")


def summarize(runs: dict[str, dict[str, Any]], out: Path) -> str:
    rows = ["| job | status | allocated meas / pred (GiB) | err | reserved meas / pred | err | device meas / pred | "
            "err | tokens/s meas / pred | err |", "|---|---|---|---|---|---|---|---|---|---|"]
    errs: dict[str, list[float]] = {"allocated": [], "reserved": [], "device": [], "tokens_per_s": []}
    searches = []
    device = ""
    for name, r in runs.items():
        if r["outcome"] != "ran":
            rows.append(f"| {name} | {r['outcome']}: {r.get('message', '')[:120]} |" + " |" * 8)
            continue
        p = r["probe"]
        device = device or f"{p['device'].get('name')} ({p['device'].get('driver')}); torch {p['versions'].get('torch')}, " \
            f"transformers {p['versions'].get('transformers')}, peft {p['versions'].get('peft')}, bitsandbytes " \
            f"{p['versions'].get('bitsandbytes')}"
        m, pr, d = p["measured"], p["predicted"], p["difference"] or {}
        for k in errs:
            if d.get(k) is not None:
                errs[k].append(d[k])
        tps = f"{m['tokens_per_s']:,.0f} / {pr['tokens_per_s']:,.0f}" if m.get("tokens_per_s") and pr.get(
            "tokens_per_s") else "-"
        rows.append(f"| {name} | {p['status']} | {_gib(m['peak_allocated_bytes'])} / {_gib(pr['peak_allocated_bytes'])} "
                    f"| {_pct(d.get('allocated'))} | {_gib(m['peak_reserved_bytes'])} / "
                    f"{_gib(pr['peak_reserved_bytes'])} | {_pct(d.get('reserved'))} | {_gib(m['device_bytes'])} / "
                    f"{_gib(pr['device_bytes'])} | {_pct(d.get('device'))} | {tps} | {_pct(d.get('tokens_per_s'))} |")
        if p.get("search"):
            s = p["search"]
            searches.append(f"| {name} | {s['what']} | {s['measured']} | {s['predicted']} | "
                            f"{_pct(s['predicted'] / s['measured'] - 1 if s['measured'] else None)} |")
    text = ["# tuneplan probe: predicted vs measured on a GPU", "",
            f"Generated by `python scripts/probe_grid.py` on {device or 'no device yet'}. Error = predicted / "
            "measured - 1 (positive: tuneplan predicts more). Records: records.jsonl (read by "
            "`python benchmarks/measured_runs.py --records benchmarks/results/probe/records.jsonl`).", "",
            "| counter | error |", "|---|---|"]
    text += [f"| {k} | {_stats(v)} |" for k, v in errs.items()]
    text += ["", *rows]
    if searches:
        text += ["", "Largest value that fits (bisection on the device) next to the predicted one:", "",
                 "| job | what | measured | predicted | err |", "|---|---|---|---|---|", *searches]
    md = "\n".join(text) + "\n"
    (out / "summary.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder for records.jsonl, runs.json, summary.md")
    ap.add_argument("--quick", action="store_true", help="the 21-job subset")
    ap.add_argument("--only", default=None, help="run the jobs whose name contains this text")
    ap.add_argument("--again", action="store_true", help="rerun jobs already in runs.json")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs, run nothing")
    ap.add_argument("--summarize", action="store_true", help="only rewrite summary.md from runs.json")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per job (default 900)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.json"
    runs: dict[str, dict[str, Any]] = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    if args.summarize:
        print(summarize(runs, args.out))
        return 0
    jobs = [(n, a) for n, a, quick in grid() if (quick or not args.quick) and (not args.only or args.only in n)]
    if args.dry_run:
        for n, a in jobs:
            print(f"{n:45s} tuneplan probe {' '.join(a)}")
        print(f"{len(jobs)} jobs")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("probe_grid: torch sees no CUDA device; run it on a GPU machine (pip install -e '.[probe]')",
              file=sys.stderr)
        return 2
    for i, (name, a) in enumerate(jobs, 1):
        if name in runs and not args.again:
            continue
        print(f"[{i}/{len(jobs)}] {name}", flush=True)
        r = run_job(a, args.out / "records.jsonl", args.timeout)
        r["args"] = a
        runs[name] = r
        runs_path.write_text(json.dumps(runs, indent=1) + "\n")
        if r["outcome"] == "ran":
            p = r["probe"]
            print(f"    {p['status']}: allocated {_gib(p['measured']['peak_allocated_bytes'])} GiB "
                  f"(pred {_gib(p['predicted']['peak_allocated_bytes'])}), {r['seconds']} s", flush=True)
        else:
            print(f"    {r['outcome']}: {r.get('message', '')}", flush=True)
    print(summarize(runs, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
