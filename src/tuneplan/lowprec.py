"""Low-precision training (fp8, mxfp8, nvfp4): the rates, cast traffic and memory they change.

The precision records (tuneplan.choices.precision: fp8, fp8-current, fp8-torchao, mxfp8, nvfp4)
say which library recipe runs; this module prices them from their fields, for tuneplan.timing
and tuneplan.memory. Only the decoder blocks' linear GEMMs (attention q/k/v/o, MLP, experts;
not the router) run on quantised operands; attention's QK^T and AV, the embeddings, lm_head,
norms, LoRA adapters and the loss stay bf16 (tuneplan.choices.precision cites the libraries).

Rates: the linear GEMMs run at the device's dense fp8 (8-bit records) or fp4 (4-bit) tensor
rate from the catalog (Device.fp8_tflops / fp4_tflops: hardware.csv fp8_dense_tflops; the fp4
figures and their vendor sources in scripts/build_device_catalog.py FP4_DENSE_TFLOPS); MXFP8
runs at the FP8/FP6 rate on Blackwell. Assumption: a quantised GEMM reaches the same share of
its peak as a bf16 one (tuneplan.calibration.matmul_scale and the profile's efficiency apply
to both), as torchao's own float8 roofline assumes (torchao 0.19 torchao/testing/training/
roofline_utils.py: one pct_achievable_gemm_tops, 0.78 on H100, for bf16 and fp8 alike). The
measured bf16/fp8 pairs in benchmarks/results/parallel_time.md check it: the predicted speed-up
runs ~10% above the measured one (1.40x vs 1.28x torchtitan Llama-3.1-8B on H100; 1.36x vs 1.25x
in torchao's docs/source/workflows/training.md table), so fp8 GEMMs likely reach a lower share.

Casts (closed form, bytes per token, at the memory bandwidth with the pointwise kernels), for
each distinct linear input of width d_in and each linear output of width d_out, c = the
compute dtype's bytes (2), q = the quantised element's bytes with its block-scale share
(Precision.element_bytes: 1, 1 + 1/32, 1/2 + 1/16), a = 1 when the recipe reads the tensor
once more for its amax (Precision.amax_pass):
- forward input: read (1 + a) c d_in, write q d_in rowwise, plus q d_in columnwise when the
  library saves the quantised input for the weight gradient (TE: one fused cast-transpose);
  repeated by recomputation;
- backward output gradient (full fine-tuning): read (1 + a) c d_out, write 2 q d_out (rowwise
  for the input gradient, columnwise for the weight gradient); adapters/frozen base: q d_out;
- torchao (bf16 input saved): the backward casts the input again, (1 + a) c d_in + q d_in;
- weights, per micro-batch (torchao: forward and backward casts) or per optimizer step (TE
  caches its workspaces across micro-batches, is_first_microbatch): read (1 + a) c, write
  q x max(1, weight_copies) per weight element, spread over the step's tokens.
Fused kernels that emit the quantised tensor straight from a norm (TE LayerNormLinear) or
activation save part of this; not counted (upper bound on the casts).

Memory: TE keeps `weight_copies` quantised copies of every linear weight (rowwise + columnwise)
and, for delayed scaling, an fp32 amax history of amax_history entries for each of the 5
quantised tensors of a module (3 forward: input, weight, output; 2 backward: grad output, grad
input: module/base.py init_fp8_meta_tensors); a linear's input saved in the quantised format
replaces its bf16 copy (full fine-tuning only: a frozen base keeps no input for a weight
gradient). torchao's float8 all-gather under FSDP2 (enable_fsdp_float8_all_gather) halves the
gathered weights and their traffic: not modelled (bf16 all-gather counted, conservative).
"""

from __future__ import annotations

from functools import lru_cache

from tuneplan.choices.precision import Precision
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job, Method
from tuneplan.memory.trained import first_trained_layer, layer_groups
from tuneplan.model_spec import Linear, ModelSpec, layer_linears

# TE fp8 meta: quantised tensors per module with a scale and an amax history (forward: input,
# weight, output; backward: grad output, grad input), TE 2.20 module/base.py
FP8_META_TENSORS = 5


def _quantised(lin: Linear) -> bool:
    """A linear whose GEMMs a low-precision recipe quantises (routers stay high precision:
    Megatron-Core TopKRouter is a plain bf16/fp32 GEMM)."""
    return lin.group != "router"


