"""Analytical per-GPU memory estimate of one steady-state fine-tuning step, in bytes.

The estimate is built from what PyTorch actually keeps alive, component by component:
weights (by dtype, bitsandbytes 4/8-bit storage and constants), adapters, gradients,
optimizer states, fp32 master weights, activations saved for backward (per layer, from
the tensors autograd saves in the transformers modelling code), logits and the
cross-entropy upcast, then CUDA context and caching-allocator overhead. It then walks
the step's three phases (forward, backward, optimizer) to find the peak.

Steady state means optimizer states already exist (step >= 2), as in any real run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Method, Training
from tuneplan.models import Linear, ModelSpec, layer_linears, layer_small_params, param_counts


@dataclass(frozen=True)
class Component:
    """One line of the breakdown: resident bytes per GPU and what the figure assumes."""

    key: str
    label: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of a training step.

    Args:
        components: the parts of the peak; they sum to `peak_bytes`.
        peak_bytes: estimated peak memory per GPU (bytes) as nvidia-smi would show it,
            including CUDA context and allocator overhead.
        peak_phase: forward | backward | optimizer: when the peak happens.
        phase_bytes: (phase, bytes) peak of each phase, before context/allocator overhead.
        trainable_params / total_params: element counts.
        cpu_bytes: bytes held in CPU RAM by offload (not in `peak_bytes`).
        assumptions: sentences naming what the figures assume.
    """

    model: ModelSpec
    job: Job
    components: tuple[Component, ...]
    peak_bytes: int
    peak_phase: str
    phase_bytes: tuple[tuple[str, int], ...]
    trainable_params: int
    total_params: int
    cpu_bytes: int
    assumptions: tuple[str, ...]

    def component(self, key: str) -> int:
        """Bytes of one component by key (0 if absent)."""
        return sum(c.bytes for c in self.components if c.key == key)

    def to_dict(self) -> dict:
        """JSON-ready view (bytes as integers)."""
        return {
            "model": self.model.name,
            "method": self.job.method.__dict__ | {"targets": _targets_text(self.job.method.targets)},
            "training": dict(self.job.training.__dict__),
            "parallel": dict(self.job.parallel.__dict__),
            "unit": "bytes",
            "components": [c.__dict__ for c in self.components],
            "peak_bytes": self.peak_bytes,
            "peak_phase": self.peak_phase,
            "phase_bytes": dict(self.phase_bytes),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "cpu_bytes": self.cpu_bytes,
            "assumptions": list(self.assumptions),
        }


def _targets_text(targets: str | tuple[str, ...]) -> str:
    return targets if isinstance(targets, str) else ",".join(targets)


# ---------------------------------------------------------------- dtypes and profiles

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def param_bytes(training: Training) -> int:
    """Bytes per element of trainable/base parameters for a precision setting."""
    return 4 if training.precision in ("fp32", "amp") else 2


def compute_bytes(training: Training) -> int:
    """Bytes per element of activations (the autocast/compute dtype)."""
    return 4 if training.precision == "fp32" else 2


def adapter_bytes(training: Training) -> int:
    """Bytes per adapter parameter.

    PEFT upcasts bf16/fp16 adapter weights to fp32 (get_peft_model(autocast_adapter_dtype=True),
    peft/tuners/tuners_utils.py cast_adapter_dtype); HF Trainer, TRL, Axolotl, LLaMA-Factory
    and Unsloth build on PEFT. torchtune keeps adapters in the model dtype.
    """
    if training.framework == "torchtune":
        return param_bytes(training)
    return 4


def experts_quantised(framework: str) -> bool:
    """Whether QLoRA quantises routed MoE experts.

    bitsandbytes replaces nn.Linear modules; transformers 5 stores experts as fused 3-D
    parameters, which it skips, so they stay bf16 (bitsandbytes issue #1849; PR #1965 adds
    Experts4bit, unreleased). Unsloth quantises them with its own patch (unsloth-zoo PR #527).
    """
    return framework == "unsloth"


def _autocast(training: Training) -> bool:
    """HF Trainer with bf16=True/fp16=True runs the forward under torch.autocast."""
    return training.precision == "amp" or (training.framework != "torchtune" and training.precision in ("bf16", "fp16"))


# ---------------------------------------------------------------- what is trained

_TARGET_ALIASES = {
    "q_proj": ("q_proj", "qkv_proj", "q_a_proj", "q_b_proj"),
    "k_proj": ("k_proj", "qkv_proj", "kv_a_proj_with_mqa", "kv_b_proj"),
    "v_proj": ("v_proj", "qkv_proj", "kv_b_proj"),
    "o_proj": ("o_proj",),
    "gate_proj": ("gate_proj", "gate_up_proj"),
    "up_proj": ("up_proj", "gate_up_proj"),
    "down_proj": ("down_proj",),
    "w1": ("gate_proj",), "w3": ("up_proj",), "w2": ("down_proj",),
}


def is_target(lin: Linear, method: Method) -> bool:
    """Whether a LoRA/DoRA adapter is attached to this matrix.

    "all-linear" follows PEFT (every nn.Linear but the output layer). Routed MoE experts
    are fused 3-D parameters in transformers 5 (MixtralExperts, Qwen3MoeExperts,
    GptOssExperts, DeepseekV3NaiveMoe, Llama4TextExperts), not nn.Linear, so all-linear
    leaves them alone; the target name "experts" adapts them, one rank-r adapter per
    expert and matrix (PEFT target_parameters). The router is never adapted here.
    """
    if lin.group == "router":
        return False
    if lin.group == "expert":
        return method.targets != "all-linear" and "experts" in method.targets
    if method.targets == "all-linear":
        return True
    for t in method.targets:
        if lin.name == t or lin.name in _TARGET_ALIASES.get(t, ()):
            return True
    return False


