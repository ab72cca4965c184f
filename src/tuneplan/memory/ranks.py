"""What one rank holds under a parallel layout, derived once per (model, job).

Tensor parallelism splits every layer's heads, MLP width and the vocabulary (Megatron-LM
ColumnParallelLinear / RowParallelLinear / VocabParallelEmbedding; torch DTensor
parallelize_module with ColwiseParallel / RowwiseParallel); pipeline parallelism gives each
rank a stage of consecutive decoder layers, the first stage the embeddings and the last the
final norm, lm_head and loss; context parallelism splits the sequence; expert parallelism
splits the routed experts. Each is expressed as the shapes of the rank (a ModelSpec of the
rank's share) so that the same per-layer rules (tuneplan.memory.static, activations) price
it: nothing is re-derived per layout.

Activations follow Korthikanti et al. 2022 (arXiv 2205.05198, Table 2): with TP alone the
attention and MLP internals are split by t while the norms, residual stream and dropout
masks are replicated (the rank's own narrow shapes give exactly that); with sequence
parallelism every activation of the layer is split by t. Pipeline schedules keep the
activations of several micro-batches alive on the first stage: min(p, m) micro-batches for
1F1B, times 1 + (p - 1) / (p v) for the interleaved schedule with v virtual stages
(Megatron-LM megatron/training/theoretical_memory_usage.py, compute_activation_memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec


@dataclass(frozen=True)
class RankView:
    """The shapes one rank holds and the activations it keeps.

    Args:
        label: which rank this is, for the breakdown ("every rank", "first pipeline stage").
        spec: the parameters this rank holds: TP-split widths, its experts, its stage's layers.
        act_spec: shapes whose per-token activations, divided by act_divisor, are this rank's.
        act_divisor: the sequence-parallel split of the layer activations (t with SP, else 1).
        logits_spec: shapes of the logits this rank makes (None: no loss on this rank).
        seq_len: tokens per sequence on this rank (the context-parallel split).
        in_flight: micro-batches whose saved activations coexist (pipeline schedule).
        shard_world: ranks each sharded state is split over (data x context, per expert group).
    """

    label: str
    spec: ModelSpec
    act_spec: ModelSpec
    act_divisor: int
    logits_spec: ModelSpec | None
    seq_len: int
    in_flight: float
    shard_world: int


def _split(n: int, parts: int, what: str, model: str) -> int:
    if n % parts:
        raise TuneplanError(f"{model}: {what} ({n:,}) do not divide by {parts}")
    return n // parts


def _tp_widths(spec: ModelSpec, tp: int, ep: int, splits_embedding: bool = True) -> ModelSpec:
    """The rank's share of each layer under tensor and expert parallelism.

    The vocabulary dimension is the rank's elements of the embedding and lm_head: both split
    by t where the stack splits the embedding; else (transformers' tp_plan: embed_tokens
    replicated, lm_head colwise) v + v/t elements of an untied pair, written as a width of
    v (1 + 1/t) / 2 each so the counts are exact, and the whole v when they are tied."""
    if tp == 1 and ep == 1:
        return spec
    name = spec.name
    heads = _split(spec.num_heads, tp, "attention heads", name) if tp > 1 else spec.num_heads
    kv = spec.num_kv_heads
    if tp > 1:
        if kv % tp and tp % kv:
            raise TuneplanError(f"{name}: {kv} key/value heads cannot be split over tensor parallelism {tp}")
        kv = max(1, kv // tp)  # fewer k/v heads than ranks: each rank keeps a replica of one
    inter = _split(spec.intermediate_size, tp, "MLP width", name) if tp > 1 and spec.intermediate_size else spec.intermediate_size
    v = spec.vocab_size
    vocab = (math.ceil(v / tp) if splits_embedding else v if spec.tie_embeddings
             else math.ceil(v * (1 + 1 / tp) / 2))
    changes = dict(num_heads=heads, num_kv_heads=kv, intermediate_size=inter, vocab_size=vocab)
    if spec.num_experts:
        changes["num_experts"] = _split(spec.num_experts, ep, "routed experts", name)
        changes["experts_per_token"] = min(spec.experts_per_token, changes["num_experts"])
        if tp > 1:
            changes["moe_intermediate_size"] = _split(spec.moe_intermediate_size, tp, "expert width", name)
            if spec.shared_intermediate_size:
                changes["shared_intermediate_size"] = _split(spec.shared_intermediate_size, tp, "shared expert width",
                                                             name)
    elif ep > 1:
        raise TuneplanError(f"{name} has no routed experts; --ep applies to MoE models")
    return replace(spec, **changes)


def _stage(spec: ModelSpec, layers: int, first: bool) -> ModelSpec:
    """A pipeline stage of `layers` consecutive decoder layers: the first stage's or the last's.

    One [vocab, hidden] matrix per end stage: the embedding on the first, lm_head on the last
    (a tied model keeps a copy on each, Megatron-LM's shared embedding), expressed as a tied
    spec so it is counted once."""
    moe = spec.moe_layers[:layers] if first else spec.moe_layers[len(spec.moe_layers) - layers:]
    return replace(spec, num_layers=layers, moe_layers=moe, tie_embeddings=True)


def rank_views(spec: ModelSpec, job: Job) -> tuple[RankView, ...]:
    """The ranks whose memory can peak: every rank alike without pipelining; the first stage
    (embeddings, most micro-batches in flight) and the last (lm_head, logits) with it.

    Raises:
        TuneplanError: degrees that do not divide the model (heads, MLP width, experts, layers).
    """
    p, t = job.parallel, job.training
    if p.tensor == p.pipeline == p.context == p.expert == 1:  # data parallel: the planner's hot path
        return (RankView("every rank", spec, spec, 1, spec, t.seq_len, 1.0, p.shard_world),)
    prof = t.profile
    return _model_parallel_views(spec, p, t.seq_len, t.grad_accum, prof.sequence_parallel_default,
                                 prof.loss_parallel, prof.tp_splits_embedding)


@lru_cache(maxsize=4096)
def _model_parallel_views(spec: ModelSpec, p, seq_len: int, grad_accum: int, sp_default: bool,
                          loss_parallel: bool, splits_embedding: bool) -> tuple[RankView, ...]:
    tp, pp, vp, cp, ep = p.tensor, p.pipeline, p.virtual_stages, p.context, p.expert
    seq = seq_len
    if cp > 1:
        seq = _split(seq_len, cp, "tokens per sequence", f"--seq-len {seq_len:,} with --cp {cp}")
    world = max(1, p.shard_world // ep) if ep > 1 else p.shard_world
    local = _tp_widths(spec, tp, ep, splits_embedding)
    sp = p.sequence_parallel if p.sequence_parallel is not None else sp_default
    sp = bool(sp) and tp > 1
    loss_spec = replace(local, vocab_size=math.ceil(spec.vocab_size / tp) if loss_parallel else spec.vocab_size)
    if pp == 1:
        act = replace(_tp_widths(spec, 1, ep), vocab_size=local.vocab_size) if sp else local
        return (RankView("every rank", local, act, tp if sp else 1, loss_spec, seq, 1.0, world),)
    if spec.num_layers < pp * vp:
        raise TuneplanError(f"{spec.name}: {spec.num_layers} layers cannot fill {pp} pipeline stages x {vp} "
                            "virtual stages")
    per_rank = math.ceil(spec.num_layers / pp)  # uneven splits: the end stages take the remainder first
    m = grad_accum
    in_flight = min(pp, m) * ((1 + (pp - 1) / (pp * vp)) if vp > 1 else 1.0)
    views = []
    for first, label, flight in ((True, "first pipeline stage (rank 0)", in_flight),
                                 (False, f"last pipeline stage (rank {p.num_gpus - 1})", 1.0)):
        stage = _stage(local, per_rank, first)
        act = _stage(replace(_tp_widths(spec, 1, ep), vocab_size=local.vocab_size), per_rank, first) if sp else stage
        lg = None if first else _stage(loss_spec, per_rank, first)
        views.append(RankView(label, stage, act, tp if sp else 1, lg, seq, flight, world))
    return tuple(views)