# the blocks' output projections: their input is their own (attention output, MLP activation)
_OUTPUT_PROJECTIONS = ("o_proj", "down_proj")


def _inputs(lins: list[Linear] | tuple[Linear, ...]) -> dict[tuple[str, int, bool], int]:
    """Distinct linear inputs of a layer -> copies per token: q/k/v (and gate/up) read one
    tensor, cast once (TE fuses them: LayerNormLinear qkv, LayerNormMLP fc1); routed experts
    read their tokens' copies (Linear.active)."""
    return {(lin.group, lin.d_in, lin.name in _OUTPUT_PROJECTIONS): lin.active for lin in lins if _quantised(lin)}


def unsupported(device: Device, p: Precision) -> str | None:
    """Why `device` cannot run precision `p` (one sentence), or None where it can."""
    if not p.low_precision:
        return None
    if p.block_scaled and not device.fp4_tflops:
        return (f"--precision {p.name} needs block-scaled tensor cores (Blackwell B200/B300/GB300, compute "
                f"capability 10.x; TransformerEngine check_mxfp8_support/check_nvfp4_support); {device.id} has none: "
                "use --precision fp8 or bf16")
    rate = device.fp4_tflops if p.gemm_bits <= 4 else device.fp8_tflops
    if not rate:
        return (f"--precision {p.name} needs fp8 tensor cores (Ada, Hopper, Blackwell, MI300; TransformerEngine "
                f"check_fp8_support: compute capability 8.9+); {device.id} has no fp8 rate: use --precision bf16")
    return None


def matmul_peak_flops(device: Device, p: Precision) -> tuple[float, float]:
    """(linear-layer FLOP/s, other FLOP/s) at peak, dense: the blocks' linears at the fp8/fp4
    rate of a low-precision record, everything else (and every GEMM otherwise) at bf16.

    Raises:
        TuneplanError: the device does not run the record's format (one line).
    """
    why = unsupported(device, p)
    if why:
        raise TuneplanError(why)
    if not device.bf16_tflops:
        raise TuneplanError(f"{device.id} has no published TFLOPS figure; time cannot be predicted")
    other = device.bf16_tflops * 1e12
    if not p.low_precision:
        return other, other
    rate = device.fp4_tflops if p.gemm_bits <= 4 else device.fp8_tflops
    return float(rate) * 1e12, other


@lru_cache(maxsize=16384)
def linear_flops_per_token(spec: ModelSpec, method: Method, checkpointing: str) -> float:
    """Executed FLOPs per token of the blocks' quantised linear GEMMs (forward, backward,
    recomputation), counted as tuneplan.timing.token_flops counts the base matmuls: forward
    2 x active params; backward 2x forward for full fine-tuning and freeze's trained layers,
    1x (input gradients) for adapters; recomputation 1x (full) or 1/2 (torchtitan selective)."""
    first = first_trained_layer(spec, method)
    total = 0.0
    for i in range(spec.num_layers):
        fwd = sum(2 * lin.active_params for lin in layer_linears(spec, i) if _quantised(lin))
        keeps = i >= first
        if method.kind in ("full", "freeze"):
            bwd = 2 * fwd if keeps else 0.0
        else:
            bwd = fwd if keeps else 0.0
        rec = 0.0
        if keeps and checkpointing == "selective":
            rec = fwd / 2
        elif keeps and checkpointing != "none":
            rec = fwd
        total += fwd + bwd + rec
    return total


def compute_scale(spec: ModelSpec, job: Job, device: Device, executed_per_token: float) -> float:
    """Factor on the all-bf16 GEMM time: (1 - f) + f x bf16 rate / low-precision rate, f the
    quantised linears' share of the executed FLOPs per token (1.0 for a 16-bit precision).

    Raises:
        TuneplanError: the device does not run the precision.
    """
    p = job.training.dtypes
    lin_rate, other = matmul_peak_flops(device, p)
    if not p.low_precision or executed_per_token <= 0:
        return 1.0
    f = min(1.0, linear_flops_per_token(spec, job.method, job.training.checkpointing) / executed_per_token)
    return (1 - f) + f * other / lin_rate


def _recompute(checkpointing: str) -> float:
    return {"none": 0.0, "selective": 0.5}.get(checkpointing, 1.0)