def check_method(spec: ModelSpec, method: Method) -> None:
    """Reject impossible method settings for this model with a one-line error."""
    if method.is_adapter:
        if method.rank > spec.hidden_size:
            raise TuneplanError(f"LoRA rank {method.rank} is larger than the hidden size {spec.hidden_size}")
        if not any(is_target(lin, method) for lin in layer_linears(spec, spec.num_layers - 1)) and not any(
            is_target(lin, method) for lin in layer_linears(spec, 0)
        ):
            raise TuneplanError(f"--targets {_targets_text(method.targets)} match no module of {spec.name}")
    if method.kind == "freeze" and method.trainable_layers > spec.num_layers:
        raise TuneplanError(f"--trainable-layers {method.trainable_layers} exceeds the model's {spec.num_layers} layers")


def _layer_groups(spec: ModelSpec) -> list[tuple[int, int]]:
    """(representative layer index, how many layers share its shape): dense and MoE layers."""
    if not spec.moe_layers:
        return [(0, spec.num_layers)]
    groups: dict[bool, list[int]] = {}
    for i, flag in enumerate(spec.moe_layers):
        groups.setdefault(flag, []).append(i)
    return [(idx[0], len(idx)) for idx in groups.values()]


def _trained_layer_count(spec: ModelSpec, method: Method, layer: int, n: int) -> int:
    """How many of the `n` layers like `layer` have trainable weights (freeze: the last k)."""
    if method.kind != "freeze":
        return n
    first = spec.num_layers - method.trainable_layers
    same = [i for i in range(spec.num_layers) if (not spec.moe_layers or spec.moe_layers[i] == spec.moe_layers[layer])]
    return sum(1 for i in same if i >= first)


@dataclass(frozen=True)
class Trainable:
    """Trainable parameters split by storage.

    Args:
        base: elements of original weights that are trained (full, freeze, embeddings).
        adapter: elements of LoRA/DoRA matrices and DoRA magnitudes.
        tensors: (numel, rows, cols, copies) per trainable tensor shape, for per-tensor
            optimizer rules (Adafactor factoring, bitsandbytes 8-bit thresholds).
    """

    base: int
    adapter: int
    tensors: tuple[tuple[int, int, int, int], ...]

    @property
    def total(self) -> int:
        return self.base + self.adapter


@lru_cache(maxsize=16384)
def trainable(spec: ModelSpec, method: Method) -> Trainable:
    """Count trainable parameters for the method.

    full trains everything; freeze trains the last `trainable_layers` decoder layers;
    lora/qlora train r*(d_in+d_out) per targeted matrix (per expert); dora adds a
    magnitude vector of d_out per targeted matrix (Liu et al. 2024, DoRA).
    """
    pc = param_counts(spec)
    h, v = spec.hidden_size, spec.vocab_size
    tensors: list[tuple[int, int, int, int]] = []
    base = adapter = 0
    if method.kind == "full":
        for layer, n in _layer_groups(spec):
            for lin in layer_linears(spec, layer):
                tensors.append((lin.d_in * lin.d_out, lin.d_out, lin.d_in, lin.count * n))
                if lin.bias:
                    tensors.append((lin.d_out, lin.d_out, 1, lin.count * n))
            tensors.append((layer_small_params(spec, layer), layer_small_params(spec, layer), 1, n))
        tensors.append((v * h, v, h, 1 if spec.tie_embeddings else 2))
        tensors.append((h, h, 1, 1))
        return Trainable(pc.total, 0, tuple(tensors))
    if method.kind == "freeze":
        for layer, n in _layer_groups(spec):
            k = _trained_layer_count(spec, method, layer, n)
            if not k:
                continue
            for lin in layer_linears(spec, layer):
                base += lin.params * k
                tensors.append((lin.d_in * lin.d_out, lin.d_out, lin.d_in, lin.count * k))
            small = layer_small_params(spec, layer)
            base += small * k
            tensors.append((small, small, 1, k))
    else:
        r = method.rank
        for layer, n in _layer_groups(spec):
            for lin in layer_linears(spec, layer):
                if not is_target(lin, method):
                    continue
                copies = lin.count * n
                adapter += r * (lin.d_in + lin.d_out) * copies
                tensors.append((r * lin.d_in, r, lin.d_in, copies))
                tensors.append((r * lin.d_out, lin.d_out, r, copies))
                if method.kind == "dora":
                    adapter += lin.d_out * copies
                    tensors.append((lin.d_out, lin.d_out, 1, copies))
    if method.train_embeddings:
        copies = 1 if spec.tie_embeddings else 2
        base += v * h * copies
        tensors.append((v * h, v, h, copies))
    return Trainable(base, adapter, tuple(tensors))


# ---------------------------------------------------------------- static memory


