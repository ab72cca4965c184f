"""What a parallel layout adds to a step's critical path: exposed communication and the pipeline bubble.

tuneplan.timing times one rank's micro-batch (its 1/(tp x pp x cp) share of a replica's
FLOPs); this module prices what the layout adds, each term with what it overlaps:

- data parallel (ddp, zero1, zero2): the gradient all-reduce (ZeRO: reduce-scatter + all-gather,
  the same ring volume) runs bucket by bucket during the backward of the last micro-batch (DDP
  and Megatron skip the sync while accumulating; DeepSpeed ZeRO-2 reduces every micro-batch):
  exposed = max(0, comm - backward) + the last bucket (calibration.DDP_BUCKET_BYTES /
  MEGATRON_BUCKET_ELEMENTS); a stack that reduces after the backward (FrameworkProfile
  .overlaps_grad_reduce False: Megatron-DeepSpeed's DeepSpeed engine) exposes all of it.
  ZeRO-1/2 all-gather the updated parameters after the step: exposed under DeepSpeed, overlapped with the next forward under Megatron's distributed
  optimizer (overlap_param_gather). With expert parallelism the routed experts' gradients (and
  their ZeRO-1 gathers) go over the expert-data-parallel group instead: data x context / ep ranks,
  tp x ep apart (Megatron-Core distributed_data_parallel.py: expert parameters' buckets use
  parallel_state.get_expert_data_parallel_group()), so with EP inside a machine each of those
  rings leaves the machine through the rank's own NIC share (tuneplan.collectives.group).
- ZeRO-3 / FSDP: every micro-batch all-gathers the parameters for the forward and again for
  the backward (DeepSpeed again for the recomputation) and reduce-scatters the gradients;
  prefetching hides them under the compute of the neighbouring layer: exposed = max(0, forward
  gathers - forward) + max(0, backward gathers + reduce-scatter - backward), plus the first
  layer's gather and the last layer's reduce-scatter, which nothing hides. HSDP adds the
  all-reduce of the gradient shards across machines, like DDP's.
- tensor parallel: per decoder layer two all-reduces of the [tokens, hidden] activations in
  the forward and two in the backward (Korthikanti et al. 2022, arXiv 2205.05198, sec. 3 and
  fig. 4; with sequence parallelism an all-gather + reduce-scatter pair of the same ring
  volume), two more when full recomputation repeats the forward. On the critical path: the
  next matmul needs the result (asynchronous TP overlap is not modelled).
- pipeline parallel: the 1F1B bubble (p - 1) / v micro-batch times (Narayanan et al. 2021,
  arXiv 2104.04473, sec. 2.2: bubble fraction (p-1)/(m v)), and per micro-batch the
  activations sent forward and their gradients sent back; the interleaved schedule overlaps
  those sends (Megatron overlap_p2p_comm), leaving the fill and drain.
- context parallel: ring attention passes each rank's k/v blocks around the cp ranks, cp-1
  passes per layer in the forward, twice that in the backward (k/v and their gradients),
  overlapped with that layer's attention: exposed = max(0, passes - attention) (Liu et al.
  2023, arXiv 2310.01889; Megatron/Transformer Engine cp_comm_type "p2p").
- expert parallel: per MoE layer an all-to-all dispatch and combine of the routed tokens
  (top-k copies of [tokens, hidden]) in the forward, their two in the backward, two more with
  full recomputation; exposed (no overlap modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.collectives import all_gather, all_reduce, all_to_all, group, reduce_scatter, send_recv
from tuneplan.job import Job
from tuneplan.memory.trained import trainable
from tuneplan.model_spec import ModelSpec, param_counts
from tuneplan.systems import System


@dataclass(frozen=True)
class MicroTimes:
    """One rank's micro-batch, split by what communication can hide under.

    Args:
        micro: seconds of one micro-batch (forward + recomputation + backward).
        forward / backward: its forward, and its backward with the recomputation.
        attention_layer_fwd: one decoder layer's attention (QK^T and AV) forward, seconds.
    """

    micro: float
    forward: float
    backward: float
    attention_layer_fwd: float


@dataclass(frozen=True)
class RankShape:
    """What one rank holds and moves (elements and bytes), derived from the rank's shapes."""

    params: int  # parameters the rank holds (TP split, its stage, its experts)
    trained: int  # of them, trained
    layers: int  # decoder layers the rank runs (its stage)
    moe_layers: int
    tokens: int  # tokens of one micro-batch on this rank (context split)
    grad_bytes: float  # bytes per gradient element as the engine reduces it
    gather_bytes: float  # bytes per parameter element gathered (ZeRO-3/FSDP)
    experts: int = 0  # of the rank's parameters, its routed experts' (trained when full fine-tuning)


