"""How the distributed trace lays one job out over ranks: the Layout, its checks, and the
torch.distributed wrappers that apply it to the model (tuneplan.trace.dist runs the step).

Layouts (a DeviceMesh on "cpu" of shape (data, tensor), built outside FakeTensorMode):
  tensor parallel  DTensor parallelize_module per decoder layer, transformers' own
          base_model_tp_plan (q/k/v/gate/up ColwiseParallel, o/down RowwiseParallel) and
          lm_head ColwiseParallel with a gathered output (the "colwise_gather_output" of
          LlamaForCausalLM._tp_plan); embeddings and norms replicated. LoRA adapters follow
          their base layer (Megatron/NeMo style): lora_B column-parallel under a colwise
          layer, lora_A row-parallel under a rowwise one, the other factor replicated.
          sequence_parallel additionally shards the norms' and residual stream's activations
          over the sequence (torchtitan's plan: SequenceParallel norms, PrepareModuleInput
          on attention and MLP, RowwiseParallel outputs Shard(1)).
  fsdp / zero3 (FSDP2)  torch.distributed.fsdp.fully_shard per decoder layer, then the root,
          on the data-parallel mesh (reshard_after_forward=True; the root is never
          resharded after forward). Trainable parameters kept in fp32 (the framework
          profile's FSDP upcast, or --precision mixed) are gathered in bf16:
          MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32); otherwise pure bf16
          (no policy).
  zero2 (FSDP2)  as fsdp with reshard_after_forward=False (torch's SHARD_GRAD_OP analogue).
  fsdp_version=1  FullyShardedDataParallel (FSDP1), decoder layers auto-wrapped,
          use_orig_params=True, MixedPrecision(bf16, reduce fp32) in the same cases.
  ddp      DistributedDataParallel over the data-parallel group (gradient buckets counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.trace.build import layer_list

SHARDINGS = ("ddp", "zero2", "zero3", "fsdp")
FSDP_VERSIONS = (1, 2)

# transformers' base_model_tp_plan of the Llama family, by the module's last name
COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROWWISE = ("o_proj", "down_proj")


@dataclass(frozen=True)
class Layout:
    """How one job is laid out over ranks, as the trace replays it.

    Args:
        world: number of ranks (GPUs).
        tp: tensor-parallel degree (divides world; data-parallel degree = world // tp).
        sharding: ddp | zero2 | zero3 | fsdp over the data-parallel group.
        fsdp_version: 2 = fully_shard (FSDP2), 1 = FullyShardedDataParallel.
        sequence_parallel: shard norms/residual activations over the sequence (tp > 1).
        rank: the rank traced.
    """

    world: int
    tp: int = 1
    sharding: str = "ddp"
    fsdp_version: int = 2
    sequence_parallel: bool = False
    rank: int = 0

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.world // self.tp

    @property
    def fsdp(self) -> bool:
        """Parameters sharded over the data-parallel group (FSDP1/FSDP2)."""
        return self.sharding != "ddp" and self.dp > 1

    @property
    def wrapper(self) -> str:
        """What wraps the model for data parallelism ("" when dp = 1)."""
        if self.dp == 1:
            return ""
        if self.sharding == "ddp":
            return "DDP"
        if self.fsdp_version == 1:
            return "FSDP1 " + ("SHARD_GRAD_OP" if self.sharding == "zero2" else "FULL_SHARD")
        return "FSDP2 fully_shard" + (" (reshard_after_forward=False)" if self.sharding == "zero2" else "")

    def describe(self) -> str:
        """One line: world, data x tensor, wrapper."""
        parts = [f"{self.world} ranks = data {self.dp} x tensor {self.tp}"]
        if self.wrapper:
            parts.append(self.wrapper)
        if self.tp > 1:
            parts.append("DTensor TP" + (" + sequence parallel" if self.sequence_parallel else ""))
        return ", ".join(parts) + f"; rank {self.rank} traced"

    def to_dict(self) -> dict[str, Any]:
        return {"world": self.world, "data": self.dp, "tensor": self.tp, "sharding": self.sharding,
                "fsdp_version": self.fsdp_version, "sequence_parallel": self.sequence_parallel,
                "rank": self.rank, "wrapper": self.wrapper}


def layout_of(job: Job, *, tp: int | None = None, fsdp_version: int | None = None, sequence_parallel: bool = False,
              rank: int = 0) -> Layout:
    """The layout of `job` (its GPU count and sharding; `tp` overrides job.parallel.tensor;
    `fsdp_version` defaults to the framework profile's, FrameworkProfile.fsdp_version, else 2).

    Raises:
        TuneplanError: a layout the trace does not replay (offload, pipeline, zero1, bad degrees).
    """
    p = job.parallel
    tp = tp if tp is not None else getattr(p, "tensor", 1)
    if fsdp_version is None:
        fsdp_version = getattr(job.training.profile, "fsdp_version", 2)
    sequence_parallel = sequence_parallel or bool(getattr(p, "sequence_parallel", False) and tp > 1)
    for attr, flag, what in (("pipeline", "--pp", "pipeline"), ("context", "--cp", "context"),
                             ("expert", "--ep", "expert")):
        if getattr(p, attr, 1) > 1:
            raise TuneplanError(f"trace does not replay {what} parallelism yet; drop {flag}")
    if getattr(p, "nodes", 0) > 1:
        raise TuneplanError("trace replays one machine's ranks; drop --nodes")
    if p.offload_optimizer or p.offload_params:
        raise TuneplanError("trace runs on one device and cannot offload; drop --offload-optimizer/--offload-params")
    if p.sharding not in SHARDINGS:
        why = " (DeepSpeed ZeRO-1 has no torch-native equivalent)" if p.sharding == "zero1" else " yet"
        raise TuneplanError(f"trace does not replay --sharding {p.sharding}{why}; use ddp, zero2 (FSDP "
                            "without reshard after forward), zero3 or fsdp")
    if fsdp_version not in FSDP_VERSIONS:
        raise TuneplanError(f"FSDP version {fsdp_version}: use 1 or 2")
    if tp < 1 or p.num_gpus % tp:
        raise TuneplanError(f"{p.num_gpus} GPUs cannot be split into tensor-parallel groups of {tp}")
    if sequence_parallel and tp == 1:
        raise TuneplanError("sequence parallelism needs --tp 2 or more")
    if not 0 <= rank < p.num_gpus:
        raise TuneplanError(f"rank {rank} is not one of the {p.num_gpus} ranks")
    if tp > 1 and p.sharding == "ddp" and p.num_gpus > tp:
        raise TuneplanError("DDP with tensor parallelism is not replayed: torch's DDP reducer cannot copy DTensor "
                            "gradients into its buckets (DTensor asserts on the in-place copy); use --sharding fsdp")
    if tp > 1 and fsdp_version == 1 and p.sharding != "ddp" and p.num_gpus > tp:
        raise TuneplanError("FSDP1 with tensor parallelism is not replayed; use FSDP2 (fully_shard)")
    return Layout(p.num_gpus, tp, p.sharding, fsdp_version, sequence_parallel, rank)


def _tp_plan(layer: nn.Module, sequence_parallel: bool) -> dict[str, Any]:
    """parallelize_module plan of one decoder layer (PEFT LoRA layers split per factor)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    out_rows = {"output_layouts": Shard(1)} if sequence_parallel else {}
    plan: dict[str, Any] = {}
    for name, mod in layer.named_modules():
        last = name.rpartition(".")[2]
        if last not in COLWISE + ROWWISE:
            continue
        col = last in COLWISE
        if isinstance(mod, nn.Linear):
            plan[name] = ColwiseParallel() if col else RowwiseParallel(**out_rows)
            continue
        base = getattr(mod, "base_layer", None)
        if not isinstance(base, nn.Linear):
            raise TuneplanError(f"tensor parallelism cannot split {type(mod).__name__} {name}")
        plan[f"{name}.base_layer"] = ColwiseParallel() if col else RowwiseParallel(**out_rows)
        for key in getattr(mod, "lora_A", {}):
            if col:  # x replicated -> A replicated -> B column-parallel: output sharded like the base's
                plan[f"{name}.lora_B.{key}"] = ColwiseParallel()
            else:  # x sharded on features -> A row-parallel (r-dim output reduced) -> B replicated
                plan[f"{name}.lora_A.{key}"] = RowwiseParallel(**out_rows)
        if getattr(mod, "lora_magnitude_vector", None):
            raise TuneplanError("DoRA under tensor parallelism is not replayed (its weight norm needs the full "
                                "weight); use --method lora")
    if sequence_parallel:
        for name, _mod in layer.named_children():
            if "norm" in name:
                plan[name] = SequenceParallel()
        plan["self_attn"] = PrepareModuleInput(input_kwarg_layouts={"hidden_states": Shard(1)},
                                               desired_input_kwarg_layouts={"hidden_states": Replicate()})
        plan["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return plan


def apply_tp(model: nn.Module, mesh: Any, layout: Layout) -> None:
    """DTensor tensor parallelism of every decoder layer and of lm_head (see the module doc)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in layer_list(inner):
        attn = getattr(layer, "self_attn", None)
        for what in ("num_heads", "num_key_value_heads"):
            n = getattr(getattr(inner, "config", None), "num_attention_heads" if what == "num_heads" else what, None)
            if n and n % layout.tp:
                raise TuneplanError(f"{n} {what.replace('_', ' ')} do not split into {layout.tp} tensor-parallel ranks")
        if attn is None:
            raise TuneplanError("tensor parallelism needs a self_attn module in each decoder layer")
        parallelize_module(layer, mesh, _tp_plan(layer, layout.sequence_parallel))
    head = inner.get_output_embeddings()
    if layout.sequence_parallel:
        base = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.model
        parallelize_module(base, mesh, {"embed_tokens": RowwiseParallel(input_layouts=Replicate(),
                                                                        output_layouts=Shard(1)),
                                        "norm": SequenceParallel()})
        parallelize_module(head, mesh, ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()))
    else:
        parallelize_module(head, mesh, ColwiseParallel(output_layouts=Replicate()))


def upcast_trainable(model: nn.Module, fp32_trainable: bool) -> None:
    """Trainable parameters to fp32 (the FSDP upcast or --precision mixed), before wrapping."""
    if fp32_trainable:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()


def apply_fsdp2(model: nn.Module, mesh: Any, layout: Layout, mixed: bool) -> None:
    """FSDP2 fully_shard of every decoder layer, then the root (see the module doc)."""
    from unittest import mock

    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": layout.sharding != "zero2"}
    if mixed:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    concatenate = DeviceMesh._concatenate

    def outside_fake(meshes):  # FSDP2 x TP joins the dp and tp meshes; a mesh computes its
        with unset_fake_temporarily():  # coordinates with nonzero(), which fake tensors cannot size
            return concatenate(meshes)

    with mock.patch.object(DeviceMesh, "_concatenate", staticmethod(outside_fake)):
        for layer in layer_list(inner):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)


def apply_fsdp1(model: nn.Module, mesh: Any, layout: Layout, mixed: bool) -> nn.Module:
    """FSDP1 FullyShardedDataParallel, decoder layers auto-wrapped (see the module doc)."""
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_cls = {type(m) for m in layer_list(inner)}
    if hasattr(model, "get_base_model"):
        # accelerate + PEFT: peft.utils.other.fsdp_auto_wrap_policy, each trainable leaf (the LoRA
        # factors) its own unit next to the decoder layers (a flat parameter holds one dtype)
        from peft.utils.other import fsdp_auto_wrap_policy

        policy = _peft_wrap_policy(model, layer_cls, fsdp_auto_wrap_policy)
    else:
        policy = ModuleWrapPolicy(layer_cls)
    mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    strategy = ShardingStrategy.SHARD_GRAD_OP if layout.sharding == "zero2" else ShardingStrategy.FULL_SHARD
    return FullyShardedDataParallel(model, process_group=mesh.get_group(), auto_wrap_policy=policy,
                                    sharding_strategy=strategy, mixed_precision=mp, use_orig_params=True,
                                    sync_module_states=False, device_id=torch.device("cpu"))


def _peft_wrap_policy(model: nn.Module, layer_cls: set[type], peft_policy: Any) -> Any:
    """PEFT's FSDP1 auto-wrap policy with the decoder-layer classes named (it reads them from
    FSDP_TRANSFORMER_CLS_TO_WRAP or the model's _no_split_modules)."""
    import os
    from unittest import mock

    names = ",".join(sorted(c.__name__ for c in layer_cls))
    with mock.patch.dict(os.environ, {"FSDP_TRANSFORMER_CLS_TO_WRAP": names}):
        return peft_policy(model)


def apply_ddp(model: nn.Module, mesh: Any, tracker_ref: list) -> nn.Module:
    """DDP whose C++ reducer runs on fake tensors: no start-up sync or shape check (they read
    data), a comm hook that hands back the bucket (the default hook's fake all-reduce returns
    no tensor), and no bucket rebuild after the first step (it reads data pointers). The
    buckets are the ones DDP allocates (bucket_cap_mb 25, gradient_as_bucket_view=False)."""
    from unittest import mock

    import torch.nn.parallel.distributed as ddp_mod

    with mock.patch.object(ddp_mod, "_verify_param_shape_across_processes", lambda *a, **k: None), \
            mock.patch.object(ddp_mod, "_sync_module_states", lambda *a, **k: None):
        ddp = ddp_mod.DistributedDataParallel(model, init_sync=False, process_group=mesh.get_group())

    def hook(_state, bucket):
        buf = bucket.buffer()
        if tracker_ref:
            tracker_ref[0].track(buf, "gradients")
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut

    ddp.register_comm_hook(None, hook)
    reducer = ddp.reducer

    class _NoRebuild:
        def __getattr__(self, name: str) -> Any:
            return getattr(reducer, name)

        def _rebuild_buckets(self) -> bool:
            return False

    ddp.reducer = _NoRebuild()
    return ddp


def implicit_replication():
    """torch's implicit_replication context (plain tensors meet DTensors as replicated), imported late."""
    from torch.distributed.tensor.experimental import implicit_replication

    return implicit_replication
