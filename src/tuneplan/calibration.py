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
# Where the loss upcasts the whole logits to fp32 in one tensor (plain cross-entropy), the
# overhead is at least one such block (micro-batch x sequence x vocabulary x 4 bytes): the
# segment that held it is split by later allocations (the allocator's best-fit splits cached
# blocks larger than the request), so the next step's logits take a segment of their own.
# Not fitted (no free parameter; the block size is computed). MEASURED on the H100 probe grid
# (benchmarks/results/probe/summary.md, all 21 jobs plain CE): reserved - allocated over one
# fp32-logits block is 0.8-1.4 for 16 of the 17 jobs other than the Llama-3.1-8B full
# fine-tunes past 2,048 tokens (Llama-3.2-1B full at 8,192 tokens: 0.43, where 5% of
# allocated is larger anyway); those four show 2.8-3.6 (their 16-bit gradients fragment too;
# not modelled: they stay under). Grid reserved median |error| 5.5% -> 1.7%.
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
# litgpt's fine-tuning scripts run the lm_head over 128 tokens at a time and compute the
# loss per chunk without upcasting (litgpt finetune/lora.py: model(input_ids,
# lm_head_chunk_size=128); litgpt/utils.py chunked_cross_entropy(chunk_size=128)).
LITGPT_LM_HEAD_CHUNK_TOKENS = 128

# ---------------------------------------------------------------- devices: usable memory
# What a framework can allocate is less than the marketing figure. Discrete cards: the
# marketing "GB" of GDDR/HBM parts is binary (24 GB = 24576 MiB of chips); the driver
# keeps a slice (and ECC, where on, more). The CUDA context itself is NOT taken here: the
# memory estimate already counts it (CUDA_CONTEXT_BYTES above).
# Reported totals (torch.cuda.get_device_properties().total_memory / nvidia-smi), as
# collected in ../shared/catalog/hardware.csv `memory_gib_usable_note`:
#   RTX 4090: ~24564 of 24576 MiB -> 0.05% reserved (GDDR6X, no ECC);
#   A100-PCIE-40GB: 40339 of 40960 MiB -> 1.5% reserved (HBM2, ECC on);
#   H100 SXM: 81559 of 81920 MiB -> 0.44% reserved;
#   ECC-on data-centre GDDR cards keep more: A10G 23028 (AWS g5, NVIDIA/DCGM #232), L4 23034,
#   L40S 46068 of 49152 MiB (modal-labs/modal-client PR #2797): ~6.3% kept, in devices.json.
# Devices with a reported total use it (hardware.csv note, kept in devices.json); the
# others use the fraction of their memory kind, the largest seen for that kind. Stated, not fitted.
GPU_RESERVED_FRACTION = {"gddr": 12 / 24576, "hbm": 1 - 40339 / 40960}