def quantised_bytes(n: int, method: Method) -> tuple[int, int]:
    """(storage bytes, quantisation-constant bytes) of one n-element matrix.

    NF4/FP4 (bitsandbytes Linear4bit): two 4-bit values per uint8 byte; one absmax per
    `quant_blocksize` values, fp32, or with double quantisation uint8 plus one fp32 absmax
    per 256 absmax values, a 256-entry fp32 code and an fp32 offset (bitsandbytes
    functional.quantize_4bit). LLM.int8 (Linear8bitLt): int8 weights plus an fp32 scale per
    output row (counted by the caller via `rows`).
    """
    if method.quant == "int8":
        return n, 0
    blocks = math.ceil(n / method.quant_blocksize)
    if method.double_quant:
        consts = blocks + 4 * math.ceil(blocks / cal.DQ_BLOCKSIZE) + 4 * 256 + 4 + 4 * 16
    else:
        consts = 4 * blocks + 4 * 16
    return math.ceil(n / 2), consts


@dataclass(frozen=True)
class Static:
    """Bytes that live for the whole step (before sharding), plus the largest single matrix."""

    weights: int
    quant_constants: int
    adapters: int
    gradients: int
    optimizer: int
    master: int
    optimizer_temp: int
    largest_matrix: int  # elements of the largest single weight matrix (one expert)
    layer_params: int  # elements of the largest decoder layer (for ZeRO-3 gathers)


def _optimizer_bytes(tensors: tuple[tuple[int, int, int, int], ...], optimizer: str, state_bytes: int) -> int:
    """Optimizer-state bytes for the trainable tensors.

    AdamW: 2 states (exp_avg, exp_avg_sq) in the parameter dtype (torch.optim.AdamW uses
    zeros_like(param)). 8-bit (bitsandbytes): 1 byte per state value + fp32 absmax per
    256 values, 32-bit state for tensors under 4096 elements. Adafactor (HF default
    beta1=None): factored second moment, rows + cols fp32 values per matrix, full for
    vectors (Shazeer & Stern 2018). SGD: none; with momentum one buffer. Lion: one momentum
    buffer (Chen et al. 2023).
    """
    total = 0
    n_states = {"sgd": 0, "sgd-momentum": 1, "lion": 1, "lion-8bit": 1}.get(optimizer, 2)
    eight_bit = optimizer.endswith("8bit")
    for numel, rows, cols, copies in tensors:
        if optimizer == "adafactor":
            per = 4 * (rows + cols) if cols > 1 else 4 * numel
        elif eight_bit and numel >= cal.BNB_OPT_MIN_8BIT_SIZE:
            per = n_states * (numel + 4 * math.ceil(numel / cal.BNB_OPT_BLOCKSIZE))
        elif eight_bit:
            per = n_states * 4 * numel
        else:
            per = n_states * state_bytes * numel
        total += per * copies
    return total


def static_memory(spec: ModelSpec, job: Job) -> Static:
    """Weights, constants, adapters, gradients, optimizer states and master weights (bytes)."""
    t = job.training
    return _static(spec, job.method, t.precision, t.optimizer, t.framework)


@lru_cache(maxsize=16384)
def _static(spec: ModelSpec, m: Method, precision: str, optimizer: str, framework: str) -> Static:
    t = Training(precision=precision, optimizer=optimizer, framework=framework)
    largest = max((lin.d_in * lin.d_out for layer, _ in _layer_groups(spec) for lin in layer_linears(spec, layer)
                   if lin.group != "expert" or experts_quantised(framework)), default=0)
    pc = param_counts(spec)
    tr = trainable(spec, m)
    pb = param_bytes(t)
    layer_params = max(sum(lin.params for lin in layer_linears(spec, layer)) for layer, _ in _layer_groups(spec))
    quant_consts = 0
    if m.kind == "qlora":
        weights = 0
        for layer, n in _layer_groups(spec):
            for lin in layer_linears(spec, layer):
                if lin.group == "expert" and not experts_quantised(framework):
                    weights += 2 * lin.params * n  # fused 3-D experts stay bf16
                    continue
                store, consts = quantised_bytes(lin.d_in * lin.d_out, m)
                if m.quant == "int8":
                    consts = 4 * lin.d_out
                weights += (store + (2 * lin.d_out if lin.bias else 0)) * lin.count * n
                quant_consts += consts * lin.count * n
        weights += 2 * (pc.total - pc.linear_in_layers)  # embeddings, norms, lm_head: bf16
    else:
        weights = pb * pc.total
    ab = adapter_bytes(t)
    adapters = ab * tr.adapter
    # gradients: same dtype as the parameter they belong to
    gradients = pb * tr.base + ab * tr.adapter
    state_bytes = 4 if t.precision == "mixed" else pb
    if m.is_adapter:
        # adapter states follow the (fp32) adapter dtype; trained embeddings (the last
        # tensor trainable() lists) keep states in the model dtype (trace: Llama-3.2-1B LoRA
        # + --train-embeddings)
        n_base = 1 if m.train_embeddings else 0
        optimizer = _optimizer_bytes(tr.tensors[:len(tr.tensors) - n_base], t.optimizer, ab)
        optimizer += _optimizer_bytes(tr.tensors[len(tr.tensors) - n_base:], t.optimizer, state_bytes)
    else:
        optimizer = _optimizer_bytes(tr.tensors, t.optimizer, state_bytes)
    master = 4 * tr.base if t.precision == "mixed" else 0
    # torch _multi_tensor_adamw: exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs) is one
    # full-size temporary over the whole parameter group (torch/optim/adamw.py / adam.py).
    temp = 0
    if t.optimizer == "adamw-foreach":
        temp = state_bytes * tr.base + ab * tr.adapter
    return Static(weights, quant_consts, adapters, gradients, optimizer, master, temp, largest, layer_params)


