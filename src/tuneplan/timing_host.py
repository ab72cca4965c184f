"""Per-stack step costs besides the GEMMs' FLOPs: host dispatch per kernel, unfused attention.

tuneplan.timing times a micro-step as its GEMMs' FLOPs, the weight reads and the pointwise
kernels' DRAM traffic, plus a fixed host cost per launched kernel for eager stacks. What a
stack adds to that is read from its record (tuneplan.choices.frameworks.FrameworkProfile):

- kernels_per_layer_forward: its decoder layer's forward kernel count (0: transformers'
  Llama-style layer, calibration.KERNELS_PER_LAYER_FORWARD), and its host cost per kernel
  (calibration.seconds_per_kernel, per library);
- materialises_attention_scores: attention without flash attention writes the
  [batch, heads, seq, seq] scores and moves them through softmax, dropout and the second bmm
  (calibration.SCORES_FORWARD_BYTES / SCORES_BACKWARD_BYTES), every layer, every micro-batch.
"""

from __future__ import annotations

from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan.choices.frameworks import FrameworkProfile
from tuneplan.job import Job, Method
from tuneplan.memory import is_target, stores_quantised
from tuneplan.memory.trained import first_trained_layer, layer_groups, trained_layer_count
from tuneplan.model_spec import ModelSpec, layer_linears


def layer_forward_kernels(profile: FrameworkProfile) -> int:
    """Kernels one decoder layer's forward launches in the stack."""
    return profile.kernels_per_layer_forward or cal.KERNELS_PER_LAYER_FORWARD


def seconds_per_kernel(profile: FrameworkProfile) -> float:
    """Host cost per launched kernel in the stack (calibration.SECONDS_PER_KERNEL_BY_FRAMEWORK)."""
    return cal.seconds_per_kernel(profile.calibration_framework or profile.name)


def attention_scores_bytes(spec: ModelSpec, job: Job) -> float:
    """DRAM bytes per token of one micro-step moved through the materialised attention scores.

    Zero unless the stack's attention is unfused (FrameworkProfile.materialises_attention_scores).
    Each token's row holds heads x seq_len scores per layer (the baddbmm computes the whole
    square; the causal mask is applied in the softmax), at the compute dtype; forward and
    backward of every layer that keeps a graph, the forward again under full recomputation,
    forward only below the first trained layer. The caller divides by the ranks that share a
    replica's work (TP splits the heads, PP the layers).
    """
    t = job.training
    if not t.profile.materialises_attention_scores:
        return 0.0
    c = t.compute_bytes
    fwd = cal.SCORES_FORWARD_BYTES[0] * c + cal.SCORES_FORWARD_BYTES[1]
    bwd = cal.SCORES_BACKWARD_BYTES[0] * c + cal.SCORES_BACKWARD_BYTES[1]
    rec = fwd if t.checkpointing in ("full", "offload") else 0.0
    trained = spec.num_layers - first_trained_layer(spec, job.method)
    per_layer = spec.num_heads * t.seq_len
    return per_layer * (spec.num_layers * fwd + trained * (bwd + rec))


def stack_assumptions(profile: FrameworkProfile, host_s: float) -> tuple[str, ...]:
    """Sentences for the stack's own time terms (empty for the transformers-like stacks).

    Args:
        host_s: the micro-batch's host dispatch time when it overlaps the GPU (else 0).
    """
    out = []
    if profile.host_overlaps_device:
        out.append(f"Host dispatch: {layer_forward_kernels(profile)} kernels per layer forward (2x in backward, again "
                   f"when recomputed) at {seconds_per_kernel(profile) * 1e6:.1f} us each "
                   f"(fitted for {profile.calibration_framework or profile.name}), {host_s * 1e3:.3g} ms per "
                   "micro-batch; a micro-batch takes the longer of that and its GPU work.")
    if profile.materialises_attention_scores:
        out.append("Unfused attention: the [batch, heads, seq, seq] scores go through DRAM (baddbmm, softmax, "
                   "dropout, bmm: 13 + 19 bytes per fp16 score, +13 recomputed).")
    if not profile.overlaps_grad_reduce:
        out.append("Data-parallel gradient all-reduce after the backward, not overlapped.")
    return tuple(out)


def kernel_count(spec: ModelSpec, job: Job) -> int:
    """GPU kernels launched by one micro-step of an eager PyTorch step (counted, not fitted).

    Per decoder layer and forward: the stack's count (layer_forward_kernels: transformers'
    Llama-style layer unless the stack states its own), cal.KERNELS_PER_ADAPTER_FORWARD per
    PEFT-adapted linear, one dequantisation per quantised linear. Recomputation repeats the forward of the layers that keep a graph;
    backward launches cal.BACKWARD_KERNELS_PER_FORWARD_KERNEL per forward kernel there.
    """
    t = job.training
    return _kernel_count(spec, job.method, t.checkpointing != "none", t.profile.quantises_fused_experts,
                         layer_forward_kernels(t.profile))


@lru_cache(maxsize=65536)
def _kernel_count(spec: ModelSpec, m: Method, recompute: bool, quantises_fused_experts: bool,
                  per_layer: int = cal.KERNELS_PER_LAYER_FORWARD) -> int:
    total = 0
    for layer, n in layer_groups(spec):
        lins = layer_linears(spec, layer)
        adapted = sum(1 for lin in lins if m.is_adapter and is_target(lin, m))
        quantised = sum(1 for lin in lins if stores_quantised(lin, quantises_fused_experts)) if m.kind == "qlora" else 0
        fwd = per_layer + adapted * cal.KERNELS_PER_ADAPTER_FORWARD + quantised
        graph = trained_layer_count(spec, m, layer, n)  # layers of this shape that keep a graph
        total += fwd * n + fwd * graph * (cal.BACKWARD_KERNELS_PER_FORWARD_KERNEL + (1 if recompute else 0))
    return total


@lru_cache(maxsize=65536)
def _forward_kernels(spec: ModelSpec, m: Method, adapters: bool, quantises_fused_experts: bool,
                     per_layer: int = cal.KERNELS_PER_LAYER_FORWARD) -> int:
    """Kernels of one no-grad forward of every decoder layer (a reference or KL pass): the
    layers' forward kernels, the adapters' when they run, QLoRA's dequantisations."""
    total = 0
    for layer, n in layer_groups(spec):
        lins = layer_linears(spec, layer)
        adapted = sum(1 for lin in lins if adapters and m.is_adapter and is_target(lin, m))
        quantised = sum(1 for lin in lins if stores_quantised(lin, quantises_fused_experts)) if m.kind == "qlora" else 0
        total += (per_layer + adapted * cal.KERNELS_PER_ADAPTER_FORWARD + quantised) * n
    return total