# Apple silicon: Metal's recommendedMaxWorkingSetSize (the GPU wired-memory limit,
# sysctl iogpu.wired_limit_mb = 0 -> default) is 2/3 of RAM on small machines and 3/4 on
# larger ones. Sources: ggml-org/llama.cpp #2011 / ollama #434 (32 GB M1/M2 Max:
# 21845.34 MB = 2/3), abetlen/llama-cpp-python #687 (16 GB: 10922.67 MB = 2/3),
# ggml-org/llama.cpp #1870 (64 GB M2 Max: ~48-49 GB usable = 3/4). The limit can be raised
# with `sudo sysctl iogpu.wired_limit_mb=...` (not assumed). PyTorch MPS may overshoot it
# (PYTORCH_MPS_HIGH_WATERMARK_RATIO) but then pages: we treat the limit as the budget.
MACOS_GPU_FRACTION_SMALL = 2 / 3
MACOS_GPU_FRACTION_LARGE = 3 / 4
MACOS_SMALL_RAM_GIB = 36
# macOS 26 (Metal 4) reports a larger default working set than the 2/3 - 3/4 rule above, and
# not as one fraction: recommendedMaxWorkingSetSize measured with iogpu.wired_limit_mb = 0,
# GiB by RAM size (GiB). Where a size was measured it is used; other sizes keep the older,
# lower rule (a conservative figure there, not a measured one). Sources:
#   32 GiB: iMac M4, macOS 26 (MTLGPUFamilyMetal4), ollama 0.17.0 log 2026-02-25:
#     "recommendedMaxWorkingSetSize = 26800.60 MB" (10^6 bytes) = 24.96 GiB = 78.0%
#     (public ollama log, find_string id 2311416387);
#   36 GiB: MacBook Pro M4 Max 36 GB, April 2026: "recommendedMaxWorkingSetSize = 30150.67 MB"
#     = 28.08 GiB = 78.0% (CONTEXT_CAPACITY analysis, find_string id 51879973573);
#   128 GiB: 107.52 GiB stock = 84.0%, measured on two machines of two chip generations
#     (one an M5 Max 128 GB, macOS 26.x), 112.00 GiB with iogpu.wired_limit_mb=114688
#     (antirez/ds4 PR #893 and issue #890, 2026-08-29; osaurus-ai/osaurus PR #1958:
#     "macOS 26 advertising ~84% of RAM as the working set" on an M5 Max 128 GB).
# Raising it: `sudo sysctl iogpu.wired_limit_mb=<MiB>` (resets at reboot; 0 = default); the
# working set then reports the new limit (ds4 #893). tuneplan budgets the default; leave the
# OS a few GiB if you raise it (ds4 #46: 92000 MiB on a 96 GB Mac Studio, 6 GB for macOS).
MACOS_26_WORKING_SET_GIB = {32: 24.96, 36: 28.08, 128: 107.52}

# DGX Spark (GB10, 128 GB LPDDR5X shared with DGX OS): CUDA reports a 121.69 GiB pool
# (unslothai/unsloth PR #10283, 2026-09); free memory at boot on headless DGX OS with page
# cache dropped caps at 101.3-102.2 GiB (MiaAI-Lab/GLM-5.3-Flash-EXL3-2x-DGX-Sparks #47,
# 2026-08, driver 580 and 610). We take the low end of what a process can get.
DGX_SPARK_USABLE_GIB = 101.3
# The same rule holds for every GB10 machine (DGX Spark and OEM twins such as the ASUS Ascent
# GX10): same 128 GB LPDDR5X, same DGX OS / Ubuntu base. Two units pair over their ConnectX-7
# ports (200 Gb/s RoCE, hardware.csv interconnect "2x ConnectX-7 200GbE (cluster 2 units)"):
# the catalog lets a GB10 device count 2 with an ethernet link of 25 GB/s per direction,
# so `--gpus 2` with DDP/FSDP plans two boxes; each box still has this budget.

# AMD Strix Halo (Ryzen AI Max+ 395): Variable Graphics Memory assigns at most 96 GB of
# 128 GB to the GPU (AMD; Framework Desktop BIOS), i.e. 3/4 of RAM. On Linux the GTT pool
# can be raised further with ttm.pages_limit (ROCm docs "AMD Strix Halo system
# optimization", 2026-02; community setups reach ~108-124 GiB): not assumed.
STRIX_HALO_GPU_FRACTION = 0.75
# The same 3/4 applies to the 64 GB boxes (48 GB assignable): VGM offers up to 75% of RAM
# whatever the size (verdict-reviews.com Framework Desktop review: "up to 96 GB as VRAM,
# leaving 32 GB for the OS" on 128 GB). Linux GTT beyond VGM (~108 GB of 128 on Linux,
# modelfit.io 2026-06, citing CraftRigs) needs kernel parameters and is not assumed.

