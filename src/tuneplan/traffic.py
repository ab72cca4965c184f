"""DRAM bytes per token moved by a training step's pointwise kernels (everything but GEMMs).

The GEMMs are timed by their FLOPs (tuneplan.timing). Between them run the casts, norms,
rotary embeddings, activations, residual adds and adapter scalings: memory-bound kernels
issued one after another on the same stream, so their time adds to the GEMMs' instead of
hiding under them, and it follows the device's memory bandwidth, not its FLOP/s. That is
why a faster-FLOP device gains less than its spec ratio (an H100 has 3.2x an A100's bf16
FLOP/s but 1.6x its bandwidth; measured H100/A100 training speed ratios are ~2.1-2.3x).

Bytes per element, counted op by op (c = compute-dtype bytes, 4 = fp32):
- eager RMSNorm (transformers modeling_llama.py LlamaRMSNorm.forward, 4.4x-5; torchtune
  modules/rms_norm.py the same ops): to(fp32) c+4, pow 8, mean 4, mul by rsqrt 8,
  to(input dtype) 4+c, mul by weight 2c: 4c + 28;
- eager rotary on q and k (apply_rotary_pos_emb: q*cos 2c, rotate_half's neg c and cat 2c,
  *sin 2c, add 3c): 10c;
- residual adds: 3c each, two per layer;
- gated MLP act(gate) * up: act 2c + mul 3c = 5c per intermediate element;
- PEFT adapter (peft/tuners/lora/layer.py Linear.forward): `_cast_input_dtype` to an fp32
  adapter and autocast's cast back, (c + 4) x 2 per input element when the adapter dtype is
  not the compute dtype; `* scaling` 2c and `result + ...` 3c per output element.
Fused (torch.compile's inductor, Unsloth's Triton kernels, mlx-lm's mx.compile): each chain
of pointwise ops between two GEMMs is one kernel that reads its inputs and writes its
outputs once: residual add + norm 4c, rotary 2c, act * up 3c, adapter scale + add 3c.
The backward of a pointwise op reads its output gradient and saved input(s) and writes the
input gradient(s): BACKWARD_PER_FORWARD x the forward's bytes (counted below). Recomputation repeats
the forward of checkpointed layers. Logits and loss traffic are timing's (their bytes are
the memory model's).
"""

from __future__ import annotations

from functools import lru_cache

from tuneplan.job import Job, Training
from tuneplan.memory import is_target
from tuneplan.memory.activations import python_gelu
from tuneplan.memory.trained import first_trained_layer
from tuneplan.model_spec import ModelSpec, layer_linears

FP32 = 4
# Backward bytes per forward byte of a pointwise op: 1x for adds (the gradient passes
# through; one add where branches meet), casts and scalar products, 2x for a product of two
# tensors (a gradient for each), ~1.4x for the eager norm's chain and 1.8x for act(gate)*up
# (silu_backward reads the gradient and the input): ~1.5 over a decoder layer
# (tools/autograd/derivatives.yaml: mul, add, pow, mean, silu, _to_copy).
BACKWARD_PER_FORWARD = 1.5


def fused(training: Training) -> bool:
    """The step runs its pointwise chains as fused kernels: under torch.compile, or in a stack
    whose own kernels fuse them (FrameworkProfile.fused_pointwise)."""
    return training.compilation.compiled or training.profile.fused_pointwise


def _mlp_width(spec: ModelSpec, layer: int) -> int:
    """Intermediate elements per token that the gated activation touches (active experts only)."""
    if spec.moe_layers and spec.moe_layers[layer]:
        return (spec.experts_per_token * spec.moe_intermediate_size
                + spec.shared_experts * spec.shared_intermediate_size)
    return spec.intermediate_size


