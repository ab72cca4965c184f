"""Optimizers: how many state tensors, in what storage, and what each library calls them."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.choices import lookup
from tuneplan.errors import TuneplanError


@dataclass(frozen=True)
class Optimizer:
    """One optimizer as tuneplan models it.

    Args:
        name: the setting (adamw, adamw-8bit, ...).
        states: state tensors per parameter (AdamW exp_avg + exp_avg_sq = 2; SGD with
            momentum and Lion one buffer, Chen et al. 2023; plain SGD none).
        eight_bit: bitsandbytes block-wise 8-bit states (1 byte + fp32 absmax per 256
            values; 32-bit below 4096 elements: bitsandbytes/optim/optimizer.py).
        paged: states in CUDA managed memory that pages to host RAM under pressure.
        factored: Adafactor's factored second moment (rows + cols per matrix, Shazeer &
            Stern 2018), HF default beta1=None (no first moment).
        full_size_temp: torch's foreach AdamW makes one full-size temporary
            (torch/optim/adamw.py _multi_tensor_adamw: torch._foreach_sqrt(exp_avg_sqs)).
        eight_bit_alternative: the 8-bit optimizer a fit suggestion may switch to.
        hf_name: transformers TrainingArguments.optim (also Axolotl `optimizer:`,
            LLaMA-Factory `optim:`).
        hf_aliases: other TrainingArguments.optim names for the same optimizer
            (transformers training_args.py OptimizerNames: "adamw_8bit" is "just an alias for
            adamw_bnb_8bit"); read by `--from`.
        hf_optim_args: TrainingArguments.optim_args it needs (transformers
            trainer_optimizer.py _get_sgd reads momentum from optim_args).
        torch_class / torch_kwargs: what the trace instantiates (None: not traced).
        bnb_class: the bitsandbytes optimizer class `tuneplan probe` runs (what
            transformers' Trainer instantiates for `hf_name`: bitsandbytes.optim.AdamW with
            optim_bits=8 is AdamW8bit, is_paged=True the Paged* classes).
        update_s_per_param: seconds per trained parameter its update kernels take, measured
            on an H100 (tuneplan.calibration.OPTIMIZER_UPDATE_S_PER_PARAM); 0: not measured,
            the update is timed as streaming traffic only.
    """

    name: str
    states: int
    eight_bit: bool = False
    paged: bool = False
    factored: bool = False
    full_size_temp: bool = False
    eight_bit_alternative: str | None = None
    hf_name: str = ""
    torch_class: str | None = None
    torch_kwargs: tuple[tuple[str, object], ...] = ()
    hf_aliases: tuple[str, ...] = ()
    hf_optim_args: str = ""
    bnb_class: str | None = None
    update_s_per_param: float = 0.0

    @property
    def component(self) -> str | None:
        """The class a config names to build it (torch's, else bitsandbytes': a torchtune
        config's optimizer `_component_`)."""
        return self.torch_class or self.bnb_class


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    # transformers 5 default optim is adamw_torch_fused: torch.optim.AdamW(fused=True), no temporaries
    Optimizer("adamw", 2, eight_bit_alternative="adamw-8bit", hf_name="adamw_torch_fused",
              torch_class="torch.optim.AdamW", torch_kwargs=(("fused", True),),
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["adamw"]),
    Optimizer("adamw-foreach", 2, full_size_temp=True, eight_bit_alternative="adamw-8bit", hf_name="adamw_torch",
              torch_class="torch.optim.AdamW", torch_kwargs=(("foreach", True),),
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["adamw-foreach"]),
    Optimizer("adamw-8bit", 2, eight_bit=True, hf_name="adamw_bnb_8bit", bnb_class="bitsandbytes.optim.AdamW8bit",
              hf_aliases=("adamw_8bit",), update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["adamw-8bit"]),
    Optimizer("paged-adamw", 2, paged=True, eight_bit_alternative="adamw-8bit", hf_name="paged_adamw_32bit",
              bnb_class="bitsandbytes.optim.PagedAdamW32bit", update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["paged-adamw"]),
    Optimizer("paged-adamw-8bit", 2, eight_bit=True, paged=True, hf_name="paged_adamw_8bit",
              bnb_class="bitsandbytes.optim.PagedAdamW8bit",
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["paged-adamw-8bit"]),
    Optimizer("adafactor", 2, factored=True, hf_name="adafactor",
              torch_class="transformers.optimization.Adafactor",
              torch_kwargs=(("relative_step", False), ("scale_parameter", False), ("warmup_init", False)),
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["adafactor"]),
    Optimizer("sgd", 0, hf_name="sgd", torch_class="torch.optim.SGD",
              torch_kwargs=(("momentum", 0.0), ("foreach", True))),
    Optimizer("sgd-momentum", 1, hf_name="sgd", hf_optim_args="momentum=0.9", torch_class="torch.optim.SGD",
              torch_kwargs=(("momentum", 0.9), ("foreach", True)),
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["sgd-momentum"]),
    Optimizer("lion", 1, hf_name="lion_32bit", bnb_class="bitsandbytes.optim.Lion32bit",
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["lion"]),
    Optimizer("lion-8bit", 1, eight_bit=True, hf_name="lion_8bit", bnb_class="bitsandbytes.optim.Lion8bit",
              update_s_per_param=cal.OPTIMIZER_UPDATE_S_PER_PARAM["lion-8bit"]),
)}