# PyTorch MPS allocator: it may allocate up to PYTORCH_MPS_HIGH_WATERMARK_RATIO x Metal's
# recommendedMaxWorkingSetSize before refusing (default 1.7; low watermark 1.4 on unified
# memory). Source: pytorch aten/src/ATen/mps/MPSAllocator.h default_high_watermark_ratio and
# docs/source/mps_environment_variables.rst ("By default, it is set to 1.7"). Above 1.0 the
# working set pages, so tuneplan budgets 1.0 x the working-set size (the usable memory).
MPS_HIGH_WATERMARK_RATIO = 1.7

# Fit verdict: below this headroom (share of usable memory left at the peak) a run is
# "tight": fragmentation, a longer batch or a framework version change can tip it over.
TIGHT_HEADROOM = 0.10

# ---------------------------------------------------------------- time
# Micro-step time = executed FLOPs / (peak dense bf16 FLOP/s x efficiency) + kernels x
# SECONDS_PER_KERNEL, or a memory/link-bound term where that is slower, plus the serial
# QLoRA dequantisation (streamed at BANDWIDTH_EFFICIENCY). "Efficiency" is achieved/peak
# over the FLOPs actually executed
# (forward, backward, recomputation): HFU in the PaLM paper's terms (Chowdhery et al. 2022,
# app. B). The efficiencies and the per-kernel cost are FITTED on named measured rows by
# benchmarks/fit_time_constants.py (tests/test_time_calibration.py keeps them equal to that
# fit); published ranges they fall in: PaLM 57.8% HFU for a tuned pre-training stack;
# lmms-engine FSDP2 + Liger 0.50-0.55 MFU on A800; "typically 30-70%" (heji-study-blog, 2026).
FRAMEWORK_EFFICIENCY = {
    # FITTED with SECONDS_PER_KERNEL on QW-01..04 (see below): HF Trainer + PEFT, eager
    # PyTorch, flash-attention 2, A100-80GB; residuals -6.8%, +1.9%, +0.8%, -0.1%. The
    # GEMMs' share only: the pointwise kernels' traffic is counted (tuneplan.traffic).
    "hf": 0.683,
    # LLaMA-Factory, Axolotl and litgpt run the same eager PyTorch GEMMs (LLaMA-Factory and
    # Axolotl through the HF Trainer itself): no runs of their own in the calibration set, so
    # they take the HF figure (stated, not fitted).
    "llamafactory": 0.683,
    "axolotl": 0.683,
    "litgpt": 0.683,
    # FITTED: median of the efficiencies implied by torchtune's README A100 rows, compiled
    # and compute-bound (throughput.csv TT-07, TT-08, TT-11..18; torchtune README: "torch
    # compile enabled"); per row 0.624-0.737. Compile's gain is the fused pointwise traffic
    # (tuneplan.traffic); TT-10 (compile off) is held out to check it.
    "torchtune": 0.715,
    # Stated (no Unsloth time rows): its GEMMs are cuBLAS like HF's, so HF's figure; its
    # gains come from fused pointwise kernels (FrameworkProfile.fused_pointwise).
    "unsloth": 0.683,
    # mlx-lm (compiled MLX step, no per-kernel cost): FITTED by benchmarks/
    # fit_time_constants.py fit_mlx, the median implied efficiency of the mlx-examples README
    # rows MX-01 (Llama-7B, M2 Ultra, 475 tok/s: 0.435) and MX-02 (Mistral-7B, M1 Max, 250
    # tok/s: 0.485), over the Apple FP32 TFLOPS the catalog lists. Held out: MX-03 (A100,
    # MLX CUDA backend), MX-05/06 (M4 Pro), MX-07 (M4 Max); MX-04 judged wrong (its notes).
    "mlx": 0.460,
}

