"""Library versions where the memory behaviour changed: today's stack is the default.

A measured run from 2023 ran different code than a run today; to predict it (or to plan
on an older pinned stack) pick the row for its versions. Each field names the change and
its source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneplan.choices import lookup
from tuneplan.errors import TuneplanError


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
        bitsandbytes / transformers: the versions [first, first not) this record stands for
            ("" open); stack_for() picks the record whose ranges hold a run's versions.
        framework: "" for a record of library versions (any stack); else the framework
            profile whose own code or recipe defaults this record dates (its library ranges
            still apply), chosen for that framework's runs before `until`.
        until: for a framework record, the date (YYYY-MM-DD) of the change that ended it.
        lora_dropout: the stack's LoRA dropout when the user states none (None: the
            framework profile's lora_dropout_default).
        adamw_fused: the stack's recipes build torch.optim.AdamW with fused=True (no
            foreach full-size temporary); None: the framework profile's adamw_fused.
        single_kv_head_math: a model with one k/v head (multi-query) reaches SDPA with k/v
            unexpanded, which the flash and memory-efficient kernels do not broadcast, so SDPA
            runs its math kernel and keeps the s x s probabilities (the memory model reads
            this once a multi-query layout is scored; no calibration row has one).
        trl_chunked_logps: TRL's DPO and KTO trainers score tokens through TRL's fused LM head
            (trl/trainer/utils.py add_fused_lm_head + trl/kernels/chunked_logprob.py, trl PR #7243
            "Move DPO to chunked log probabilities", in trl 1.16.0): per-token log-probs from
            [4096, 32768] logit tiles, never the [rows, seq, vocab] logits. Before it (trl@f2cd577,
            1.10.0.dev0) they computed full logits and selective_log_softmax (tuneplan.memory.tasks).
            The same release runs selective_log_softmax (ORPO, CPO, SimPO) as a Triton kernel on a GPU
            (trl/kernels/logprob_entropy.py) instead of a per-row log_softmax loop.
        norm_weight_fp32: the stack's RMSNorm keeps the fp32 normalised value for a trained weight
            (None: the framework profile's norm_weight_fp32). torchtune before PR #2054
            (2024-11-25, "Switch to PyTorch's built-in RMSNorm", first in 0.5.0) cast it back first:
            `x_normed = (x_fp32 * torch.rsqrt(...)).type_as(x); return x_normed * self.scale`
            (torchtune/modules/rms_norm.py@68200894d), so it kept the compute-dtype value.
        compiles_whole_model: with compile on, the stack compiles the whole model, output
            projection included, not each decoder layer: torchtune before PR #1877 (2024-11-18)
            on torch < 2.5 (`if torch_version_ge("2.5.0")` per layer, else `model.compile()`,
            training/_compile.py@2c18c5bd9); torch 2.5.0 was released 2024-10-17, so runs dated
            before it are taken as torch 2.4.
    """

    name: str
    label: str
    bnb_4bit_saves_input: bool
    fp32_logits_copy: bool = False
    logits_alive_in_loss: bool = False
    bitsandbytes: tuple[str, str] = ("0.43.2", "")
    transformers: tuple[str, str] = ("4.49.0", "")
    framework: str = ""
    until: str = ""
    lora_dropout: float | None = None
    adamw_fused: bool | None = None
    single_kv_head_math: bool = False
    trl_chunked_logps: bool = False
    norm_weight_fp32: bool | None = None
    compiles_whole_model: bool = False


