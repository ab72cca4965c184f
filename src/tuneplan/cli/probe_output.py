"""How `tuneplan probe` prints a measured step next to its estimate (the table, the per-rank
peaks, the search, the counters); commands/probe.py gathers, this renders."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from tuneplan.cli.output import make_console
from tuneplan.job import Job
from tuneplan.models import ModelSpec
from tuneplan.units import GiB, fmt_gib


def sequence_parallel_of(job: Job) -> bool:
    """Whether the tensor-parallel ranks run sequence parallelism: --sequence-parallel, else the
    framework profile's default (torchtitan, megatron), as the estimate reads it."""
    p = job.parallel
    if p.tensor == 1:
        return False
    return bool(p.sequence_parallel if p.sequence_parallel is not None
                else job.training.profile.sequence_parallel_default)


def gib_text(x: int | None) -> str:
    if x is None:
        return "-"
    return fmt_gib(x) if x >= GiB // 10 else f"{x / GiB:.3g}"  # tiny models: significant digits


def pct_text(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def print_probe(out: dict[str, Any], spec: ModelSpec, job: Job) -> None:
    console = make_console()
    m, t, p = job.method, job.training, job.parallel
    meas, pred, diff = out["measured"], out["predicted"], out["difference"] or {}
    dev = out["device"]
    where = f"{dev.get('name')} ({dev.get('kind')}" + (f" x {p.num_gpus}" if p.num_gpus > 1 else "") + ")"
    title = (f"{spec.name}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", batch {t.micro_batch} x {t.seq_len}, {t.precision}, checkpointing {t.checkpointing}, {t.optimizer}"
             + (f", {p.num_gpus} x {p.sharding}" if p.num_gpus > 1 else "")
             + (f" (data {p.num_gpus // p.tensor} x tensor {p.tensor}"
                + (", sequence parallel" if sequence_parallel_of(job) else "") + ")" if p.tensor > 1 else "")
             + f" on {where}")
    if out["status"] != "ok":
        what = "out of memory" if out["status"] == "oom" else "over --memory-limit"
        console.print(f"[bold]{title}[/bold]")
        console.print(f"[bold red]{what}[/bold red] at micro-batch {t.micro_batch} x {t.seq_len} tokens"
                      + (f" in the {meas.get('oom_phase')} phase" if meas.get("oom_phase") else "")
                      + (f": {meas.get('oom_message')}" if meas.get("oom_message") else ""))
        console.print(f"Predicted: allocated {gib_text(pred['peak_allocated_bytes'])} GiB, device {gib_text(pred['device_bytes'])} "
                      f"GiB; device has {gib_text(dev.get('memory_limit_bytes') or dev.get('total_bytes'))} GiB")
    else:
        console.print(f"[bold]{title}[/bold]")
        table = Table(caption="GiB = 2^30 bytes; difference = predicted / measured - 1")
        for col in ("", "measured", "predicted", "difference"):
            table.add_column(col, justify="left" if not col else "right")
        table.add_row("Peak allocated (GiB)", gib_text(meas["peak_allocated_bytes"]), gib_text(pred["peak_allocated_bytes"]),
                      pct_text(diff.get("allocated")))
        table.add_row("Peak reserved (GiB)", gib_text(meas["peak_reserved_bytes"]), gib_text(pred["peak_reserved_bytes"]),
                      pct_text(diff.get("reserved")))
        table.add_row("Device used (GiB)", gib_text(meas["device_bytes"]), gib_text(pred["device_bytes"]), pct_text(diff.get("device")))
        table.add_row("Peak phase", meas.get("peak_phase") or "-", pred["peak_phase"], "")
        step = meas.get("step_s")
        table.add_row("Step time (s, median)", f"{step:.3f}" if step else "-",
                      f"{pred['step_s']:.3f}" if pred.get("step_s") else "-", "")
        tps = meas.get("tokens_per_s")
        table.add_row("Tokens/s", f"{tps:,.0f}" if tps else "-",
                      f"{pred['tokens_per_s']:,.0f}" if pred.get("tokens_per_s") else "-", pct_text(diff.get("tokens_per_s")))
        console.print(table)
        if meas.get("ranks"):
            ranks = ", ".join(f"rank {r['rank']} {gib_text(r.get('peak_allocated_bytes'))}/{gib_text(r.get('peak_reserved_bytes'))}"
                              for r in meas["ranks"])
            console.print(f"Per-rank peak allocated/reserved (GiB): {ranks}")
    if out.get("merged_from"):
        console.print(f"Merged from {out['merged_from']} ({len(meas.get('ranks') or [])} rank files)")
    s = out.get("search")
    if s:
        tried = ", ".join(f"{r['value']} {'ok' if r.get('status') == 'ok' else r.get('status')}" for r in s["tried"])
        console.print(f"Largest {s['what']} that fits ({s['budget_rule']}; budget {gib_text(s['budget_bytes'])} GiB): "
                      f"measured [bold]{s['measured']}[/bold], predicted [bold]{s['predicted']}[/bold]")
        console.print(f"  tried: {tried}")
    console.print("Counters on this device:")
    for k, v in out["counters"].items():
        console.print(f"  {k}: {v}")
    console.print(f"Built in {out['build_s']} s; {out['trainable_params']:,} of {out['total_params']:,} params "
                  f"trainable; attention {out['attn_implementation']}; took {out['elapsed_s']} s"
                  if out.get("build_s") is not None else f"took {out['elapsed_s']} s")
    for n in out["notes"]:
        console.print(f"  - {n}")
    if out.get("record"):
        console.print(f"Record appended to {out['record']}")