# Maximum achievable matmul FLOP/s (MAMF: the best bf16 matmul mamf-finder.py finds over a
# sweep of shapes) as a share of the spec dense peak; measured per accelerator, not fitted
# here. Source: stas00/ml-engineering compute/accelerator/README.md, "Maximum Achievable
# Matmul FLOPS comparison table", BF16 (torch 2.5-2.10): A100 SXM 271.2/312, A100 PCIe
# 252.9/312, H100 SXM 794.5/989 ("H200 is the same"), GH200 828.6/989, B200 1745/2250,
# B300 1769/2250, MI250X 147.0/191.5 (one GCD), MI325X 784.9/1300, MI300X 668.4/1300; GB200 SXM
# 1822.0/2500 (torch 2.10.0.dev20250916+cu130; the same table, read 2026-12).
# The efficiencies above were fitted on A100 SXM rows, so a device's GEMM rate is its spec
# peak x efficiency x MATMUL_SHARE[device] / MATMUL_SHARE[the A100 SXM]; a device without a
# measurement takes the A100 SXM's share (no correction).
MATMUL_SHARE = {
    "a100-80gb-sxm": 0.869, "a100-40gb-sxm": 0.869, "a100-80gb-pcie": 0.811, "a100-40gb-pcie": 0.811,
    "h100-sxm": 0.803, "h200-sxm": 0.803, "gh200": 0.838, "b200": 0.776, "b300": 0.786, "gb200": 0.729,
    "mi250x": 0.767, "mi325x": 0.604, "mi300x": 0.514,
}
MATMUL_SHARE_REFERENCE = MATMUL_SHARE["a100-80gb-sxm"]


def matmul_scale(device_id: str) -> float:
    """A device's achievable-matmul share relative to the A100 SXM the efficiencies were fitted on."""
    return MATMUL_SHARE.get(device_id, MATMUL_SHARE_REFERENCE) / MATMUL_SHARE_REFERENCE


# Fixed cost per micro-step: kernel launches and eager host dispatch, per kernel. Kernels
# are counted per layer (tuneplan.timing.kernel_count), not fitted:
#   - transformers' Llama-style decoder layer forward: 2 RMSNorms x 8 (to fp32, pow, mean,
#     add, rsqrt, mul, to, mul weight), q/k/v/o 4 GEMMs, rotary 10 (cos/sin muls, rotate_half
#     neg + cat, adds for q and k), SDPA 1 + output copy 1, MLP 3 GEMMs + act + mul, 2
#     residual adds = 39 (modeling_llama.py LlamaDecoderLayer, transformers 4.4x-5);
#   - PEFT lora.Linear.forward per adapted linear: cast to the adapter dtype, lora_A, lora_B,
#     scale, add, cast back = 6 (peft/tuners/lora/layer.py Linear.forward; dropout is
#     nn.Identity at p=0);
#   - backward launches about two kernels per forward kernel (input and weight gradients).
KERNELS_PER_LAYER_FORWARD = 39
KERNELS_PER_ADAPTER_FORWARD = 6
BACKWARD_KERNELS_PER_FORWARD_KERNEL = 2
# SECONDS_PER_KERNEL and FRAMEWORK_EFFICIENCY["hf"] are FITTED together by least squares on
# the four Qwen README LoRA rows (throughput.csv QW-01..04: Qwen-7B, A100-80GB, HF + PEFT,
# r=64, batch 1 x 256/1024/2048/8192 tokens, checkpointing; micro-step = s_per_step / 8):
# time = FLOPs / (312 TFLOPS x eff) + kernels x SECONDS_PER_KERNEL + pointwise traffic /
# bandwidth (counted, tuneplan.traffic). Fit (benchmarks/fit_time_constants.py): eff 0.683,
# 6.64 us per kernel. Residuals: -6.8%, +1.9%, +0.8%, -0.1%. Checked, not fitted: QW-09.
SECONDS_PER_KERNEL = 6.64e-6
# The same cost for a stack whose host side is heavier, per library (FrameworkProfile
# .calibration_framework); a stack not listed takes SECONDS_PER_KERNEL.
# "Megatron-DeepSpeed": FITTED by benchmarks/fit_time_constants.py fit_megatron_deepspeed: the
# cost at which the median signed tokens/s error over vTrain's single-machine A100 rows is zero
# (parallel.csv VT-S-*, 1,440 rows: Megatron-DeepSpeed, GPT h1024/h2048, 12-24 layers, seq 1024,
# fp16, full recompute, every TP/PP/DP mix of 2-8 GPUs), its kernels counted
# (FrameworkProfile.kernels_per_layer_forward = 16; backward 2x; recomputed forward) and a
# micro-batch taking the longer of its dispatch and its GPU work (host_overlaps_device).
# Those rows show a floor of ~3.4 ms per layer and micro-batch (h1024, micro-batch 1, TP 1, 2
# and 4 alike: GEMMs 4x narrower, same time) that no FLOP or byte term explains. Only vTrain
# informs it: left out (benchmarks/results/parallel_time.md, leave-one-source-out), the stack
# falls back to SECONDS_PER_KERNEL.
SECONDS_PER_KERNEL_BY_FRAMEWORK = {"Megatron-DeepSpeed": 56.1e-6}


