"""How a training script prepares a bitsandbytes-quantised model before adding adapters.

The preparation decides the dtype of everything that is not 4-bit: an fp32 norm weight
makes the norm output fp32, a bitsandbytes linear returns its input's dtype
(bitsandbytes nn/modules.py Linear4bit.forward: `out.to(inp_dtype)`), so the MLP
intermediates and, after the first MLP adds into it, the residual stream and every
checkpoint are fp32. bitsandbytes issue #1569 measures 63 -> 81 GB from this call alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class KbitPrep:
    """One way of preparing a quantised model for training (the --kbit-prep setting).

    Args:
        name: the setting (none, peft, trl-bf16).
        label: what runs it.
        fp32_embeddings: embed_tokens and lm_head are fp32 (2x their bf16 bytes); the fp32
            lm_head's compute-dtype cast under autocast is saved by its matmul.
        fp32_norms: norm weights are fp32, so norm outputs, quantised linears' outputs and
            the residual stream are fp32.
        fp32_unquantised: other 16-bit parameters that bitsandbytes left unquantised (fused
            3-D experts, biases) are fp32.
        adapter_bytes: bytes per adapter parameter (and its gradient and optimizer states)
            when the preparation recasts adapters; None keeps the framework's dtype.
        library: the quantisation library whose models it prepares (None: any job).
    """

    name: str
    label: str
    fp32_embeddings: bool = False
    fp32_norms: bool = False
    fp32_unquantised: bool = False
    adapter_bytes: int | None = None
    library: str | None = "bitsandbytes"

    @property
    def fp32_residual(self) -> bool:
        """The residual stream (and checkpoints, norm outputs, MLP intermediates) is fp32."""
        return self.fp32_embeddings or self.fp32_norms


KBIT_PREPS: dict[str, KbitPrep] = {p.name: p for p in (
    # today's default: transformers 5 + TRL >= PR #4704 (2025-12, which moved the call into
    # trl.experimental.utils) load the quantised model and add adapters without recasting
    KbitPrep("none", "no preparation: non-quantised weights stay in the model dtype", library=None),
    # peft/utils/other.py prepare_model_for_kbit_training (every PEFT release since 0.4):
    # "cast all non INT8 parameters to fp32": every fp16/bf16 parameter that is not Params4bit
    KbitPrep("peft", "peft.prepare_model_for_kbit_training: embeddings, lm_head and norms upcast to fp32",
             fp32_embeddings=True, fp32_norms=True, fp32_unquantised=True),
    # trl/trainer/sft_trainer.py before PR #4704: prepare_model_for_kbit_training, then with
    # --bf16 peft_module_casting_to_bf16 (trl/trainer/utils.py): adapters (BaseTunerLayer) to
    # bf16, norms to fp32, embed_tokens/lm_head back to bf16
    KbitPrep("trl-bf16", "TRL SFTTrainer before 2025-12 (prepare_model_for_kbit_training + "
             "peft_module_casting_to_bf16): norms fp32, adapters bf16", fp32_norms=True, fp32_unquantised=True,
             adapter_bytes=2),
    # TRL's online trainers on a quantised model (trl 1.16 grpo_trainer.py:534-541, rloo_trainer.py:461;
    # also at huggingface/trl@c9a9e2572): after get_peft_model every trainable parameter is cast to
    # bf16 (the QLoRA paper's recommendation); nothing else is recast. The default of --task grpo|rloo
    # with QLoRA (Task.quantised_prep)
    KbitPrep("trl-online-bf16", "TRL GRPOTrainer / RLOOTrainer: trainable (adapter) parameters cast to bf16",
             adapter_bytes=2),
)}
KBIT_PREP_NAMES = tuple(KBIT_PREPS)


def kbit_prep(name: str) -> KbitPrep:
    """The KbitPrep record for a --kbit-prep name."""
    return lookup(KBIT_PREPS, "k-bit preparation", name)