# ---------------------------------------------------------------- activations


@dataclass(frozen=True)
class LayerActs:
    """Per-token bytes of one decoder layer.

    Args:
        saved: tensors autograd keeps from forward to backward (no checkpointing).
        transient: extra working memory while this layer's backward runs (gradients of
            its widest intermediates), on top of what is saved.
    """

    saved: int
    transient: int


# transformers 5 refuses SDPA for these (PreTrainedModel._check_and_adjust_attn_impl:
# "does not support an attention implementation through
# torch.nn.functional.scaled_dot_product_attention yet"); seen when `tuneplan trace` builds them.
_NO_SDPA = {"gemma2", "gpt_oss"}


def attention_kernel(spec: ModelSpec, t: Training) -> str:
    """The attention implementation that actually runs: sdpa falls back to eager where
    transformers has no SDPA path for the architecture."""
    if t.attention == "sdpa" and spec.model_type in _NO_SDPA:
        return "eager"
    return t.attention


def _attention_core(spec: ModelSpec, t: Training, c: int, seq: int) -> int:
    """Bytes per token saved inside attention (after q/k/v projections).

    SDPA flash/mem-efficient and FlashAttention-2 save q, k, v (GQA native, no repeat),
    the output and an fp32 logsumexp per head (torch/nn/attention, flash_attn
    flash_attn_interface.py). transformers eager attention (modeling_llama.py
    eager_attention_forward) repeats k/v to all heads, upcasts the softmax to fp32 and
    keeps the probabilities: fp32 softmax output + its bf16 cast, s per head per token.
    Gemma 2's score soft-capping (modeling_gemma2.py: scores / cap -> tanh -> * cap) keeps
    tanh's output, one more compute-dtype s x s matrix per head.
    """
    if attention_kernel(spec, t) == "eager":
        qkv = c * (spec.q_dim + 2 * spec.num_heads * (spec.v_head_dim if spec.is_mla else spec.head_dim))
        probs = 4 + c + (c if spec.attn_softcap else 0)
        return qkv + probs * spec.num_heads * seq
    v_dim = spec.num_heads * spec.v_head_dim if spec.is_mla else spec.kv_dim
    k_dim = spec.q_dim if spec.is_mla else spec.kv_dim
    return c * (spec.q_dim + k_dim + v_dim + spec.attn_out_dim) + 4 * spec.num_heads


