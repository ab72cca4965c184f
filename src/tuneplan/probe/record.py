"""One JSON line per probe, in the columns of ../shared/calibration/memory.csv and
throughput.csv, so benchmarks/measured_runs.py --records scores probes like published runs.

The memory columns carry the allocated counter (measured_what names
torch.cuda.max_memory_allocated, which the benchmark compares with the predicted allocated
bytes); the other counters, the predictions and the full result ride along under their own
names. An out-of-memory probe is an "OOM" row whose measured_gib is the memory the device had
(a lower bound, as the benchmark reads OOM rows). No torch here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError
from tuneplan.job import Job

GiB = 2**30


def _optimizer_text(job: Job) -> str:
    """The optimizer as the calibration rows spell it ("bnb PagedAdamW8bit", "torch.optim.AdamW fused=True")."""
    t = job.training
    o = t.optim
    if o.torch_class:
        text = o.torch_class + "".join(f" {k}={v}" for k, v in o.torch_kwargs)
    else:
        text = "bnb " + (o.bnb_class or o.name).rpartition(".")[2]
    if t.optimizer_in_backward:
        text += " + optimizer_in_bwd=True"
    return text


def _quant_text(job: Job) -> str:
    m = job.method
    if m.weight_bits is None:
        return "none"
    return f"bnb {m.quant}" + (" double quant" if m.double_quant and m.weight_bits == 4 else "")


def _gib(x: int | None) -> float | None:
    return None if x is None else x / GiB


def record(result: dict[str, Any], job: Job, model_arg: str) -> dict[str, Any]:
    """The record of one probe result (what `tuneplan probe --json` prints)."""
    t, m, p = job.training, job.method, job.parallel
    meas, pred, dev = result["measured"], result["predicted"], result["device"]
    when = dt.datetime.now(dt.timezone.utc)
    digest = hashlib.sha1(json.dumps([job.settings(), model_arg, dev.get("name"), when.isoformat()],
                                     sort_keys=True, default=str).encode()).hexdigest()[:8]
    oom = result["status"] != "ok"
    counter = "torch.cuda.max_memory_allocated" if dev["kind"] == "cuda" else (
        f"{dev['kind']}: peak live tensor bytes (tuneplan tracker standing for torch.cuda.max_memory_allocated)")
    if oom:
        bound = dev.get("memory_limit_bytes") or dev.get("total_bytes") or 0
        measured_what = f"OOM (tuneplan probe: {result['status']} in {meas.get('oom_phase') or '?'})"
        measured_gib = bound / GiB
    else:
        measured_what = f"{counter} (tuneplan probe)"
        measured_gib = meas["peak_allocated_bytes"] / GiB
    notes = [f"gradient accumulation: {t.grad_accum}"] if t.grad_accum > 1 else []
    notes += list(result.get("notes", []))
    rec: dict[str, Any] = {
        # memory.csv columns
        "id": f"probe-{when:%Y%m%dT%H%M%SZ}-{digest}",
        "source": f"tuneplan probe {result['versions'].get('tuneplan') or ''} on {dev['name']} ({when:%Y-%m-%d})",
        "framework": t.profile.calibration_framework or t.framework,
        "model_hf_id": model_arg,
        "method": m.kind,
        "lora_rank": m.rank if m.is_adapter else "",
        "lora_targets": ",".join(result.get("lora_targets") or []) if m.is_adapter else "",
        "quant": _quant_text(job),
        "precision": f"{t.precision} (params {t.dtypes.torch_param_dtype}, autocast "
                     f"{'on' if t.autocast else 'off'})",
        "optimizer": _optimizer_text(job),
        "micro_batch": t.micro_batch,
        "seq_len": t.seq_len,
        "grad_ckpt": t.checkpointing,
        "attention": f"{t.attention} (ran {result.get('attn_implementation') or '?'})",
        "fused_ce": "no",
        "n_gpus": p.num_gpus,
        "sharding": ("fsdp" if p.shard_stage == 3 else "ddp") if p.num_gpus > 1 else "none",
        "offload": "none",
        "device": dev["name"],
        "measured_what": measured_what,
        "measured_gib": measured_gib,
        "confidence": "high",
        "notes": "; ".join(notes),
        # throughput.csv columns
        "measured": "" if oom else "tokens_per_s_total",
        "value": "" if oom else meas.get("tokens_per_s"),
        "unit": "tokens/s",
        "derived_tokens_per_s_total": "" if oom else meas.get("tokens_per_s"),
        "grad_accum": t.grad_accum,
        "packing": "yes (random full-length sequences, no padding)",
        # the rest of the probe, by name
        "job": job.settings(),
        "device_kind": dev["kind"],
        "device_total_gib": _gib(dev.get("total_bytes")),
        "driver": dev.get("driver"),
        "versions": result["versions"],
        "status": result["status"],
        "measured_allocated_gib": _gib(meas.get("peak_allocated_bytes")),
        "measured_reserved_gib": _gib(meas.get("peak_reserved_bytes")),
        "measured_device_gib": _gib(meas.get("device_bytes")),
        "measured_step_s": meas.get("step_s"),
        "measured_tokens_per_s": meas.get("tokens_per_s"),
        "predicted_allocated_gib": _gib(pred.get("peak_allocated_bytes")),
        "predicted_reserved_gib": _gib(pred.get("peak_reserved_bytes")),
        "predicted_device_gib": _gib(pred.get("device_bytes")),
        "predicted_step_s": pred.get("step_s"),
        "predicted_tokens_per_s": pred.get("tokens_per_s"),
        "counters": result.get("counters"),
        "ranks": meas.get("ranks"),
        "unix_time": int(when.timestamp()),
    }
    return rec


def append(path: Path, rec: dict[str, Any]) -> None:
    """Append one JSON line to `path` (folders made; never through a symbolic link).

    Raises:
        TuneplanError: the path is a link, a folder, or cannot be written.
    """
    if path.is_symlink():
        raise TuneplanError(f"--record {path}: is a symbolic link; give the file itself")
    if path.exists() and not path.is_file():
        raise TuneplanError(f"--record {path}: not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
    except OSError as e:
        raise TuneplanError(f"--record {path}: {e.strerror or type(e).__name__}") from None