def rank_shape(spec: ModelSpec, rank_spec: ModelSpec, job: Job) -> RankShape:
    """The rank's share: its parameters (rank_spec: tuneplan.memory.ranks.rank_views), its layers."""
    t, p, m = job.training, job.parallel, job.method
    pc = param_counts(rank_spec)
    tr = trainable(rank_spec, m)
    layers = max(1, -(-spec.num_layers // p.pipeline))
    moe = sum(1 for x in spec.moe_layers if x) if spec.moe_layers else (spec.num_layers if spec.num_experts else 0)
    moe_layers = -(-moe // p.pipeline) if moe else 0
    # Megatron reduces the fp32 main_grad buffer (Megatron-LM arguments.py: bf16 sets
    # accumulate_allreduce_grads_in_fp32); torchtitan's FSDP2 MixedPrecisionPolicy reduce_dtype
    # is float32; otherwise gradients are reduced in their own dtype.
    fp32_reduce = t.profile.fp32_main_grads or (t.profile.fsdp_version == 2 and t.profile.fsdp_fp32_params
                                                and p.layout.engine == "fsdp")
    grad = 4.0 if fp32_reduce and m.kind == "full" else (t.param_bytes if m.kind in ("full", "freeze")
                                                         else t.adapter_bytes)
    gather = 1.0 if m.kind == "qlora" else float(min(t.param_bytes, t.compute_bytes))
    return RankShape(pc.total, tr.base + tr.adapter, layers, moe_layers,
                     t.micro_batch * t.seq_len // p.context, grad, gather, pc.experts if m.kind == "full" else 0)


def layout_terms(spec: ModelSpec, job: Job, system: System, domain: int, rs: RankShape,
                 mt: MicroTimes) -> dict[str, float]:
    """Exposed seconds per optimizer step that the layout adds, by kind (absent: zero).

    Keys: "data-parallel sync", "ZeRO-3/FSDP gathers", "tensor parallel", "pipeline send/recv",
    "pipeline bubble", "context parallel", "expert all-to-all".
    """
    t, p = job.training, job.parallel
    tp, pp, vp, cp, ep = p.tensor, p.pipeline, p.virtual_stages, p.context, p.expert
    m = t.grad_accum
    c = t.compute_bytes
    recompute_full = t.checkpointing in ("full", "offload")
    out: dict[str, float] = {}
    per_micro = 0.0

    # tensor parallel: [tokens, hidden] activations, 4 (+2 recomputed) collectives per layer
    if tp > 1:
        g = group(system, tp, 1, domain)
        act = rs.tokens * spec.hidden_size * c
        per_layer = (4 + (2 if recompute_full else 0)) * all_reduce(act, g)
        tp_s = per_layer * rs.layers
        out["tensor parallel"] = m * tp_s
        per_micro += tp_s

    # context parallel: ring passes of k/v, hidden under the layer's attention
    if cp > 1:
        g = group(system, cp, tp, domain)
        kv_width = 2 * max(1, spec.num_kv_heads // tp) * spec.head_dim if not spec.is_mla else \
            2 * spec.num_heads // tp * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
        block = t.micro_batch * (t.seq_len // cp) * kv_width * c
        fwd = (cp - 1) * send_recv(block, g)
        attn = mt.attention_layer_fwd
        exposed = max(0.0, fwd - attn) + max(0.0, 2 * fwd - 2 * attn)
        if recompute_full:
            exposed += max(0.0, fwd - attn)
        cp_s = exposed * rs.layers
        out["context parallel"] = m * cp_s
        per_micro += cp_s

    # expert parallel: dispatch + combine all-to-alls per MoE layer
    if ep > 1 and rs.moe_layers:
        g = group(system, ep, tp, domain)
        routed = rs.tokens * spec.experts_per_token * spec.hidden_size * c
        count = 4 + (2 if recompute_full else 0)
        ep_s = count * all_to_all(routed, g) * rs.moe_layers
        out["expert all-to-all"] = m * ep_s
        per_micro += ep_s

    # data-parallel group: data x context ranks (they hold the same parameters), tensor innermost
    dp_world = p.data * cp
    grads = rs.trained * rs.grad_bytes
    if dp_world > 1 and p.shard_stage == 3:
        world = p.shard_world
        g = group(system, world, tp, domain)
        params = rs.params * rs.gather_bytes
        gathers_fwd = all_gather(params, g)
        bwd_gathers = 2 if p.layout.engine == "deepspeed" and recompute_full else 1
        rs_s = reduce_scatter(grads, g) if grads else 0.0
        exposed = (max(0.0, gathers_fwd - mt.forward) + max(0.0, bwd_gathers * gathers_fwd + rs_s - mt.backward)
                   + (gathers_fwd + rs_s) / max(1, rs.layers))
        if t.profile.accumulates_unsharded and m > 1:  # reduce-scatter once, on the last micro-batch
            exposed_first = max(0.0, gathers_fwd - mt.forward) + max(0.0, bwd_gathers * gathers_fwd - mt.backward)
            fsdp = (m - 1) * exposed_first + exposed
        else:
            fsdp = m * exposed
        out["ZeRO-3/FSDP gathers"] = fsdp
        replicas = dp_world // world
        if replicas > 1 and grads:  # HSDP: all-reduce the shards across machines
            gr = group(system, replicas, tp * world, domain)
            out["data-parallel sync"] = max(0.0, all_reduce(grads / world, gr) - mt.backward)
    elif dp_world > 1 and grads:
        g = group(system, dp_world, tp, domain)
        experts = rs.experts if ep > 1 else 0  # reduced over the expert-data-parallel group
        ge = group(system, dp_world // ep, tp * ep, domain)
        expert_grads = experts * rs.grad_bytes
        comm = all_reduce(grads - expert_grads, g) + all_reduce(expert_grads, ge)
        if t.profile.fp32_main_grads:
            bucket = min(grads, cal.MEGATRON_BUCKET_ELEMENTS * rs.grad_bytes)
        elif p.layout.engine == "deepspeed":
            bucket = min(grads, p.layout.reduce_buckets / 2 * spec.hidden_size ** 2 * rs.grad_bytes)
        else:
            bucket = min(grads, cal.DDP_BUCKET_BYTES)
        last = all_reduce(bucket, g)
        syncs = m if p.layout.engine == "deepspeed" and p.shard_stage == 2 else 1
        if t.profile.overlaps_grad_reduce:
            sync = syncs * (max(0.0, comm - mt.backward) + last)
        else:  # reduced after the last backward (FrameworkProfile.overlaps_grad_reduce): all exposed
            sync = syncs * comm
        if p.shard_stage in (1, 2):  # updated parameters all-gathered after the step
            ag = all_gather((rs.params - experts) * rs.gather_bytes, g) + all_gather(experts * rs.gather_bytes, ge)
            sync += ag if p.layout.engine == "deepspeed" else max(0.0, ag - mt.forward)
        out["data-parallel sync"] = sync

    # pipeline: bubble of (p - 1) / v micro-batches (their exposed communication included), sends
    if pp > 1:
        g = group(system, pp, tp * cp * p.data, domain)
        act = rs.tokens * spec.hidden_size * c / (tp if _sp(job) else 1)
        hop = send_recv(act, g)
        transfers = 2 * (pp - 1) if vp > 1 else 2 * (m + pp - 1)
        out["pipeline send/recv"] = transfers * hop
        out["pipeline bubble"] = (pp - 1) / vp * (mt.micro + per_micro)
    return out


def _sp(job: Job) -> bool:
    p, t = job.parallel, job.training
    sp = p.sequence_parallel if p.sequence_parallel is not None else t.profile.sequence_parallel_default
    return bool(sp) and p.tensor > 1