def layer_activations(spec: ModelSpec, job: Job, layer: int) -> LayerActs:
    """Per-token activation bytes of decoder layer `layer` without checkpointing.

    Derived from the tensors saved for backward in transformers' decoder layers:
    RMSNorm (modeling_llama.py LlamaRMSNorm) upcasts to fp32 and keeps that fp32 input
    (4 B/elem) and, when its weight trains, the normalised value in the compute dtype;
    a linear keeps its input only when its weight (or an adapter on it) needs a gradient
    (PyTorch saves mm inputs only for outputs that require grad); gated MLPs keep gate,
    act(gate), up and, if down_proj trains, their product; attention per _attention_core.
    With PEFT under autocast each adapted module keeps its own compute-dtype copy of its
    input (peft lora Linear.forward casts x to the fp32 adapter dtype, autocast casts it
    back for the matmul and saves that copy). The 4-bit LoRA layer (peft lora/bnb.py
    Linear4bit.forward) skips that cast under autocast, so its adapters share the input,
    and bitsandbytes MatMul4Bit saves no input at all. With SDPA/flash attention the
    o_proj input is the kernel's output, already counted in _attention_core; it costs
    nothing more unless an adapter copies it. Checked against `tuneplan trace`
    (benchmarks/results/trace_vs_estimate.md: Qwen2.5-0.5B, Llama-3.2-3B, Llama-3.1-8B,
    full/LoRA/QLoRA, per-layer saved bytes equal to the byte).
    """
    m, t = job.method, job.training
    t = replace(t, attention=attention_kernel(spec, t))  # what actually runs
    c = compute_bytes(t)
    h = spec.hidden_size
    seq = t.seq_len
    full = m.kind in ("full", "freeze")
    lins = layer_linears(spec, layer)
    norm_w_trains = full
    norm = 4 * h + (c * h if norm_w_trains else 0)
    if t.precision == "amp" or spec.model_type.startswith("gemma"):
        # amp: the residual stream is fp32, so is the normalised value. Gemma's RMSNorm
        # multiplies the fp32 normalised value by (1 + weight) before casting back
        # (modeling_gemma3.py Gemma3RMSNorm), so a trained weight keeps it in fp32
        # (trace: Gemma-3-1B full fine-tuning).
        norm = 4 * h + (4 * h if norm_w_trains else 0)
    per_adapter_copy = (m.is_adapter and _autocast(t) and t.framework not in ("unsloth", "torchtune")
                        and (m.kind != "qlora" or t.precision == "amp"))

    def saves_input(lin: Linear) -> bool:
        return full or (m.is_adapter and is_target(lin, m))

    def input_bytes(group: list[Linear], width: int, tokens_factor: float = 1.0) -> float:
        """Bytes/token to keep the shared input of `group` (all read the same tensor)."""
        needed = [lin for lin in group if saves_input(lin)]
        if not needed:
            return 0.0
        if per_adapter_copy:
            copies = len(needed)
            return tokens_factor * c * width * copies
        return tokens_factor * c * width

    def adapter_extras(group: list[Linear], tokens_factor: float = 1.0) -> float:
        if not m.is_adapter:
            return 0.0
        extra = 0.0
        for lin in group:
            if not is_target(lin, m):
                continue
            extra += c * m.rank  # lora_A output, saved by lora_B
            if m.lora_dropout > 0:
                extra += lin.d_in  # dropout mask (bool)
            if m.kind == "dora":
                extra += 2 * c * lin.d_out  # base and lora results kept for the magnitude scale
        return tokens_factor * extra

    attn = [lin for lin in lins if lin.group == "attn"]
    first_attn = [lin for lin in attn if lin.name != "o_proj" and lin.d_in == h]
    o_proj = [lin for lin in attn if lin.name == "o_proj"]
    saved = spec.norms_per_layer * norm  # Gemma 2/3 add post-attention and post-MLP norms
    saved += input_bytes(first_attn, h)
    if spec.qk_norm:  # per-head RMSNorm of q and k (Qwen3, Gemma 3, OLMo 2): same saves as a norm
        saved += (norm // h) * (spec.q_dim + spec.kv_dim)
    if spec.fused and t.attention != "eager" and not spec.is_mla:
        # Phi-3 slices q, k, v out of one qkv_proj output; SDPA saves v, a view, which keeps
        # the whole [q + 2 kv] storage alive (trace: Phi-3.5-mini)
        saved += c * (spec.q_dim + spec.kv_dim)
    if spec.is_mla:  # latent projections: q_b and kv_b read normalised latents
        lat = [lin for lin in attn if lin.name in ("q_b_proj", "kv_b_proj")]
        for lin in lat:
            saved += 4 * lin.d_in + input_bytes([lin], lin.d_in)
    saved += _attention_core(spec, t, c, seq)
    if t.attention == "eager" or spec.is_mla or spec.fused or per_adapter_copy:
        # eager makes a contiguous copy of the output; MLA slices padded heads; PEFT copies.
        # Phi-3's rotary concatenates rotated and pass-through halves, so q is head-major,
        # the SDPA output follows q's layout (CPU kernel and flash's empty_like(q) alike) and
        # transpose(1, 2).contiguous() copies it (trace: Phi-3.5-mini full fine-tuning).
        saved += input_bytes(o_proj, spec.attn_out_dim)
    saved += adapter_extras(attn)
    mlp_width = 0
    if spec.moe_layers and spec.moe_layers[layer]:
        k, e = spec.experts_per_token, spec.num_experts
        im = spec.moe_intermediate_size
        experts = [lin for lin in lins if lin.group == "expert"]
        # router: fp32 probabilities; the per-expert gathered token copies are kept only
        # when the experts' gate/up weights need gradients (traced: Mixtral, Qwen3-MoE LoRA)
        saved += 4 * e + input_bytes([lin for lin in experts if lin.name != "down_proj"], h, k)
        saved += k * c * im * 3 + k * c * h  # gate, act, up per routed copy; expert output before weighting
        saved += input_bytes([lin for lin in experts if lin.name == "down_proj"], im, k)
        saved += adapter_extras(experts, k)  # each token passes through k adapted experts
        mlp_width = k * im
        shared = [lin for lin in lins if lin.group == "shared"]
        if shared:
            si = spec.shared_intermediate_size * spec.shared_experts
            saved += input_bytes([lin for lin in shared if lin.name != "down_proj"], h)
            saved += 3 * c * si + input_bytes([lin for lin in shared if lin.name == "down_proj"], si)
            saved += adapter_extras(shared)
            mlp_width += si
    else:
        mlp = [lin for lin in lins if lin.group == "mlp"]
        inter = spec.intermediate_size
        saved += input_bytes([lin for lin in mlp if lin.name != "down_proj"], h)
        saved += 3 * c * inter  # gate out (act input), act out, up out: kept by act and mul
        saved += input_bytes([lin for lin in mlp if lin.name == "down_proj"], inter)
        saved += adapter_extras(mlp)
        mlp_width = inter
    # backward working set of one layer: grads of the widest intermediates (gate/up) and
    # of the hidden state flowing through the residual stream
    transient = c * (2 * mlp_width + 2 * h)
    return LayerActs(int(saved), int(transient))


@lru_cache(maxsize=16384)
def logits_bytes(spec: ModelSpec, t: Training) -> tuple[int, int, int]:
    """(forward peak, kept into backward, backward peak) bytes of logits + cross-entropy.

    transformers ForCausalLMLoss (loss/loss_utils.py) upcasts the compute-dtype logits to
    fp32 and runs cross_entropy: log_softmax keeps its fp32 output for backward. The
    Trainer drops the model outputs before backward (trainer.py compute_loss returns only
    the loss), so the compute-dtype logits and the fp32 upcast die with the forward and
    only the fp32 log-probabilities are kept. In backward the nll gradient and the
    log_softmax input gradient (fp32 each) coexist with them: 12 bytes per logit, as
    `tuneplan trace` measures (benchmarks/results/trace_vs_estimate.md). Fused/chunked CE (Liger, Unsloth) never materialises more
    than a chunk of fp32 logits; torchtune keeps bf16 logits and upcasts 1/8 at a time.
    """
    tokens = t.micro_batch * t.seq_len
    v, h, c = spec.vocab_size, spec.hidden_size, compute_bytes(t)
    if t.fused_ce or t.framework == "unsloth":
        chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(v / h))))))
        chunk = min(chunk, tokens)
        work = 8 * chunk * v  # fp32 chunk logits + their gradient
        return work, 0, work + c * tokens * h
    if t.framework == "torchtune":
        chunk = math.ceil(tokens / cal.TORCHTUNE_CE_CHUNKS)
        return c * tokens * v + 8 * chunk * v, c * tokens * v, c * tokens * v + 12 * chunk * v
    fwd = (c + 8) * tokens * v if c == 2 else 8 * tokens * v
    kept = 4 * tokens * v
    if spec.final_softcap:  # Gemma 2: logits / cap -> tanh -> * cap; tanh keeps its output
        fwd += c * tokens * v
        kept += c * tokens * v
    bwd = kept + 8 * tokens * v
    return fwd, kept, bwd


