"""QLoRA with the real bitsandbytes layers (the trace uses same-shaped stand-ins).

What transformers' bitsandbytes integration does on from_pretrained with a
BitsAndBytesConfig (integrations/bitsandbytes.py replace_with_bnb_linear, then loading the
weights as Params4bit / Int8Params, which quantise when moved to the device): every
nn.Linear inside the decoder layers becomes bitsandbytes.nn.Linear4bit (nf4/fp4,
bnb_4bit_compute_dtype, double quantisation, blocksize) or Linear8bitLt
(has_fp16_weights=False, llm_int8_threshold=6.0); embeddings, norms and lm_head stay in the
model dtype. Here the weights are the model's random ones, quantised on the device.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from tuneplan.errors import TuneplanError
from tuneplan.job import Method
from tuneplan.trace.build import Quantiser, decoder_linears, set_module

LLM_INT8_THRESHOLD = 6.0  # BitsAndBytesConfig default


def bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def bnb_quantiser(device: torch.device) -> Quantiser:
    """A quantiser for tuneplan.trace.build.build_model that puts real bitsandbytes layers on `device`.

    Raises:
        TuneplanError: bitsandbytes is not installed.
    """
    if not bnb_available():
        raise TuneplanError("qlora needs bitsandbytes: pip install -e '.[probe]' (or pip install bitsandbytes)")

    def quantise(model: nn.Module, method: Method, compute_dtype: torch.dtype) -> int:
        import bitsandbytes as bnb

        count = 0
        for name, lin in decoder_linears(model):
            bias = lin.bias is not None
            with torch.device("meta"):  # no full-size placeholder weight
                if method.weight_bits == 8:
                    new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=bias, has_fp16_weights=False,
                                              threshold=LLM_INT8_THRESHOLD)
                else:
                    new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=bias, compute_dtype=compute_dtype,
                                            compress_statistics=method.double_quant, quant_type=method.quant,
                                            quant_storage=torch.uint8)
            if method.weight_bits == 8:
                new.weight = bnb.nn.Int8Params(lin.weight.data, requires_grad=False, has_fp16_weights=False)
            else:
                new.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type=method.quant,
                                               compress_statistics=method.double_quant,
                                               blocksize=method.quant_blocksize, quant_storage=torch.uint8)
            if bias:
                new.bias = nn.Parameter(lin.bias.data.to(compute_dtype), requires_grad=False)
            new = new.to(device)  # Params4bit / Int8Params quantise when moved to a device
            set_module(model, name, new)
            del lin
            count += 1
        # what transformers' bitsandbytes quantizer marks on the model; PEFT reads it to wrap the
        # layers with its bitsandbytes LoRA classes (peft/tuners/lora/bnb.py dispatch_bnb_4bit/8bit)
        if method.weight_bits == 8:
            model.is_loaded_in_8bit = True
        else:
            model.is_loaded_in_4bit = True
        return count

    return quantise


def quant_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps outside parameters and buffers (QuantState absmax/code and the
    nested state of double quantisation; Int8Params SCB), so the counters see them as resident."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(obj: object, depth: int = 0) -> None:
        if obj is None or depth > 3 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out.append(obj)
            return
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, torch.Tensor) or hasattr(value, "__dict__") and type(value).__module__.startswith(
                    "bitsandbytes"):
                walk(value, depth + 1)

    for p in model.parameters():
        walk(getattr(p, "quant_state", None))
        for attr in ("SCB", "CB"):
            t = getattr(p, attr, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    for m in model.modules():
        state = getattr(m, "state", None)
        if state is not None and type(state).__module__.startswith("bitsandbytes"):
            walk(state)
    return out
