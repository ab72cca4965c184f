"""Analytical per-GPU memory estimate of one steady-state fine-tuning step, in bytes.

Built from what PyTorch actually keeps alive, component by component, one concern a module:
- trained: adapter targets, trainable parameter counts, which layers keep a graph;
- static: weights (by dtype, bitsandbytes 4/8-bit storage and constants), adapters,
  gradients, optimizer states, fp32 master weights;
- activations: what autograd saves per decoder layer, logits and the cross-entropy;
- step: the moments of a steady-state step, the peak and its breakdown;
- notes: what the figures assume, per component and in sentences;
- components: the component keys and labels.
"""

from tuneplan.memory.activations import (
    LayerActs,
    attention_kernel,
    layer_activations,
    logits_bytes,
    stack_activations,
)
from tuneplan.memory.notes import assumptions
from tuneplan.memory.static import Static, quantised_bytes, quantised_params, static_memory, stores_quantised
from tuneplan.memory.step import Component, MemoryEstimate, estimate_memory, peak_bytes
from tuneplan.memory.trained import Trainable, check_method, first_trained_layer, is_target, trainable

__all__ = [
    "Component", "LayerActs", "MemoryEstimate", "Static", "Trainable", "assumptions", "attention_kernel",
    "check_method", "estimate_memory", "first_trained_layer", "is_target", "layer_activations", "logits_bytes",
    "peak_bytes", "quantised_bytes", "quantised_params", "stack_activations", "static_memory", "stores_quantised",
    "trainable",
]
