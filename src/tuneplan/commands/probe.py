"""`tuneplan probe`: the real training step on the hardware at hand (CUDA, Apple MPS or CPU),
measured, next to the estimate; optionally the real largest micro-batch or sequence.

Everything the probe cannot run is refused before torch is imported; torch, transformers,
peft (and bitsandbytes for QLoRA and 8-bit optimizers) are the probe extra:
pip install -e '.[probe]'.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tuneplan.checks import check_job
from tuneplan.choices.optimizers import OPTIMIZERS
from tuneplan.cli.options import add_job_arguments, count, job_from_args, number
from tuneplan.cli.output import make_console, print_json
from tuneplan.cli.probe_output import print_probe, sequence_parallel_of
from tuneplan.cli.system import available_ram
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device, resolve_device
from tuneplan.job import Job
from tuneplan.memory import MemoryEstimate, estimate_memory
from tuneplan.models import ModelSpec, param_counts, resolve_config
from tuneplan.search import largest_fitting
from tuneplan.units import GiB

INSTALL_HINT = ("tuneplan: error: probe needs torch, transformers and peft (bitsandbytes for QLoRA and 8-bit "
                "optimizers): pip install -e '.[probe]' in the tuneplan repository (CPU torch: see the README)\n")

DESCRIPTION = ("Build the transformers model from its config with random weights (no download), apply the "
               "method with the real libraries, run warm-up and measured optimizer steps on synthetic token "
               "batches on this machine's GPU (CUDA or Apple MPS) or CPU, and print the measured peak "
               "allocated / reserved / device memory, step time and tokens/s beside the estimate. Appends "
               "one JSON line per probe to a records file. Needs the probe extra: pip install -e '.[probe]'.")

DEVICE_KINDS = ("cuda", "mps", "cpu")
SEARCHES = ("batch", "seq")
SEQ_MULTIPLE = 128  # --search seq tries multiples of this many tokens
MAX_SEARCH_BATCH = 4096
PROBE_MAX_LAYERS = 256
RDZV_PORT = 29500  # tuneplan.probe.dist.RDZV_PORT (not imported: that module is the worker's)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="catalog id or alias, or a path to config.json (not with --merge)")
    add_job_arguments(p)
    g = p.add_argument_group("probe")
    g.add_argument("--steps", type=count, default=5, help="measured optimizer steps (default 5)")
    g.add_argument("--warmup", type=count, default=2,
                   help="warm-up optimizer steps before them (default 2; at least 1, so optimizer states exist)")
    g.add_argument("--device", choices=DEVICE_KINDS, type=str.lower, default=None,
                   help="where to run (default: CUDA if torch sees a GPU, else MPS; the CPU only when asked for)")
    g.add_argument("--gpu", default=None,
                   help="catalog device for the time prediction (default: matched from the device's name)")
    g.add_argument("--memory-limit", type=number, default=None, metavar="GIB",
                   help="treat the device as having this many GiB (CUDA: set_per_process_memory_fraction; CPU/MPS: "
                        "an allocated peak above it counts as out of memory); needed for --search on the CPU")
    g.add_argument("--search", choices=SEARCHES, type=str.lower, default=None,
                   help="find the real largest micro-batch (batch) or sequence length (seq, multiples of "
                        f"{SEQ_MULTIPLE}) that fits, by bisection, next to the predicted one")
    g.add_argument("--force", action="store_true",
                   help="run even when the estimate exceeds the free memory (an out-of-memory is reported as a result)")
    g.add_argument("--record", type=Path, default=None, metavar="FILE",
                   help="append the record here (default: $XDG_CACHE_HOME/tuneplan/probe.jsonl)")
    g.add_argument("--no-record", action="store_true", help="write no record")
    g.add_argument("--timeout", type=number, default=None, metavar="S",
                   help="give up a multi-process probe after this many seconds")
    g.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="--gpus N: keep the request and every rank's result file here (for --merge); with "
                        "--nodes M: where the request is written and each machine writes its ranks' files")
    g.add_argument("--rdzv-endpoint", default=f"HOST:{RDZV_PORT}", metavar="HOST:PORT",
                   help=f"--nodes M: machine 0's address in the printed torchrun commands (default HOST:{RDZV_PORT}, "
                        "a placeholder)")
    g.add_argument("--merge", type=Path, default=None, metavar="DIR",
                   help="read back the request and every rank's result file (rank<N>.json) of a multi-process or "
                        "multi-machine probe from DIR and print the comparison; runs nothing")
    p.add_argument("--json", action="store_true", help="print JSON (bytes, seconds) instead of tables")


# ---------------------------------------------------------------- checks before torch


def check_probeable(spec: ModelSpec, job: Job, args: argparse.Namespace) -> None:
    """Everything the probe cannot run, refused in one line before torch is imported.

    Raises:
        TuneplanError: the reason.
    """
    p, t = job.parallel, job.training
    if args.steps < 1:
        raise TuneplanError("--steps must be at least 1")
    if args.warmup < 1:
        raise TuneplanError("--warmup must be at least 1: the first step creates the optimizer states")
    if p.shard_stage not in (0, 3):
        raise TuneplanError(f"probe runs --sharding ddp or fsdp (torch.distributed); --sharding {p.sharding} is "
                            "DeepSpeed's, which the probe does not launch")
    if p.offload_optimizer or p.offload_params:
        raise TuneplanError("probe does not offload; drop --offload-optimizer/--offload-params (estimated analytically)")
    if t.checkpointing == "offload":
        raise TuneplanError("probe runs --checkpointing full or none (transformers has no activation offload)")
    if not t.dtypes.traceable:
        raise TuneplanError(f"probe does not run --precision {t.precision} (fp32 master weights live in DeepSpeed "
                            "or FSDP mixed precision); use bf16 (with --sharding fsdp the hf profile keeps fp32 "
                            "shards) or amp")
    if t.loss.fused or t.loss.chunks or t.loss.chunk_tokens:
        raise TuneplanError(f"probe runs transformers' own cross-entropy; the {t.loss.name} loss of the "
                            f"{t.framework} profile is not run: add --cross-entropy plain (the estimate models "
                            "the other losses)")
    if t.optim.torch_class is None and t.optim.bnb_class is None:
        raise TuneplanError(f"probe cannot run optimizer {t.optimizer!r}; use one of: "
                            + ", ".join(o.name for o in OPTIMIZERS.values() if o.torch_class or o.bnb_class))
    if job.method.weight_bits is not None and p.num_gpus > 1 and p.shard_stage == 3:
        raise TuneplanError("probe does not shard bitsandbytes 4-bit/8-bit weights with FSDP; run QLoRA on one "
                            "device or with --sharding ddp")
    if spec.num_layers > PROBE_MAX_LAYERS:
        raise TuneplanError(f"{spec.name} has {spec.num_layers} layers; probe builds at most {PROBE_MAX_LAYERS}")
    for degree, flag in ((p.pipeline, "--pp"), (p.context, "--cp"), (p.expert, "--ep")):
        if degree > 1:
            raise TuneplanError(f"probe runs data and tensor parallelism (--gpus, --sharding, --tp); drop {flag}")
    if p.tensor > 1:
        _check_tensor_parallel(spec, job)
    if args.search and p.num_gpus > 1:
        raise TuneplanError("--search runs on one device; drop --gpus")
    if args.out_dir is not None and p.num_gpus == 1:
        raise TuneplanError("--out-dir keeps the files of a multi-process probe; add --gpus N (or drop --out-dir)")
    if args.search and args.device == "cpu" and args.memory_limit is None:
        raise TuneplanError("--search on the CPU needs --memory-limit GIB: the budget of the device it stands for "
                            "(the probe never runs the machine out of RAM)")
    if args.memory_limit is not None and args.memory_limit <= 0:
        raise TuneplanError("--memory-limit must be positive")
    if args.gpu:
        resolve_device(args.gpu)


def _check_tensor_parallel(spec: ModelSpec, job: Job) -> None:
    """What the probe's DTensor tensor parallelism cannot run, refused in one line."""
    p, m = job.parallel, job.method
    tp = p.tensor
    if m.weight_bits is not None:
        raise TuneplanError("probe does not split bitsandbytes 4-bit/8-bit weights with tensor parallelism "
                            "(DTensor cannot shard Linear4bit); drop --tp or use --method lora")
    if m.kind == "dora":
        raise TuneplanError("probe does not run DoRA under tensor parallelism (its weight norm needs the full "
                            "weight); use --method lora")
    if p.sharding == "ddp" and p.num_gpus > tp:
        raise TuneplanError("probe does not run DDP with tensor parallelism: torch's DistributedDataParallel cannot "
                            "wrap DTensor parameters (aten.cat got mixed torch.Tensor and DTensor); use --sharding "
                            "fsdp (FSDP2 over the data ranks)")
    for n, what in ((spec.num_heads, "attention heads"), (spec.num_kv_heads, "key/value heads")):
        if n and n % tp:
            raise TuneplanError(f"{spec.name}'s {n} {what} do not split into --tp {tp} ranks")


