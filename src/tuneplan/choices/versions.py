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
    """

    name: str
    label: str
    bnb_4bit_saves_input: bool


STACKS: dict[str, Stack] = {s.name: s for s in (
    Stack("current", "today's stack: transformers 5, PEFT >= 0.17, bitsandbytes >= 0.43.2",
          bnb_4bit_saves_input=False),
    Stack("bnb-pre-0.43.2", "bitsandbytes < 0.43.2 (2023 to mid-2024 runs)", bnb_4bit_saves_input=True),
)}


def stack(name: str) -> Stack:
    """The Stack record for a --stack name."""
    return lookup(STACKS, "library stack", name)
