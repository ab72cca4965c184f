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

    Low-precision training recipes (fp8, fp8-current, fp8-torchao, mxfp8, nvfp4): bf16 weights,
    activations and optimizer as under bf16; only the GEMMs of the decoder blocks' linear layers
    (attention q/k/v/o, MLP, experts) run on quantised operands. Attention's QK^T/AV products,
    the embeddings, lm_head, norms and the loss stay bf16 (TransformerEngine quantises te.Linear /
    LayerNormLinear / LayerNormMLP / GroupedLinear only, transformer_engine/pytorch/module/*.py at
    2.20.0.dev0 d0067d0; torchao 0.19 convert_to_float8_training swaps nn.Linear and torchtitan
    skips lm_head via filter_fqns=["output"]; Megatron-Core keeps embeddings and the output layer
    bf16, optionally also the first/last blocks with --first-last-layers-bf16, not modelled).
    tuneplan.lowprec prices them (rates, casts, memory).

        gemm_bits: bits of the linear GEMMs' operands (16: the compute dtype; 8: fp8 E4M3/E5M2;
            4: fp4 E2M1). Their rate is the device's fp8_tflops (8) or fp4_tflops (4).
        scale_block: elements sharing one 1-byte scale (MXFP8: 32, E8M0; NVFP4: 16, E4M3 plus one
            fp32 per tensor); 0: one fp32 scale per tensor.
        block_scaled: needs block-scaled tensor cores (compute capability 10.x: TE 2.20
            pytorch/quantization.py check_mxfp8_support / check_nvfp4_support).
        amax_pass: the cast reads each tensor once more for its amax first (current scaling;
            NVFP4's per-tensor scale); delayed scaling takes it from the history, block scaling
            computes each block's amax in the cast kernel.
        amax_history: fp32 amax-history length per quantised tensor (TE DelayedScaling
            amax_history_len default 1024, common/recipe/__init__.py).
        saves_quantised_input: a linear keeps its input for the weight gradient in the quantised
            format instead of bf16 (TE module/linear.py: input_quantizer with columnwise usage,
            rowwise data discarded); torchao saves the bf16 input (float8/float8_linear.py
            matmul_with_hp_or_float8_args: ctx.save_for_backward(input_hp, weight_hp_t)).
        weight_copies: persistent quantised copies of each linear weight (TE's _fp8_workspaces,
            module/base.py: rowwise + columnwise/transposed data kept across micro-batches, cast
            once per optimizer step); 0: cast again each micro-batch (torchao).
        recipe: the library recipe the record stands for.
        accelerate_fp8_backend: accelerate's fp8_config backend that runs the recipe ("TE":
            TransformerEngine DelayedScaling with amax_history_len/amax_compute_algo, "AO": torchao
            Float8Linear; accelerate 1.16 commands/config/cluster.py, commands/launch.py --fp8_*);
            "" where accelerate has no setting for it (current scaling, MXFP8, NVFP4).
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
    gemm_bits: int = 16
    scale_block: int = 0
    block_scaled: bool = False
    amax_pass: bool = False
    amax_history: int = 0
    saves_quantised_input: bool = False
    weight_copies: int = 0
    recipe: str = ""
    accelerate_fp8_backend: str = ""

    @property
    def low_precision(self) -> bool:
        """The blocks' linear GEMMs run below 16 bits."""
        return self.gemm_bits < 16

    @property
    def element_bytes(self) -> float:
        """Bytes per quantised element, its share of a block scale included."""
        return self.gemm_bits / 8 + (1 / self.scale_block if self.scale_block else 0.0)


# bf16 weights, activations, gradients and optimizer states, as under "bf16" (Megatron-Core:
# bf16 params + fp32 main grads + the distributed optimizer's fp32 master), linears quantised
_LP = dict(param_bytes=2, compute_bytes=2, autocast="profile", torch_param_dtype="bfloat16",
           torch_autocast_dtype="bfloat16", traceable=False)


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
    # TransformerEngine DelayedScaling (HYBRID: E4M3 forward, E5M2 gradients; scale from a
    # 1024-step amax history): Megatron-LM's default --fp8-recipe delayed
    Precision("fp8", **_LP, gemm_bits=8, amax_history=1024, saves_quantised_input=True, weight_copies=2,
              recipe="TransformerEngine DelayedScaling (Megatron --fp8-format hybrid --fp8-recipe delayed)",
              accelerate_fp8_backend="TE"),
    # TransformerEngine Float8CurrentScaling: per-tensor scale from this step's amax
    Precision("fp8-current", **_LP, gemm_bits=8, amax_pass=True, saves_quantised_input=True, weight_copies=2,
              recipe="TransformerEngine Float8CurrentScaling (Megatron --fp8-recipe tensorwise)"),
    # torchao Float8Linear, dynamic tensorwise scaling, as torchtitan's float8 converter runs it
    Precision("fp8-torchao", **_LP, gemm_bits=8, amax_pass=True,
              recipe="torchao Float8Linear tensorwise (torchtitan --model.converters float8)",
              accelerate_fp8_backend="AO"),
    # TransformerEngine MXFP8BlockScaling: E4M3, one E8M0 scale per 32 elements
    Precision("mxfp8", **_LP, gemm_bits=8, scale_block=32, block_scaled=True, saves_quantised_input=True,
              weight_copies=2, recipe="TransformerEngine MXFP8BlockScaling (Megatron --fp8-recipe mxfp8)"),
    # TransformerEngine NVFP4BlockScaling: E2M1, one E4M3 scale per 16 elements + one fp32 per
    # tensor; random Hadamard transforms and stochastic rounding fused into the casts
    Precision("nvfp4", **_LP, gemm_bits=4, scale_block=16, block_scaled=True, amax_pass=True,
              saves_quantised_input=True, weight_copies=2,
              recipe="TransformerEngine NVFP4BlockScaling (Megatron --fp4-format e2m1 --fp4-recipe nvfp4)"),
)}


def precision(name: str) -> Precision:
    """The Precision record for a --precision name."""
    return lookup(PRECISIONS, "precision", name)
