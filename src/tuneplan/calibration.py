"""Every calibration constant tuneplan uses, in one place, each with its source.

A constant here is either a documented library/hardware fact (cited) or a figure fitted
to named data (the data and the fit are cited). Nothing else in the package may hold a
magic number that changes an estimate.
"""

from __future__ import annotations

# ---------------------------------------------------------------- memory

# CUDA context, cuBLAS/cuDNN workspaces and kernel images loaded by PyTorch, bytes per GPU.
# Not visible to torch.cuda.max_memory_allocated() but taken from the device's memory.
# Source: PyTorch docs "CUDA semantics / memory management" (context is created per device,
# several hundred MiB, size depends on CUDA version and lazy module loading,
# CUDA_MODULE_LOADING=LAZY default since CUDA 11.7); nvidia-smi shows ~0.4-0.6 GiB for an
# idle `torch.zeros(1, device="cuda")` process on A100/H100 with CUDA 12. Stated, not fitted.
CUDA_CONTEXT_BYTES = 512 * 1024**2

# Caching-allocator overhead: reserved minus allocated, as a fraction of allocated at peak.
# PyTorch rounds blocks to 512 B, carves large tensors out of 2 MiB / 20 MiB segments and
# keeps freed blocks cached (c10/cuda/CUDACachingAllocator.cpp), so nvidia-smi shows more
# than max_memory_allocated(). 5% is the low end of what torch.cuda.memory_summary() shows
# for steady-state training loops; it is an assumption shown to the user, not a fit.
ALLOCATOR_OVERHEAD = 0.05

# bitsandbytes 8-bit optimizers: block-wise quantisation with one fp32 absmax per 256
# values, and 32-bit state for tensors under 4096 elements.
# Source: bitsandbytes/optim/optimizer.py (Optimizer8bit: min_8bit_size=4096,
# block_wise=True) and functional.py optimizer_update_8bit_blockwise (blocksize 256).
BNB_OPT_BLOCKSIZE = 256
BNB_OPT_MIN_8BIT_SIZE = 4096

# bitsandbytes 4-bit double quantisation: absmax values are quantised to 8 bit in blocks
# of 256 with one fp32 absmax each, plus a 256-entry fp32 code and an fp32 offset per
# tensor. Source: bitsandbytes/functional.py quantize_4bit (compress_statistics=True:
# quantize_blockwise(absmax - offset, blocksize=256)); QLoRA paper (Dettmers et al. 2023)
# sec. 3: 32/64 = 0.5 bit/param without, 8/64 + 32/(64*256) = 0.127 bit/param with DQ.
DQ_BLOCKSIZE = 256

# Liger-Kernel fused linear cross-entropy chunk: chunk_size =
# next_power_of_2(ceil(BT / ceil(V / H))) rows of fp32 logits (and their gradient) at a time.
# Source: linkedin/Liger-Kernel src/liger_kernel/ops/fused_linear_cross_entropy.py.
# torchtune's CEWithChunkedOutputLoss splits the (bf16) logits into 8 chunks and upcasts
# one chunk at a time (torchtune/modules/loss/ce_chunked_output_loss.py, num_output_chunks=8).
TORCHTUNE_CE_CHUNKS = 8

# ---------------------------------------------------------------- time
# (step-time efficiency per framework profile; filled in by the plan commit)
