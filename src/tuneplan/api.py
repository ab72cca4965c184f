"""The public API: what the CLI does, as functions with the CLI's names and settings.

    from tuneplan import api
    api.estimate("llama-3.1-8b", method="qlora", seq_len=4096, batch=2)
    api.fit("llama-3.1-8b", "rtx-4090", method="lora", batch=16)
    api.plan("qwen2.5-7b", method="qlora", devices="consumer", dataset_tokens="100M")
    api.matrix(["llama-3.2-1b", "llama-3.1-8b"], ["full", "lora", "qlora"], "rtx-4090,h100")
    api.models(); api.devices("unified")

The same functions are exported from the package as tuneplan.estimate, tuneplan.check_fit,
tuneplan.plan_job, tuneplan.fit_table, tuneplan.model_catalog and tuneplan.device_catalog
(the modules tuneplan.fit, tuneplan.plan, tuneplan.matrix and tuneplan.models keep their
names). Settings are those of tuneplan.job.Job.from_settings, with the CLI's spellings
accepted too (batch, gpus, tp, pp, optim, gc, method="qlora-8bit", targets="q_proj,v_proj");
a setting the method ignores (rank for full) is refused, as on the command line. Every bad
input raises tuneplan.errors.TuneplanError with a one-line message. A sequence longer than
the model's context is estimated with a tuneplan.errors.TuneplanWarning (the CLI refuses it
without --allow-long-context); allow_long_context=True silences the warning.
"""

from __future__ import annotations

import os
from typing import Any

from tuneplan import calibration as cal
from tuneplan.checks import check_context, check_device_count, check_job, check_targets
from tuneplan.errors import TuneplanError
from tuneplan.fit import FitVerdict, fit_verdict
from tuneplan.hardware import Device, devices_in, resolve_device, resolve_devices
from tuneplan.job import METHODS, Job, Method
from tuneplan.matrix import Cell, fit_matrix
from tuneplan.memory import MemoryEstimate, estimate_memory
from tuneplan.memory.online import on_device
from tuneplan.models import ModelSpec, catalog, catalog_rows, resolve_model, spec_from_config
from tuneplan.plan import PlanReport, make_dataset, plan_report

__all__ = ["estimate", "fit", "plan", "matrix", "models", "devices",
           "check_fit", "plan_job", "fit_table", "model_catalog", "device_catalog"]


def _model(model: Any, hub: bool | None) -> ModelSpec:
    """A catalog name or alias, a path to config.json (str or os.PathLike), a config dict, or a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return spec_from_config(model, name=str(model.get("_name_or_path") or "custom"))
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TuneplanError(f"model must be a catalog name, a path to config.json, a config dict or a ModelSpec, "
                            f"got {type(model).__name__}")
    return resolve_model(model, hub=hub)


def _device(device: Any) -> Device:
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TuneplanError(f"device must be a catalog name or a Device, got {type(device).__name__}")
    return resolve_device(device)


def _devices(devs: Any) -> list[Device]:
    if isinstance(devs, str):
        return resolve_devices(devs)
    if isinstance(devs, Device):
        return [devs]
    if isinstance(devs, (list, tuple)) and devs:
        out = [_device(d) for d in devs]
        return list({d.id: d for d in out}.values())
    raise TuneplanError("devices must be a comma list, a category, 'all' or a list of devices")


# Settings -> Job (Job.from_request: validation and normalisation) is the same work for the
# same settings every call; a Job is immutable, so repeated calls share one. Only scalar
# settings are keyed, each with its type (True, 1 and 1.0 are equal in Python but not as
# settings: micro_batch=True is refused) and floats by repr (-0.0, nan); the key keeps the
# order the settings were given in. Refusals are not cached: a bad setting raises every time.
_JOB_CACHE: dict[tuple, Job] = {}
_JOB_CACHE_MAX = 1024
_SCALARS = (str, int, float, bool, type(None))


def _settings_key(settings: dict[str, Any]) -> tuple | None:
    key = []
    for name, value in settings.items():
        kind = type(value)
        if kind not in _SCALARS:
            return None  # a list of targets, a Path, ...: not cached
        key.append((name, kind, repr(value) if kind is float else value))
    return tuple(key)


def _request_job(settings: dict[str, Any]) -> Job:
    """Job.from_request(**settings), cached for scalar settings."""
    key = _settings_key(settings)
    if key is None:
        return Job.from_request(**settings)
    job = _JOB_CACHE.get(key)
    if job is None:
        job = Job.from_request(**settings)
        if len(_JOB_CACHE) >= _JOB_CACHE_MAX:
            _JOB_CACHE.clear()
        _JOB_CACHE[key] = job
    return job


def _job(spec: ModelSpec, allow_long_context: bool, settings: dict[str, Any]) -> Job:
    job = _request_job(settings)
    check_job(spec, job, allow_long_context, warn=True)  # per call: its warning is said every time
    return job


def estimate(model: Any, *, hub: bool | None = None, allow_long_context: bool = False,
             **settings: Any) -> MemoryEstimate:
    """Per-GPU memory of one fine-tuning step (`tuneplan estimate`).

    Args:
        model: catalog id/alias, path to a config.json, a config dict or a ModelSpec.
        hub: allow fetching a config.json from the Hugging Face Hub (None: TUNEPLAN_HUB).
        allow_long_context: accept a sequence longer than the model's max_position_embeddings.
        **settings: method, rank, targets, quant, batch / micro_batch, seq_len, grad_accum,
            precision, optimizer, checkpointing, attention, framework, cross_entropy,
            fused_ce, gpus / num_gpus, sharding, offload_optimizer, offload_params, task, ...

    Returns:
        tuneplan.memory.MemoryEstimate (bytes; `.components` sum to `.peak_bytes`).
    """
    spec = _model(model, hub)
    return estimate_memory(spec, _job(spec, allow_long_context, settings))


def fit(model: Any, device: Any, *, suggest: bool = True, limits: bool = False, hub: bool | None = None,
        allow_long_context: bool = False, **settings: Any) -> FitVerdict:
    """Does the job fit one device (`tuneplan estimate --gpu`), what breaks it, the cheapest fix.

    Args:
        device: catalog name or Device.
        suggest: look for the cheapest change when it does not fit (or is tight).
        limits: also find the largest micro-batch and longest sequence that fit.
    """
    spec, dev = _model(model, hub), _device(device)
    job = on_device(_job(spec, allow_long_context, settings), dev)  # online RL: vLLM's share of its memory
    check_device_count(job, dev)
    return fit_verdict(spec, job, dev, suggest=bool(suggest), limits=bool(limits))


def plan(model: Any, *, devices: Any = "all", dataset_tokens: Any = None, samples: Any = None,
         mean_tokens: Any = None, epochs: Any = None, rank_by: str = "time", max_gpus: int | None = None,
         tune: bool = True, max_batch: int = 16, utilisation: float = cal.DEFAULT_UTILISATION,
         usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH, efficiency: float | None = None, saves: int = 3,
         top: int = 15, hub: bool | None = None, allow_long_context: bool = False, **settings: Any) -> PlanReport:
    """Ranked setups, disk and cost (`tuneplan plan`). Without a dataset size the plan
    ranks throughput and cost per million tokens. Counts may be typed ("100M", "50k").
    The GPU count is the planner's to choose: `gpus` is refused (cap it with max_gpus)."""
    if any(k in settings for k in ("gpus", "num_gpus")):
        raise TuneplanError("plan chooses the GPU count for each device; drop gpus (cap it with max_gpus)")
    spec = _model(model, hub)
    job = _job(spec, allow_long_context, settings)
    ds = make_dataset(dataset_tokens, samples, mean_tokens, epochs)
    if not isinstance(rank_by, str):
        raise TuneplanError(f"rank_by must be time, cost or purchase, got {rank_by!r}")
    return plan_report(spec, job, ds, _devices(devices), rank_by=rank_by.strip().lower(), max_gpus=max_gpus,
                       tune=bool(tune), max_batch=max_batch, utilisation=utilisation, usd_per_kwh=usd_per_kwh,
                       efficiency=efficiency, saves=saves, top=top)


