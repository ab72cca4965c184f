"""Precision settings: the dtypes of parameters, activations and optimizer states."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Precision:
    """What a --precision setting stores in which dtype.

    Args:
        name: the setting (bf16, fp16, fp32, amp, mixed).
        param_bytes: bytes per element of base and trainable parameters and their gradients.
        compute_bytes: bytes per element of activations (the autocast/compute dtype).
        autocast: "always" (fp32 weights under bf16 autocast), "profile" (the framework
            profile decides: HF Trainer autocasts a half-precision model, torchtune does
            not) or "never".
        fp32_master: an fp32 master copy of trainable parameters (DeepSpeed/FSDP mixed precision).
        fp32_states: optimizer states in fp32 whatever the parameter dtype.
        fp32_residual: the residual stream (and norm outputs) stay fp32 (fp32 weights under autocast).
        torch_param_dtype / torch_autocast_dtype: torch dtype names for the trace (None: no autocast).
        traceable: a single-process trace can run it (mixed precision lives in DeepSpeed/FSDP).
        pure_16bit: 16-bit master weights and optimizer states even under an engine whose
            default is fp32 ones (DeepSpeed's bf16 section with bf16_master_weights_and_grads
            and bf16_optimizer_states; tuneplan.memory.static.engine_fp32_master).
    """

    name: str
    param_bytes: int
    compute_bytes: int
    autocast: str
    fp32_master: bool = False
    fp32_states: bool = False
    fp32_residual: bool = False
    torch_param_dtype: str = "bfloat16"
    torch_autocast_dtype: str | None = None
    traceable: bool = True
    pure_16bit: bool = False


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("bf16", 2, 2, "profile", torch_param_dtype="bfloat16", torch_autocast_dtype="bfloat16"),
    Precision("fp16", 2, 2, "profile", torch_param_dtype="float16", torch_autocast_dtype="float16"),
    # bf16 weights and no autocast whatever the framework (litgpt's "bf16-true", a custom loop
    # on a bf16 model): PEFT then casts each adapter's input to the fp32 adapter dtype and keeps it
    Precision("bf16-true", 2, 2, "never", torch_param_dtype="bfloat16"),
    Precision("fp32", 4, 4, "never", torch_param_dtype="float32"),
    # fp32 weights under bf16 autocast: Lightning's "bf16-mixed" (fabric/plugins/precision/amp.py
    # MixedPrecision.forward_context: torch.autocast(dtype=bfloat16) around an fp32 module) and the
    # HF Trainer's --bf16 on an fp32-loaded model. Linear outputs are bf16 (compute_bytes 2); only
    # the embeddings' output, the residual stream and the norms stay fp32 (fp32_residual).
    Precision("amp", 4, 2, "always", fp32_residual=True, torch_param_dtype="float32",
              torch_autocast_dtype="bfloat16"),
    Precision("mixed", 2, 2, "never", fp32_master=True, fp32_states=True, traceable=False),
    # bf16 everywhere, also under DeepSpeed ZeRO, whose default keeps fp32 master partitions:
    # its bf16 section's bf16_master_weights_and_grads + bf16_optimizer_states (deepspeed
    # runtime/bf16_optimizer / zero config, 0.16+)
    Precision("bf16-pure", 2, 2, "profile", torch_param_dtype="bfloat16", torch_autocast_dtype="bfloat16",
              pure_16bit=True),
)}


def precision(name: str) -> Precision:
    """The Precision record for a --precision name."""
    return lookup(PRECISIONS, "precision", name)
