"""What the user asks for: fine-tuning method, training settings and parallel setup.

Immutable value objects. They hold choices only; every number derived from them
(bytes, FLOPs, seconds) is computed by pure functions in memory.py, time.py, ...
Validation happens in ``__post_init__`` so a bad value fails at the boundary with a
one-line :class:`~tuneplan.errors.TuneplanError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneplan.errors import TuneplanError

METHODS = ("full", "lora", "qlora", "dora", "freeze")
QUANT_TYPES = ("nf4", "fp4", "int8")
PRECISIONS = ("bf16", "fp16", "fp32", "amp", "mixed")
OPTIMIZERS = (
    "adamw",
    "adamw-foreach",
    "adamw-8bit",
    "paged-adamw",
    "paged-adamw-8bit",
    "adafactor",
    "sgd",
    "sgd-momentum",
    "lion",
    "lion-8bit",
)
CHECKPOINTING = ("none", "full", "offload")
ATTENTION = ("sdpa", "flash", "eager")
FRAMEWORKS = ("hf", "unsloth", "torchtune", "axolotl", "llamafactory")
SHARDING = ("ddp", "zero1", "zero2", "zero3", "fsdp")

# Short names for LoRA target sets; anything else is a comma list of module names.
TARGET_PRESETS = {
    "all": "all-linear",
    "all-linear": "all-linear",
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qv": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TuneplanError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise TuneplanError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class Method:
    """How the model is adapted.

    Args:
        kind: full | lora | qlora | dora | freeze.
        rank: LoRA/DoRA rank r (ignored for full/freeze).
        targets: "all-linear" or a tuple of module names (q_proj, ..., down_proj).
        quant: base-weight quantisation for qlora: nf4 | fp4 (bitsandbytes 4-bit) | int8 (LLM.int8).
        double_quant: bitsandbytes double quantisation of the 4-bit absmax constants.
        quant_blocksize: elements per absmax block (bitsandbytes default 64).
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

    def __post_init__(self) -> None:
        _choice("method", self.kind, METHODS)
        _choice("quantisation", self.quant, QUANT_TYPES)
        if self.kind in ("lora", "qlora", "dora"):
            _positive("LoRA rank", self.rank)
        _positive("quantisation block size", self.quant_blocksize)
        if self.kind == "freeze":
            _positive("trainable layers", self.trainable_layers)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TuneplanError(f"lora dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def is_adapter(self) -> bool:
        """True when only low-rank adapters (plus optional extras) are trained."""
        return self.kind in ("lora", "qlora", "dora")

    @property
    def weight_bits(self) -> int | None:
        """Bits per frozen base weight when quantised, else None."""
        if self.kind != "qlora":
            return None
        return 8 if self.quant == "int8" else 4


@dataclass(frozen=True)
class Training:
    """Per-step training settings.

    Args:
        micro_batch: sequences per GPU per forward/backward.
        seq_len: tokens per sequence (padded/packed length).
        grad_accum: micro-batches accumulated before an optimizer step.
        precision: bf16 | fp16 (pure half params) | fp32 | amp (fp32 params, bf16 autocast)
            | mixed (half params + fp32 master copy, DeepSpeed/FSDP style).
        optimizer: one of OPTIMIZERS.
        checkpointing: none | full (recompute each decoder layer) | offload (layer inputs on CPU).
        attention: sdpa | flash (O(s) memory) | eager (materialises the s x s score matrix).
        framework: hf | unsloth | torchtune | axolotl | llamafactory (memory/time profile).
        fused_ce: cross-entropy computed in chunks without materialising fp32 logits
            (Liger/Unsloth/torchtune chunked CE).
    """

    micro_batch: int = 1
    seq_len: int = 2048
    grad_accum: int = 1
    precision: str = "bf16"
    optimizer: str = "adamw"
    checkpointing: str = "full"
    attention: str = "sdpa"
    framework: str = "hf"
    fused_ce: bool = False

    def __post_init__(self) -> None:
        _positive("micro-batch", self.micro_batch)
        _positive("sequence length", self.seq_len)
        _positive("gradient accumulation steps", self.grad_accum)
        _choice("precision", self.precision, PRECISIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("checkpointing mode", self.checkpointing, CHECKPOINTING)
        _choice("attention kernel", self.attention, ATTENTION)
        _choice("framework", self.framework, FRAMEWORKS)

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Parallel:
    """How the job is spread over GPUs.

    Args:
        num_gpus: data-parallel world size.
        sharding: ddp (replicate) | zero1 (shard optimizer) | zero2 (+grads)
            | zero3 / fsdp (+params, full shard).
        offload_optimizer: optimizer states (and master weights) live in CPU RAM.
        offload_params: parameters live in CPU RAM (ZeRO-3/FSDP only).
    """

    num_gpus: int = 1
    sharding: str = "ddp"
    offload_optimizer: bool = False
    offload_params: bool = False

    def __post_init__(self) -> None:
        _positive("number of GPUs", self.num_gpus)
        _choice("sharding", self.sharding, SHARDING)
        if self.offload_params and self.sharding not in ("zero3", "fsdp"):
            raise TuneplanError("parameter offload needs --sharding zero3 or fsdp")

    @property
    def shard_stage(self) -> int:
        """ZeRO stage: 0 = replicate, 1 = optimizer, 2 = +grads, 3 = +params."""
        return {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[self.sharding]


@dataclass(frozen=True)
class Job:
    """One fine-tuning job: method x training settings x parallel setup."""

    method: Method = field(default_factory=Method)
    training: Training = field(default_factory=Training)
    parallel: Parallel = field(default_factory=Parallel)


def parse_targets(text: str) -> str | tuple[str, ...]:
    """Turn a --targets value into "all-linear" or a tuple of module names."""
    text = text.strip()
    if text in TARGET_PRESETS:
        return TARGET_PRESETS[text]
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise TuneplanError("--targets is empty; use all-linear, attn, qv, mlp or a comma list")
    return names
