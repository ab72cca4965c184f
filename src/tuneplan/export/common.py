"""What every export target shares: the records an export is made of, the substitutions a
target makes when it cannot express a setting, precision/attention/optimizer lookups through
the choice records (never by name), DeepSpeed and FSDP settings of the HF-based stacks, the
header, and typed readers of config fields for `--from`.

Pure: nothing here reads or writes files, prints, or imports a training library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneplan.bounds import show_value
from tuneplan.choices.attention import ATTENTION
from tuneplan.choices.compilation import COMPILED
from tuneplan.choices.cross_entropy import CROSS_ENTROPY
from tuneplan.choices.optimizers import OPTIMIZERS, Optimizer
from tuneplan.choices.precision import PRECISIONS, Precision
from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Training
from tuneplan.memory.trained import targets_text
from tuneplan.model_spec import ModelSpec, layer_linears

# ---------------------------------------------------------------- records


def fill_in(what: str) -> str:
    """A placeholder value the user replaces (dataset and output paths, local folders)."""
    return f"<FILL IN: {what}>"


@dataclass(frozen=True)
class Built:
    """One target's rendering of a job, before the header.

    Args:
        job: the job as this file runs it (the asked job, with every substitution the
            target forced; `cannot` names each one).
        body: the config as data (a mapping for YAML/JSON) or the script text.
        cannot: one phrase per setting the target cannot express as asked.
        launch: the command that runs the file; `{file}` stands for its name.
        fill_in: the fields holding placeholders.
        notes: other things worth saying (a value chosen where the job has none).
    """

    job: Job
    body: Any
    cannot: tuple[str, ...]
    launch: str
    fill_in: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class Substitutions:
    """Collects what a target cannot express and the setting it runs instead."""

    def __init__(self, job: Job):
        self.settings = job.settings()
        self.cannot: list[str] = []

    def swap(self, text: str, **settings: Any) -> None:
        """Name what cannot be expressed; `settings` are what the file runs instead."""
        self.cannot.append(text)
        self.settings.update(settings)

    @property
    def job(self) -> Job:
        return canonical(Job.from_settings(**self.settings))


def canonical(job: Job) -> Job:
    """The job with the settings its method does not read at their defaults (a rank left on a
    full fine-tune, the embeddings flag of full fine-tuning, which trains them anyway), so two
    jobs that run the same are equal."""
    settings, defaults = job.settings(), Job().settings()
    for k in job.method.ignored(list(settings)):
        settings[k] = defaults[k]
    if job.method.kind == "full":
        settings["train_embeddings"] = defaults["train_embeddings"]
    return Job.from_settings(**settings)


@dataclass(frozen=True)
class Read:
    """What a reader took from a config: the model, Job.from_settings settings, and for each
    setting the file field it came from (for messages)."""

    model: str | None
    settings: dict[str, Any]
    origin: dict[str, str]
    read: tuple[str, ...]
    defaults: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    missing: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- choice records, looked up by field

def precision_named(param_dtype: str, autocast_dtype: str | None, fp32_master: bool = False) -> str:
    """The precision whose parameter dtype, autocast dtype and master copy are these."""
    for p in PRECISIONS.values():
        if (p.torch_param_dtype, p.torch_autocast_dtype, p.fp32_master) == (param_dtype, autocast_dtype, fp32_master):
            return p.name
    raise TuneplanError(f"no tuneplan precision loads {param_dtype} weights with "
                        f"{autocast_dtype or 'no'} autocast{' and fp32 master weights' if fp32_master else ''}")


def attention_for_impl(impl: str) -> str:
    """The attention choice whose transformers attn_implementation is `impl`."""
    for a in ATTENTION.values():
        if a.hf_impl == impl:
            return a.name
    raise TuneplanError(f"attention implementation {show_value(impl)} is not modelled; tuneplan models: "
                        + ", ".join(a.hf_impl for a in ATTENTION.values()))


def sdpa_attention() -> str:
    """The attention choice that runs through torch SDPA (the stacks' default kernel)."""
    return next(a.name for a in ATTENTION.values() if a.needs_sdpa)


def fused_loss() -> str:
    """The cross-entropy choice that never materialises the logits (Liger, Unsloth, TRL's fused head)."""
    return next(c.name for c in CROSS_ENTROPY.values() if c.fused)


def chunked_loss() -> str:
    """The cross-entropy choice of torchtune's CEWithChunkedOutputLoss (full logits, chunked upcast)."""
    return next(c.name for c in CROSS_ENTROPY.values() if c.chunks)


def default_loss() -> str:
    """The plain cross-entropy (the HF Trainer profile's default)."""
    return Training().loss.name


def loss_setting(job: Job, loss: str) -> str | None:
    """The cross_entropy setting for `loss`: None when it is the framework profile's default."""
    return None if loss == job.training.profile.default_cross_entropy else loss


def optimizer_from_hf(name: str, optim_args: str | None) -> str:
    """The optimizer choice for a TrainingArguments.optim name (and optim_args)."""
    args = parse_optim_args(optim_args)
    found: list[Optimizer] = [o for o in OPTIMIZERS.values() if o.hf_name == name or name in o.hf_aliases]
    if not found:
        raise TuneplanError(f"optimizer {show_value(name)} is not modelled; tuneplan models: "
                            + ", ".join(sorted({o.hf_name for o in OPTIMIZERS.values()})))
    for o in sorted(found, key=lambda o: -len(o.hf_optim_args)):
        want = parse_optim_args(o.hf_optim_args)
        if all(_same_number(args.get(k), v) for k, v in want.items()):
            return o.name
    return found[0].name


def _same_number(a: str | None, b: str) -> bool:
    try:
        return a is not None and float(a) == float(b)
    except ValueError:
        return False


def parse_optim_args(text: str | None) -> dict[str, str]:
    """TrainingArguments.optim_args "momentum=0.9,nesterov=True" -> a dict (as transformers parses it)."""
    out: dict[str, str] = {}
    for item in (text or "").replace(" ", "").split(","):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
    return out


def linear_names(spec: ModelSpec) -> list[str]:
    """Names of the decoder's linear layers that PEFT's all-linear adapts (no router, no experts)."""
    names: list[str] = []
    for lin in layer_linears(spec, spec.num_layers - 1) + layer_linears(spec, 0):
        if lin.group not in ("router", "expert") and lin.name not in names:
            names.append(lin.name)
    return names


def target_list(spec: ModelSpec, job: Job) -> list[str]:
    """The adapted module names as a list (all-linear spelled out for stacks that need names)."""
    t = job.method.targets
    return linear_names(spec) if isinstance(t, str) else list(t)


def model_id(spec: ModelSpec) -> str:
    """What a stack loads: the Hub id, or the folder of a local config.json."""
    name = spec.name
    if name.endswith("config.json"):
        name = name[: -len("config.json")].rstrip("/\\") or "."
    return name


# ---------------------------------------------------------------- HF-based stacks: precision and parallel

def uses_deepspeed(job: Job) -> bool:
    """HF stacks run ZeRO stages, and fp32 master weights (mixed precision), through DeepSpeed."""
    p = job.parallel
    return p.sharding.startswith("zero") or job.training.dtypes.fp32_master


def hf_trainer_swaps(sub: Substitutions) -> None:
    """Substitutions every stack on the HF Trainer (TRL, Axolotl, LLaMA-Factory) makes first:
    bitsandbytes loaded through transformers quantises in blocks of 64, and the Trainer steps
    the optimizer after backward, never inside it."""
    m, t = sub.job.method, sub.job.training
    if m.is_adapter and m.quant_blocksize != 64:
        sub.swap(f"quantisation block size {m.quant_blocksize}: bitsandbytes through transformers uses 64",
                 quant_blocksize=64)
    if t.optimizer_in_backward:
        sub.swap("--optimizer-in-backward: the HF Trainer steps after backward", optimizer_in_backward=False)


def hf_adapt_parallel(sub: Substitutions, deepspeed: bool = False) -> None:
    """Substitutions every HF-based stack (TRL, Axolotl, LLaMA-Factory) makes for parallel
    layout and precision: FSDP offload is all-or-nothing, optimizer offload needs ZeRO,
    DeepSpeed has no autocast over fp32 weights, no pure fp16 and 16-bit master weights only
    under ZeRO 1-3, accelerate's FSDP has no separate master copy. `deepspeed`: the file is
    a DeepSpeed config (DeepSpeed runs whatever the sharding)."""
    job = sub.job
    p = job.parallel
    if p.sharding == "fsdp" and p.offload_optimizer != p.offload_params:
        sub.swap("FSDP's CPU offload moves parameters, gradients and optimizer states together "
                 "(fsdp cpu_offload): estimated with both --offload-optimizer and --offload-params",
                 offload_optimizer=True, offload_params=True)
    if p.sharding == "ddp" and p.offload_optimizer:
        sub.swap("optimizer offload needs DeepSpeed ZeRO: written as ZeRO-1 with CPU offload (--sharding zero1)",
                 sharding="zero1")
    job = sub.job
    t, d = job.training, job.training.dtypes
    if deepspeed or uses_deepspeed(job):
        mixed = precision_named("bfloat16", None, True)
        if d.torch_param_dtype == "float32" and d.torch_autocast_dtype:
            sub.swap(f"--precision {t.precision}: DeepSpeed casts the model to 16-bit and keeps fp32 master "
                     "weights (estimated as --precision mixed)", precision=mixed)
        elif d.torch_param_dtype == "float16" and not d.fp32_master:
            sub.swap(f"--precision {t.precision}: DeepSpeed fp16 keeps fp32 master weights and optimizer states "
                     "(estimated as --precision mixed)", precision=mixed)
        job = sub.job
        d = job.training.dtypes
        if d.param_bytes == 2 and not d.fp32_master and not d.pure_16bit:
            sub.swap(f"--precision {job.training.precision} under DeepSpeed: its optimizer keeps fp32 master "
                     "weights and fp32 states (estimated as --precision mixed, the same bytes; --precision bf16-pure "
                     "writes bf16_master_weights_and_grads)", precision=mixed)
        job = sub.job
        d = job.training.dtypes
        if job.parallel.shard_stage == 0 and d.pure_16bit:
            sub.swap("16-bit master weights need DeepSpeed ZeRO 1-3 (bf16_master_weights_and_grads): written as "
                     "ZeRO-1 (--sharding zero1)", sharding="zero1")
    elif p.sharding == "fsdp" and d.fp32_master:
        sub.swap("--precision mixed with FSDP: accelerate upcasts the trained parameters to fp32 instead of a "
                 "separate master copy (estimated as --precision bf16)",
                 precision=precision_named("bfloat16", "bfloat16"))


@dataclass(frozen=True)
class HFPrecision:
    """How an HF-based stack spells a precision: load dtype and Trainer flags."""

    load_dtype: str
    bf16: bool
    fp16: bool


def hf_precision(job: Job) -> HFPrecision:
    d: Precision = job.training.dtypes
    if d.fp32_master:  # through DeepSpeed: the Trainer's bf16 flag turns on DeepSpeed bf16
        return HFPrecision(d.torch_param_dtype, True, False)
    return HFPrecision(d.torch_param_dtype, d.torch_autocast_dtype == "bfloat16", d.torch_autocast_dtype == "float16")


def deepspeed_config(job: Job, hf: bool = True) -> dict[str, Any]:
    """A DeepSpeed config for the job. `hf`: inside an HF Trainer config, where batch sizes and
    the precision switch are "auto" (filled from the Trainer's own arguments)."""
    p, t = job.parallel, job.training
    d = t.dtypes
    out: dict[str, Any] = {}
    if hf:
        out.update(train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps="auto",
                   gradient_clipping="auto")
    else:
        out.update(train_micro_batch_size_per_gpu=t.micro_batch, gradient_accumulation_steps=t.grad_accum,
                   train_batch_size=t.micro_batch * t.grad_accum * p.data, gradient_clipping=1.0)
    half = "auto" if hf else True
    if d.fp32_master or not d.pure_16bit:  # DeepSpeed's default: fp32 master partitions and states
        if d.fp32_master or d.torch_param_dtype == "bfloat16":
            out["bf16"] = {"enabled": half}
    elif d.torch_param_dtype == "bfloat16":
        out["bf16"] = {"enabled": half, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    zero: dict[str, Any] = {"stage": p.shard_stage}
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if p.shard_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out["zero_optimization"] = zero
    return out


def read_deepspeed(ds: dict[str, Any], where: str) -> dict[str, Any]:
    """Job settings from a DeepSpeed config: ZeRO stage and offload. Its precision is read by
    hf_read_precision (an "auto" switch follows the Trainer's bf16/fp16 flags)."""
    if not isinstance(ds, dict):
        raise TuneplanError(f"{where} must be a mapping, got {show_value(ds)}")
    zero = ds.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise TuneplanError(f"{where}.zero_optimization must be a mapping, got {show_value(zero)}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise TuneplanError(f"{where}.zero_optimization.stage must be 0, 1, 2 or 3, got {show_value(stage)}")
    out: dict[str, Any] = {"sharding": f"zero{stage}" if stage else "ddp"}
    for key, setting in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
        off = zero.get(key)
        if isinstance(off, dict) and off.get("device") not in (None, "none"):
            if off.get("device") != "cpu":
                raise TuneplanError(f"{where}.zero_optimization.{key}.device {show_value(off.get('device'))} is "
                                    "not modelled (tuneplan models cpu offload)")
            out[setting] = True
    return out


def hf_compile(job: Job) -> dict[str, Any]:
    """transformers TrainingArguments' torch_compile for a compiled job (TRL, Axolotl and
    LLaMA-Factory pass it through); nothing for an eager one, the Trainer's default."""
    return {"torch_compile": True} if job.training.compilation.compiled else {}


def read_counts(f: Fields, s: dict[str, Any], origin: dict[str, str], defaults: dict[str, int],
                **keys: str) -> None:
    """Count settings from the stack's own keys (setting=key, e.g. micro_batch=
    "per_device_train_batch_size"), each with the stack's default, and where each came from."""
    for setting, key in keys.items():
        s[setting] = f.count(key, defaults[key])
        origin[setting] = key


def read_compile(f: Fields, s: dict[str, Any], origin: dict[str, str], key: str = "torch_compile") -> None:
    """A stack's boolean compile field (`key`) as the compile setting, when it is on."""
    if f.flag(key, False):
        s["compile"] = COMPILED
        origin["compile"] = key


def hf_read_precision(load_dtype: str, bf16: bool, fp16: bool, ds: dict[str, Any] | None) -> tuple[str, str]:
    """The precision an HF Trainer runs: the model's load dtype and the Trainer's bf16/fp16
    autocast, or, under DeepSpeed, its bf16/fp16 sections (an absent or "auto" switch follows
    the Trainer's flags, as accelerate's DeepSpeed plugin does). Returns (precision, note)."""
    if ds is not None:
        sections = {k: ds.get(k) if isinstance(ds.get(k), dict) else {} for k in ("bf16", "fp16")}
        on = {k: (flag if v.get("enabled", "auto") == "auto" else bool(v.get("enabled")))
              for (k, v), flag in zip(sections.items(), (bf16, fp16), strict=True)}
        b = sections["bf16"]
        if on["bf16"] and b.get("bf16_master_weights_and_grads") and b.get("bf16_optimizer_states"):
            return next(n for n, r in PRECISIONS.items() if r.pure_16bit), ""
        if on["bf16"] or on["fp16"]:
            return precision_named("bfloat16", None, True), ("DeepSpeed fp16: estimated as --precision mixed (bf16)"
                                                             if on["fp16"] and not on["bf16"] else "")
        return precision_named("float32", None), ""
    autocast = "bfloat16" if bf16 else ("float16" if fp16 else None)
    try:
        return precision_named(load_dtype, autocast), ""
    except TuneplanError:
        pass
    if autocast is None:  # a 16-bit model without the Trainer's autocast: the nearest is the 16-bit setting
        return precision_named(load_dtype, load_dtype), (f"{load_dtype} weights without bf16/fp16 autocast: "
                                                         "estimated with autocast (adapters' input copies counted)")
    return precision_named("float32", autocast), (f"{load_dtype} weights under {autocast} autocast: estimated "
                                                  "as fp32 weights with autocast (--precision amp)")


def hf_fsdp(job: Job, switch: bool = False) -> dict[str, Any]:
    """TrainingArguments fsdp / fsdp_config (transformers 5 training_args.py: version 2,
    reshard_after_forward, cpu_offload). `switch`: `fsdp: true` (transformers 5.23 deprecates
    the option string); else the option string older transformers read."""
    p = job.parallel
    return {"fsdp": True if switch else "full_shard auto_wrap" + (" offload" if p.offload_params else ""),
            "fsdp_config": {"version": 2, "reshard_after_forward": True, "cpu_offload": p.offload_params,
                            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}}


def read_fsdp(value: Any, config: Any, where: str) -> dict[str, Any]:
    """Job settings from TrainingArguments fsdp (a string of options or true) and fsdp_config."""
    if value in (None, False, "", []):
        return {}
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    if value is True:
        value = "full_shard"
    if not isinstance(value, str):
        raise TuneplanError(f"{where} field fsdp must be a string of options or true, got {show_value(value)}")
    opts = set(value.replace(",", " ").split())
    if opts & {"hybrid_shard", "hybrid_shard_zero2", "no_shard"}:
        raise TuneplanError(f"{where} fsdp option {show_value(value)} is not modelled (tuneplan models full_shard "
                            "and shard_grad_op on one machine)")
    cfg = config if isinstance(config, dict) else {}
    reshard = cfg.get("reshard_after_forward", cfg.get("fsdp_reshard_after_forward", True))
    out: dict[str, Any] = {"sharding": "zero2" if ("shard_grad_op" in opts or reshard in (False, "false"))
                           else "fsdp"}
    offload = "offload" in opts or any(cfg.get(k) in (True, "true") for k in
                                        ("cpu_offload", "offload_params", "fsdp_offload_params"))
    if offload:
        out.update(offload_params=True, offload_optimizer=True)
    return out


# ---------------------------------------------------------------- header

def header_lines(title: str, est: Any, device: Any, verdict: Any, command: str, launch: str,
                 fill: tuple[str, ...], cannot: tuple[str, ...], written_for: str) -> list[str]:
    """The lines of an export's header comment (no comment markers)."""
    gib = 2**30
    lines = [title,
             f"predicted peak per GPU: {est.device_bytes / gib:.2f} GiB device total (what nvidia-smi shows: "
             f"tensors + caching-allocator overhead + CUDA context); {est.peak_allocated_bytes / gib:.2f} GiB "
             f"peak allocated (torch.cuda.max_memory_allocated), at the {est.peak_phase} peak"]
    band = getattr(est, "uncertainty", None)
    if band is not None:  # measured runs of this kind of job (tuneplan.uncertainty)
        lines.append(f"uncertainty of the device total: {band.text()}")
    if est.cpu_bytes:
        lines.append(f"CPU RAM for offload: {est.cpu_bytes / gib:.2f} GiB per GPU process")
    if device is not None and verdict is not None:
        lines.append(f"device: {verdict.summary()}")
    lines.append(f"reproduce: {command}")
    lines.append(f"run: {launch}")
    lines.append("fill in: " + (", ".join(fill) + " (placeholders marked <FILL IN: ...>)" if fill else "nothing"))
    lines.append("cannot express: " + ("; ".join(cannot) if cannot else "nothing; every setting the estimate "
                                        "assumed is in this file"))
    lines.append(f"written for {written_for}")
    return lines


def comment_block(lines: list[str], marker: str = "#") -> str:
    return "".join(f"{marker} {line}\n" for line in lines)


def dump_yaml(body: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)


def dump_json(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2) + "\n"


def describe(spec: ModelSpec, job: Job) -> str:
    """model: method r=.., N GPU(s) sharding: for titles."""
    m, p = job.method, job.parallel
    text = f"{spec.name}, {m.kind}"
    if m.is_adapter:
        text += f" r={m.rank} targets {targets_text(m.targets)}"
    if m.kind == "qlora":
        text += f" ({m.quant}{', double quant' if m.double_quant and m.weight_bits == 4 else ''})"
    text += f", {p.num_gpus} GPU" + ("s " + p.sharding if p.num_gpus > 1 else "")
    return text


# ---------------------------------------------------------------- typed config fields (for --from)

class Fields:
    """Typed access to a config mapping; remembers which top-level fields were read.

    Errors name the stack and the field: "axolotl field micro_batch_size must be a whole
    number, got 'two'"."""

    def __init__(self, cfg: dict[str, Any], stack: str,
                 load_json: Callable[[str, str], dict[str, Any]] | None = None):
        self.cfg = cfg
        self.stack = stack
        self.load_json = load_json  # (path named in the config, which field) -> its JSON mapping
        self.read: list[str] = []
        self.defaults: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.cfg and self.cfg[key] is not None

    def _mark(self, key: str) -> None:
        if key in self.cfg and key not in self.read:
            self.read.append(key)

    def _bad(self, key: str, want: str, value: Any) -> TuneplanError:
        return TuneplanError(f"{self.stack} field {key} must be {want}, got {show_value(value)}")

    def raw(self, key: str, default: Any = None) -> Any:
        self._mark(key)
        value = self.cfg.get(key)
        return default if value is None else value

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, want: str = "",
            check: Callable[[Any], bool] | None = None) -> Any:
        """The value of `key` checked against `kind` (bool is not an int here); `default`
        when absent or null (recorded as a default used)."""
        self._mark(key)
        value = self.cfg.get(key)
        if value is None:
            if default not in (None, False):  # a switch left off is not worth listing
                self.defaults.append(f"{key}={default}")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if ok and check is not None and not check(value):
            ok = False
        if not ok:
            raise self._bad(key, want or _want(kinds), value)
        return value

    def count(self, key: str, default: int | None = None) -> int | None:
        return self.get(key, int, default, "a whole number >= 1", lambda v: v >= 1)

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        return self.get(key, bool, default, "true or false")

    def text(self, key: str, default: str | None = None) -> str | None:
        return self.get(key, str, default, "a string")

    def choice(self, key: str, table: dict[Any, Any], default: Any = None) -> Any:
        """A value that must be one of `table`'s keys; returns what it maps to."""
        self._mark(key)
        value = self.cfg.get(key)
        if value is None:
            if default is not None:
                self.defaults.append(f"{key}={default}")
                return table[default]
            return None
        try:
            return table[value]
        except (KeyError, TypeError):
            raise TuneplanError(f"{self.stack} field {key} {show_value(value)} is not modelled; tuneplan reads: "
                                + ", ".join(str(k) for k in table)) from None


def _want(kinds: tuple[type, ...]) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def read_parallel(f: Fields, fsdp_on: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Sharding and offload from an HF Trainer config's deepspeed (inline mapping) or
    fsdp/fsdp_config (`fsdp_on`: FSDP is on without an fsdp field, as in Axolotl); also the
    DeepSpeed mapping (for its precision), or None."""
    ds = f.raw("deepspeed")
    value = f.raw("fsdp")
    fsdp = read_fsdp(value if value is not None or not fsdp_on else "full_shard", f.raw("fsdp_config"), f.stack)
    if ds is not None and fsdp:
        raise TuneplanError(f"{f.stack} config sets both deepspeed and fsdp; choose one")
    if isinstance(ds, str):
        if f.load_json is None:
            raise TuneplanError(f"{f.stack} field deepspeed names a file ({show_value(ds)}); give its settings "
                                "inline (as a mapping) or with --sharding/--offload-* on the command line")
        ds = f.load_json(ds, "deepspeed")
    if ds is not None:
        return read_deepspeed(ds, f"{f.stack} field deepspeed"), ds
    return fsdp, None


def read_targets(value: Any, stack: str, key: str) -> Any:
    """A list of module names (or PEFT's "all-linear") -> the targets setting."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise TuneplanError(f"{stack} field {key} must list module names, got {show_value(value)}")
    if value in (["all-linear"], ["all"]):
        return "all-linear"
    return tuple(value)


def read_embeddings(value: Any, stack: str, key: str) -> bool:
    """modules_to_save-style lists: embed_tokens and lm_head are what --train-embeddings trains."""
    names = {v.strip() for v in (value.split(",") if isinstance(value, str) else value or [])}
    if not names:
        return False
    if not names <= {"embed_tokens", "lm_head"}:
        raise refuse(stack, key, value, "tuneplan models training embed_tokens and lm_head (--train-embeddings)")
    return True


def refuse(stack: str, key: str, value: Any, why: str) -> TuneplanError:
    """The one-line error for a config option tuneplan cannot estimate."""
    return TuneplanError(f"{stack} option {key}: {show_value(value)} is not supported: {why}")
