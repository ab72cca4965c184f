"""What the user asks for: method, training settings, training task and parallel layout.

Immutable value objects. They hold choices only; every number derived from them
(bytes, FLOPs, seconds) is computed by pure functions in tuneplan.memory, tuneplan.timing,
... Each named choice (framework, optimizer, attention, cross-entropy, precision, task)
is a record in tuneplan.choices; the properties here return those records. Validation
happens in ``__post_init__`` so a bad value fails at the boundary with a one-line
:class:`~tuneplan.errors.TuneplanError`. ``Job.from_settings`` builds a Job from flat
settings and is what the API, the CLI, tests and benchmarks use.

The layout (Parallel) is tuneplan.parallel, the value bounds tuneplan.bounds and the
stack's refusals tuneplan.job_checks; their names are importable from here too.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from tuneplan.bounds import LIMITS, MAX_COUNT, MAX_SEQ_LEN, check_choice, check_positive, show_value
from tuneplan.choices.attention import ATTENTION, Attention, attention
from tuneplan.choices.compilation import COMPILATION, Compilation, compilation
from tuneplan.choices.cross_entropy import CROSS_ENTROPY, CrossEntropy, cross_entropy
from tuneplan.choices.frameworks import FRAMEWORKS, FrameworkProfile, framework
from tuneplan.choices.kbit_prep import KBIT_PREPS, KbitPrep, kbit_prep
from tuneplan.choices.optimizers import OPTIMIZERS, Optimizer, canonical_optimizer, optimizer
from tuneplan.choices.precision import PRECISIONS, Precision, precision
from tuneplan.choices.quantisation import QUANT_FORMATS, QuantFormat
from tuneplan.choices.runtimes import RUNTIMES, Runtime
from tuneplan.choices.tasks import GENERATION_ENGINES, TASKS, GenerationEngine, Task, reference_for, task
from tuneplan.choices.versions import STACKS, Stack, stack
from tuneplan.errors import TuneplanError
from tuneplan.job_checks import (
    check_request_parallel,
    check_request_rollout,
    check_rollout,
    check_stack,
    check_task,
    online_defaults,
)
from tuneplan.parallel import SHARDING, Parallel

METHODS = ("full", "lora", "qlora", "dora", "freeze")
QUANT_TYPES = tuple(QUANT_FORMATS)
CHECKPOINTING = ("none", "full", "offload", "selective")
# names of the choice tables, for help texts
PRECISION_NAMES = tuple(PRECISIONS)
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
ATTENTION_NAMES = tuple(ATTENTION)
FRAMEWORK_NAMES = tuple(FRAMEWORKS)
CROSS_ENTROPY_NAMES = tuple(CROSS_ENTROPY)
TASK_NAMES = tuple(TASKS)
GENERATION_ENGINE_NAMES = tuple(GENERATION_ENGINES)
STACK_NAMES = tuple(STACKS)
RUNTIME_NAMES = tuple(RUNTIMES)
COMPILE_NAMES = tuple(COMPILATION)
KBIT_PREP_NAMES = tuple(KBIT_PREPS)

# Short names for LoRA target sets; anything else is a comma list of module names.
TARGET_PRESETS = {
    "all": "all-linear",
    "all-linear": "all-linear",
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qv": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


@dataclass(frozen=True)
class Method:
    """How the model is adapted.

    Args:
        kind: full | lora | qlora | dora | freeze.
        rank: LoRA/DoRA rank r (ignored for full/freeze).
        targets: "all-linear" or a tuple of module names (q_proj, ..., down_proj).
        quant: base-weight quantisation for qlora, a row of tuneplan.choices.quantisation:
            nf4 | fp4 (bitsandbytes 4-bit) | int8 (LLM.int8) | mlx4 | mlx8 (MLX affine).
        double_quant: bitsandbytes double quantisation of the 4-bit absmax constants.
        quant_blocksize: elements per absmax block (bitsandbytes default 64) or per MLX
            affine group (mx.quantize group_size, default 64).
        lora_layers: adapt (or, for a stack whose full fine-tuning is per layer, train) only
            the last N decoder layers (mlx-lm's num_layers, default 16 there); 0: every layer.
        trainable_layers: for freeze, how many of the last decoder layers are trained.
        lora_dropout: dropout before lora_A; > 0 keeps a mask and a copy of each adapter input.
        train_embeddings: also train input embeddings and lm_head (e.g. new tokens).
    """

    kind: str = "lora"
    rank: int = 16
    targets: str | tuple[str, ...] = "all-linear"
    quant: str = "nf4"
    double_quant: bool = True
    quant_blocksize: int = 64
    trainable_layers: int = 2
    lora_dropout: float = 0.0
    train_embeddings: bool = False
    lora_layers: int = 0

    def __post_init__(self) -> None:
        check_choice("method", self.kind, METHODS)
        check_choice("quantisation", self.quant, QUANT_TYPES)
        if not 0 <= self.lora_layers <= MAX_COUNT:
            raise TuneplanError(f"--lora-layers must be a positive count, got {show_value(self.lora_layers)}")
        if self.kind in ("lora", "qlora", "dora"):
            check_positive("LoRA rank", self.rank, MAX_COUNT)
        check_positive("quantisation block size", self.quant_blocksize, MAX_COUNT)
        if self.kind == "freeze":
            check_positive("trainable layers", self.trainable_layers, MAX_COUNT)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TuneplanError(f"lora dropout must be in [0, 1), got {show_value(self.lora_dropout)}")

    def ignored(self, names: Any) -> list[str]:
        """Which of the setting `names` this method does not read (rank for full, quant for lora, ...)."""
        reads = {"rank": self.is_adapter, "targets": self.is_adapter, "lora_dropout": self.is_adapter,
                 "quant": self.kind == "qlora", "double_quant": self.kind == "qlora",
                 "quant_blocksize": self.kind == "qlora", "trainable_layers": self.kind == "freeze",
                 "lora_layers": self.is_adapter or self.kind == "freeze"}
        return [n for n in names if not reads.get(n, True)]

    @property
    def is_adapter(self) -> bool:
        """True when only low-rank adapters (plus optional extras) are trained."""
        return self.kind in ("lora", "qlora", "dora")

    @property
    def weight_bits(self) -> int | None:
        """Bits per frozen base weight when quantised, else None."""
        if self.kind != "qlora":
            return None
        return self.fmt.bits

    @property
    def fmt(self) -> QuantFormat:
        """The quantisation-format record (read for qlora only)."""
        return QUANT_FORMATS[self.quant]

    def adapts_layer(self, layer: int, num_layers: int) -> bool:
        """Whether decoder layer `layer` (of `num_layers`) gets adapters: all, or the last lora_layers."""
        return not self.lora_layers or layer >= num_layers - self.lora_layers


@dataclass(frozen=True)
class Training:
    """Per-step training settings.

    Args:
        micro_batch: sequences per GPU per forward/backward.
        seq_len: tokens per sequence (padded/packed length).
        grad_accum: micro-batches accumulated before an optimizer step.
        precision: a row of tuneplan.choices.precision (bf16 | fp16 | fp32 | amp | mixed).
        optimizer: a row of tuneplan.choices.optimizers.
        checkpointing: none | full (recompute each decoder layer) | offload (layer inputs on CPU).
        attention: a row of tuneplan.choices.attention (sdpa | flash | eager).
        framework: a row of tuneplan.choices.frameworks (memory/time profile).
        cross_entropy: a row of tuneplan.choices.cross_entropy (plain | chunked | fused |
            lm-head-chunked); None takes the framework profile's default.
        optimizer_in_backward: step each parameter in its gradient hook during backward and
            free the gradient at once (torchtune optimizer_in_bwd=True), so the full set of
            gradients never exists; needs grad_accum 1.
        stack: library versions (tuneplan.choices.versions), today's by default.
        compile: none | inductor (torch.compile): what the forward saves for backward
            (tuneplan.choices.compilation).
        kbit_prep: how the script prepares a bitsandbytes-quantised model
            (tuneplan.choices.kbit_prep: none | peft | trl-bf16); QLoRA only.
    """

    micro_batch: int = 1
    seq_len: int = 2048
    grad_accum: int = 1
    precision: str = "bf16"
    optimizer: str = "adamw"
    checkpointing: str = "full"
    attention: str = "sdpa"
    framework: str = "hf"
    cross_entropy: str | None = None
    optimizer_in_backward: bool = False
    stack: str = "current"
    runtime: str | None = None
    compile: str = "none"
    kbit_prep: str = "none"

    def __post_init__(self) -> None:
        check_positive("micro-batch", self.micro_batch, MAX_COUNT)
        check_positive("sequence length", self.seq_len, MAX_SEQ_LEN)
        check_positive("gradient accumulation steps", self.grad_accum, MAX_COUNT)
        precision(self.precision)
        optimizer(self.optimizer)
        check_choice("checkpointing mode", self.checkpointing, CHECKPOINTING)
        attention(self.attention)
        framework(self.framework)
        if self.cross_entropy is not None:
            cross_entropy(self.cross_entropy)
        stack(self.stack)
        compilation(self.compile)
        kbit_prep(self.kbit_prep)
        if self.optimizer_in_backward and self.grad_accum > 1:
            raise TuneplanError("optimizer in backward steps on every micro-batch; it cannot accumulate "
                                "gradients (use --grad-accum 1)")

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def profile(self) -> FrameworkProfile:
        """The framework profile record."""
        return FRAMEWORKS[self.framework]

    @property
    def dtypes(self) -> Precision:
        """The precision record."""
        return PRECISIONS[self.precision]

    @property
    def optim(self) -> Optimizer:
        """The optimizer record."""
        return OPTIMIZERS[self.optimizer]

    @property
    def attn(self) -> Attention:
        """The attention record asked for (tuneplan.choices.attention.kernel_for gives what runs)."""
        return ATTENTION[self.attention]

    @property
    def loss(self) -> CrossEntropy:
        """The cross-entropy implementation in effect: the asked one, else the profile's default."""
        return CROSS_ENTROPY[self.cross_entropy or self.profile.default_cross_entropy]

    @property
    def compilation(self) -> Compilation:
        """The compilation record (eager or torch.compile)."""
        return COMPILATION[self.compile]

    @property
    def rt(self) -> Runtime:
        """The runtime record in effect: the asked one, else the framework's default."""
        return RUNTIMES[self.runtime or self.profile.runtime_for(None)]

    @property
    def versions(self) -> Stack:
        """The library-versions record."""
        return STACKS[self.stack]

    @property
    def prep(self) -> KbitPrep:
        """The k-bit preparation record (none unless the job is a bitsandbytes QLoRA)."""
        return KBIT_PREPS[self.kbit_prep]

    @property
    def fp32_residual(self) -> bool:
        """The residual stream, the norm outputs and the checkpoints are fp32: fp32 weights under
        autocast (amp), or a k-bit preparation that upcasts norms or embeddings."""
        return self.dtypes.fp32_residual or self.prep.fp32_residual

    @property
    def residual_bytes(self) -> int:
        """Bytes per element of the residual stream (each layer's input and its gradient)."""
        return 4 if self.fp32_residual else self.compute_bytes

    @property
    def param_bytes(self) -> int:
        """Bytes per element of trainable/base parameters (and their gradients)."""
        return self.dtypes.param_bytes

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of activations (the autocast/compute dtype)."""
        return self.dtypes.compute_bytes

    @property
    def autocast(self) -> bool:
        """The forward runs under torch.autocast (precision and framework decide)."""
        rule = self.dtypes.autocast
        return rule == "always" or (rule == "profile" and self.profile.autocast_half)

    @property
    def adapter_bytes(self) -> int:
        """Bytes per adapter parameter: fp32 under PEFT's autocast_adapter_dtype, else the param
        dtype, unless the k-bit preparation recasts the adapters (TRL's bf16 cast)."""
        if self.prep.adapter_bytes is not None:
            return self.prep.adapter_bytes
        return 4 if self.profile.adapter_fp32 else self.param_bytes


@dataclass(frozen=True)
class Rollout:
    """How an online task (grpo, rloo) generates its completions; read for online tasks only.
    Defaults are TRL 1.16's GRPOConfig (trl/trainer/grpo_config.py).

    Args:
        num_generations: completions per prompt; 0: the task's default (GRPO 8, RLOO 2).
        prompt_len: prompt tokens per row (TRL 1.16 has no max_prompt_length; 512 was its
            default until it was removed).
        completion_len: max_completion_length (default 512, grpo_config.py:494); every row is
            counted at prompt + completion tokens (padded to the longest, which TRL does).
        generation_engine: a row of tuneplan.choices.tasks.GENERATION_ENGINES: hf (use_vllm
            False, the default) | vllm-colocate | vllm-server.
        vllm_memory_utilization: vLLM's gpu_memory_utilization, the share of each device's
            memory it reserves (default 0.3, grpo_config.py:656).
        generation_gpus: GPUs running the vLLM server (vllm-server only; default 1), besides
            the --gpus that train.
        vllm_sleep: vllm_enable_sleep_mode (default False, grpo_config.py:612): vLLM frees its
            weights and KV cache (sleep level 2) outside generation.
        device_memory_gib: total memory of one training GPU (GiB), which vLLM's share is a
            fraction of; set from --gpu by tuneplan.memory.online.on_device; 0: not known (the
            share is then not counted, and the estimate says so).
    """

    num_generations: int = 0
    prompt_len: int = 512
    completion_len: int = 512
    generation_engine: str = "hf"
    vllm_memory_utilization: float = 0.3
    generation_gpus: int = 0
    vllm_sleep: bool = False
    device_memory_gib: float = 0.0

    def __post_init__(self) -> None:
        if self.num_generations < 0 or self.num_generations > MAX_COUNT:
            raise TuneplanError(f"--num-generations must be at least 2, got {show_value(self.num_generations)}")
        check_positive("prompt length", self.prompt_len, MAX_SEQ_LEN)
        check_positive("completion length", self.completion_len, MAX_SEQ_LEN)
        check_choice("generation engine", self.generation_engine, GENERATION_ENGINE_NAMES)
        if not 0.0 < self.vllm_memory_utilization < 1.0:
            raise TuneplanError("--vllm-memory-utilization is the share of each GPU's memory vLLM reserves; it must "
                                f"be above 0 and below 1, got {show_value(self.vllm_memory_utilization)}")
        if not 0 <= self.generation_gpus <= MAX_COUNT:
            raise TuneplanError(f"--generation-gpus must be a count, got {show_value(self.generation_gpus)}")

    @property
    def engine(self) -> GenerationEngine:
        """The generation-engine record."""
        return GENERATION_ENGINES[self.generation_engine]


# Flat setting names that are spelled differently from the dataclass fields (the CLI's
# option names are accepted too: batch, gpus, tp, pp, optim, gc).
_ALIASES = {"method": "kind", "batch": "micro_batch", "gpus": "num_gpus", "tp": "tensor", "pp": "pipeline",
            "vp": "virtual_stages", "cp": "context", "ep": "expert",
            "optim": "optimizer", "gc": "checkpointing"}
# qlora-<format> spellings of --method: the base-weight format they set
QLORA_SPELLINGS = {"8bit": "int8", "int8": "int8", "nf4": "nf4", "fp4": "fp4", "4bit": "nf4"}


@dataclass(frozen=True)
class Job:
    """One fine-tuning job: method x training settings x task x parallel layout."""

    method: Method = field(default_factory=Method)
    training: Training = field(default_factory=Training)
    parallel: Parallel = field(default_factory=Parallel)
    rollout: Rollout = field(default_factory=Rollout)  # online tasks only (tuneplan.memory.online)
    task: str = "sft"
    ref_model: str | None = None  # task hook: separate | adapter | precomputed | none (None: the stack's default)

    def __post_init__(self) -> None:
        t = task(self.task)
        if not t.modelled:
            raise TuneplanError(f"training task {t.name} ({t.label}) is not modelled yet: it needs "
                                f"{t.what_differs}; tuneplan estimates sft and the tasks "
                                f"({', '.join(n for n, r in TASKS.items() if r.modelled and not r.is_sft)})")
        check_rollout(self, t)  # first: an engine the runtime cannot run is named before the trainer
        check_task(self, t)
        check_stack(self)

    @property
    def task_record(self) -> Task:
        """The training-task record (tuneplan.choices.tasks)."""
        return TASKS[self.task]

    @property
    def generations(self) -> int:
        """Completions per prompt in effect (online tasks): the asked number, else the task's."""
        return self.rollout.num_generations or self.task_record.generations

    @property
    def reference(self) -> str:
        """The reference policy in effect: separate | adapter | precomputed | none."""
        return reference_for(self.task_record, self.ref_model, self.method.is_adapter)

    def on_vendor(self, vendor: str | None) -> Job:
        """This job on a device of `vendor`: the runtime the framework runs there (HF on Apple
        is MPS, mlx on NVIDIA is MLX's CUDA backend), unless a runtime was asked for."""
        if self.training.runtime is not None or vendor is None:
            return self
        prof = self.training.profile
        rt = prof.runtime_for(vendor)
        if rt == prof.runtime_for(None):  # the default: the job stays as it was (same settings, same JSON)
            return self
        return replace(self, training=replace(self.training, runtime=rt))

    @classmethod
    def from_settings(cls, **settings: Any) -> Job:
        """A Job from flat settings: any field of Method (`method=` for its kind), Training
        or Parallel, and `task`. `targets` may be a preset or comma list; `fused_ce=True` is
        `cross_entropy="fused"`. Types are checked (no bool for a count, no fraction of a token).

        Raises:
            TuneplanError: unknown setting, wrong type, or an invalid value.
        """
        groups: dict[type, dict[str, Any]] = {Method: {}, Training: {}, Parallel: {}, Rollout: {}}
        job_fields: dict[str, Any] = {}
        settings = online_defaults(_profile_defaults(_method_spelling(dict(settings))))
        fused = settings.pop("fused_ce", None) if "fused_ce" in settings else None
        for key, value in settings.items():
            name = _ALIASES.get(key, key)
            if isinstance(value, str) and name != "targets":
                value = value.strip().lower()  # names are case-insensitive, as on the command line
                if name == "optimizer":  # transformers' TrainingArguments.optim names are aliases
                    value = canonical_optimizer(value)
            if name in ("task", "ref_model"):
                _check_type(name, value, None if name == "ref_model" else "")
                if value is not None:
                    job_fields[name] = value
                continue
            for cls_ in groups:
                f = _FIELDS[cls_].get(name)
                if f is not None:
                    if name == "targets":
                        value = _targets(value)
                    else:
                        _check_type(key, value, False if f.type == "bool | None" and value is not None else f.default)
                    groups[cls_][name] = value
                    break
            else:
                raise TuneplanError(f"unknown setting {show_value(key)}")
        if fused is not None:
            _check_type("fused_ce", fused, False)
            asked = groups[Training].get("cross_entropy")
            fused_name = next(c.name for c in CROSS_ENTROPY.values() if c.fused)
            if fused and asked is not None and not cross_entropy(asked).fused:
                raise TuneplanError(f"fused_ce contradicts cross_entropy={asked!r}")
            if fused:
                groups[Training]["cross_entropy"] = fused_name
        par = groups[Parallel]
        if "num_gpus" not in par:  # model-parallel degrees alone: the smallest world that holds them
            par["num_gpus"] = par.get("tensor", 1) * par.get("pipeline", 1) * par.get("context", 1)
        return cls(Method(**groups[Method]), Training(**groups[Training]), Parallel(**par),
                   Rollout(**groups[Rollout]), **job_fields)

    @classmethod
    def from_request(cls, **settings: Any) -> Job:
        """A Job from what a user asked for (the API and the CLI): like from_settings, but a
        setting given explicitly that the method would ignore (rank for full fine-tuning,
        quant for LoRA, trainable_layers for LoRA, ...) is refused instead of dropped.

        Raises:
            TuneplanError: as from_settings, or a setting the method does not read.
        """
        job = cls.from_settings(**settings)
        check_request_parallel(job)
        check_request_rollout(job)
        given = [_ALIASES.get(k, k) for k in _method_spelling(dict(settings)) if k not in ("method", "kind")]
        ignored = job.method.ignored(given)
        if ignored:
            names = ", ".join(ignored)
            raise TuneplanError(f"{names} {'does' if len(ignored) == 1 else 'do'} not apply to method "
                                f"{job.method.kind}; drop {'it' if len(ignored) == 1 else 'them'} or choose "
                                "a method that uses it")
        return job

    def with_settings(self, **settings: Any) -> Job:
        """A copy with some flat settings changed (same names as from_settings). Moving to
        another framework keeps the base-weight bits: a quantisation format the new stack does
        not use becomes its format of the same bits (nf4 -> mlx4 under mlx-lm, mlx8 -> int8)."""
        new = {**self.settings(), **settings}
        name = settings.get("framework")
        if isinstance(name, str) and "quant" not in settings and name.strip().lower() in FRAMEWORKS:
            libs = FRAMEWORKS[name.strip().lower()].quant_libraries
            fmt = QUANT_FORMATS[self.method.quant]
            if fmt.library not in libs:
                same = [q.name for q in QUANT_FORMATS.values() if q.library in libs and q.bits == fmt.bits]
                if same:
                    new["quant"] = same[0]
        return Job.from_settings(**new)

    def settings(self) -> dict[str, Any]:
        """The flat settings that rebuild this Job (Job.from_settings(**job.settings()) == job)."""
        out: dict[str, Any] = {}
        for part in (self.method, self.training, self.parallel):
            for f in fields(part):
                out["method" if f.name == "kind" else f.name] = getattr(part, f.name)
        if self.task_record.online:  # the rollout settings exist for online tasks only
            out.update({f.name: getattr(self.rollout, f.name) for f in fields(self.rollout)
                        if getattr(self.rollout, f.name) != f.default})
        out["task"] = self.task
        out["ref_model"] = self.ref_model
        return out


_FIELDS = {cls: {f.name: f for f in fields(cls)} for cls in (Method, Training, Parallel, Rollout)}


def _profile_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings the framework profile decides when the user gives none (mlx-lm: rank 8,
    num_layers 16, no checkpointing, 4-bit affine), and a full fine-tuning that the stack
    runs per layer (mlx-lm) as the freeze of its last lora_layers layers."""
    name = settings.get("framework")
    if not isinstance(name, str) or name.strip().lower() not in FRAMEWORKS:
        return settings
    prof = FRAMEWORKS[name.strip().lower()]
    given = {_ALIASES.get(k, k) for k in settings}
    out = dict(settings)
    for key, value in prof.defaults:
        if key not in given:
            out[key] = value
    key = "method" if "method" in out else "kind"
    if prof.full_is_layers and isinstance(out.get(key), str) and out[key].strip().lower() == "full":
        layers = out.get("lora_layers") or 0
        if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1:
            # lora_layers 0 (every layer) stays tuneplan's full: the embeddings' gradient and
            # states are counted although mlx-lm freezes them (an over-estimate, said nowhere
            # else: give --lora-layers N for mlx-lm's exact layout)
            if "trainable_layers" in given and out["trainable_layers"] != layers:
                raise TuneplanError("give --lora-layers or --trainable-layers, not both")
            out[key] = "freeze"
            out["trainable_layers"] = layers
    return out


def _method_spelling(settings: dict[str, Any]) -> dict[str, Any]:
    """method="qlora-8bit" (or qlora-nf4, qlora-fp4, qlora-4bit) -> method="qlora", quant=...;
    an explicit quant that says otherwise is a contradiction."""
    key = "method" if "method" in settings else "kind"
    kind = settings.get(key)
    if not isinstance(kind, str) or not kind.startswith("qlora-"):
        return settings
    quant = QLORA_SPELLINGS.get(kind.split("-", 1)[1])
    if quant is None:
        raise TuneplanError(f"unknown method {show_value(kind)}; choose one of: {', '.join(METHODS)}, "
                            "qlora-nf4, qlora-fp4, qlora-8bit")
    asked = settings.get("quant")
    if asked is not None and asked != quant:
        raise TuneplanError(f"method {kind} means quant {quant}, but quant {show_value(asked)} was also given; "
                            "give one of them")
    return {**settings, key: "qlora", "quant": quant}


def _check_type(key: str, value: Any, default: Any) -> None:
    """One-line error when a setting has the wrong type (bool is not a count, 16.7 not a rank)."""
    if default is MISSING or default is None:
        if value is not None and not isinstance(value, str):
            raise TuneplanError(f"setting {key} must be a name, got {value!r}")
        return
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if ok and kind is float and not (abs(value) < 1e300 and math.isfinite(value)):
        raise TuneplanError(f"setting {key} must be a finite number, got {show_value(value)}")
    if not ok:
        want = {int: "a whole number", float: "a number", bool: "true or false", str: "a name"}.get(kind, kind.__name__)
        raise TuneplanError(f"setting {key} must be {want}, got {show_value(value)}")
    if kind is int:
        hi = LIMITS.get(_ALIASES.get(key, key), MAX_COUNT)
        if value > hi:
            raise TuneplanError(f"setting {key} is {show_value(value)}, above the {hi:,} tuneplan accepts")


def _targets(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return parse_targets(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TuneplanError(f"targets must be a preset (all-linear, attn, qv, mlp) or module names, got {value!r}")


def parse_targets(text: str) -> str | tuple[str, ...]:
    """Turn a --targets value into "all-linear" or a tuple of module names (case-insensitive)."""
    text = text.strip().lower()
    if text in TARGET_PRESETS:
        return TARGET_PRESETS[text]
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise TuneplanError("--targets is empty; use all-linear, attn, qv, mlp or a comma list")
    return names


__all__ = ["LIMITS", "MAX_COUNT", "MAX_SEQ_LEN", "SHARDING", "Job", "Method", "Parallel", "Rollout", "Training",
           "parse_targets", "replace", "show_value"]
