"""What the user asks for: method, training settings, training task and parallel layout.

Immutable value objects. They hold choices only; every number derived from them
(bytes, FLOPs, seconds) is computed by pure functions in tuneplan.memory, tuneplan.timing,
... Each named choice (framework, optimizer, attention, cross-entropy, precision, task)
is a record in tuneplan.choices; the properties here return those records. Validation
happens in ``__post_init__`` so a bad value fails at the boundary with a one-line
:class:`~tuneplan.errors.TuneplanError`. ``Job.from_settings`` builds a Job from flat
settings and is what the API, the CLI, tests and benchmarks use.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from tuneplan.choices.attention import ATTENTION, Attention, attention
from tuneplan.choices.compilation import COMPILATION, Compilation, compilation
from tuneplan.choices.cross_entropy import CROSS_ENTROPY, CrossEntropy, cross_entropy
from tuneplan.choices.frameworks import FRAMEWORKS, FrameworkProfile, framework
from tuneplan.choices.kbit_prep import KBIT_PREPS, KbitPrep, kbit_prep
from tuneplan.choices.layouts import SHARDINGS, Sharding
from tuneplan.choices.optimizers import OPTIMIZERS, Optimizer, canonical_optimizer, optimizer
from tuneplan.choices.precision import PRECISIONS, Precision, precision
from tuneplan.choices.quantisation import QUANT_FORMATS, QuantFormat
from tuneplan.choices.runtimes import RUNTIMES, Runtime
from tuneplan.choices.tasks import TASKS, Task, reference_for, task
from tuneplan.choices.versions import STACKS, Stack, stack
from tuneplan.errors import TuneplanError

METHODS = ("full", "lora", "qlora", "dora", "freeze")
QUANT_TYPES = tuple(QUANT_FORMATS)
CHECKPOINTING = ("none", "full", "offload", "selective")
SHARDING = tuple(SHARDINGS)
# names of the choice tables, for help texts
PRECISION_NAMES = tuple(PRECISIONS)
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
ATTENTION_NAMES = tuple(ATTENTION)
FRAMEWORK_NAMES = tuple(FRAMEWORKS)
CROSS_ENTROPY_NAMES = tuple(CROSS_ENTROPY)
TASK_NAMES = tuple(TASKS)
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


# Largest value accepted for each whole-number setting: far beyond any real job, small
# enough that every figure stays a finite float (10**400 tokens would not).
MAX_COUNT = 1 << 20
MAX_SEQ_LEN = 1 << 30
LIMITS = {"seq_len": MAX_SEQ_LEN}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TuneplanError(f"unknown {name} {show_value(value)}; choose one of: {', '.join(allowed)}")


def show_value(value: Any) -> str:
    """A value for a one-line message: huge integers by their size, long texts cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"a {int(value.bit_length() * 0.30103) + 1}-digit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive(name: str, value: int | float, hi: int | None = None) -> None:
    try:
        ok = value > 0
    except TypeError:
        raise TuneplanError(f"{name} must be a number, got {show_value(value)}") from None
    if not ok:
        raise TuneplanError(f"{name} must be positive, got {show_value(value)}")
    if hi is not None and value > hi:
        raise TuneplanError(f"{name} {show_value(value)} is above the {hi:,} tuneplan accepts")


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
        _choice("method", self.kind, METHODS)
        _choice("quantisation", self.quant, QUANT_TYPES)
        if not 0 <= self.lora_layers <= MAX_COUNT:
            raise TuneplanError(f"--lora-layers must be a positive count, got {show_value(self.lora_layers)}")
        if self.kind in ("lora", "qlora", "dora"):
            _positive("LoRA rank", self.rank, MAX_COUNT)
        _positive("quantisation block size", self.quant_blocksize, MAX_COUNT)
        if self.kind == "freeze":
            _positive("trainable layers", self.trainable_layers, MAX_COUNT)
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
        _positive("micro-batch", self.micro_batch, MAX_COUNT)
        _positive("sequence length", self.seq_len, MAX_SEQ_LEN)
        _positive("gradient accumulation steps", self.grad_accum, MAX_COUNT)
        precision(self.precision)
        optimizer(self.optimizer)
        _choice("checkpointing mode", self.checkpointing, CHECKPOINTING)
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
class Parallel:
    """How the job is laid out over GPUs (Megatron-Core's order of dimensions: the world is
    tensor x context x data x pipeline, and expert parallelism is carved out of data x context).

    Args:
        num_gpus: world size (tensor x context x data x pipeline).
        sharding: a row of tuneplan.choices.layouts: ddp (replicate) | zero1 | zero2 | zero3
            (DeepSpeed ZeRO) | fsdp (torch FSDP, the stack's version) | hsdp (FSDP inside a
            machine, replicas across), over the data (x context) group.
        offload_optimizer: optimizer states (and master weights) live in CPU RAM.
        offload_params: parameters live in CPU RAM (ZeRO-3/FSDP only).
        tensor: tensor-parallel degree (heads, MLP width and vocabulary split).
        pipeline: pipeline-parallel degree (decoder layers split into stages).
        virtual_stages: pipeline stages per rank (interleaved 1F1B; 1 = plain 1F1B).
        context: context-parallel degree (the sequence split, ring attention).
        expert: expert-parallel degree (MoE experts split over data x context ranks).
        sequence_parallel: with tensor parallelism, norms, dropout and the residual stream
            are split along the sequence too (Korthikanti et al. 2022); None: the stack's default.
        nodes: machines the GPUs span (num_gpus / nodes GPUs each); 0: as few as the device allows.
    """

    num_gpus: int = 1
    sharding: str = "ddp"
    offload_optimizer: bool = False
    offload_params: bool = False
    tensor: int = 1
    pipeline: int = 1
    virtual_stages: int = 1
    context: int = 1
    expert: int = 1
    sequence_parallel: bool | None = None
    nodes: int = 0

    def __post_init__(self) -> None:
        _positive("number of GPUs", self.num_gpus, MAX_COUNT)
        _choice("sharding", self.sharding, SHARDING)
        for degree, what in ((self.tensor, "tensor-parallel degree"), (self.pipeline, "pipeline-parallel degree"),
                             (self.virtual_stages, "virtual pipeline stages"),
                             (self.context, "context-parallel degree"), (self.expert, "expert-parallel degree")):
            _positive(what, degree, MAX_COUNT)
        if not 0 <= self.nodes <= MAX_COUNT:
            raise TuneplanError(f"--nodes must be a positive count, got {show_value(self.nodes)}")
        if self.offload_params and self.shard_stage < 3:
            raise TuneplanError("parameter offload needs --sharding zero3, fsdp or hsdp")
        model = self.tensor * self.pipeline * self.context
        if self.num_gpus % model:
            raise TuneplanError(f"{self.num_gpus} GPUs cannot be split into tensor {self.tensor} x pipeline "
                                f"{self.pipeline} x context {self.context} groups ({model} GPUs each)")
        if (self.data * self.context) % self.expert:
            raise TuneplanError(f"expert parallelism {self.expert} must divide data x context "
                                f"({self.data} x {self.context}): experts are split over those ranks")
        if self.virtual_stages > 1 and self.pipeline == 1:
            raise TuneplanError("--vp (virtual pipeline stages) needs --pp above 1")
        if self.sequence_parallel and self.tensor == 1:
            raise TuneplanError("--sequence-parallel splits activations over the tensor-parallel group; it needs --tp above 1")
        if self.nodes and self.num_gpus % self.nodes:
            raise TuneplanError(f"{self.num_gpus} GPUs do not spread evenly over {self.nodes} machines")

    @property
    def data(self) -> int:
        """Data-parallel degree (replicas of the model-parallel group)."""
        return self.num_gpus // (self.tensor * self.pipeline * self.context)

    @property
    def layout(self) -> Sharding:
        """The sharding record (tuneplan.choices.layouts)."""
        return SHARDINGS[self.sharding]

    @property
    def shard_stage(self) -> int:
        """ZeRO stage: 0 = replicate, 1 = optimizer, 2 = +grads, 3 = +params."""
        return SHARDINGS[self.sharding].stage

    @property
    def model_parallel(self) -> bool:
        """Any of tensor, pipeline, context or expert parallelism."""
        return self.tensor * self.pipeline * self.context * self.expert > 1

    @property
    def machines(self) -> int:
        """Machines the job spans (1 unless --nodes says otherwise or a search set it)."""
        return self.nodes or 1

    @property
    def shard_world(self) -> int:
        """Ranks one state is sharded over: the data x context group (torchtitan's dp_shard_cp
        mesh, Megatron's distributed optimizer over data x context), inside one machine for
        HSDP (replicated across machines)."""
        world = self.data * self.context
        if self.layout.shard_group_node and self.machines > 1 and world % self.machines == 0:
            world //= self.machines
        return world


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
    task: str = "sft"
    ref_model: str | None = None  # task hook: separate | adapter | precomputed | none (None: the stack's default)

    def __post_init__(self) -> None:
        t = task(self.task)
        if not t.modelled:
            raise TuneplanError(f"training task {t.name} ({t.label}) is not modelled yet: it needs "
                                f"{t.what_differs}; tuneplan estimates sft and the offline tasks "
                                f"({', '.join(n for n, r in TASKS.items() if r.modelled and not r.is_sft)})")
        _check_task(self, t)
        _check_stack(self)

    @property
    def task_record(self) -> Task:
        """The training-task record (tuneplan.choices.tasks)."""
        return TASKS[self.task]

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
        groups: dict[type, dict[str, Any]] = {Method: {}, Training: {}, Parallel: {}}
        job_fields: dict[str, Any] = {}
        settings = _profile_defaults(_method_spelling(dict(settings)))
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
                   **job_fields)

    @classmethod
    def from_request(cls, **settings: Any) -> Job:
        """A Job from what a user asked for (the API and the CLI): like from_settings, but a
        setting given explicitly that the method would ignore (rank for full fine-tuning,
        quant for LoRA, trainable_layers for LoRA, ...) is refused instead of dropped.

        Raises:
            TuneplanError: as from_settings, or a setting the method does not read.
        """
        job = cls.from_settings(**settings)
        _check_request_parallel(job)
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
        out["task"] = self.task
        out["ref_model"] = self.ref_model
        return out