def seconds_per_kernel(library: str) -> float:
    """Host cost per launched kernel of a stack (its calibration_framework name)."""
    return SECONDS_PER_KERNEL_BY_FRAMEWORK.get(library, SECONDS_PER_KERNEL)


# Unfused attention (FrameworkProfile.materialises_attention_scores): DRAM bytes per element
# of the [batch, heads, seq, seq] scores, counted op by op at c bytes per element
# (Megatron-LM legacy megatron/model/transformer.py CoreAttention; torch's native_dropout
# keeps a 1-byte bool mask):
#   forward: baddbmm (beta=0) writes c; fused scale-mask-softmax reads c, writes c;
#     dropout reads c, writes c and the mask 1; bmm(probs, v) reads c: 6c + 1;
#   backward: bmm's grad of probs writes c, v's grad reads probs c; dropout backward reads c
#     and the mask 1, writes c; softmax backward reads the grad and the output, writes c;
#     baddbmm's q and k grads read the scores' grad twice: 9c + 1;
#   full recomputation repeats the forward.
SCORES_FORWARD_BYTES = (6, 1)  # (x c, + bytes)
SCORES_BACKWARD_BYTES = (9, 1)


# Achievable share of the spec memory bandwidth for streaming kernels (dequantisation,
# optimizer updates, weight reads). STREAM-like copies reach ~80-90% of peak on GPUs
# (e.g. Strix Halo: ~212-215 of 256 GB/s measured, hardware.csv; whylucian/softab docs).
#
# 4-bit dequantisation streams at this share on every stack. bitsandbytes' dequantize_4bit
# is one kernel (csrc/kernels.cu kDequantizeBlockwise: read the packed weight and its absmax,
# write the 16-bit copy; bitsandbytes/functional.py dequantize_4bit), torchao's NF4 is fused
# by torch.compile in torchtune, Unsloth fuses its own. Checked, not fitted: LLaMA-Factory's
# A100 pair (memory.csv lf01/lf04, Dec 2023, bitsandbytes 0.41) ran QLoRA at 2,415 tokens/s
# against LoRA's 2,392; the H100 probe grid (bitsandbytes 0.50.2, benchmarks/results/probe)
# ran Llama-3.1-8B QLoRA at -2%..+11% of its LoRA twins' tokens/s at 2k-8k tokens (the one
# exception, batch 1 x 2k with checkpointing, was host-bound: 0.59-0.66 s a step, the same
# as batch 2, against 0.39 s for LoRA; not modelled). Until stop 12 a
# share of 0.115 was fitted here on the Qwen README Q-LoRA rows (throughput.csv QW-05/06/07/
# 10), which are not bitsandbytes: Qwen's finetune.py loads Q-LoRA bases with
# GPTQConfig(bits=4, disable_exllama=True) (README: "load our provided quantized model, e.g.
# Qwen-7B-Chat-Int4"), and auto-gptq's qlinear_cuda_old.QuantLinear.forward dequantises
# training-size inputs in six eager torch ops over the whole weight (shift to int32, cast,
# mask, subtract zeros, multiply scales: ~16 bytes of traffic per weight against
# bitsandbytes' 2.5). tuneplan does not model GPTQ bases; those rows are skipped.
BANDWIDTH_EFFICIENCY = 0.8

