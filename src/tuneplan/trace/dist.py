"""One rank of a multi-GPU training step, replayed on fake tensors under a fake process group.

The model is built and adapted exactly as for the one-GPU trace (tuneplan.trace.build),
then laid out over N ranks by torch.distributed itself, under
``dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=N)``
(torch/testing/_internal/distributed/fake_pg.py: every collective returns at once with
tensors of the right shape and no data), as torchtitan's memory estimation does
(scripts/estimate/estimation.py). One process plays one rank; the ranks of a data- or
tensor-parallel group run the same shapes, so rank 0 stands for all of them (FSDP's
torch.chunk sharding gives rank 0 the largest shard when a size does not divide).

The layouts it replays (DDP, FSDP1/FSDP2, DTensor tensor and sequence parallelism) and the
wrappers that apply them are tuneplan.trace.dist_layout; this module holds the tracker that
sees through them and the step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory.static import fsdp_fp32_params
from tuneplan.trace.build import build_model, precision_of
from tuneplan.trace.dist_layout import (
    Layout,
    apply_ddp,
    apply_fsdp1,
    apply_fsdp2,
    apply_tp,
    implicit_replication,
    layout_of,
    upcast_trainable,
)
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
    result_of,
    track_optimizer_states,
)
from tuneplan.trace.tracker import CATEGORIES, MemoryTracker, storage_resizes

# the tracker's categories plus the parameters FSDP gathers (unsharded copies, all-gather buffers)
DIST_CATEGORIES = (*CATEGORIES, "gathered")

# (row key, label, trace categories): the one-GPU comparison rows, gathered parameters with the parameters
DIST_ROWS = {"params": ("weights", "trainable", "gathered")}

DIST_ASSUMPTIONS = (
    "Distributed: one rank traced under torch's fake process group (no communication; collectives return "
    "tensors of the right shape); every rank of a data/tensor group runs the same shapes, so rank 0 is "
    "representative (FSDP's torch.chunk sharding gives rank 0 the largest shard when a size does not divide).",
)


@dataclass(frozen=True)
class DistTraceResult(TraceResult):
    """TraceResult of one rank, plus the layout it ran under (at_peak also has "gathered")."""

    layout: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["layout"] = dict(self.layout)
        return out


# ---------------------------------------------------------------- tracker


class DistTracker(MemoryTracker):
    """MemoryTracker (which counts a DTensor by its local storages) that counts FSDP's gathered
    parameters apart: storages FSDP resizes in place (unsharded parameters, all-gather outputs:
    UntypedStorage.resize_) are "gathered".
    """

    def __init__(self, block: int) -> None:
        super().__init__(block=block)
        self.current = dict.fromkeys(DIST_CATEGORIES, 0)

    def resized(self, storage: torch.UntypedStorage) -> None:
        super().resized(storage)
        entry = self._live.get(id(storage))
        if entry is not None and entry[2] != "gathered":
            ref, nbytes, old = entry
            self.current[old] -= nbytes
            self.current["gathered"] += nbytes
            self._live[id(storage)] = (ref, nbytes, "gathered")

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
                upcast_trainable(model, fp32_trainable)
                if layout.tp > 1:
                    trains = {n: p.requires_grad for n, p in model.named_parameters()}
                    apply_tp(model, mesh["tp"], layout)
                    # parallelize_module re-registers parameters as nn.Parameter(DTensor), which
                    # trains by default: frozen norms/embeddings of LoRA stay frozen
                    for n, p in model.named_parameters():
                        p.requires_grad_(trains.get(n, p.requires_grad))
                if layout.dp > 1:
                    if layout.sharding == "ddp":
                        model = apply_ddp(model, mesh["dp"], tracker_ref)
                    elif layout.fsdp_version == 2:
                        apply_fsdp2(model, mesh["dp"], layout, fp32_trainable)
                    else:
                        model = apply_fsdp1(model, mesh["dp"], layout, fp32_trainable)
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
            replicate = implicit_replication() if layout.tp > 1 else contextlib.nullcontext
            first_peak = 0
            fsdp2 = layout.fsdp and layout.fsdp_version == 2
            with tracker, storage_resizes(tracker), (_fsdp2_grad_tags(tracker) if fsdp2 else contextlib.nullcontext()):
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
                    track_optimizer_states(optimizer, tracker)
            for h in handles:
                h.remove()
            result = result_of(tracker, DIST_CATEGORIES, name=name, first_peak=first_peak,
                               counts=_count_local(model), start=start, fake=True, notes=notes,
                               cls=DistTraceResult, layout=layout.to_dict())
            del model, inner, optimizer, params
            tracker_ref.clear()
    return result


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