def matrix(models: Any, methods: Any = ("full", "lora", "qlora"), devices: Any = "all", *,
           search_batch: bool = True, hub: bool | None = None, allow_long_context: bool = False,
           **settings: Any) -> list[Cell]:
    """The fit matrix (`tuneplan matrix`): one Cell per model x method x device.

    Args:
        models: a list (or comma list) of models, or "all" for the catalog.
        methods: a list (or comma list) of methods; a setting none of them reads is refused.
    """
    if isinstance(models, str):
        models = list(catalog()) if models.strip().lower() == "all" else [m for m in models.split(",") if m.strip()]
    if isinstance(methods, str):
        methods = methods.split(",")
    if not isinstance(models, (list, tuple)) or not models:
        raise TuneplanError("models must be a non-empty list of models, a comma list or 'all'")
    if not isinstance(methods, (list, tuple)) or not methods or not all(isinstance(m, str) for m in methods):
        raise TuneplanError(f"methods must be a non-empty list from {', '.join(METHODS)}")
    kinds = list(dict.fromkeys(m.strip().lower() for m in methods))
    bad = [k for k in kinds if k not in METHODS]
    if bad:
        raise TuneplanError(f"unknown method(s) {', '.join(bad)}; choose from {','.join(METHODS)}")
    if "method" in settings:
        raise TuneplanError("matrix compares methods: give methods=[...], not method=")
    job = Job.from_settings(**settings)
    unused = [n for n in settings if all(n in Method(kind=k).ignored([n]) for k in kinds)]
    if unused:
        raise TuneplanError(f"{', '.join(unused)} not read by any of the methods {','.join(kinds)}")
    specs = [_model(m, hub) for m in models]
    for spec in specs:
        check_context(spec, job.training.seq_len, allow_long_context, warn=True)
        if any(Method(kind=k).is_adapter for k in kinds):
            check_targets(spec, Method(kind="lora", targets=job.method.targets))
    return fit_matrix(specs, kinds, _devices(devices), job, search_batch=bool(search_batch))


def models() -> list[dict[str, Any]]:
    """The bundled model catalog (`tuneplan models --json`)."""
    return catalog_rows()


def devices(category: str | None = None) -> list[Device]:
    """The device catalog, optionally one category (`tuneplan devices --category`)."""
    if category is not None and not isinstance(category, str):
        raise TuneplanError(f"category must be a name, got {category!r}")
    return devices_in(category.strip().lower() if category else None)


# package-level names (tuneplan.fit, .plan, .matrix and .models are modules)
check_fit = fit
plan_job = plan
fit_table = matrix
model_catalog = models
device_catalog = devices