@lru_cache(maxsize=16384)
def stack_activations(spec: ModelSpec, method: Method, training: Training) -> tuple[int, LayerActs]:
    """(saved bytes per token summed over the layers that keep activations, worst single layer).

    freeze keeps activations only for the trained top layers: nothing below them needs a
    gradient, so their forward builds no graph.
    """
    job = Job(method, training)
    total = 0
    worst = LayerActs(0, 0)
    for layer, n in _layer_groups(spec):
        la = layer_activations(spec, job, layer)
        count = _trained_layer_count(spec, method, layer, n) if method.kind == "freeze" else n
        total += la.saved * count
        if la.saved + la.transient > worst.saved + worst.transient:
            worst = la
    return total, worst


# ---------------------------------------------------------------- peak


def _sharded(n: int, stage_needed: int, stage: int, world: int) -> int:
    return math.ceil(n / world) if stage >= stage_needed else n


@dataclass(frozen=True)
class _Moments:
    """Bytes per component at each candidate peak moment of the step (before overhead)."""

    base: tuple[tuple[str, int], ...]
    candidates: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    cpu: int
    autocast_copies: int


def _moments(spec: ModelSpec, job: Job) -> _Moments:
    """Per-GPU bytes of each component at each moment of a steady-state step."""
    m, t, p = job.method, job.training, job.parallel
    check_method(spec, m)
    st = static_memory(spec, job)
    world, stage = p.num_gpus, p.shard_stage
    c = compute_bytes(t)
    tokens = t.micro_batch * t.seq_len
    # --- static, per GPU after sharding / offload
    cpu = 0
    weights = _sharded(st.weights, 3, stage, world)
    quant = _sharded(st.quant_constants, 3, stage, world)
    adapters = _sharded(st.adapters, 3, stage, world)
    gather = 0
    if stage == 3 and world > 1:
        # FSDP/ZeRO-3 all-gathers one layer (plus one prefetched) in the compute dtype
        gather = 2 * c * st.layer_params if m.kind != "qlora" else st.layer_params
    if p.offload_params:
        cpu += weights + quant + adapters
        weights = quant = adapters = 0
    optimizer = _sharded(st.optimizer, 1, stage, world)
    master = _sharded(st.master, 1, stage, world)
    if p.offload_optimizer:
        cpu += optimizer + master
        optimizer = master = 0
    grads = _sharded(st.gradients, 2, stage, world)
    ddp_buckets = st.gradients if (world > 1 and stage == 0) else 0
    opt_temp = 0 if p.offload_optimizer else _sharded(st.optimizer_temp, 1, stage, world)

    # --- activations
    ckpt = t.checkpointing
    acts_full, worst_layer = stack_activations(spec, m, replace(t, micro_batch=1))
    first_trained = spec.num_layers - m.trainable_layers if m.kind == "freeze" else 0
    stored_layers = spec.num_layers - first_trained
    h = spec.hidden_size
    final_norm = 4 * h + (c * h if m.kind in ("full", "freeze") else 0)
    lm_head_in = c * h if (m.kind == "full" or m.train_embeddings) else 0
    head_saved = (final_norm + lm_head_in) * tokens
    autocast_copies = 0
    if t.precision == "amp":  # autocast caches bf16 casts of fp32 weights for the backward
        autocast_copies = 2 * param_counts(spec).linear_in_layers // (world if stage == 3 else 1)
        # and lm_head's bf16 cast is saved by its matmul (trace: Llama-3.2-1B LoRA, amp)
        autocast_copies += 2 * spec.vocab_size * spec.hidden_size // (world if stage == 3 else 1)
    if ckpt == "none" and m.is_adapter and _autocast(t) and adapter_bytes(t) != c:
        # the cached compute-dtype casts of the fp32 adapters are saved by their matmuls
        # until backward (with checkpointing they die with the forward): measured by trace
        autocast_copies += c * trainable(spec, m).adapter
    if ckpt == "none":
        saved = acts_full * tokens
        recompute = 0
    else:
        per_ckpt = 0 if ckpt == "offload" else c * h
        saved = per_ckpt * stored_layers * tokens
        recompute = worst_layer.saved * tokens
        if ckpt == "offload":
            cpu += c * h * stored_layers * tokens
    transient = worst_layer.transient * tokens
    if m.kind == "qlora":  # dequantised copy of the largest matrix during its matmul
        transient += c * st.largest_matrix
    if m.kind == "dora":  # W + s*B@A materialised in fp32 to compute the column norm
        transient += 2 * 4 * st.largest_matrix
    lg_fwd, _, lg_bwd = logits_bytes(spec, t)

    # --- phases: each candidate moment is a list of (component key, bytes)
    base = (("weights", weights), ("quant_constants", quant), ("adapters", adapters), ("param_gather", gather),
            ("optimizer", optimizer), ("master_weights", master), ("ddp_buckets", ddp_buckets))
    accum_grads = grads if t.grad_accum > 1 else 0
    # gradients that exist when the top decoder layer's backward runs (no accumulation):
    # lm_head/embedding (if trained) and that layer's own
    head_grads = 0
    if m.kind == "full" or m.train_embeddings:
        head_grads = _sharded(param_bytes(t) * spec.vocab_size * spec.hidden_size, 2, stage, world)
    layer_grads = (grads - head_grads) // max(1, spec.num_layers - first_trained)
    # The input embedding's gradient is the last one made (embedding backward runs after
    # the first decoder layer's). Untied, it does not exist yet while layer 0 runs its
    # backward. Tied, lm_head's contribution stands in for it until then, and at the end
    # the embedding's own [v, h] gradient and its sum with that contribution exist next to
    # every other gradient (autograd adds the two uses before AccumulateGrad). Measured by
    # `tuneplan trace`: Llama-3.1-8B (untied) and Qwen2.5-0.5B / Llama-3.2-3B (tied) full
    # fine-tuning, benchmarks/results/trace_vs_estimate.md.
    emb_grad = head_grads  # one [v, h] matrix
    if t.grad_accum > 1:  # the new gradient is added in place to the accumulated one
        layer0_grads, embed_extra = grads, emb_grad * (2 if spec.tie_embeddings else 1)
    elif spec.tie_embeddings:
        layer0_grads, embed_extra = grads, 2 * emb_grad
    else:
        layer0_grads, embed_extra = grads - emb_grad, 0
    if emb_grad:  # the gradient flowing into the embedding output, [tokens, h] in the param dtype
        embed_extra += param_bytes(t) * h * tokens
    kept = saved + head_saved + autocast_copies
    one_layer = (recompute if ckpt != "none" else worst_layer.saved * tokens)
    candidates = (
        # end of forward: everything saved, loss being computed
        ("forward", (("gradients", accum_grads), ("activations", kept), ("logits", lg_fwd))),
        # start of backward: cross-entropy gradients next to the kept log-probs
        ("backward", (("gradients", accum_grads), ("activations", kept), ("logits", lg_bwd))),
        # top of the decoder stack: head gradients + the top layer's, every saved tensor
        # (or checkpoint) still alive, the top layer recomputed, its backward working set
        ("backward_top", (("gradients", max(accum_grads, head_grads + layer_grads)),
                          ("activations", saved + autocast_copies + (recompute if ckpt != "none" else 0)),
                          ("working", transient))),
        # bottom of the stack: all gradients, only the first layer's activations left
        ("backward_end", (("gradients", layer0_grads), ("activations", one_layer), ("working", transient))),
        # embedding backward: every gradient, the embedding's being made
        ("backward_embed", (("gradients", grads), ("working", embed_extra))),
        ("optimizer", (("gradients", grads), ("optimizer_temp", opt_temp))),
    )
    return _Moments(base, candidates, cpu, autocast_copies)