_FIELDS = {cls: {f.name: f for f in fields(cls)} for cls in (Method, Training, Parallel)}


def _check_task(job: Job, t: Task) -> None:
    """One-line refusal of a task the chosen stack or settings cannot run as modelled."""
    reference_for(t, job.ref_model, job.method.is_adapter)
    if t.trainers and job.training.framework not in t.trainers:
        raise TuneplanError(f"task {t.name} is modelled as TRL's trainer runs it; --framework "
                            f"{job.training.framework} is not one of: {', '.join(t.trainers)}")
    loss = job.training.loss
    if (not t.is_sft and t.head == "lm" and job.training.cross_entropy and not loss.fused
            and (loss.chunks or loss.chunk_tokens)):
        raise TuneplanError(f"task {t.name}: TRL computes the log-probabilities itself; --cross-entropy "
                            f"{loss.name} does not apply (plain, or fused for use_liger_kernel)")


def _check_stack(job: Job) -> None:
    """One-line refusal of a job its framework or runtime cannot run, with the alternative."""
    m, t = job.method, job.training
    prof, rt = t.profile, t.rt
    if rt.name not in dict((r, v) for v, r in prof.runtimes):
        names = ", ".join(dict.fromkeys(r for _, r in prof.runtimes))
        raise TuneplanError(f"--framework {prof.name} does not run on runtime {rt.name}; choose one of: {names}")
    lib = t.prep.library
    if lib is not None and (m.kind != "qlora" or m.fmt.library != lib):
        quants = ", ".join(q.name for q in QUANT_FORMATS.values() if q.library == lib)
        raise TuneplanError(f"--kbit-prep {t.kbit_prep} prepares a {lib}-quantised model; it needs "
                            f"--method qlora with --quant {quants} (or drop it)")
    if m.kind == "qlora":
        fmt = m.fmt
        if fmt.library not in prof.quant_libraries:
            alts = ", ".join(q.name for q in QUANT_FORMATS.values() if q.library in prof.quant_libraries)
            raise TuneplanError(f"--quant {fmt.name} is {fmt.label}, which {prof.label} does not use; "
                                f"use --quant {alts}")
        if fmt.library not in rt.quant_libraries:
            raise TuneplanError(f"QLoRA ({fmt.label}) does not run on {rt.label}; use --framework mlx "
                                "(MLX affine 4/8-bit)")
    if (t.optim.eight_bit or t.optim.paged) and not rt.bnb_optimizers:
        raise TuneplanError(f"--optimizer {t.optimizer} (bitsandbytes) does not run on {rt.label}; use adamw, "
                            "or --framework mlx")
    if prof.optimizers and t.optimizer not in prof.optimizers:
        raise TuneplanError(f"{prof.label} has no optimizer {t.optimizer}; choose one of: {', '.join(prof.optimizers)}")
    for what, value, allowed in (("precision", t.precision, prof.precisions),
                                 ("checkpointing mode", t.checkpointing, prof.checkpointing_modes),
                                 ("cross-entropy", t.loss.name, prof.cross_entropies)):
        if allowed and value not in allowed:
            raise TuneplanError(f"{prof.label} has no {what} {value}; choose one of: {', '.join(allowed)}")
    if t.checkpointing == "selective" and not prof.selective_checkpointing:
        runs = ", ".join(f.name for f in FRAMEWORKS.values() if f.selective_checkpointing)
        raise TuneplanError(f"--checkpointing selective is torchtitan's op-level selective checkpointing; "
                            f"{prof.label} does not run it (stacks that do: {runs})")
    if m.lora_layers and not prof.layer_subset:
        raise TuneplanError(f"--lora-layers is mlx-lm's num_layers; {prof.label} adapts every layer (drop it, or "
                            "use --framework mlx)")
    if t.optimizer_in_backward and not prof.data_parallel:
        raise TuneplanError(f"{prof.label} has no optimizer in backward")
    _check_layout(job)