@lru_cache(maxsize=16384)
def _cast_bytes(spec: ModelSpec, method: Method, p: Precision, c: int, checkpointing: str,
                tokens_per_step: int, micro_batches: int) -> float:
    q, a = p.element_bytes, (1 if p.amax_pass else 0)
    full = method.kind == "full"
    rec = _recompute(checkpointing)
    per_token = weights = 0.0
    for layer, n in layer_groups(spec):
        lins = [lin for lin in layer_linears(spec, layer) if _quantised(lin)]
        inputs = _inputs(lins)
        fwd = sum(((1 + a) * c + q * (2 if p.saves_quantised_input and full else 1)) * d_in * act
                  for (_, d_in, _), act in inputs.items())
        grad = sum(((1 + a) * c + q * (2 if full else 1)) * lin.d_out * lin.active for lin in lins)
        recast = 0.0
        if full and not p.saves_quantised_input:  # torchao: the bf16 input cast again for wgrad
            recast = sum(((1 + a) * c + q) * d_in * act for (_, d_in, _), act in inputs.items())
        per_token += n * (fwd * (1 + rec) + grad + recast)
        elems = sum(lin.count * lin.d_in * lin.d_out for lin in lins)
        if p.weight_copies:  # TE: cast once per optimizer step into its cached workspaces
            weights += n * elems * ((1 + a) * c + q * p.weight_copies)
        else:  # torchao: forward and backward casts every micro-batch
            weights += n * elems * 2 * ((1 + a) * c + q) * micro_batches
    return per_token + weights / tokens_per_step


def cast_bytes_per_token(spec: ModelSpec, job: Job) -> float:
    """DRAM bytes per token of one micro-step that a low-precision recipe's casts, amax reads
    and transposes move (module docstring's closed form); 0 for a 16-bit precision."""
    t = job.training
    p = t.dtypes
    if not p.low_precision:
        return 0.0
    tokens = t.tokens_per_micro_batch * t.grad_accum
    return _cast_bytes(spec, job.method, p, t.compute_bytes, t.checkpointing, tokens, t.grad_accum)


@lru_cache(maxsize=16384)
def weight_cache_bytes(spec: ModelSpec, p: Precision) -> int:
    """Bytes a low-precision recipe keeps for the whole run beside the bf16 weights (before any
    sharding): `weight_copies` quantised copies of every block linear weight, and the delayed
    scaling amax history (fp32, amax_history x FP8_META_TENSORS per module; one module per
    expert, as TE's GroupedLinear keeps one quantiser per GEMM)."""
    if not p.low_precision:
        return 0
    elems = modules = 0
    for layer, n in layer_groups(spec):
        lins = [lin for lin in layer_linears(spec, layer) if _quantised(lin)]
        elems += n * sum(lin.count * lin.d_in * lin.d_out for lin in lins)
        modules += n * sum(lin.count for lin in lins)
    return int(p.weight_copies * p.element_bytes * elems + 4 * p.amax_history * FP8_META_TENSORS * modules)


def saved_input_saving(lins: tuple[Linear, ...], job: Job) -> int:
    """Bytes per token one decoder layer saves less for backward when its linears keep their
    inputs quantised (TE) instead of in the compute dtype: (c - q) per element of each distinct
    linear input; full fine-tuning only (a frozen base keeps no input for a weight gradient)."""
    t = job.training
    p = t.dtypes
    if not (p.low_precision and p.saves_quantised_input) or job.method.kind != "full":
        return 0
    return int(sum((t.compute_bytes - p.element_bytes) * d_in * act for (_, d_in, _), act in _inputs(lins).items()))


def assumption(device: Device, p: Precision) -> str:
    """One sentence for StepTime.assumptions."""
    lin, other = matmul_peak_flops(device, p)
    return (f"--precision {p.name} ({p.recipe}): the decoder blocks' linear GEMMs at {lin / 1e12:g} TFLOPS dense "
            f"{'fp4' if p.gemm_bits <= 4 else 'fp8'} (the same share of peak as bf16 GEMMs reach), attention, "
            f"lm_head and adapters at {other / 1e12:g} bf16; casts"
            f"{', amax reads' if p.amax_pass else ''} and transposes at the memory bandwidth (tuneplan.lowprec).")