# Optimizer update: seconds per trained parameter that each optimizer's real kernels take on
# an H100 80GB HBM3. MEASURED, not fitted to any row: benchmarks/optimizer_update.py (torch
# 2.11.0, bitsandbytes 0.50.2), one step() over the bf16 parameters and gradients of a Llama
# model's shapes, median of 5 timed steps (benchmarks/results/optimizer_update.md). The
# largest model measured for each (per-tensor launch cost matters least there):
#   - adamw (torch fused): 6.83 ps on Llama-3.2-3B: 61% of the H100's bandwidth for the
#     traffic tuneplan.timing counts, close to streaming;
#   - adamw-foreach: 17.4 ps on 3B: _multi_tensor_adamw makes ~7 passes over the states
#     (lerp, mul, addcmul, sqrt, div, add, addcdiv; torch/optim/adamw.py);
#   - adamw-8bit: 31.5 ps on Llama-3.1-8B (0.25 s a step for 8B; 9.5% of the bandwidth):
#     bitsandbytes' kOptimizerStatic8bit2StateBlockwise dequantises and requantises both
#     states through the dynamic code book for each element (csrc/kernels.cu), bound by that
#     work, not by memory. The same kernel ran 219.5 ms of an 8B full fine-tune step under
#     the profiler (probe grid, H100);
#   - paged-adamw-8bit: the same kernel on managed memory (41.5 ps vs 40.9 ps unpaged on
#     Llama-3.2-1B), so adamw-8bit's 8B figure;
#   - paged-adamw (bnb 32-bit) 32.7 ps, lion (bnb 32-bit) 14.7 ps, sgd-momentum (torch
#     foreach) 7.0 ps, adafactor (transformers, per-tensor Python) 46.4 ps: Llama-3.2-1B
#     only; lion-8bit 20.5 ps on 3B;
#   - sgd (no state): not measured; streaming only.
# tuneplan.timing takes the longer of this and the counted traffic at BANDWIDTH_EFFICIENCY
# (a roofline): on a slower-memory GPU the traffic bounds a streaming update; the per-
# parameter work is assumed to take no less time on another GPU than on the H100 (one device
# measured; the time assumptions say so).
OPTIMIZER_UPDATE_S_PER_PARAM = {
    "adamw": 6.83e-12, "adamw-foreach": 17.36e-12, "adamw-8bit": 31.47e-12, "paged-adamw-8bit": 31.47e-12,
    "paged-adamw": 32.67e-12, "lion": 14.71e-12, "lion-8bit": 20.46e-12, "sgd-momentum": 7.04e-12,
    "adafactor": 46.40e-12,
}

# bitsandbytes 4-bit (QLoRA) matmul: Linear4bit dequantises the packed weight to a bf16
# buffer (functional.dequantize_4bit), then runs a bf16 GEMM on it: read 0.5 B + write 2 B
# + read 2 B per weight per use. LLM.int8 (Linear8bitLt): read 1 B + write 2 B + read 2 B.
# Source: bitsandbytes/nn/modules.py Linear4bit.forward -> bnb.matmul_4bit ->
# MatMul4Bit (dequantize then torch.nn.functional.linear) for training-size inputs.
DEQUANT_BYTES_PER_PARAM = {"nf4": 4.5, "fp4": 4.5, "int8": 5.0}

