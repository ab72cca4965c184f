"""Attention kernels and what each keeps for backward."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Attention:
    """One attention implementation.

    Args:
        name: the setting (sdpa, flash, eager).
        quadratic: materialises the s x s probabilities (eager); otherwise O(s) saves
            (q, k, v, output, logsumexp) as SDPA flash/mem-efficient and FlashAttention-2 do.
        needs_sdpa: runs through torch SDPA, which transformers does not offer for every
            architecture (see NO_SDPA_MODEL_TYPES); those fall back to `fallback`.
        fallback: the kernel that runs instead where SDPA is unavailable.
        hf_impl: transformers attn_implementation name.
        trace_impl: what the CPU trace runs (flash has the same O(s) saves as SDPA).
    """

    name: str
    quadratic: bool
    needs_sdpa: bool
    fallback: str | None
    hf_impl: str
    trace_impl: str


ATTENTION: dict[str, Attention] = {a.name: a for a in (
    Attention("sdpa", quadratic=False, needs_sdpa=True, fallback="eager", hf_impl="sdpa", trace_impl="sdpa"),
    Attention("flash", quadratic=False, needs_sdpa=False, fallback=None, hf_impl="flash_attention_2",
              trace_impl="sdpa"),
    Attention("eager", quadratic=True, needs_sdpa=False, fallback=None, hf_impl="eager", trace_impl="eager"),
)}

# transformers 5 refuses SDPA for these (PreTrainedModel._check_and_adjust_attn_impl:
# "does not support an attention implementation through
# torch.nn.functional.scaled_dot_product_attention yet"); seen when `tuneplan trace` builds them.
NO_SDPA_MODEL_TYPES = frozenset({"gemma2", "gpt_oss"})


def attention(name: str) -> Attention:
    """The Attention record for an --attention name."""
    return lookup(ATTENTION, "attention kernel", name)


def kernel_for(model_type: str, name: str) -> Attention:
    """The kernel that actually runs: SDPA falls back where transformers has no SDPA path."""
    a = attention(name)
    if a.needs_sdpa and model_type in NO_SDPA_MODEL_TYPES:
        return ATTENTION[a.fallback]
    return a