def _model_arg(name: str, spec: ModelSpec) -> str:
    """How a record names the model: a config file's absolute path, else the catalog id."""
    path = Path(name)
    if path.exists():
        return str(path.resolve())
    return spec.name


def _needed_cpu(est: MemoryEstimate, spec: ModelSpec, job: Job) -> int:
    build = param_counts(spec).total * job.training.param_bytes if job.method.weight_bits is not None else 0
    return max(est.peak_allocated_bytes, build)


def check_cpu_ram(est: MemoryEstimate, spec: ModelSpec, job: Job, force: bool) -> None:
    """CPU: refuse when the estimate for every process exceeds the RAM available now (unless --force)."""
    if force:
        return
    free = available_ram()
    n = job.parallel.num_gpus
    need = _needed_cpu(est, spec, job) * n
    if free is not None and need > free:
        who = f" for {n} processes" if n > 1 else ""
        raise TuneplanError(f"the estimate needs {need / GiB:.2f} GiB{who} on the CPU but {free / GiB:.2f} GiB of "
                            "RAM is available; --force runs it anyway")


# ---------------------------------------------------------------- predicted


def predicted(spec: ModelSpec, job: Job, est: MemoryEstimate, catalog: Device | None) -> dict[str, Any]:
    """The estimate's counters and, where a catalog device matches, the predicted step time."""
    from tuneplan.timing import step_time

    out: dict[str, Any] = {"peak_allocated_bytes": est.peak_allocated_bytes,
                           "peak_reserved_bytes": est.peak_reserved_bytes, "device_bytes": est.device_bytes,
                           "peak_phase": est.peak_phase, "step_s": None, "tokens_per_s": None,
                           "time_device": None, "time_note": None}
    if catalog is None:
        out["time_note"] = "no time prediction: no catalog GPU matches this device (tuneplan times GPU steps)"
        return out
    try:
        st = step_time(spec, job, catalog)
    except TuneplanError as e:
        out["time_note"] = f"no time prediction: {e}"
        return out
    out.update(step_s=st.step_s, tokens_per_s=st.tokens_per_s, time_device=catalog.id)
    return out


