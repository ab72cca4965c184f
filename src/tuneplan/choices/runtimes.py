"""Execution runtimes: the backend a training step runs on, and what its memory counters mean.

A framework profile runs on a runtime chosen by the device vendor
(FrameworkProfile.runtimes): the HF/PEFT stack on NVIDIA is CUDA, on Apple silicon PyTorch's
MPS; mlx-lm on Apple is MLX's Metal backend, on NVIDIA MLX's CUDA backend. The runtime says
what sits on top of the live tensors (a CUDA context, a caching allocator's overhead), which
counters exist, which quantisation libraries run, and which fused kernels the step gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.choices import lookup


@dataclass(frozen=True)
class Runtime:
    """One execution backend.

    Args:
        name: the setting (cuda, rocm, mps, mlx-metal, mlx-cuda, mlx-cpu).
        label: its name for people.
        context_bytes: memory the process holds outside the tensor allocator (CUDA context,
            cuBLAS workspace); 0 where there is none to count (Metal, MLX).
        context_label: what that memory is called on this runtime ("CUDA context").
        allocator_overhead: reserved minus allocated as a share of allocated (the caching
            allocator); 0 where the runtime's peak counter already is what the device holds.
        counters: (tuneplan counter, the runtime's own name for it); a counter missing here
            has no meaning on the runtime (MLX has no "reserved": its buffer cache is
            memory freed and kept for reuse, mx.get_cache_memory(), not counted in
            mx.get_peak_memory()). Tables label their figures with these names, so an
            MLX or MPS estimate names MLX's and Metal's counters, never torch.cuda's.
        quant_libraries: quantisation libraries whose kernels run here (QuantFormat.library).
        bnb_optimizers: bitsandbytes' 8-bit and paged optimizers run here (CUDA kernels and
            cudaMallocManaged; bitsandbytes 0.50.2 backends/mps/ops.py registers no optimizer op).
        fast_cross_entropy: MLX uses its fused mx.fast.cross_entropy kernel (GPU backends only:
            mlx/nn/losses.py cross_entropy, `use_fast = mx.default_device() == mx.gpu and ...`,
            mlx 0.32.4); otherwise the composed logsumexp - take_along_axis path runs.
        fused_attention_backward: MLX's mx.fast.scaled_dot_product_attention has a fused
            backward here; False: the vjp runs through the composed fallback, which keeps the
            s x s probabilities of every head (MLX CPU backend).
        unified: memory is shared with the host (offload does not free device memory).
        memory_limit: how the usable memory is set on this runtime (one sentence).
        note: a caveat shown with estimates on this runtime.
    """

    name: str
    label: str
    context_bytes: int
    allocator_overhead: float
    counters: tuple[tuple[str, str], ...]
    quant_libraries: tuple[str, ...]
    fast_cross_entropy: bool = False
    bnb_optimizers: bool = True
    fused_attention_backward: bool = True
    unified: bool = False
    memory_limit: str = ""
    note: str = ""
    context_label: str = ""


_TORCH_CUDA_COUNTERS = (("allocated", "torch.cuda.max_memory_allocated()"),
                        ("reserved", "torch.cuda.max_memory_reserved()"),
                        ("device", "nvidia-smi / torch.cuda.mem_get_info()"))
# torch's ROCm build keeps the torch.cuda API (HIP underneath); the device total is amd-smi's
_TORCH_ROCM_COUNTERS = (*_TORCH_CUDA_COUNTERS[:2], ("device", "amd-smi / torch.cuda.mem_get_info()"))
# MLX has no "reserved" counter; "device_used" is the JSON key of the device total (MLX's
# buffer cache, mx.get_cache_memory(), is memory freed and kept for reuse: not counted)
_MLX_COUNTERS = (("allocated", "mx.get_peak_memory (mlx-lm 'Peak mem')"),
                 ("device", "device_used (MLX's buffer cache, mx.get_cache_memory(), not counted)"))

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("cuda", "PyTorch on CUDA", context_bytes=cal.CUDA_CONTEXT_BYTES, context_label="CUDA context",
            allocator_overhead=cal.ALLOCATOR_OVERHEAD, counters=_TORCH_CUDA_COUNTERS,
            quant_libraries=("bitsandbytes",),
            memory_limit="the device's usable memory (tuneplan.hardware)"),
    Runtime("rocm", "PyTorch on ROCm (HIP)", context_bytes=cal.CUDA_CONTEXT_BYTES, context_label="HIP context",
            allocator_overhead=cal.ALLOCATOR_OVERHEAD, counters=_TORCH_ROCM_COUNTERS,
            quant_libraries=("bitsandbytes",),
            memory_limit="the device's usable memory (tuneplan.hardware)",
            note="ROCm's HIP context and caching allocator are taken as CUDA's."),
    Runtime("mps", "PyTorch on Apple MPS (Metal)", context_bytes=0, allocator_overhead=0.0,
            counters=(("allocated", "torch.mps.current_allocated_memory()"),
                      ("device", "torch.mps.driver_allocated_memory()")),
            quant_libraries=("bitsandbytes",), bnb_optimizers=False, unified=True,
            memory_limit=(f"PYTORCH_MPS_HIGH_WATERMARK_RATIO (default {cal.MPS_HIGH_WATERMARK_RATIO}) x "
                          "Metal's recommendedMaxWorkingSetSize; tuneplan budgets the working-set size"),
            note=("bitsandbytes 4-bit/int8 layers run on MPS (bitsandbytes/backends/mps/ops.py registers quantize_4bit, "
                  "dequantize_4bit, gemm_4bit; read in 0.50.2; below macOS 26 through pure-PyTorch fallbacks, slow); its "
                  "8-bit and paged optimizers do not (no MPS optimizer kernel; paged states need CUDA managed memory).")),
    Runtime("mlx-metal", "MLX on Apple silicon (Metal)", context_bytes=0, allocator_overhead=0.0,
            counters=_MLX_COUNTERS, quant_libraries=("mlx",), fast_cross_entropy=True, unified=True,
            memory_limit="mx.set_memory_limit (default: Metal's recommendedMaxWorkingSetSize; mlx-lm raises the "
                         "wired limit to it, mlx_lm/utils.py maybe_set_recommended_wired_limit)"),
    Runtime("mlx-cuda", "MLX on NVIDIA (CUDA backend)", context_bytes=cal.CUDA_CONTEXT_BYTES,
            context_label="CUDA context",
            allocator_overhead=0.0, counters=_MLX_COUNTERS, quant_libraries=("mlx",), fast_cross_entropy=True,
            memory_limit="the device's usable memory less the CUDA context",
            note="MLX's CUDA backend holds a CUDA context (outside mx.get_peak_memory); its buffer cache is "
                 "not counted."),
    Runtime("mlx-cpu", "MLX on the CPU", context_bytes=0, allocator_overhead=0.0, counters=_MLX_COUNTERS,
            quant_libraries=("mlx",), fast_cross_entropy=False, fused_attention_backward=False, unified=True,
            memory_limit="host RAM"),
)}


def runtime(name: str) -> Runtime:
    """The Runtime record for a --runtime name."""
    return lookup(RUNTIMES, "runtime", name)
