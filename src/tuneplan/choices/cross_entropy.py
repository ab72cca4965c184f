"""Cross-entropy implementations: how much of the logits the loss keeps alive."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.choices import lookup


@dataclass(frozen=True)
class CrossEntropy:
    """One way to compute the loss over the vocabulary.

    Args:
        name: the setting (plain, chunked, fused).
        fused: the lm_head matmul and the loss run together a chunk of rows at a time, so
            the full logits never exist (Liger FusedLinearCrossEntropy, Unsloth).
        chunks: the full compute-dtype logits exist, and the fp32 upcast is done in this
            many chunks (torchtune CEWithChunkedOutputLoss); None for plain and fused.
        chunk_tokens: the lm_head and the loss run over this many tokens at a time in the
            compute dtype with no fp32 upcast; every chunk's log-probabilities are kept for
            backward (litgpt lm_head_chunk_size=128 + utils.chunked_cross_entropy).
        note: what the breakdown line says.
        source: where the behaviour is read from.
        fp32_logits_block: the loss upcasts the whole logits to fp32 in one tensor
            (micro-batch x sequence x vocabulary x 4 bytes), the step's largest transient
            block; the caching allocator's overhead is at least that block
            (tuneplan.calibration.ALLOCATOR_OVERHEAD).
    """

    name: str
    fused: bool
    chunks: int | None
    note: str
    source: str
    chunk_tokens: int | None = None
    fp32_logits_block: bool = False


CROSS_ENTROPY: dict[str, CrossEntropy] = {c.name: c for c in (
    CrossEntropy("plain", fused=False, chunks=None, note="bf16 logits + fp32 cross-entropy",
                 source="transformers loss/loss_utils.py ForCausalLMLoss (fp32 upcast, log_softmax kept)",
                 fp32_logits_block=True),
    CrossEntropy("chunked", fused=False, chunks=cal.TORCHTUNE_CE_CHUNKS, note="fused/chunked CE",
                 source="torchtune modules/loss/ce_chunked_output_loss.py (num_output_chunks=8)"),
    CrossEntropy("fused", fused=True, chunks=None, note="fused/chunked CE",
                 source="Liger-Kernel ops/fused_linear_cross_entropy.py; Unsloth fast_cross_entropy_loss"),
    CrossEntropy("lm-head-chunked", fused=False, chunks=None, chunk_tokens=cal.LITGPT_LM_HEAD_CHUNK_TOKENS,
                 note="lm_head + cross-entropy in 128-token chunks, compute dtype",
                 source="litgpt finetune/lora.py (model(..., lm_head_chunk_size=128)) and "
                        "litgpt/utils.py chunked_cross_entropy"),
)}


def cross_entropy(name: str) -> CrossEntropy:
    """The CrossEntropy record for a --cross-entropy name."""
    return lookup(CROSS_ENTROPY, "cross-entropy implementation", name)
