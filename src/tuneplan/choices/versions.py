"""Library versions where the memory behaviour changed: today's stack is the default.

A measured run from 2023 ran different code than a run today; to predict it (or to plan
on an older pinned stack) pick the row for its versions. Each field names the change and
its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Stack:
    """Library versions that change what a step keeps alive.

    Args:
        name: the setting (current, bnb-pre-0.43.2).
        label: the versions it stands for.
        bnb_4bit_saves_input: bitsandbytes' MatMul4Bit saves every 4-bit linear's input for
            backward even when only the input gradient is needed. bitsandbytes before
            0.43.2 (bitsandbytes/autograd/_functions.py MatMul4Bit.forward:
            `ctx.tensors = (A, B)`); 0.43.2 saves A only when the weight needs a gradient
            (`ctx.tensors = (None, B)` otherwise; CHANGELOG 0.43.2, "Save memory by not
            saving the input of 4-bit matmul when not needed").
        fp32_logits_copy: the causal-LM forward upcast the logits to fp32 itself
            (`logits = logits.float()` in modeling_llama.py / modeling_qwen2.py LlamaForCausalLM.forward)
            and the loss then made a contiguous fp32 copy of the shifted logits
            (`shift_logits = logits[..., :-1, :].contiguous()`), so the forward holds fp32
            logits + their shifted copy + the fp32 log-probabilities: 12 bytes per logit
            instead of 10 with today's ForCausalLMLoss (transformers loss/loss_utils.py,
            which shifts the labels instead; transformers PR #35646, 4.48/4.49, Jan 2025).
        logits_alive_in_loss: with fp32_logits_copy, the compute-dtype logits stay referenced
            while the loss runs: transformers 4.46-4.48 moved the upcast out of the model
            into ForCausalLMLoss (PR #33902 "Remove logits.float()", 4.46), whose
            `logits = logits.float()` rebinds only its own argument, so the caller's
            compute-dtype logits live through the fp32 copy, the shifted copy and the
            log-probabilities: compute bytes + 12 per logit at the forward peak.
    """

    name: str
    label: str
    bnb_4bit_saves_input: bool
    fp32_logits_copy: bool = False
    logits_alive_in_loss: bool = False


STACKS: dict[str, Stack] = {s.name: s for s in (
    Stack("current", "today's stack: transformers 5, PEFT >= 0.17, bitsandbytes >= 0.43.2",
          bnb_4bit_saves_input=False),
    Stack("bnb-pre-0.43.2", "bitsandbytes < 0.43.2 (2023 to mid-2024 runs)", bnb_4bit_saves_input=True),
    Stack("transformers-4.4x", "transformers 4.36-4.45 and bitsandbytes >= 0.43.2 (mid-2024 runs)",
          bnb_4bit_saves_input=False, fp32_logits_copy=True),
    Stack("transformers-4.46", "transformers 4.46-4.48 and bitsandbytes >= 0.43.2 (Oct 2024 to Jan 2025 runs)",
          bnb_4bit_saves_input=False, fp32_logits_copy=True, logits_alive_in_loss=True),
    Stack("2023", "transformers 4.3x-4.4x with bitsandbytes < 0.43.2 (2023 to mid-2024 runs)",
          bnb_4bit_saves_input=True, fp32_logits_copy=True),
)}


def stack(name: str) -> Stack:
    """The Stack record for a --stack name."""
    return lookup(STACKS, "library stack", name)
