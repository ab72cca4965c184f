"""config.json + Method -> the real transformers/PEFT model, ready to train (no weights loaded).

The model is built by transformers itself (AutoConfig.for_model + AutoModelForCausalLM.from_config),
so every tensor the modelling code creates and saves is the real one. Under a
FakeTensorMode the parameters are fake: shapes, dtypes and storages but no data.

Methods (tuneplan.job.Method):
  full    every parameter trains;
  freeze  only the last k decoder layers train (embeddings, final norm, lm_head frozen);
  lora / dora  PEFT LoraConfig(r, target_modules, use_dora) via get_peft_model, adapters
          upcast to fp32 (get_peft_model(autocast_adapter_dtype=True), the PEFT default)
          unless the framework profile keeps them in the model dtype (torchtune);
  qlora   every decoder-layer linear replaced by a bitsandbytes-shaped stand-in
          (tuneplan.trace.quant), then LoRA on top with PEFT's 4-bit LoRA forward.
          Embeddings, norms and lm_head stay in the model dtype, as bitsandbytes loading
          leaves them (llm_int8_skip_modules / lm_head excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuneplan.errors import TuneplanError
from tuneplan.job import Method, Training
from tuneplan.trace.quant import Linear4bitStandIn, Linear8bitStandIn

# config.json keys that describe files or loading, not the architecture.
_DROP_KEYS = ("model_type", "architectures", "quantization_config", "auto_map", "transformers_version",
              "torch_dtype", "dtype", "_name_or_path")


# (model, method, compute dtype) -> replaces the decoder linears in place, returns how many
Quantiser = Callable[[nn.Module, Method, torch.dtype], int]


@dataclass(frozen=True)
class Precision:
    """Parameter dtype and autocast dtype (None = no autocast) for a Training.precision."""

    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None


def precision_of(training: Training) -> Precision:
    """Map tuneplan precision names to what the HF Trainer does.

    bf16/fp16: weights in half precision and the forward under torch.autocast (Trainer
    with bf16=True wraps the forward in accelerate's autocast); torchtune runs without
    autocast. amp: fp32 weights, bf16 autocast. fp32: no autocast.

    Raises:
        TuneplanError: --precision mixed (fp32 master weights live in DeepSpeed/FSDP, not in
            a single-process step).
    """
    p = training.dtypes
    if not p.traceable:
        raise TuneplanError(f"trace does not model --precision {p.name} (master weights live in DeepSpeed/FSDP); "
                            "use bf16 or amp")
    autocast = getattr(torch, p.torch_autocast_dtype) if training.autocast and p.torch_autocast_dtype else None
    return Precision(getattr(torch, p.torch_param_dtype), autocast)


def hf_config(config: dict[str, Any], attention: str):
    """A transformers PretrainedConfig from a config.json dict (no weights, no network)."""
    from transformers import AutoConfig

    model_type = config.get("model_type")
    if not model_type:
        raise TuneplanError("config.json has no model_type; cannot build the model")
    kwargs = {k: v for k, v in config.items() if k not in _DROP_KEYS}
    try:
        cfg = AutoConfig.for_model(model_type, **kwargs)
    except (KeyError, ValueError) as e:
        raise TuneplanError(f"transformers cannot build model_type {model_type!r}: {e}") from None
    cfg.use_cache = False
    text = getattr(cfg, "get_text_config", lambda: cfg)()
    text.use_cache = False
    return cfg


def attention_impl(training: Training) -> str:
    """transformers attn_implementation for --attention (flash runs as SDPA: same O(s) memory)."""
    return training.attn.trace_impl


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(qualified name, module) of every nn.Linear inside the decoder layers (not lm_head)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}" and not name.endswith("lm_head"):
            out.append((name, mod))
    return out


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` by `new`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantise(model: nn.Module, method: Method, compute_dtype: torch.dtype) -> int:
    """Replace decoder-layer linears by bitsandbytes-shaped stand-ins; return how many.

    The MoE router ("gate"/"router" with few outputs) is quantised too, as
    BitsAndBytesConfig does unless listed in llm_int8_skip_modules.
    """
    count = 0
    for name, lin in decoder_linears(model):
        dev = lin.weight.device
        if method.quant == "int8":
            new = Linear8bitStandIn(lin.in_features, lin.out_features, lin.bias is not None, compute_dtype, dev)
        else:
            new = Linear4bitStandIn(lin.in_features, lin.out_features, lin.bias is not None, compute_dtype,
                                    method.quant_blocksize, method.double_quant, dev)
        set_module(model, name, new)
        count += 1
    return count


def _target_names(model: nn.Module, method: Method) -> list[str]:
    """Module-name suffixes PEFT should adapt ("all-linear" resolved here so stand-ins count)."""
    kinds = (nn.Linear, Linear4bitStandIn, Linear8bitStandIn)
    present = {name.rpartition(".")[2] for name, m in model.named_modules()
               if isinstance(m, kinds) and ".layers." in f".{name}"}
    present -= {"gate", "router"} if any(k in present for k in ("gate_proj", "w1", "up_proj")) else set()
    if method.targets == "all-linear":
        names = sorted(present)
    else:
        aliases = {"gate_proj": ("gate_proj", "gate_up_proj", "w1"),
                   "up_proj": ("up_proj", "gate_up_proj", "w3", "fc1", "dense_h_to_4h"),
                   "down_proj": ("down_proj", "w2", "fc2", "dense_4h_to_h"), "o_proj": ("o_proj", "dense"),
                   "q_proj": ("q_proj", "qkv_proj", "query_key_value"),
                   "k_proj": ("k_proj", "qkv_proj", "query_key_value"),
                   "v_proj": ("v_proj", "qkv_proj", "query_key_value")}
        names = sorted({a for t in method.targets for a in aliases.get(t, (t,)) if a in present})
    if not names:
        raise TuneplanError(f"--targets {method.targets} match no linear layer of this model")
    return names


def _lora_4bit_class():
    """A PEFT LoRA layer over a quantised stand-in, with peft/tuners/lora/bnb.py Linear4bit.forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    class LoraQuantLinear(LoraLinear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            result = self.base_layer(x, *args, **kwargs)
            result = result.clone()  # bnb.py: "for 4bit, we need to defensively clone here"
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                lora_A, lora_B = self.lora_A[name], self.lora_B[name]
                # bnb.py tests torch.is_autocast_enabled(), i.e. CUDA autocast; a CUDA run under
                # autocast skips the fp32 cast, so test the autocast of the device in use.
                requires_conversion = not torch.is_autocast_enabled(x.device.type)
                if requires_conversion:
                    expected = result.dtype
                    x = self._cast_input_dtype(x, lora_A.weight.dtype)
                output = lora_B(lora_A(self.lora_dropout[name](x)))
                if requires_conversion:
                    output = output.to(expected)
                result = result + output * self.scaling[name]
            return result

    return LoraLinear, LoraQuantLinear


def apply_method(model: nn.Module, method: Method, training: Training,
                 quantiser: Quantiser | None = None, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Set requires_grad / wrap with PEFT for the method; returns the model to train.

    `quantiser` replaces the decoder linears for qlora (default: the bitsandbytes-shaped
    stand-ins of `quantise`; `tuneplan probe` passes real bitsandbytes layers, which PEFT
    wraps with its own bitsandbytes LoRA layers). `task_type` is PEFT's; "SEQ_CLS" (a scalar-head
    model) is PeftModelForSequenceClassification's effect without its class: the `score` head
    trains in full (PEFT keeps it in modules_to_save, a trainable copy of an [h] weight; the copy
    is a deepcopy that fake tensors do not survive, so the head itself is trained here).

    Raises:
        TuneplanError: the method cannot be traced (e.g. trainable layers > layers).
    """
    prec = precision_of(training)
    if method.kind == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if method.kind == "freeze":
        layers = layer_list(model)
        k = method.trainable_layers
        if k > len(layers):
            raise TuneplanError(f"--trainable-layers {k} exceeds the model's {len(layers)} layers")
        for layer in layers[len(layers) - k:]:
            layer.requires_grad_(True)
        _train_embeddings(model, method)
        return model
    from peft import LoraConfig, get_peft_model

    if method.kind == "qlora":
        (quantiser or quantise)(model, method, prec.autocast_dtype or prec.param_dtype)
        _kbit_upcast(model, training)
    cfg = LoraConfig(r=method.rank, lora_alpha=2 * method.rank, lora_dropout=method.lora_dropout,
                     target_modules=_target_names(model, method), use_dora=method.kind == "dora",
                     bias="none", task_type=None if task_type == "SEQ_CLS" else task_type)
    if method.kind == "qlora" and quantiser is None:
        _, quant_cls = _lora_4bit_class()
        cfg._register_custom_module({Linear4bitStandIn: quant_cls, Linear8bitStandIn: quant_cls})
    peft_model = get_peft_model(model, cfg, autocast_adapter_dtype=training.profile.adapter_fp32)
    if method.kind == "qlora":
        _kbit_recast(peft_model, training, prec.param_dtype)
    if task_type == "SEQ_CLS":
        peft_model.get_base_model().score.requires_grad_(True)
    _train_embeddings(peft_model, method)
    return peft_model


def _kbit_upcast(model: nn.Module, training: Training) -> None:
    """peft.prepare_model_for_kbit_training's cast (peft/utils/other.py): every fp16/bf16
    parameter that bitsandbytes did not quantise becomes fp32 (tuneplan.choices.kbit_prep)."""
    if not training.prep.fp32_unquantised:
        return
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)


def _kbit_recast(model: nn.Module, training: Training, param_dtype: torch.dtype) -> None:
    """What a preparation casts back after the adapters exist: TRL's peft_module_casting_to_bf16
    (trl/trainer/utils.py) puts adapters in bf16, norms in fp32 and embed_tokens/lm_head back
    in the model dtype; the record's fields say which applies."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    prep = training.prep
    if not prep.fp32_unquantised:
        return
    inner = model.get_base_model()
    if not prep.fp32_embeddings:
        inner.get_input_embeddings().to(param_dtype)
        out = inner.get_output_embeddings()
        if out is not None:
            out.to(param_dtype)
    if prep.adapter_bytes is not None:
        dtype = {2: param_dtype, 4: torch.float32}[prep.adapter_bytes]
        for mod in model.modules():
            if isinstance(mod, BaseTunerLayer):
                for name in mod.adapter_layer_names:
                    getattr(mod, name).to(dtype)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The decoder layers (the ModuleList whose name ends in "layers")."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.endswith("layers"):
            return mod
    raise TuneplanError("cannot find the decoder layers of this model")


def _train_embeddings(model: nn.Module, method: Method) -> None:
    if not method.train_embeddings:
        return
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.get_input_embeddings().weight.requires_grad_(True)
    out = inner.get_output_embeddings()
    if out is not None:
        out.weight.requires_grad_(True)


def build_model(config: dict[str, Any], method: Method, training: Training, *, attn_impl: str | None = None,
                quantiser: Quantiser | None = None, head: str = "lm") -> nn.Module:
    """Build the model on the current device/mode (call inside FakeTensorMode for a fake model).

    Args:
        config: config.json contents.
        method: how it is adapted.
        training: precision, attention kernel and checkpointing.
        attn_impl: transformers attn_implementation (default: what the trace runs, attention_impl).
        quantiser: how qlora replaces the decoder linears (see apply_method).
        head: "lm" (AutoModelForCausalLM) or "scalar" (AutoModelForSequenceClassification with
            num_labels=1, as TRL's RewardTrainer loads it: trl/trainer/reward_trainer.py, num_labels=1).

    Returns:
        The model in train mode, checkpointing enabled if asked (use_reentrant=False, the
        transformers 5 default in PreTrainedModel._activation_checkpointing_enable).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if training.checkpointing == "offload":
        raise TuneplanError("trace cannot tell host from device memory on a CPU run; "
                            "use --checkpointing full or none")
    prec = precision_of(training)
    attn = attn_impl or attention_impl(training)
    cfg = hf_config(config, attn)
    auto = AutoModelForCausalLM
    if head == "scalar":
        auto = AutoModelForSequenceClassification
        cfg.num_labels = 1
        if getattr(cfg, "pad_token_id", None) is None:  # the classifier finds each row's last token through the pad id
            cfg.pad_token_id = 0
    try:
        model = auto.from_config(cfg, dtype=prec.param_dtype, attn_implementation=attn)
    except ValueError as e:
        raise TuneplanError(f"transformers cannot build this model: {e}") from None
    if training.checkpointing == "full":
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model = apply_method(model, method, training, quantiser, "SEQ_CLS" if head == "scalar" else "CAUSAL_LM")
    model.train()
    return model