def _with_overhead(allocated: int) -> int:
    """Allocated bytes -> what the device must hold: + allocator overhead + CUDA context."""
    return allocated + int(allocated * cal.ALLOCATOR_OVERHEAD) + cal.CUDA_CONTEXT_BYTES


def peak_bytes(spec: ModelSpec, job: Job) -> int:
    """Peak per-GPU bytes only (the planner's fast path; same figure as estimate_memory)."""
    mo = _moments(spec, job)
    base = sum(b for _, b in mo.base)
    return _with_overhead(base + max(sum(b for _, b in parts) for _, parts in mo.candidates))


def estimate_memory(spec: ModelSpec, job: Job) -> MemoryEstimate:
    """Per-GPU memory breakdown and peak of one steady-state training step.

    Args:
        spec: model architecture.
        job: method, training settings and parallel setup.

    Returns:
        MemoryEstimate with components summing to the peak (bytes).

    Raises:
        TuneplanError: the method does not apply to this model (rank, targets, layers).
    """
    m, t, p = job.method, job.training, job.parallel
    mo = _moments(spec, job)
    tr = trainable(spec, m)
    world, stage, ckpt = p.num_gpus, p.shard_stage, t.checkpointing
    base_total = sum(b for _, b in mo.base)
    totals = {k: base_total + sum(b for _, b in parts) for k, parts in mo.candidates}
    phases = (("forward", totals["forward"]),
              ("backward", max(totals[k] for k in totals if k.startswith("backward"))),
              ("optimizer", totals["optimizer"]))
    peak_key = max(totals, key=lambda k: totals[k])
    peak_phase = "backward" if peak_key.startswith("backward") else peak_key
    parts = dict(mo.base)
    for k, b in dict(mo.candidates)[peak_key]:
        parts[k] = parts.get(k, 0) + b
    autocast_copies = mo.autocast_copies
    cpu = mo.cpu

    notes = {
        "weights": ({"qlora": f"{m.quant.upper()} packed" if m.quant != "int8" else "int8"}.get(
            m.kind, "fp32" if param_bytes(t) == 4 else t.precision)) + _shard_note(3, stage, world, p.offload_params),
        "quant_constants": f"absmax per {m.quant_blocksize}" + (", double quant" if m.double_quant else ""),
        "adapters": f"rank {m.rank}, {tr.adapter:,} params, {adapter_bytes(t) * 8}-bit",
        "param_gather": "FSDP/ZeRO-3: current + prefetched layer",
        "gradients": f"{tr.total:,} trainable params" + _shard_note(2, stage, world, False),
        "optimizer": t.optimizer + _shard_note(1, stage, world, p.offload_optimizer),
        "master_weights": "fp32 copy of trainable params" + _shard_note(1, stage, world, p.offload_optimizer),
        "ddp_buckets": "DDP buckets (gradient_as_bucket_view=False)",
        "optimizer_temp": "foreach AdamW full-size temporary",
        "activations": {"none": "no checkpointing", "full": "checkpointed layer inputs + one recomputed layer",
                        "offload": "layer inputs offloaded to CPU + one recomputed layer"}[ckpt]
        + f", {attention_kernel(spec, t)} attention" + (", autocast weight copies" if autocast_copies else ""),
        "logits": "fused/chunked CE" if (t.fused_ce or t.framework in ("unsloth", "torchtune"))
        else "bf16 logits + fp32 cross-entropy",
        "working": "backward working set of one layer" + (", dequantised weight" if m.kind == "qlora" else ""),
    }
    labels = {
        "weights": "Weights", "quant_constants": "Quantisation constants", "adapters": "Adapters (LoRA)",
        "param_gather": "Gathered params", "gradients": "Gradients", "optimizer": "Optimizer states",
        "master_weights": "Master weights (fp32)", "ddp_buckets": "DDP gradient buckets",
        "optimizer_temp": "Optimizer temporaries", "activations": "Activations", "logits": "Logits + loss",
        "working": "Backward working set",
    }
    comps = [Component(k, labels[k], int(b), notes[k]) for k, b in parts.items() if b > 0]
    allocated = sum(x.bytes for x in comps)
    peak = _with_overhead(allocated)
    alloc_over = peak - allocated - cal.CUDA_CONTEXT_BYTES
    comps.append(Component("allocator", "Allocator overhead", alloc_over,
                           f"{cal.ALLOCATOR_OVERHEAD:.0%} of allocated (caching allocator)"))
    comps.append(Component("cuda_context", "CUDA context", cal.CUDA_CONTEXT_BYTES, "driver, kernels, cuBLAS workspace"))
    return MemoryEstimate(
        model=spec, job=job, components=tuple(comps), peak_bytes=int(peak), peak_phase=peak_phase,
        phase_bytes=tuple((k, int(v)) for k, v in phases), trainable_params=tr.total,
        total_params=param_counts(spec).total, cpu_bytes=int(cpu), assumptions=assumptions(spec, job),
    )


