"""Compilation: whether the step runs eagerly or under torch.compile, and what that changes.

torch.compile traces forward and backward together and AOTAutograd's min-cut partitioner
(torch/_functorch/partitioners.py, min_cut_rematerialization_partition) decides what the
forward saves: pointwise work (casts, norms, activations) is recomputed in the backward
from a few saved tensors instead of being kept. The rules below were read off the tensors
a compiled decoder layer really saves (`python benchmarks/compile_saved.py`, torch 2.13
inductor on CPU, transformers 5 Llama and torchtune 0.6.1 layers, full and LoRA; per-layer
bytes equal to the byte, benchmarks/results/compile_saved.md). For time, compile fuses the
pointwise kernels between GEMMs (tuneplan.traffic counts their fused traffic); its other
kernel gains are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Compilation:
    """What the forward keeps for backward in one execution mode.

    Args:
        name: the setting (none | inductor).
        label: for people.
        compiled: the step runs under torch.compile (exports write the stack's compile flag).
        norm_saves: RMSNorm keeps its fp32 upcast (and normalised value when its weight
            trains); compiled, both are recomputed from the layer's saved inputs and the
            per-token rstd (min-cut: a cheap pointwise recompute beats saving 4 B/elem).
        activation_output_saved: the gated MLP keeps act(gate) beside gate and up; compiled,
            act(gate) is recomputed from gate.
        adapter_input_copies: PEFT's per-adapter dtype casts of a shared input each stay
            alive; compiled, one copy is saved and the casts are recomputed.
        attention_output_copy: the o_proj input is a contiguous copy of the attention
            output kept beside the attention kernel's own saved output (compiled graphs
            save both; eager SDPA's output is the o_proj input itself).
        fuses_loss_upcast: a compiled chunk loss (torchtune compile_loss compiles
            CEWithChunkedOutputLoss.compute_cross_entropy, `F.cross_entropy(logits.float())`)
            becomes one kernel that saves the compute-dtype chunk and a per-row logsumexp and
            writes the gradient in the compute dtype: no fp32 log-probabilities are kept.
            The plain loss is left as eager: torchtune's model upcasts its logits outside the
            compiled layers, so the loss still sees (and saves) fp32 logits.
    """

    name: str
    label: str
    compiled: bool
    norm_saves: bool
    activation_output_saved: bool
    adapter_input_copies: bool
    attention_output_copy: bool
    fuses_loss_upcast: bool


COMPILATION: dict[str, Compilation] = {c.name: c for c in (
    Compilation("none", "eager PyTorch", compiled=False, norm_saves=True, activation_output_saved=True,
                adapter_input_copies=True, attention_output_copy=False, fuses_loss_upcast=False),
    Compilation("inductor", "torch.compile (inductor, default mode)", compiled=True, norm_saves=False,
                activation_output_saved=False, adapter_input_copies=False, attention_output_copy=True,
                fuses_loss_upcast=True),
)}


# the modes a stack's plain "compile: true|false" flag means (tuneplan.export)
COMPILED = "inductor"
EAGER = "none"


def compilation(name: str) -> Compilation:
    """The compilation record `name`, or a one-line error."""
    return lookup(COMPILATION, "compile mode", name)