STACKS: dict[str, Stack] = {s.name: s for s in (
    Stack("current", "today's stack: transformers >= 4.49, PEFT >= 0.17, bitsandbytes >= 0.43.2, TRL >= 1.16",
          bnb_4bit_saves_input=False, trl_chunked_logps=True),
    # today's libraries with a TRL whose DPO/KTO trainers still build the full logits (trl@f2cd577);
    # chosen only by name (stack_for picks "current" for today's transformers/bitsandbytes)
    Stack("trl-full-logits", "today's stack with TRL before 1.16 (DPO/KTO compute full logits: trl@f2cd577)",
          bnb_4bit_saves_input=False),
    Stack("bnb-pre-0.43.2", "bitsandbytes < 0.43.2 with transformers >= 4.49", bnb_4bit_saves_input=True,
          bitsandbytes=("", "0.43.2")),
    Stack("transformers-4.4x", "transformers < 4.46 and bitsandbytes >= 0.43.2 (mid-2024 runs)",
          bnb_4bit_saves_input=False, fp32_logits_copy=True, transformers=("", "4.46.0")),
    Stack("transformers-4.46", "transformers 4.46-4.48 and bitsandbytes >= 0.43.2 (Oct 2024 to Jan 2025 runs)",
          bnb_4bit_saves_input=False, fp32_logits_copy=True, logits_alive_in_loss=True,
          transformers=("4.46.0", "4.49.0")),
    Stack("2023", "transformers < 4.46 with bitsandbytes < 0.43.2 (2023 to mid-2024 runs)",
          bnb_4bit_saves_input=True, fp32_logits_copy=True, bitsandbytes=("", "0.43.2"), transformers=("", "4.46.0")),
    # torchtune main before PR #1492 (2024-09-11, "expose and set lora_dropout = 0.0"): the LoRA
    # model builders defaulted lora_dropout=0.05 and the configs did not set it
    # (torchtune/models/llama2/_model_builders.py@0217d44 `lora_dropout: float = 0.05`); before
    # PR #1575 (2024-09-14, "add fused = true to adam, except pagedAdam") the configs built
    # torch.optim.AdamW without `fused: True` (recipes/configs/llama2/7B_lora_single_device.yaml
    # @0217d44), i.e. torch's foreach default. Both are in torchtune 0.3.0.
    Stack("torchtune-0.2", "torchtune before 0.3 (main before 2024-09-11): LoRA dropout 0.05, foreach AdamW",
          bnb_4bit_saves_input=False, framework="torchtune", until="2024-09-11", lora_dropout=0.05,
          adamw_fused=False, norm_weight_fp32=False, compiles_whole_model=True),
    Stack("torchtune-2024-09-11", "torchtune main 2024-09-11 to 2024-09-13: LoRA dropout 0, foreach AdamW",
          bnb_4bit_saves_input=False, framework="torchtune", until="2024-09-14", lora_dropout=0.0,
          adamw_fused=False, norm_weight_fp32=False, compiles_whole_model=True),
    Stack("torchtune-0.3", "torchtune 0.3 on torch 2.4 (2024-09-14 to 2024-10-16): RMSNorm casts back before its "
          "weight, compile takes the whole model", bnb_4bit_saves_input=False, framework="torchtune",
          until="2024-10-17", norm_weight_fp32=False, compiles_whole_model=True),
    Stack("torchtune-0.4", "torchtune 0.3-0.4 on torch 2.5 (2024-10-17 to 2024-11-24): RMSNorm casts back before "
          "its weight, compile per layer", bnb_4bit_saves_input=False, framework="torchtune", until="2024-11-25",
          norm_weight_fp32=False),
    # lit-gpt / litgpt (lit_gpt/model.py@8641822, 2023-10-16, CausalSelfAttention.forward): k/v
    # are expanded to every query head and reshaped (a copy; the litgpt profile's
    # expands_kv_heads) unless n_query_groups == 1: a single k/v head reaches SDPA unexpanded.
    # litgpt PR #1013 (2024-12-26) repeats k/v for every grouped layout in training
    # (litgpt/model.py today: `if n_query_groups != n_head and (input_pos is None or ...)`).
    Stack("litgpt-2023", "lit-gpt / litgpt before 2024-07-23 (bitsandbytes < 0.43.2; one k/v head: math SDPA)",
          bnb_4bit_saves_input=True, bitsandbytes=("", "0.43.2"), framework="litgpt", until="2024-12-26",
          single_kv_head_math=True),
    Stack("litgpt-2024", "litgpt 2024-07-23 to 2024-12-25 (bitsandbytes >= 0.43.2; one k/v head: math SDPA)",
          bnb_4bit_saves_input=False, framework="litgpt", until="2024-12-26", single_kv_head_math=True),
)}

# Releases where a Stack field changes: (version, first release date). bitsandbytes 0.43.2:
# git tag 0.43.2, 2024-07-23 (bitsandbytes-foundation/bitsandbytes; PR #1270 "not saving the
# input of 4-bit matmul when not needed"). transformers 4.46.0 (2024-10-24, PR #33902 moved the
# upcast into ForCausalLMLoss) and 4.49.0 (2025-02-17, the first with PR #35646's loss):
# PyPI release dates.
RELEASES: dict[str, tuple[tuple[str, str], ...]] = {
    "bitsandbytes": (("0.43.2", "2024-07-23"),),
    "transformers": (("4.46.0", "2024-10-24"), ("4.49.0", "2025-02-17")),
}


def stack(name: str) -> Stack:
    """The Stack record for a --stack name."""
    return lookup(STACKS, "library stack", name)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _in_range(version: str, bounds: tuple[str, str]) -> bool:
    lo, hi = bounds
    k = _version_key(version)
    return (not lo or k >= _version_key(lo)) and (not hi or k < _version_key(hi))


def version_at(library: str, date: str) -> str:
    """The newest RELEASES boundary a run dated `date` (YYYY-MM-DD) had: "0" before the first."""
    out = "0"
    for version, released in RELEASES[library]:
        if date >= released:
            out = version
    return out


def stack_for(framework: str, date: str = "", versions: dict[str, str] | None = None,
              libraries: tuple[str, ...] = ("bitsandbytes", "transformers")) -> str:
    """The --stack record for a run: its framework, its date (YYYY-MM-DD) and any library
    versions it states (stated versions win over the date). Libraries the framework does not
    run through (`libraries`: the profile's versioned_libraries) count as today's. With no
    date and no versions: today's stack.

    Raises:
        TuneplanError: versions no record stands for (say which, never a silent nearest).
    """
    versions = dict(versions or {})
    if not date and not versions:
        return "current"
    have: dict[str, str] = {}
    for lib in RELEASES:
        if lib not in libraries:
            continue
        if lib in versions:
            have[lib] = versions[lib]
        elif date:
            have[lib] = version_at(lib, date)
    if date:
        for s in STACKS.values():
            if s.framework == framework and date < s.until and all(
                    _in_range(v, getattr(s, lib)) for lib, v in have.items()):
                return s.name
    for s in STACKS.values():
        if not s.framework and all(_in_range(v, getattr(s, lib)) for lib, v in have.items()) and all(
                getattr(s, lib) == getattr(STACKS["current"], lib) for lib in RELEASES if lib not in have):
            return s.name
    raise TuneplanError("no --stack record for " + ", ".join(f"{k} {v}" for k, v in have.items())
                        + f" ({framework or 'any framework'}{', ' + date if date else ''})")