def _mlp_pointwise(spec: ModelSpec, t: Training) -> int:
    """Element reads + writes per intermediate element of the eager MLP activation.

    Gated: act(gate) reads and writes (2), act * up reads two and writes one (3). A plain MLP's
    GELU kernel reads and writes (2); transformers' Python gelu_new (activations.py
    NewGELUActivation) runs eight pointwise ops: pow, *k, +x, *s, tanh, 1+, 0.5*x, * (18).
    """
    if spec.gated_mlp:
        return 5
    return 18 if python_gelu(spec, t) else 2


def layer_forward_bytes(spec: ModelSpec, job: Job, layer: int, adapters: bool = True) -> float:
    """Pointwise-kernel bytes per token in one forward of decoder layer `layer`.

    Args:
        spec: the model.
        job: method (which linears carry adapters) and training (dtype, fused or eager).
        layer: 0-based decoder layer.
        adapters: the adapters run (False: PEFT's disable_adapter, as a reference forward runs).

    Returns:
        Bytes read plus written per token.
    """
    t, m = job.training, job.method
    c = t.compute_bytes
    h = spec.hidden_size
    q = spec.num_heads * spec.head_dim
    kv = spec.num_kv_heads * spec.head_dim
    i = _mlp_width(spec, layer)
    adapted = [lin for lin in layer_linears(spec, layer) if adapters and m.is_adapter and is_target(lin, m)]
    if fused(t):
        total = spec.norms_per_layer * 4 * c * h + 2 * c * (q + kv) + (3 if spec.gated_mlp else 2) * c * i
        total += sum(3 * c * lin.d_out * lin.active for lin in adapted)
        if spec.qk_norm:
            total += 2 * c * (q + kv)
        return total
    if spec.fused_norm_rotary:  # the model's own fused kernels; residual adds stay eager
        norm, rotary = 2 * c, 2 * c
    else:
        norm, rotary = 4 * c + 7 * FP32, 10 * c
    total = spec.norms_per_layer * norm * h + rotary * (q + kv) + 2 * 3 * c * h + _mlp_pointwise(spec, t) * c * i
    if spec.qk_norm:
        total += norm * (q + kv)
    cast = 2 * (c + t.adapter_bytes) if t.adapter_bytes != c else 0
    total += sum((cast * lin.d_in + 5 * c * lin.d_out) * lin.active for lin in adapted)
    return total


@lru_cache(maxsize=65536)
def pointwise_bytes(spec: ModelSpec, job: Job) -> float:
    """Pointwise-kernel bytes per token of one micro-step: forward of every layer, backward
    and (with checkpointing) recomputation of the layers that keep a graph.

    Args:
        spec: the model.
        job: the training job.

    Returns:
        Bytes per token (read + written), logits and loss excluded.
    """
    first = first_trained_layer(spec, job.method)
    passes = 1 + BACKWARD_PER_FORWARD + (1 if job.training.checkpointing != "none" else 0)
    cache: dict[bool, float] = {}
    total = 0.0
    for layer in range(spec.num_layers):
        key = bool(spec.moe_layers[layer]) if spec.moe_layers else False
        if key not in cache:
            cache[key] = layer_forward_bytes(spec, job, layer)
        total += cache[key] * (passes if layer >= first else 1)
    return total


@lru_cache(maxsize=65536)
def forward_pass_bytes(spec: ModelSpec, job: Job, adapters: bool = True) -> float:
    """Pointwise-kernel bytes per token of one no-grad forward of every layer (no backward, no
    recomputation): a preference task's reference forward (adapters off) or KTO's KL pass.

    Args:
        spec: the model.
        job: the training job.
        adapters: the adapters run in this forward (False: disabled, or a separate base copy).

    Returns:
        Bytes per token (read + written), logits excluded.
    """
    cache: dict[bool, float] = {}
    total = 0.0
    for layer in range(spec.num_layers):
        key = bool(spec.moe_layers[layer]) if spec.moe_layers else False
        if key not in cache:
            cache[key] = layer_forward_bytes(spec, job, layer, adapters)
        total += cache[key]
    return total