# transformers' TrainingArguments.optim names (training_args.py OptimizerNames, transformers
# 5.25) accepted as --optimizer: each row's hf_name and hf_aliases are its aliases, so an alias
# is the row whose memory behaviour is what the Trainer builds for that name
# (trainer_optimizer.py): "adamw_torch" is torch.optim.AdamW with no foreach/fused argument,
# which on CUDA defaults to foreach (torch/optim/optimizer.py _default_to_fused_or_foreach),
# whose _multi_tensor_adam makes the full-size torch._foreach_sqrt(exp_avg_sqs) temporary
# (torch/optim/adam.py): adamw-foreach; "adamw_torch_fused" adds fused=True (one kernel, no
# temporary): adamw; the bitsandbytes names pick optim_bits from "8bit" and is_paged from
# "paged" (_get_bitsandbytes_optimizer): adamw-8bit, paged-adamw, paged-adamw-8bit, lion,
# lion-8bit. A name whose row needs optim_args is not an alias ("sgd" alone is momentum 0:
# the sgd row, not sgd-momentum).
OPTIMIZER_ALIASES: dict[str, str] = {
    alias: o.name for o in OPTIMIZERS.values() if not o.hf_optim_args
    for alias in (o.hf_name, *o.hf_aliases) if alias and alias not in OPTIMIZERS}

# The other transformers 5.25 OptimizerNames: optimizers with no row here (another state
# layout: torchao's 4/8-bit AdamW, paged Lion, AdEMAMix, RMSprop, GaLore, ...), refused by
# name instead of matched to a row whose memory differs.
HF_NOT_MODELLED: tuple[str, ...] = (
    "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit",
    "ademamix", "adagrad", "ademamix_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit",
    "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw",
    "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw",
    "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)


def canonical_optimizer(name: str) -> str:
    """An --optimizer spelling as the row's name: transformers' names become tuneplan's
    (adamw_torch -> adamw-foreach); any other text is returned as given."""
    return OPTIMIZER_ALIASES.get(name, name)


def optimizer(name: str) -> Optimizer:
    """The Optimizer record for an --optimizer name (a row's own name: see canonical_optimizer)."""
    if isinstance(name, str) and name in HF_NOT_MODELLED:
        raise TuneplanError(f"optimizer {name!r} (transformers' TrainingArguments.optim) is not modelled: no "
                            f"row here has its memory behaviour; choose one of: {', '.join(OPTIMIZERS)}")
    return lookup(OPTIMIZERS, "optimizer", name, OPTIMIZER_ALIASES)