def _check_layout(job: Job) -> None:
    """One-line refusal of a layout the stack does not run (FrameworkProfile.shardings,
    model_parallel), with what it does run."""
    prof, p = job.training.profile, job.parallel
    if prof.data_parallel and p.data * p.context > 1 and p.sharding not in prof.shardings:
        raise TuneplanError(f"{prof.label} does not run --sharding {p.sharding}; choose one of: "
                            f"{', '.join(prof.shardings)}")
    for dim, degree, flag in (("tp", p.tensor, "--tp"), ("pp", p.pipeline, "--pp"), ("cp", p.context, "--cp"),
                              ("ep", p.expert, "--ep"), ("sp", 2 if p.sequence_parallel else 1, "--sequence-parallel")):
        if degree > 1 and dim not in prof.model_parallel:
            runs = ", ".join(f.name for f in FRAMEWORKS.values() if dim in f.model_parallel)
            raise TuneplanError(f"{prof.label} does not run {flag}; stacks that do: {runs}")
    if (p.tensor > 1 or p.pipeline > 1) and p.data * p.context > 1 and p.sharding not in prof.model_parallel_shardings:
        raise TuneplanError(f"{prof.label} does not combine --tp/--pp with --sharding {p.sharding}; with model "
                            f"parallelism use --sharding {' or '.join(prof.model_parallel_shardings)}")
    if p.sequence_parallel is False and prof.sequence_parallel_default and p.tensor > 1 and "sp" not in prof.model_parallel:
        raise TuneplanError(f"{prof.label} always runs sequence parallelism with TP")


def _check_request_parallel(job: Job) -> None:
    """A user's request for a layout the stack does not shard (mlx-lm's distributed training is
    data parallel: every process holds the whole model, mlx_lm/tuner/trainer.py
    average_gradients); the planner may still try device counts, which the memory model
    prices as replicas."""
    prof, p = job.training.profile, job.parallel
    if not prof.data_parallel and (p.shard_stage or p.offload_optimizer or p.offload_params):
        raise TuneplanError(f"{prof.label} does not shard or offload (its multi-device training is data "
                            "parallel); use --sharding ddp without offload")


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


__all__ = ["Job", "Method", "Training", "Parallel", "parse_targets", "replace"]