# PCIe payload bandwidth per direction for an x16 link, GB/s (PCI-SIG: 3.0 8 GT/s,
# 4.0 16 GT/s, 5.0 32 GT/s, 6.0 64 GT/s; 128b/130b encoding) and the share reached by
# pinned-memory cudaMemcpy (~25 of 31.5 GB/s on PCIe 4.0 x16 in NVIDIA bandwidthTest runs).
PCIE_X16_GBPS = {3: 15.75, 4: 31.5, 5: 63.0, 6: 121.0}
PCIE_EFFICIENCY = 0.8
# Host DRAM bandwidth a CPU optimizer step streams through, per machine (all its GPUs'
# processes share it). Stated, not fitted: a dual-socket training server reaches ~300 GB/s
# on STREAM (DGX A100: 2x AMD EPYC 7742, 8 channels DDR4-3200 each = 409.6 GB/s peak, ~75%
# achieved; DGX H100: 2x Xeon 8480C, 8 channels DDR5-4800 each = 614 GB/s peak).
HOST_DRAM_GBPS = 300.0
# Collective bandwidth: NCCL ring all-reduce moves 2(n-1)/n of the data per GPU over the
# slowest link; links reach ~80% of their per-direction figure (NCCL bus bandwidth).
LINK_EFFICIENCY = 0.8

# Collectives (tuneplan.collectives). Ring bus bandwidth per nccl-tests doc/PERFORMANCE.md:
# busbw = algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather / reduce-scatter /
# all-to-all. Inside a machine NCCL's ring all-reduce reaches LINK_EFFICIENCY of the per-
# direction link figure (H100 NVSwitch: ~360 of 450 GB/s without NVLink SHARP; NVIDIA/nccl-tests
# issue #290, 2025-03-03: 476 GB/s with NVLS is "in the expected range for H100").
# Across machines a NIC reaches NET_EFFICIENCY of its line rate: "For NDR @ 400Gbps you should
# see 46-48GB/s per NIC" (NVIDIA, nccl-tests issue #290); 8x A100 with 4x HDR 200 Gb/s reached
# 84.8 GB/s average, 96 peak, of 100 GB/s busbw (nccl-tests issue #119): a ring spanning
# machines runs one channel per NIC, so its bus bandwidth is the machine's NICs together.
NET_EFFICIENCY = 0.94
# Per-step latency of NCCL's Ring/Simple protocol (the protocol of large collectives), seconds:
# a fixed base plus one hop latency per ring step, by the hop's hardware. Source: NVIDIA/nccl
# src/graph/tuning.cc (commit 01afd20), ncclTopoTuneModel: baseLat Ring/Simple 8.4 us; hwLat
# Ring/Simple NVLink 3.4 us, PCI 5.7 us, NET 9.6 us; latency = base + (nsteps - nInterSteps) x
# intra + nInterSteps x inter, nsteps = 2(n-1) for all-reduce, n-1 for all-gather/reduce-scatter.
NCCL_BASE_LATENCY_S = 8.4e-6
NCCL_STEP_LATENCY_S = {"nvlink": 3.4e-6, "pci": 5.7e-6, "net": 9.6e-6}
# Gradient buckets whose reduction cannot overlap the backward (the last one to fill):
# torch DistributedDataParallel bucket_cap_mb=25 (MiB; torch/nn/parallel/distributed.py);
# Megatron-Core DistributedDataParallelConfig bucket_size = max(40,000,000, 1,000,000 x data-
# parallel size) elements (megatron/core/distributed/distributed_data_parallel.py).
DDP_BUCKET_BYTES = 25 * 2 ** 20
MEGATRON_BUCKET_ELEMENTS = 40_000_000

# ---------------------------------------------------------------- disk
# Raw text: ~4 characters (bytes, English UTF-8) per token (OpenAI tokenizer guide:
# "one token ~ 4 characters of common English text").
RAW_BYTES_PER_TOKEN = 4
# Tokenized cache: HF datasets stores tokenizer output as Arrow list<int64> (pyarrow
# infers int64 from Python ints): input_ids, attention_mask and labels = 3 x 8 bytes.
TOKENIZED_BYTES_PER_TOKEN = 24

# ---------------------------------------------------------------- cost
# Defaults the user can override; both are shown with every cost figure.
DEFAULT_UTILISATION = 0.5  # share of the week an owned machine trains (break-even)
# US average retail electricity price, 2024-2025: ~0.13 (industrial) to ~0.17 (residential)
# USD/kWh (EIA Electric Power Monthly, table 5.3). Applied to the device TDP while training.
ELECTRICITY_USD_PER_KWH = 0.15

