"""Data-parallel sharding layouts, one record each: what each rank keeps of the states and
which engine runs it (and so what that engine adds: fp32 master copies, buckets).

The model-parallel degrees (tensor, pipeline, context, expert) are numbers on
tuneplan.job.Parallel; how they split each layer is derived once per (model, job) in
tuneplan.memory.ranks. This table holds the ways the data-parallel group shares states.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Sharding:
    """One way the data-parallel ranks share a step's states.

    Args:
        name: the setting (--sharding).
        label: for people.
        stage: what is sharded over the data-parallel group: 0 nothing (replicas), 1 optimizer
            states and master weights, 2 + gradients, 3 + parameters (ZeRO's stages).
        engine: "ddp" (torch DistributedDataParallel), "deepspeed" (DeepSpeed ZeRO through
            accelerate/HF Trainer or its own launcher) or "fsdp" (torch FSDP, the version the
            stack uses: FrameworkProfile.fsdp_version).
        fp32_master_states: with a 16-bit model the engine keeps fp32 master partitions and
            fp32 optimizer states whatever the model dtype: DeepSpeed's ZeRO optimizer creates
            `single_partition_of_fp32_groups` (stage 1/2, deepspeed/runtime/zero/
            stage_1_and_2.py) or `fp32_partitioned_groups_flat` (stage 3, stage3.py) from the
            bf16/fp16 parameters and steps its (Fused/CPU) Adam on them; the fp32 gradient
            partition for that step is made at the step (`.to(fp32 dtype)`).
        reduce_buckets: gradient reduction buckets of the engine, in elements of the compute
            dtype, as a multiple of hidden_size**2: DeepSpeed stage 1/2 `ipg_buffer` of
            reduce_bucket_size elements, two with overlap_comm (HF's "auto" reduce_bucket_size
            = hidden_size**2, transformers integrations/deepspeed.py; the HF ZeRO-2 template
            sets overlap_comm true); stage 3's prefetch bucket 0.9 * hidden_size**2.
        shard_group_node: shards inside one machine and replicates across machines (HSDP:
            torch FSDP ShardingStrategy.HYBRID_SHARD / FSDP2 fully_shard on a 2-D mesh).
    """

    name: str
    label: str
    stage: int
    engine: str
    fp32_master_states: bool = False
    reduce_buckets: float = 0.0
    shard_group_node: bool = False


SHARDINGS: dict[str, Sharding] = {s.name: s for s in (
    Sharding("ddp", "DDP (replicas, bucketed all-reduce)", 0, "ddp"),
    Sharding("zero1", "DeepSpeed ZeRO-1 (optimizer states sharded)", 1, "deepspeed", fp32_master_states=True,
             reduce_buckets=2.0),
    Sharding("zero2", "DeepSpeed ZeRO-2 (+ gradients sharded)", 2, "deepspeed", fp32_master_states=True,
             reduce_buckets=2.0),
    Sharding("zero3", "DeepSpeed ZeRO-3 (+ parameters sharded)", 3, "deepspeed", fp32_master_states=True,
             reduce_buckets=0.9),
    Sharding("fsdp", "FSDP full shard", 3, "fsdp"),
    Sharding("hsdp", "HSDP (FSDP inside a machine, replicas across)", 3, "fsdp", shard_group_node=True),
)}


def sharding(name: str) -> Sharding:
    """The Sharding record for a --sharding name."""
    return lookup(SHARDINGS, "sharding", name)
