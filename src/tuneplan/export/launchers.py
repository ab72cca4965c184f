"""Launcher configs for a training script of your own: an accelerate config (checked against
accelerate 1.15: commands/config/config_args.py ClusterConfig, utils/dataclasses.py
FullyShardedDataParallelPlugin and DeepSpeedPlugin) and a DeepSpeed JSON (checked against
deepspeed 0.19.8: runtime/config.py DeepSpeedConfig, runtime/precision_config.py
DeepSpeedBF16Config, runtime/zero/config.py). They hold the parallel layout and precision;
the model, method, sequence length, checkpointing, attention, loss and optimizer belong to
the training script, which these files cannot express.
"""

from __future__ import annotations

from typing import Any

from tuneplan.export.common import (
    Built,
    Substitutions,
    deepspeed_config,
    hf_adapt_parallel,
    precision_named,
    uses_deepspeed,
)
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

ACCELERATE_VERSION = "accelerate 1.15"
DEEPSPEED_VERSION = "deepspeed 0.19.8"
SCRIPT_SETTINGS = ("model, method, rank, targets, quantisation, micro-batch, sequence length, checkpointing, "
                   "attention, cross-entropy and optimizer belong to your training script (tuneplan export --to trl "
                   "writes a complete config)")


def _mixed_precision(job: Job) -> str:
    d = job.training.dtypes
    if d.accelerate_fp8_backend:  # fp8 linears (TE or torchao) in a bf16 step
        return "fp8"
    if d.fp32_master or d.torch_autocast_dtype == "bfloat16":
        return "bf16"
    return "fp16" if d.torch_autocast_dtype == "float16" else "no"


def build_accelerate(spec: ModelSpec, job: Job) -> Built:
    sub = Substitutions(job)
    hf_adapt_parallel(sub)
    d = sub.job.training.dtypes
    if uses_deepspeed(sub.job) and not d.fp32_master and d.param_bytes == 2:
        sub.swap(f"--precision {sub.job.training.precision} under DeepSpeed: accelerate's deepspeed_config has no "
                 "key for 16-bit master weights (estimated as mixed; --to deepspeed writes them)",
                 precision=precision_named("bfloat16", None, True))
    job = sub.job
    p, t = job.parallel, job.training
    body: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "debug": False}
    if uses_deepspeed(job):
        body["distributed_type"] = "DEEPSPEED"
        body["deepspeed_config"] = {
            "zero_stage": p.shard_stage, "gradient_accumulation_steps": t.grad_accum,
            "offload_optimizer_device": "cpu" if p.offload_optimizer else "none",
            "offload_param_device": "cpu" if p.offload_params else "none",
            "zero3_init_flag": p.shard_stage == 3, "deepspeed_multinode_launcher": "standard"}
    elif p.sharding == "fsdp":
        body["distributed_type"] = "FSDP"
        body["fsdp_config"] = {"fsdp_version": 2, "fsdp_offload_params": p.offload_params,
                               "fsdp_reshard_after_forward": True, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
                               "fsdp_activation_checkpointing": False}
    else:
        body["distributed_type"] = "MULTI_GPU" if p.num_gpus > 1 else "NO"
    body.update(mixed_precision=_mixed_precision(job), num_machines=1, machine_rank=0, num_processes=p.num_gpus,
                rdzv_backend="static", same_network=True, main_training_function="main", use_cpu=False)
    if t.dtypes.accelerate_fp8_backend:
        body["fp8_config"] = _fp8_config(job)
    return Built(job, body, tuple(sub.cannot) + (SCRIPT_SETTINGS,),
                 "accelerate launch --config_file {file} YOUR_TRAINING_SCRIPT.py", ())


def _fp8_config(job: Job) -> dict[str, Any]:
    """accelerate's fp8_config for the precision record (keys as `accelerate launch --fp8_*` reads
    them, accelerate 1.16 commands/launch.py): TE delayed scaling with HYBRID format (E4M3
    forward, E5M2 gradients) and the record's amax history, max over it (Megatron's default
    --fp8-amax-compute-algo max); torchao with float8 all-gather under FSDP2."""
    d = job.training.dtypes
    if d.accelerate_fp8_backend == "TE":
        return {"backend": "TE", "fp8_format": "HYBRID", "amax_history_len": d.amax_history,
                "amax_compute_algo": "max", "margin": 0, "interval": 1}
    return {"backend": d.accelerate_fp8_backend, "enable_fsdp_float8_all_gather": job.parallel.sharding == "fsdp",
            "pad_inner_dim": True}


def build_deepspeed(spec: ModelSpec, job: Job) -> Built:
    sub = Substitutions(job)
    p = job.parallel
    if p.sharding == "fsdp":
        sub.swap("--sharding fsdp: DeepSpeed's equivalent is ZeRO-3 (estimated as --sharding zero3)", sharding="zero3")
    hf_adapt_parallel(sub, deepspeed=True)  # plain data parallel is DeepSpeed's ZeRO stage 0
    job = sub.job
    p = job.parallel
    launch = (f"deepspeed --num_gpus {p.num_gpus} YOUR_TRAINING_SCRIPT.py --deepspeed {{file}}  "
              "(or --deepspeed {file} in HF TrainingArguments)")
    return Built(job, deepspeed_config(job, hf=False), tuple(sub.cannot) + (SCRIPT_SETTINGS.replace(
        "micro-batch, ", ""),), launch, ())