# ---------------------------------------------------------------- eager decoding (HF generate)
# What one decode step of transformers' generate launches, COUNTED (not fitted) by
# benchmarks/count_decode_kernels.py: a TorchDispatchMode counter over generate() of a tiny
# Qwen2 (transformers 5.25, peft 0.21, torch 2.13, CPU, fp32), view-only ops excluded, per-layer
# and per-step terms separated by differencing 1 vs 3 layers and 2 vs 6 new tokens:
#   - a decoder layer's decode forward: 39 kernels in fp32 (the cache's two torch.cat included),
#     + the 2 RMSNorms' casts to fp32 and back in 16-bit (modeling_qwen2.py Qwen2RMSNorm) = 43;
#   - the step outside the layers (embedding, rotary cos/sin, mask, final norm, lm_head,
#     generate's logits processing, sampling and stopping criteria): 65.
# Per adapted linear PEFT adds KERNELS_PER_ADAPTER_FORWARD (counted: 4 in fp32 - lora_A, lora_B,
# scale, add - plus the two dtype casts of a 16-bit base); peft 0.21 lora/bnb.py Linear4bit.forward
# adds result.clone() (:533, "defensively clone") on a 4-bit base.
DECODE_KERNELS_PER_LAYER = 43
GENERATE_KERNELS_PER_DECODE_STEP = 65
PEFT_4BIT_CLONE_KERNELS = 1
# bitsandbytes 4-bit linear at decode: up to BNB_FUSED_GEMM_MAX_ROWS input rows the fused
# 4-bit GEMM reads the packed weight once (0.5 byte/param; bnb 0.50.2 backends/cuda/ops.py
# _GEMM_4BIT_CUSTOM_FLOOR_M = 4, always fused at or below it; bnb < 0.50 matmul_4bit used
# gemv_4bit for a single row only). Above it, the dequantise-then-GEMM path
# (_dequant_linear_fallback; bnb < 0.50 MatMul4Bit.forward): the nested absmax dequantised
# (dequantize_blockwise), + offset, dequantize_4bit into a 16-bit copy, then F.linear = 3 kernels
# besides the GEMM, traffic DEQUANT_BYTES_PER_PARAM. bnb 0.50.2 also fuses some larger row
# counts per GPU architecture (_gemm_4bit_use_custom_cuda); tuneplan takes the dequantise path
# there (the behaviour of the bitsandbytes versions the calibration rows ran: an upper bound).
BNB_FUSED_GEMM_MAX_ROWS = 4
BNB_DEQUANT_KERNELS = 3
BNB_FUSED_BYTES_PER_PARAM = 0.5
# Host time per launched kernel of an eager decode step, which is bound by the CPU's dispatch
# rather than the GPU: DERIVED from a published measurement, not fitted to any tuneplan row.
# PyTorch blog "Accelerating Generative AI with PyTorch II: GPT, Fast" (Nov 2023): gpt-fast's
# eager Llama-2-7B at batch 1 on an A100-80GB (330 W) generates 25.5 tok/s and is "heavily CPU
# overhead bound". Its decode step launches 32 layers x 51 kernels + 22 = 1,654 kernels
# (counted by benchmarks/count_decode_kernels.py on pytorch-labs/gpt-fast@32971d3 model.py: 43
# per layer in fp32 + 8 bf16 casts (RMSNorm's x.float()/type_as x 2, rotary's x 2 for q and k);
# outside the layers 12 counted in fp32, the final norm's 2 casts and generate.py sample()'s
# ~8 (div, topk, select, where, softmax, exponential_, div, argmax)), so
# 1 / 25.5 s / 1,654 = 23.7 us per kernel. A decode step takes the longer of this host time
# and its GPU time (weights and KV cache at the bandwidth), as in that CPU-bound trace.
EAGER_DECODE_SECONDS_PER_KERNEL = 1 / 25.5 / (32 * 51 + 22)