def _shard_note(stage_needed: int, stage: int, world: int, offloaded: bool) -> str:
    if offloaded:
        return ", offloaded to CPU"
    if world > 1 and stage >= stage_needed:
        return f", sharded /{world}"
    return ""


def assumptions(spec: ModelSpec, job: Job) -> tuple[str, ...]:
    """Plain sentences for what the estimate assumes."""
    m, t, p = job.method, job.training, job.parallel
    out = [
        f"Steady-state step (optimizer states exist), micro-batch {t.micro_batch} x {t.seq_len} tokens, "
        f"{t.precision} precision, {t.attention} attention, framework profile {t.framework}.",
        "Activations are what autograd saves in the transformers modelling code; padding-free batches.",
        f"CUDA context {cal.CUDA_CONTEXT_BYTES / 2**30:.2f} GiB and {cal.ALLOCATOR_OVERHEAD:.0%} allocator overhead are included.",
    ]
    if m.is_adapter:
        out.append(f"Adapters on {_targets_text(m.targets)} (rank {m.rank}) stored in "
                   f"{'fp32 (PEFT autocast_adapter_dtype)' if adapter_bytes(t) == 4 else 'the model dtype'}.")
    if m.kind == "qlora":
        out.append("Embeddings, norms and lm_head stay in bf16; every decoder nn.Linear is quantised.")
        if spec.is_moe:
            out.append("Routed experts " + ("are quantised (Unsloth's patch)." if experts_quantised(t.framework) else
                       "stay bf16: transformers 5 fuses them into 3-D parameters, which bitsandbytes skips."))
    if attention_kernel(spec, t) != t.attention:
        out.append(f"transformers has no SDPA attention for {spec.model_type}: eager attention (s x s scores) is assumed; "
                   "--attention flash for FlashAttention-2.")
    if spec.is_moe and m.is_adapter:
        out.append("Routed experts are adapted (one adapter per expert, PEFT target_parameters)."
                   if m.targets != "all-linear" and "experts" in m.targets else
                   "Routed experts get no adapters (fused 3-D parameters; add 'experts' to --targets to adapt them).")
    if p.num_gpus > 1:
        out.append(f"{p.num_gpus} GPUs with {p.sharding}; activations are per GPU and not sharded.")
    if t.optimizer.startswith("paged"):
        out.append("Paged optimizer states are counted on the GPU; under pressure they page to CPU RAM (slower).")
    return tuple(out)
