"""One rank of a multi-GPU training step, replayed on fake tensors under a fake process group.

The model is built and adapted exactly as for the one-GPU trace (tuneplan.trace.build),
then laid out over N ranks by torch.distributed itself, under
``dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=N)``
(torch/testing/_internal/distributed/fake_pg.py: every collective returns at once with
tensors of the right shape and no data), as torchtitan's memory estimation does
(scripts/estimate/estimation.py). One process plays one rank; the ranks of a data- or
tensor-parallel group run the same shapes, so rank 0 stands for all of them (FSDP's
torch.chunk sharding gives rank 0 the largest shard when a size does not divide).

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

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory.static import fsdp_fp32_params
from tuneplan.trace.build import build_model, layer_list, precision_of
from tuneplan.trace.run import (
    ASSUMPTIONS,
    Progress,
    TraceResult,
    _cuda_dropout,
    _install_hooks,
    _single_sequence_batches,
    _swappable_fake_params,
    _vocab_size,
    make_optimizer,
)
from tuneplan.trace.tracker import CATEGORIES, MemoryTracker

# the tracker's categories plus the parameters FSDP gathers (unsharded copies, all-gather buffers)
DIST_CATEGORIES = (*CATEGORIES, "gathered")

# (row key, label, trace categories): the one-GPU comparison rows, gathered parameters with the parameters
DIST_ROWS = {"params": ("weights", "trainable", "gathered")}

SHARDINGS = ("ddp", "zero2", "zero3", "fsdp")
FSDP_VERSIONS = (1, 2)

# transformers' base_model_tp_plan of the Llama family, by the module's last name
COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROWWISE = ("o_proj", "down_proj")

DIST_ASSUMPTIONS = (
    "Distributed: one rank traced under torch's fake process group (no communication; collectives return "
    "tensors of the right shape); every rank of a data/tensor group runs the same shapes, so rank 0 is "
    "representative (FSDP's torch.chunk sharding gives rank 0 the largest shard when a size does not divide).",
)


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


@dataclass(frozen=True)
class DistTraceResult(TraceResult):
    """TraceResult of one rank, plus the layout it ran under (at_peak also has "gathered")."""

    layout: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["layout"] = dict(self.layout)
        return out


# ---------------------------------------------------------------- tracker


def _storages(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages behind `t`, through tensor subclasses (DTensor -> its local tensor), as
    torch.distributed._tools.common_utils.get_untyped_storages does."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    out, todo = [], [t]
    while todo:
        x = todo.pop()
        if is_traceable_wrapper_subclass(x):
            attrs, _ = x.__tensor_flatten__()
            todo.extend(v for v in (getattr(x, a) for a in attrs) if isinstance(v, torch.Tensor))
        else:
            out.append(x.untyped_storage())
    return out


class DistTracker(MemoryTracker):
    """MemoryTracker that sees through DTensor and counts FSDP's gathered parameters apart.

    A DTensor op is dispatched to the tracker with DTensor outputs (the local ops run below
    it), so outputs are flattened to their local storages. Storages FSDP resizes in place
    (unsharded parameters, all-gather outputs: UntypedStorage.resize_) are "gathered".
    """

    def __init__(self, block: int) -> None:
        super().__init__(block=block)
        self.current = dict.fromkeys(DIST_CATEGORIES, 0)

    def track(self, tensor: torch.Tensor, category: str) -> None:
        if tensor is None:
            return
        for s in _storages(tensor):
            entry = self._live.get(id(s))
            if entry is None:
                self._add(s, category)
            elif entry[2] != category:
                ref, nbytes, old = entry
                self.current[old] -= nbytes
                self.current[category] += nbytes
                self._live[id(s)] = (ref, nbytes, category)

    def resized(self, storage: torch.UntypedStorage) -> None:
        super().resized(storage)
        entry = self._live.get(id(storage))
        if entry is not None and entry[2] != "gathered":
            ref, nbytes, old = entry
            self.current[old] -= nbytes
            self.current["gathered"] += nbytes
            self._live[id(storage)] = (ref, nbytes, "gathered")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                for s in _storages(t):
                    self._add(s, self.category)
        return out


@contextlib.contextmanager
def _storage_resizes(tracker: DistTracker):
    """Tell the tracker about UntypedStorage.resize_ (FSDP frees and re-allocates unsharded
    parameters that way; dispatch never sees it)."""
    from unittest import mock

    orig = torch.UntypedStorage.resize_

    def resize_(storage, size):
        out = orig(storage, size)
        tracker.resized(storage)
        return out

    with mock.patch.object(torch.UntypedStorage, "resize_", resize_):
        yield


@contextlib.contextmanager
def _fsdp2_grad_tags(tracker: DistTracker):
    """Count FSDP2's sharded gradients as gradients when its post-backward assigns them
    (FSDP2 sets .grad itself, so no post-accumulate-grad hook fires)."""
    from unittest import mock

    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    orig = FSDPParamGroup.post_backward

    def post_backward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        for fp in self.fsdp_params:
            g = fp.sharded_param.grad
            if g is not None:
                tracker.track(g, "gradients")
        return out

    with mock.patch.object(FSDPParamGroup, "post_backward", post_backward):
        yield


@contextlib.contextmanager
def fake_process_group(world: int, rank: int = 0):
    """torch.distributed initialised with the fake backend for `world` ranks (this process = `rank`).

    Raises:
        TuneplanError: torch.distributed is already initialised in this process.
    """
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise TuneplanError("torch.distributed is already initialised in this process; the distributed trace "
                            "needs its own fake process group")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- layouts


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


def _apply_tp(model: nn.Module, mesh: Any, layout: Layout) -> None:
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


def _upcast_trainable(model: nn.Module, fp32_trainable: bool) -> None:
    if fp32_trainable:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()


def _apply_fsdp2(model: nn.Module, mesh: Any, layout: Layout, mixed: bool) -> None:
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


def _apply_fsdp1(model: nn.Module, mesh: Any, layout: Layout, mixed: bool) -> nn.Module:
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


def _apply_ddp(model: nn.Module, mesh: Any, tracker_ref: list) -> nn.Module:
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


# ---------------------------------------------------------------- the step


def run_dist_trace(config: dict[str, Any], job: Job, *, tp: int | None = None, fsdp_version: int | None = None,
                   sequence_parallel: bool = False, rank: int = 0, name: str = "model", steps: int = 2,
                   progress: Progress | None = None, block: int = 512) -> DistTraceResult:
    """Measure one rank's memory in a training step laid out over job.parallel.num_gpus ranks.

    Args:
        config: config.json dict.
        job: method, training and parallel settings (num_gpus, sharding; tensor unless `tp`).
        tp: tensor-parallel degree (default: job.parallel.tensor).
        fsdp_version: 2 (fully_shard) or 1 (FullyShardedDataParallel) for zero2/zero3/fsdp
            (default: the framework profile's).
        sequence_parallel: with tp > 1, shard norm and residual activations over the sequence.
        rank: which rank this process plays.
        name, steps, progress, block: as tuneplan.trace.run.run_trace.

    Returns:
        DistTraceResult of the rank's last step (rank 0: representative, see DIST_ASSUMPTIONS).

    Raises:
        TuneplanError: a layout or setting the trace cannot replay.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh

    layout = layout_of(job, tp=tp, fsdp_version=fsdp_version, sequence_parallel=sequence_parallel, rank=rank)
    t = job.training
    mixed = t.dtypes.fp32_master
    if job.method.kind == "qlora" and layout.world > 1:
        raise TuneplanError("the distributed trace does not replay QLoRA (FSDP needs bitsandbytes' quant_storage); "
                            "trace QLoRA on one GPU")
    if mixed and not layout.fsdp:
        raise TuneplanError("--precision mixed (fp32 master weights) is replayed under FSDP only; use "
                            "--sharding fsdp or --precision bf16")
    build_training = replace(t, precision="amp") if mixed else t
    prec = precision_of(build_training)
    fp32_trainable = layout.fsdp and (mixed or fsdp_fp32_params(job))
    autocast_dtype = None if mixed else prec.autocast_dtype
    notes = list(ASSUMPTIONS) + list(DIST_ASSUMPTIONS) + [f"Layout: {layout.describe()}."]
    if layout.fsdp:
        if mixed:
            notes.append("FSDP mixed precision: fp32 parameters sharded (master weights), gathered in bf16, "
                         "gradients reduced in fp32 (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)); "
                         "no autocast (torchtitan's step).")
        elif fp32_trainable:
            notes.append("FSDP: trainable parameters upcast to fp32 shards (accelerate's FSDP upcast, the "
                         "framework profile), gathered in bf16, reduced in fp32 "
                         "(MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)).")
        else:
            notes.append("FSDP pure bf16: parameters sharded, gathered and reduced in their own dtype (no policy).")
    if layout.tp > 1:
        notes.append("Tensor parallel: transformers' base_model_tp_plan (q/k/v/gate/up colwise, o/down rowwise), "
                     "lm_head colwise with gathered logits, embeddings and norms replicated"
                     + ("; sequence parallel norms/residual (torchtitan plan)" if layout.sequence_parallel else "")
                     + "; LoRA factors split with their base layer.")
    if layout.sharding == "ddp" and layout.dp > 1:
        notes.append("DDP: gradients plus the reducer's 25 MiB buckets (gradient_as_bucket_view=False); the "
                     "fake all-reduce is a comm hook returning the bucket.")
    start = time.perf_counter()
    say = progress or (lambda _s: None)
    torch.manual_seed(0)
    with fake_process_group(layout.world, layout.rank):
        # the mesh is built outside FakeTensorMode (torchtitan: ParallelDims.world_mesh)
        mesh = init_device_mesh("cpu", (layout.dp, layout.tp), mesh_dim_names=("dp", "tp"))
        # DeviceMesh keeps its rank grid as a real tensor, which FSDP2 on a 2-D mesh reads inside the mode
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        tracker = DistTracker(block=block)
        tracker_ref: list[DistTracker] = [tracker]
        with mode, _single_sequence_batches(), _cuda_dropout():
            say("building model")
            with _swappable_fake_params(mode):
                model = build_model(config, job.method, build_training)
                inner = model
                _upcast_trainable(model, fp32_trainable)
                if layout.tp > 1:
                    trains = {n: p.requires_grad for n, p in model.named_parameters()}
                    _apply_tp(model, mesh["tp"], layout)
                    # parallelize_module re-registers parameters as nn.Parameter(DTensor), which
                    # trains by default: frozen norms/embeddings of LoRA stay frozen
                    for n, p in model.named_parameters():
                        p.requires_grad_(trains.get(n, p.requires_grad))
                if layout.dp > 1:
                    if layout.sharding == "ddp":
                        model = _apply_ddp(model, mesh["dp"], tracker_ref)
                    elif layout.fsdp_version == 2:
                        _apply_fsdp2(model, mesh["dp"], layout, fp32_trainable)
                    else:
                        model = _apply_fsdp1(model, mesh["dp"], layout, fp32_trainable)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = make_optimizer(params, build_training)
            for p in model.parameters():
                tracker.track(p, "trainable" if p.requires_grad else "weights")
            for b in model.buffers():
                tracker.track(b, "weights")
            state = {"step": 0, "steps": steps}
            handles = _install_hooks(inner, tracker, progress, state)
            vocab = _vocab_size(inner)
            position_ids = None
            if layout.sequence_parallel:  # the model would take the positions of its local sequence shard
                position_ids = torch.arange(t.seq_len).unsqueeze(0).expand(t.micro_batch, -1)
            autocast = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            replicate = _implicit_replication() if layout.tp > 1 else contextlib.nullcontext
            first_peak = 0
            fsdp2 = layout.fsdp and layout.fsdp_version == 2
            with tracker, _storage_resizes(tracker), (_fsdp2_grad_tags(tracker) if fsdp2 else contextlib.nullcontext()):
                for step in range(1, steps + 1):
                    state["step"] = step
                    if step == steps:
                        first_peak = tracker.peak.total
                        tracker.reset_peak()
                    tracker.set_phase("forward", "activations")
                    ids = torch.randint(0, vocab, (t.micro_batch, t.seq_len))
                    labels = ids.clone()
                    kwargs = {"position_ids": position_ids} if position_ids is not None else {}
                    with autocast, replicate():
                        out = model(input_ids=ids, labels=labels, **kwargs)
                    loss = out.loss
                    del out
                    tracker.set_phase("backward", "logits")
                    say(f"step {step}/{steps} backward")
                    with replicate():
                        loss.backward()
                    del loss, ids, labels
                    for p in params:  # FSDP1 / DDP gradients appear without a post-accumulate hook
                        if p.grad is not None:
                            tracker.track(p.grad, "gradients")
                    tracker.set_phase("optimizer", "temporaries")
                    say(f"step {step}/{steps} optimizer")
                    with replicate():
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    for st in optimizer.state.values():
                        for v in st.values():
                            if isinstance(v, torch.Tensor):
                                tracker.track(v, "optimizer")
            for h in handles:
                h.remove()
            trainable, total = _count_local(model)
            resident = {k: v for k, v in tracker.current.items() if v}
            result = DistTraceResult(
                model=name, peak_bytes=tracker.peak.total, peak_phase=tracker.peak.phase,
                phase_peaks=tuple((k, v) for k, v in tracker.phase_peaks.items() if k != "setup"),
                at_peak={k: tracker.peak.by_category.get(k, 0) for k in DIST_CATEGORIES},
                resident=resident, first_step_peak=first_peak, trainable_params=trainable, total_params=total,
                elapsed_s=time.perf_counter() - start, fake=True, ops=tracker.ops, notes=tuple(notes),
                layout=layout.to_dict())
            del model, inner, optimizer, params
            tracker_ref.clear()
    return result


def _implicit_replication():
    from torch.distributed.tensor.experimental import implicit_replication

    return implicit_replication


def _count_local(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements this rank holds (DTensor: its local shard)."""
    from torch.distributed.tensor import DTensor

    trainable = total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        n = local.numel() * (2 if local.dtype == torch.uint8 else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def dist_rows(at_peak: dict[str, int], est: Any) -> list[Any]:
    """tuneplan.trace.compare.rows with FSDP's gathered parameters in the parameters row."""
    from tuneplan.trace.compare import ROWS, Row

    out = []
    for key, label, tcats, ekeys in ROWS:
        cats = DIST_ROWS.get(key, tcats)
        out.append(Row(key, label, sum(at_peak.get(c, 0) for c in cats), sum(est.component(k) for k in ekeys)))
    return out


__all__ = ["DistTraceResult", "Layout", "layout_of", "run_dist_trace", "fake_process_group", "dist_rows"]