def _rel(pred: float | None, meas: float | None) -> float | None:
    return pred / meas - 1 if pred is not None and meas else None


def differences(pred: dict[str, Any], meas: dict[str, Any], kind: str) -> dict[str, float | None]:
    """predicted / measured - 1 for each figure (positive: tuneplan predicts more memory / more tokens/s).

    The device figure is compared on GPUs only: the estimate's holds a CUDA context, which a
    CPU process does not have.
    """
    return {"allocated": _rel(pred["peak_allocated_bytes"], meas.get("peak_allocated_bytes")),
            "reserved": _rel(pred["peak_reserved_bytes"], meas.get("peak_reserved_bytes")),
            "device": _rel(pred["device_bytes"], meas.get("device_bytes")) if kind != "cpu" else None,
            "tokens_per_s": _rel(pred["tokens_per_s"], meas.get("tokens_per_s"))}


# ---------------------------------------------------------------- run


def _progress(console: Console, quiet: bool):
    if quiet or not console.is_terminal:
        return None, None
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                   transient=True)
    task = bar.add_task("probing", total=None)
    return bar, (lambda s: bar.update(task, description=s))


def _combine_ranks(ranks: list[dict[str, Any]], world: int, tp: int = 1) -> dict[str, Any]:
    """Per-rank results -> the measured figures: the highest peak of any rank, the slowest rank's step;
    the tokens of a step are each data-parallel replica's (a tensor group shares its batch)."""
    runs = [r["run"] for r in ranks if "run" in r]
    meas: dict[str, Any] = {}
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        meas[key] = max(vals) if vals else None
    top = max(runs, key=lambda r: r.get("peak_allocated_bytes") or 0) if runs else {}
    meas["peak_phase"] = top.get("peak_phase")
    meas["phase_peaks"] = top.get("phase_peaks", {})
    steps = [r["step_s"] for r in runs if r.get("step_s")]
    meas["step_s"] = max(steps) if steps else None
    per_rank_tokens = runs[0]["tokens_per_step"] if runs else 0
    meas["tokens_per_step"] = per_rank_tokens * (world // tp)
    meas["tokens_per_s"] = meas["tokens_per_step"] / meas["step_s"] if meas["step_s"] else None
    ooms = [r for r in runs if r["status"] != "ok"]
    meas["oom_phase"] = ooms[0].get("oom_phase") if ooms else None
    meas["oom_message"] = ooms[0].get("oom_message") if ooms else None
    meas["ranks"] = [{"rank": r["rank"], **{k: r.get("run", {}).get(k) for k in (
        "status", "peak_allocated_bytes", "peak_reserved_bytes", "device_bytes", "peak_phase", "step_s")},
        **({"error": r.get("refused") or r.get("error")} if "run" not in r else {})}
        for r in ranks]
    return meas


def _request(config: dict[str, Any], spec: ModelSpec, job: Job, kind: str, args: argparse.Namespace,
             limit: int | None) -> dict[str, Any]:
    """What every rank runs (tuneplan.probe.dist.worker reads it), and what --merge reports against."""
    return {"config": config, "name": spec.name, "model": _model_arg(args.model, spec), "settings": job.settings(),
            "steps": args.steps, "warmup": args.warmup, "kind": kind, "limit": limit, "force": args.force,
            "tp": job.parallel.tensor, "sequence_parallel": sequence_parallel_of(job), "nodes": job.parallel.machines,
            "gpu": args.gpu}


def _run_multi(request: dict[str, Any], job: Job, kind: str, args: argparse.Namespace
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    from tuneplan.probe.dist import launch

    ranks = launch(request, job.parallel.num_gpus, kind, timeout_s=args.timeout, out_dir=args.out_dir)
    return _gather(ranks, job, kind)


def _gather(ranks: list[dict[str, Any]], job: Job, kind: str
            ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """Every rank's result file -> measured figures, build info, device, status."""
    n = job.parallel.num_gpus
    refused = [r["refused"] for r in ranks if r.get("refused")]
    if refused:
        raise TuneplanError(refused[0])
    errors = [r for r in ranks if r.get("error")]
    if errors and not any("run" in r for r in ranks):
        raise TuneplanError(f"rank {errors[0]['rank']} failed: {errors[0]['error']}")
    meas = _combine_ranks(ranks, n, job.parallel.tensor)
    missing = sorted(set(range(n)) - {r.get("rank") for r in ranks})
    meas["missing_ranks"] = missing
    statuses = {r.get("run", {}).get("status") for r in ranks if "run" in r}
    status = "oom" if "oom" in statuses or errors else ("over-limit" if "over-limit" in statuses else "ok")
    info = next((r["info"] for r in ranks if "info" in r), {})
    device = next((r["device"] for r in ranks if "device" in r), {"kind": kind, "name": kind})
    return meas, info, device, status


def _run_single(config: dict[str, Any], spec: ModelSpec, job: Job, est: MemoryEstimate, kind: str,
                args: argparse.Namespace, limit: int | None, say) -> tuple[Any, Any, dict[str, Any]]:
    from tuneplan.probe.device import Device as ProbeDevice
    from tuneplan.probe.step import Session, check_free, needed_bytes

    dev = ProbeDevice(kind, limit=limit)
    check_free(needed_bytes(est, spec, job, kind, limit), dev, args.force)
    session = Session(config, job, dev, progress=say)
    return dev, session, {}


def _search(session: Any, dev: Any, spec: ModelSpec, job: Job, args: argparse.Namespace, say) -> dict[str, Any]:
    """Bisection for the real largest micro-batch / sequence, and the predicted one next to it."""
    from tuneplan.probe.step import needed_bytes

    what = args.search
    unit = 1 if what == "batch" else SEQ_MULTIPLE
    if what == "batch":
        cap = MAX_SEARCH_BATCH
    else:
        cap = spec.max_position if spec.max_position_stated and not args.allow_long_context else 1 << 20
    cap_units = max(1, cap // unit)
    budget = dev.limit if dev.limit is not None else dev.free_bytes  # free before the model was built

    def job_at(x: int) -> Job:
        return job.with_settings(**({"micro_batch": x * unit} if what == "batch" else {"seq_len": x * unit}))

    def pred_fits(x: int) -> bool:
        j = job_at(x)
        return needed_bytes(estimate_memory(spec, j), spec, j, dev.kind, dev.limit) <= budget

    tried: dict[int, dict[str, Any]] = {}
    ram_guard = dev.kind == "cpu"

    def real_fits(x: int) -> bool:
        if x in tried:
            return tried[x]["status"] == "ok"
        j = job_at(x)
        if ram_guard:
            free = available_ram()
            need = _needed_cpu(estimate_memory(spec, j), spec, j)
            if free is not None and need > 0.9 * free:
                tried[x] = {"value": x * unit, "status": "not run (estimate above 90% of available RAM)"}
                return False
        say(f"search {what}: trying {x * unit}")
        run = session.run(j.training.micro_batch, j.training.seq_len, 1, args.warmup)
        tried[x] = {"value": x * unit, **run.to_dict()}
        return run.status == "ok"

    pred = largest_fitting(pred_fits, cap_units)
    real = largest_fitting(real_fits, cap_units, pred or 1)
    return {"what": "micro_batch" if what == "batch" else "seq_len", "unit": unit, "budget_bytes": budget,
            "predicted": pred * unit, "measured": real * unit,
            "tried": [tried[k] for k in sorted(tried)],
            "budget_rule": ("CUDA: no out-of-memory on the device" + (" (memory fraction capped)" if dev.limit else "")
                            if dev.kind == "cuda" else "allocated peak at most --memory-limit" if dev.limit
                            else "no out-of-memory on the device")}


def run(args: argparse.Namespace) -> int:
    if args.merge is not None:
        return merge(args)
    if not args.model:
        raise TuneplanError("probe needs a MODEL (catalog id or config.json), or --merge DIR")
    # validate the model and the settings first: torch is imported only for a job it can run
    job = job_from_args(args)
    spec, config = resolve_config(args.model, hub=args.hub)
    check_job(spec, job, args.allow_long_context)
    check_probeable(spec, job, args)
    est = estimate_memory(spec, job)
    limit = int(args.memory_limit * GiB) if args.memory_limit is not None else None
    if job.parallel.machines > 1:
        return _print_node_commands(config, spec, job, args, limit)
    # the record file is checked before the probe runs (30 s to minutes), not after it
    from tuneplan.cli.files import check_append
    from tuneplan.probe.system import default_record_path

    record_path = None if args.no_record else check_append("--record", args.record or default_record_path())
    if args.device == "cpu" and limit is None and not args.search:
        check_cpu_ram(est, spec, job, args.force)

    from tuneplan.probe import available, quiet_libraries

    if not available():
        sys.stderr.write(INSTALL_HINT)
        return 2
    quiet_libraries()
    from tuneplan.probe.device import pick_kind

    kind = pick_kind(args.device)
    if args.search and kind == "cpu" and limit is None:
        raise TuneplanError("--search on the CPU needs --memory-limit GIB: the budget of the device it stands for "
                            "(the probe never runs the machine out of RAM)")
    console = make_console(stderr=True)
    bar, say = _progress(console, args.json)
    started = time.perf_counter()
    search = None
    lora_targets: list[str] = []
    try:
        with warnings.catch_warnings(), (bar or _null()):
            warnings.simplefilter("ignore")
            if job.parallel.num_gpus > 1:
                request = _request(config, spec, job, kind, args, limit)
                meas, info, device, status = _run_multi(request, job, kind, args)
            else:
                dev, session, _ = _run_single(config, spec, job, est, kind, args, limit, say or (lambda _s: None))
                try:
                    session.build()
                    lora_targets = _targets_of(session.model)
                    if args.search:
                        search = _search(session, dev, spec, job, args, say or (lambda _s: None))
                    result = session.run(job.training.micro_batch, job.training.seq_len, args.steps, args.warmup)
                    info = session.info()
                finally:
                    session.close()
                meas = result.to_dict()
                meas["ranks"] = None
                status = result.status
                device = dev.to_dict()
    except (TuneplanError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise TuneplanError("the probe ran out of host memory while building the model") from None
    except Exception as e:  # torch/transformers/peft/bitsandbytes refusing a config: one line, not a C++ trace
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TuneplanError(f"probe failed inside torch/transformers ({type(e).__name__}: {first}); "
                            "`tuneplan estimate` still gives the figures") from None
    return _report(args, spec, job, est, kind, meas, info, device, status, record_path,
                   elapsed_s=time.perf_counter() - started, search=search, lora_targets=lora_targets,
                   model_arg=_model_arg(args.model, spec))


def _report(args: argparse.Namespace, spec: ModelSpec, job: Job, est: MemoryEstimate, kind: str,
            meas: dict[str, Any], info: dict[str, Any], device: dict[str, Any], status: str,
            record_path: Path | None, *, elapsed_s: float, search: dict[str, Any] | None = None,
            lora_targets: list[str] | None = None, model_arg: str, steps: int | None = None,
            warmup: int | None = None, gpu: str | None = None, merged: str | None = None) -> int:
    """The measured figures beside the estimate: one record, then the table (or JSON)."""
    from tuneplan.probe.device import COUNTERS
    from tuneplan.probe.system import match_catalog, versions

    gpu = gpu if gpu is not None else args.gpu
    notes: list[str] = []
    if not job.training.profile.trace_exact:
        notes.append(f"framework {job.training.framework}: run as the HF Trainer + PEFT step with its profile's "
                     "dtypes (its own kernels are not run).")
    p = job.parallel
    if p.num_gpus > 1 and p.tensor == p.num_gpus and p.sharding != "ddp":
        notes.append(f"one data-parallel rank (--tp {p.tensor} of {p.num_gpus}): no FSDP wrapper ran (as `trace` and "
                     f"torchtitan lay it out); the estimate counts --sharding {p.sharding} on that rank")
    if meas.get("missing_ranks"):
        notes.append("no result file from rank(s) " + ", ".join(map(str, meas["missing_ranks"])))
    catalog = resolve_device(gpu) if gpu else (
        match_catalog(device.get("name", ""), device.get("total_bytes")) if kind != "cpu" else None)
    pred = predicted(spec, job, est, catalog)
    layout = None
    if p.num_gpus > 1:
        layout = {"world": p.num_gpus, "data": p.num_gpus // p.tensor, "tensor": p.tensor,
                  "sequence_parallel": sequence_parallel_of(job), "sharding": p.sharding, "nodes": p.machines}
    out: dict[str, Any] = {
        "unit": "bytes, seconds", "model": spec.name, "job": job.settings(), "device": {**device,
                                                                                       "catalog": catalog.id if catalog else None},
        "versions": versions(), "steps": steps or args.steps, "warmup": warmup or args.warmup, "status": status,
        "layout": layout,
        "measured": meas, "predicted": pred, "difference": differences(pred, meas, kind) if status == "ok" else None,
        "counters": COUNTERS[kind], "attn_implementation": info.get("attn_implementation"),
        "lora_targets": lora_targets or [], "build_s": info.get("build_s"),
        "trainable_params": info.get("trainable_params"), "total_params": info.get("total_params"),
        "elapsed_s": round(elapsed_s, 2), "search": search, "merged_from": merged,
        "notes": notes + list(info.get("notes", [])) + ([pred["time_note"]] if pred.get("time_note") else []),
    }
    if record_path is not None:
        from tuneplan.probe.record import append, record

        append(record_path, record(out, job, model_arg))
    out["record"] = str(record_path) if record_path else None
    if args.json:
        print_json(out)
    else:
        print_probe(out, spec, job)
    return 0


# ---------------------------------------------------------------- several machines


def _default_out_dir(spec: ModelSpec) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in spec.name.split("/")[-1])
    return Path(f"tuneplan-probe-{safe}-{time.strftime('%Y%m%d-%H%M%S')}")


def _print_node_commands(config: dict[str, Any], spec: ModelSpec, job: Job, args: argparse.Namespace,
                         limit: int | None) -> int:
    """--nodes M: write the request, print one torchrun command per machine, run nothing."""
    from tuneplan.probe.dist import node_commands, write_request

    p = job.parallel
    kind = args.device or "cuda"
    out_dir = args.out_dir or _default_out_dir(spec)
    request = _request(config, spec, job, kind, args, limit)
    path = write_request(request, out_dir)
    cmds = node_commands(path, out_dir, p.num_gpus, p.machines, args.rdzv_endpoint)
    if args.json:
        print_json({"request": str(path), "out_dir": str(out_dir), "nodes": p.machines,
                    "nproc_per_node": p.num_gpus // p.machines, "commands": cmds,
                    "merge": f"tuneplan probe --merge {out_dir}"})
        return 0
    host = "; HOST: machine 0's address" if args.rdzv_endpoint.startswith("HOST:") else ""
    print(f"probe does not launch other machines. Wrote {path}; copy it to the same path on each of the "
          f"{p.machines} machines (the probe extra installed) and run there, machine I with --node-rank I{host}:")
    for i, c in enumerate(cmds):
        print(f"  machine {i}: {c}")
    print(f"Then gather every machine's {out_dir}/rank*.json into {out_dir} here and run: "
          f"tuneplan probe --merge {out_dir}")
    return 0


def merge(args: argparse.Namespace) -> int:
    """--merge DIR: a multi-process probe's request and rank files, reported as the probe reports them."""
    from tuneplan.models import spec_from_config
    from tuneplan.probe.dist import REQUEST_FILE, read_ranks

    if args.model:
        raise TuneplanError("--merge reads the model from DIR/request.json; drop MODEL")
    d = args.merge
    req_path = d / REQUEST_FILE
    if not req_path.is_file():
        raise TuneplanError(f"--merge: no {REQUEST_FILE} in {d} (the folder a multi-process probe wrote)")
    import json

    try:
        req = json.loads(req_path.read_text())
        job = Job.from_settings(**req["settings"])
        config, name, kind = req["config"], req.get("name", "model"), req["kind"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TuneplanError(f"--merge: cannot read {req_path}: {e}") from None
    spec = spec_from_config(config, name=name)
    model = req.get("model") or name
    try:  # the catalog's record of the model, as the run resolved it, when it is the same config
        cat_spec, cat_config = resolve_config(model)
        if cat_config == config:
            spec = cat_spec
    except TuneplanError:
        pass
    ranks = read_ranks(d)
    if not ranks:
        raise TuneplanError(f"--merge: no rank*.json in {d}; gather every machine's result files there first")
    from tuneplan.cli.files import check_append
    from tuneplan.probe.system import default_record_path

    record_path = None if args.no_record else check_append("--record", args.record or default_record_path())
    meas, info, device, status = _gather(ranks, job, kind)
    return _report(args, spec, job, estimate_memory(spec, job), kind, meas, info, device, status, record_path,
                   elapsed_s=0.0, model_arg=model, steps=req.get("steps"), warmup=req.get("warmup"),
                   gpu=args.gpu or req.get("gpu"), merged=str(d))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _targets_of(model: Any) -> list[str]:
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return []
    targets = next(iter(cfg.values())).target_modules
    return sorted(targets) if targets else []


__all__ = ["add_arguments", "run", "TuneplanError"]
