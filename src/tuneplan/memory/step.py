"""The moments of a steady-state step and the result: per-GPU peak and its breakdown.

The step is walked through its candidate peak moments (end of forward, start of
backward, top and bottom of the decoder stack in backward, embedding backward, optimizer
step); the largest is the peak. Steady state means optimizer states already exist
(step >= 2), as in any real run. Allocated bytes then get the caching allocator's
overhead and the CUDA context on top (tuneplan.calibration). What the figures assume, in
words, is tuneplan.memory.notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tuneplan.job import Job
from tuneplan.memory import components as K
from tuneplan.memory.activations import (
    chunked_head_bytes,
    logits_bytes,
    norm_weight_fp32,
    selective_saved,
    stack_activations,
)
from tuneplan.memory.mlx import mlx_activations, mlx_logits_bytes
from tuneplan.memory.notes import assumptions, component_notes
from tuneplan.memory.ranks import RankView, rank_views
from tuneplan.memory.static import (
    Static,
    engine_fp32_master,
    fsdp_fp32_params,
    rope_cache_bytes,
    static_memory,
)
from tuneplan.memory.tasks import (
    TASK_LABELS,
    forward_view,
    largest_block,
    task_notes,
    task_terms,
    task_view,
)
from tuneplan.memory.trained import check_method, first_trained_layer, targets_text, trainable
from tuneplan.model_spec import ModelSpec, param_counts
from tuneplan.uncertainty import Band, band


@dataclass(frozen=True)
class Component:
    """One line of the breakdown: resident bytes per GPU and what the figure assumes."""

    key: str
    label: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of a training step.

    Args:
        components: the parts of the peak; they sum to `peak_bytes`.
        peak_bytes: estimated peak memory per GPU (bytes) as nvidia-smi would show it,
            including CUDA context and allocator overhead (= device_bytes; see also
            peak_allocated_bytes and peak_reserved_bytes, the torch counters).
        peak_phase: forward | backward | optimizer: when the peak happens.
        phase_bytes: (phase, bytes) peak of each phase, before context/allocator overhead.
        trainable_params / total_params: element counts.
        cpu_bytes: bytes held in CPU RAM by offload (not in `peak_bytes`).
        assumptions: sentences naming what the figures assume.
    """

    model: ModelSpec
    job: Job
    components: tuple[Component, ...]
    peak_bytes: int
    peak_phase: str
    phase_bytes: tuple[tuple[str, int], ...]
    trainable_params: int
    total_params: int
    cpu_bytes: int
    assumptions: tuple[str, ...]
    rank: str = "every rank"

    def component(self, key: str) -> int:
        """Bytes of one component by key (0 if absent)."""
        return sum(c.bytes for c in self.components if c.key == key)

    @property
    def peak_allocated_bytes(self) -> int:
        """Peak of live tensors: what torch.cuda.max_memory_allocated() reports. Paged
        optimizer states (managed memory) are not counted there; see `managed_bytes`."""
        return sum(c.bytes for c in self.components if c.key not in K.OVERHEAD) - self.managed_bytes

    @property
    def managed_bytes(self) -> int:
        """Bytes in CUDA managed memory at the peak: bitsandbytes paged optimizer states
        (bitsandbytes/functional.py get_paged -> cudaMallocManaged), which the caching
        allocator and its counters never see but the device holds while they are resident."""
        return self.component(K.OPTIMIZER) if self.job.training.optim.paged else 0

    @property
    def peak_reserved_bytes(self) -> int:
        """Peak held by PyTorch's caching allocator: torch.cuda.max_memory_reserved()."""
        return self.peak_allocated_bytes + self.component(K.ALLOCATOR)

    @property
    def device_bytes(self) -> int:
        """Device memory the process uses at the peak, CUDA context and managed (paged)
        memory included: what nvidia-smi or torch.cuda.mem_get_info() show (= peak_bytes)."""
        return self.peak_reserved_bytes + self.managed_bytes + self.component(K.CUDA_CONTEXT)

    def counters(self) -> dict[str, int]:
        """The figures by the names the runtime uses (bytes): torch and nvidia-smi's three on
        CUDA; MLX's mx.get_peak_memory() (no reserved counter: its buffer cache is outside it)."""
        rt = self.job.training.rt
        if "reserved" not in dict(rt.counters):
            values = {"allocated": self.peak_allocated_bytes, "device": self.device_bytes}
            return {name.split(" ")[0]: values[key] for key, name in rt.counters}
        return {"max_memory_allocated": self.peak_allocated_bytes,
                "max_memory_reserved": self.peak_reserved_bytes,
                "device_used": self.device_bytes}

    @property
    def uncertainty(self) -> Band | None:
        """The peak's uncertainty band (tuneplan.uncertainty: measured runs of this kind of job)."""
        return band(self.job, self.peak_bytes)

    def to_dict(self) -> dict:
        """JSON-ready view (bytes as integers)."""
        b = self.uncertainty
        return {
            "model": self.model.name,
            "method": self.job.method.__dict__ | {"targets": targets_text(self.job.method.targets)},
            "training": dict(self.job.training.__dict__),
            "parallel": dict(self.job.parallel.__dict__),
            "unit": "bytes",
            "components": [c.__dict__ for c in self.components],
            "peak_bytes": self.peak_bytes,
            "uncertainty": b.to_dict() if b else None,
            "counters": self.counters(),
            "peak_phase": self.peak_phase,
            "phase_bytes": dict(self.phase_bytes),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "cpu_bytes": self.cpu_bytes,
            "assumptions": list(self.assumptions),
            "rank": self.rank,
        }


def _sharded(n: int, stage_needed: int, stage: int, world: int) -> int:
    return math.ceil(n / world) if stage >= stage_needed else n


@dataclass(frozen=True)
class _Moments:
    """Bytes per component at each candidate peak moment of the step (before overhead)."""

    base: tuple[tuple[str, int], ...]
    candidates: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    cpu: int
    autocast_copies: int


@dataclass(frozen=True)
class _PerGpu:
    """Static bytes on one GPU after sharding and offload, and what went to CPU RAM."""

    weights: int
    quant: int
    adapters: int
    gather: int
    optimizer: int
    master: int
    grads: int
    ddp_buckets: int
    opt_temp: int
    cpu: int


def _per_gpu(st: Static, job: Job, world: int, h: int) -> _PerGpu:
    """Shard the static bytes over `world` ranks (ZeRO stage 1: optimizer + master, 2: +
    grads, 3: + params), add the engine's buffers and move offloaded ones to CPU RAM."""
    m, t, p = job.method, job.training, job.parallel
    stage = p.shard_stage
    cpu = 0
    weights = _sharded(st.weights, 3, stage, world)
    quant = _sharded(st.quant_constants, 3, stage, world)
    adapters = _sharded(st.adapters, 3, stage, world)
    gather = 0
    if stage == 3 and (world > 1 or p.offload_params):
        # FSDP/ZeRO-3 all-gathers one layer (plus one prefetched) in the compute dtype; with
        # parameters offloaded to CPU RAM even a single GPU brings each layer in to use it
        gather = 2 * t.compute_bytes * st.layer_params if m.kind != "qlora" else st.layer_params
        if m.kind in ("full", "freeze"):
            # and a trained layer's unsharded gradient exists until its reduce-scatter
            # (torch/distributed/fsdp/_runtime_utils.py _post_backward_hook; FSDP2
            # foreach_reduce): one layer in the compute dtype
            gather += t.compute_bytes * st.layer_params
    if p.offload_params:
        cpu += weights + quant + adapters
        weights = quant = adapters = 0
    optimizer = _sharded(st.optimizer, 1, stage, world)
    master = _sharded(st.master, 1, stage, world)
    if p.offload_optimizer:
        cpu += optimizer + master
        optimizer = master = 0
    grads = _sharded(st.gradients, 2, stage, world)
    if p.offload_params or (p.offload_optimizer and stage >= 2):
        # the sharded gradients live in CPU RAM too: FSDP2 CPUOffloadPolicy offloads
        # parameters, gradients and optimizer states (torch/distributed/fsdp/_fully_shard/
        # _fsdp_api.py), FSDP1 CPUOffload(offload_params=True) likewise, and DeepSpeed
        # ZeRO-Offload reduces gradients into CPU buffers for its CPU Adam step
        # (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py with offload_optimizer)
        cpu += grads
        grads = 0
    ddp_buckets = st.gradients if (world > 1 and stage == 0) else 0
    if world > 1 and p.layout.reduce_buckets:
        # DeepSpeed's reduce / prefetch buckets (Sharding.reduce_buckets, HF "auto" sizes)
        ddp_buckets += int(p.layout.reduce_buckets * h * h) * t.compute_bytes
    opt_temp = 0 if p.offload_optimizer else _sharded(st.optimizer_temp, 1, stage, world)
    if engine_fp32_master(job) and not p.offload_optimizer and not t.profile.fp32_main_grads:
        # the fp32 gradient partition made for the step (DeepSpeed: single_grad_partition
        # .to(fp32) in stage_1_and_2.py; stage3.py fp32_partitioned_groups_flat[i].grad);
        # its fused Adam has no full-size temporary
        opt_temp = _sharded(st.master, 1, stage, world)
        if stage == 3:  # stage3.py steps one sub-group at a time (sub_group_size, 1e9 elements)
            opt_temp = min(opt_temp, 4 * DS_SUB_GROUP_SIZE)
    elif t.profile.fp32_main_grads:
        opt_temp = 0  # Megatron's fused Adam steps on its fp32 main_grad buffer in place
    return _PerGpu(weights, quant, adapters, gather, optimizer, master, grads, ddp_buckets, opt_temp, cpu)


# DeepSpeed ZeRO-3 sub_group_size (elements): its default and HF's "auto" template value
# (deepspeed/runtime/zero/config.py ZeroConfig.sub_group_size = 1e9)
DS_SUB_GROUP_SIZE = 1_000_000_000


def _autocast_copies(spec: ModelSpec, job: Job, world: int) -> int:
    """Compute-dtype weight copies that autocast keeps alive until backward (bytes)."""
    m, t, p = job.method, job.training, job.parallel
    stage = p.shard_stage
    copies = 0
    if t.dtypes.fp32_residual:  # autocast caches bf16 casts of fp32 weights for the backward
        copies = 2 * param_counts(spec).linear_in_layers // (world if stage == 3 else 1)
        # and lm_head's bf16 cast is saved by its matmul (trace: Llama-3.2-1B LoRA, amp)
        copies += 2 * spec.vocab_size * spec.hidden_size // (world if stage == 3 else 1)
    elif t.prep.fp32_embeddings and t.autocast:
        # an fp32 lm_head under autocast: its compute-dtype cast is saved by its matmul for
        # the input gradient (the frozen weight is not cached; it dies with the backward)
        copies += t.compute_bytes * spec.vocab_size * spec.hidden_size // (world if stage == 3 else 1)
    if (t.checkpointing == "none" and m.is_adapter and t.autocast and t.adapter_bytes != t.compute_bytes
            and not fsdp_fp32_params(job)):
        # the cached compute-dtype casts of the fp32 adapters are saved by their matmuls
        # until backward (with checkpointing they die with the forward): measured by trace
        copies += t.compute_bytes * trainable(spec, m).adapter
    return copies


def _fsdp_root_bytes(spec: ModelSpec, job: Job, world: int) -> int:
    """Bytes of the FSDP root unit's gathered parameters, alive through forward and backward.

    Only for stacks whose FSDP wrap leaves the embeddings, final norm and lm_head in the root
    unit (FrameworkProfile.fsdp_root_unit): FSDP does not reshard the root after forward, so
    its unsharded compute-dtype copy lives until the root's post-backward hook, after the
    embedding's backward. The root's own shard is already counted in the weights. On one GPU
    the shard is the whole parameter, but a separate compute-dtype copy still exists where
    the flat parameters are fp32 (the upcast) or live in CPU RAM (--offload-params), so the
    figure does not depend on the world size (1 GPU is never below 2 for the same job).
    """
    p, t = job.parallel, job.training
    if p.layout.engine != "fsdp" or not t.profile.fsdp_root_unit:
        return 0
    if world < 2 and not (fsdp_fp32_params(job) or p.offload_params):
        return 0
    pc = param_counts(spec)
    return t.compute_bytes * (pc.embed + pc.lm_head + spec.hidden_size)


def _unsharded_grad_params(spec: ModelSpec, m) -> int:
    """Elements of the FSDP units that hold a trainable weight (each decoder layer is a unit,
    the embeddings, final norm and lm_head the root): all of them for full fine-tuning, the
    trained layers (and the root if embeddings train) otherwise."""
    pc = param_counts(spec)
    if m.kind == "full":
        return pc.total
    root = pc.embed + pc.lm_head + spec.hidden_size
    layers = pc.total - root
    first = first_trained_layer(spec, m)
    trained = layers * (spec.num_layers - first) // max(1, spec.num_layers) + trainable(spec, m).adapter
    return trained + (root if m.train_embeddings else 0)


def _moments(spec: ModelSpec, job: Job, view: RankView) -> _Moments:
    """Bytes of each component at each moment of a steady-state step, on the rank `view`
    describes (tuneplan.memory.ranks: its layers, widths, tokens and micro-batches in flight)."""
    spec, job = forward_view(spec, job)  # task hook (tuneplan.memory.tasks): rows per sample, scalar head
    view = task_view(view, job)
    m, t, p = job.method, job.training, job.parallel
    check_method(spec, m)
    if t.profile.mlx_graph:
        return _mlx_moments(spec, job)
    spec = view.spec
    if view.seq_len != t.seq_len:
        t = replace(t, seq_len=view.seq_len)
    st = static_memory(spec, job)
    world, stage = view.shard_world, p.shard_stage
    g = _per_gpu(st, job, world, spec.hidden_size)
    if p.pipeline > 1 and p.layout.engine == "fsdp" and world > 1:
        # FSDP under a pipeline schedule: the stage's parameters stay gathered across its
        # micro-batches (torchtitan parallelize: reshard_after_forward=False when PP is on)
        # and its gradients accumulate unsharded until the last backward
        # (torch/distributed/pipelining/stage.py backward_maybe_with_nosync:
        # set_requires_gradient_sync(False)), in FSDP2's fp32 reduce dtype
        # (FSDPParam.to_accumulated_grad_if_needed)
        g = replace(g, gather=t.compute_bytes * param_counts(spec).total,
                    grads=g.grads + 4 * trainable(spec, m).total)
    c = t.compute_bytes
    tokens = t.micro_batch * t.seq_len
    cpu = g.cpu
    div, flight = view.act_divisor, view.in_flight

    # --- activations (Korthikanti et al. 2022: split by t with sequence parallelism)
    ckpt = t.checkpointing
    # under FSDP's mixed-precision policy the fp32 adapters are gathered in the compute dtype
    fsdp_mixed = fsdp_fp32_params(job)
    acts_full, worst_layer = stack_activations(view.act_spec, m, replace(t, micro_batch=1), fsdp_mixed)
    if div > 1:
        acts_full //= div
        worst_layer = replace(worst_layer, saved=worst_layer.saved // div, transient=worst_layer.transient // div)
    first_trained = first_trained_layer(spec, m)
    stored_layers = spec.num_layers - first_trained
    h = spec.hidden_size
    norm_w = 4 if norm_weight_fp32(t) else c  # torchtune >= 0.5 keeps the fp32 normalised value
    final_norm = 4 * h + (norm_w * h if m.kind in ("full", "freeze") else 0)
    lm_head_in = c * h if (m.kind == "full" or m.train_embeddings) else 0
    head_saved = (final_norm + lm_head_in) * tokens if view.logits_spec is not None else 0
    autocast_copies = _autocast_copies(spec, job, world)
    if ckpt == "none":
        saved = acts_full * tokens
        recompute = 0
    elif ckpt == "selective":  # torchtitan op-level SAC: the layer input and the cached op outputs
        saved = selective_saved(view.act_spec, t, stored_layers) * tokens // div
        recompute = worst_layer.saved * tokens
    else:
        # each layer's input: the residual stream, fp32 when it is (tuneplan.job.Training.fp32_residual)
        per_ckpt = 0 if ckpt == "offload" else t.residual_bytes * h // div
        saved = per_ckpt * stored_layers * tokens
        recompute = worst_layer.saved * tokens
        if ckpt == "offload":
            cpu += t.residual_bytes * h * stored_layers * tokens
    transient = worst_layer.transient * tokens
    if m.kind == "qlora":  # dequantised copy of the largest matrix during its matmul
        transient += c * st.largest_matrix
    if m.kind == "dora":  # W + s*B@A materialised in fp32 to compute the column norm
        transient += 2 * 4 * st.largest_matrix
    # pipelines keep several micro-batches' saved tensors on the early stages
    saved = int(saved * flight)
    lg_fwd, _, lg_bwd = logits_bytes(view.logits_spec, t) if view.logits_spec is not None else (0, 0, 0)

    # --- gradients alive at each moment
    grads = g.grads
    accum_grads = grads if t.grad_accum > 1 else 0
    # gradients that exist when the top decoder layer's backward runs (no accumulation):
    # lm_head/embedding (if trained) and that layer's own
    head_grads = 0
    if (m.kind == "full" or m.train_embeddings) and grads:
        grad_bytes = 4 if fsdp_fp32_params(job) else t.param_bytes
        head_grads = _sharded(grad_bytes * spec.vocab_size * spec.hidden_size, 2, stage, world)
    layer_grads = (grads - head_grads) // max(1, spec.num_layers - first_trained)
    # The input embedding's gradient is the last one made (embedding backward runs after
    # the first decoder layer's). Untied, it does not exist yet while layer 0 runs its
    # backward. Tied, lm_head's contribution stands in for it until then, and at the end
    # the embedding's own [v, h] gradient and its sum with that contribution exist next to
    # every other gradient (autograd adds the two uses before AccumulateGrad). Measured by
    # `tuneplan trace`: Llama-3.1-8B (untied) and Qwen2.5-0.5B / Llama-3.2-3B (tied) full
    # fine-tuning, benchmarks/results/trace_vs_estimate.md.
    emb_grad = head_grads  # one [v, h] matrix
    if t.grad_accum > 1:  # the new gradient is added in place to the accumulated one
        layer0_grads, embed_extra = grads, emb_grad * (2 if spec.tie_embeddings else 1)
    elif spec.tie_embeddings:
        layer0_grads, embed_extra = grads, 2 * emb_grad
    else:
        layer0_grads, embed_extra = grads - emb_grad, 0
    if emb_grad:  # the gradient flowing into the embedding output, [tokens, h] in the param dtype
        embed_extra += t.param_bytes * h * tokens
    opt_temp = g.opt_temp
    head_lg, head_work = chunked_head_bytes(view.logits_spec, t, head_grads) if view.logits_spec is not None else (0, 0)
    if t.optimizer_in_backward:
        # torchtune optimizer_in_bwd: a post-accumulate-grad hook steps each parameter and
        # frees its gradient (torchtune/training/memory.py register_optim_in_bwd_hooks;
        # recipes/full_finetune_single_device.py), so at most the gradients of the layer
        # being differentiated exist, never the whole set, and there is no separate step
        accum_grads = head_grads = 0  # lm_head's gradient is stepped and freed as soon as it exists
        layer_grads = min(layer_grads, grads)
        layer0_grads = layer_grads
        grads = max(layer_grads, emb_grad)
        opt_temp = 0

    root = _fsdp_root_bytes(spec, job, world)  # gathered from the embedding's forward to its backward
    if (p.layout.engine == "fsdp" and world > 1 and t.grad_accum > 1 and t.profile.accumulates_unsharded
            and not t.optimizer_in_backward):
        # no_sync accumulation: every FSDP unit holding a trainable weight keeps its whole
        # unsharded gradient (FlatParameter-sized with use_orig_params, frozen weights included)
        # in the compute dtype until the sync micro-batch (FrameworkProfile.accumulates_unsharded)
        unsharded = c * _unsharded_grad_params(spec, m)
        accum_grads = unsharded  # the sharded gradients only exist from the sync micro-batch on
        layer0_grads = max(layer0_grads, unsharded)

    # --- phases: each candidate moment is a list of (component key, bytes)
    base = ((K.WEIGHTS, g.weights + rope_cache_bytes(spec, job)), (K.QUANT_CONSTANTS, g.quant), (K.ADAPTERS, g.adapters),
            (K.PARAM_GATHER, g.gather), (K.OPTIMIZER, g.optimizer), (K.MASTER_WEIGHTS, g.master),
            (K.DDP_BUCKETS, g.ddp_buckets))
    kept = saved + head_saved + autocast_copies
    one_layer = (recompute if ckpt != "none" else worst_layer.saved * tokens)
    candidates = (
        # end of forward: everything saved, loss being computed
        ("forward", ((K.PARAM_GATHER, root), (K.GRADIENTS, accum_grads), (K.ACTIVATIONS, kept),
                     (K.LOGITS, lg_fwd))),
        # start of backward: cross-entropy gradients next to the kept log-probs
        ("backward", ((K.PARAM_GATHER, root), (K.GRADIENTS, accum_grads), (K.ACTIVATIONS, kept),
                      (K.LOGITS, lg_bwd))),
        # top of the decoder stack: head gradients + the top layer's, every saved tensor
        # (or checkpoint) still alive, the top layer recomputed, its backward working set
        ("backward_top", ((K.PARAM_GATHER, root), (K.GRADIENTS, max(accum_grads, head_grads + layer_grads)),
                          (K.ACTIVATIONS, saved + autocast_copies + (recompute if ckpt != "none" else 0)),
                          (K.WORKING, transient))),
        # head backward under a chunked output projection (tuneplan.memory.activations.chunked_head_bytes)
        ("backward_head", ((K.PARAM_GATHER, root), (K.GRADIENTS, accum_grads), (K.ACTIVATIONS, kept),
                           (K.LOGITS, head_lg), (K.WORKING, head_work))),
        # bottom of the stack: all gradients, only the first layer's activations left
        ("backward_end", ((K.PARAM_GATHER, root), (K.GRADIENTS, layer0_grads), (K.ACTIVATIONS, one_layer), (K.WORKING, transient))),
        # embedding backward: every gradient, the embedding's being made
        ("backward_embed", ((K.PARAM_GATHER, root), (K.GRADIENTS, grads), (K.WORKING, embed_extra))),
        ("optimizer", ((K.GRADIENTS, 0 if t.optimizer_in_backward else grads), (K.OPTIMIZER_TEMP, opt_temp))),
    )
    # --- task hook (tuneplan.memory.tasks): reference model, reference forward, the task's log-probs
    terms = task_terms(spec, job, g.weights + g.quant, worst_layer.saved)
    if terms is not None:
        base, candidates = terms.apply(base, candidates)
    return _Moments(base, candidates, cpu, autocast_copies)


def _mlx_moments(spec: ModelSpec, job: Job) -> _Moments:
    """The moments of an mlx-lm step (tuneplan.memory.mlx): one device, no sharding.

    Candidates: the start of backward (every saved tensor and the cross-entropy's
    [tokens, vocab] arrays, with the top layer's recomputation and cotangents already
    scheduled, and that layer's gradients), the backward of the top
    trained layer (saved tensors, one recomputed layer with grad_checkpoint, that layer's
    cotangents, the gradients), and the optimizer update inside the same compiled graph
    (gradients, and the new parameters and Adam moments of the trained tensors before the
    old ones are released: mx.compile outputs replace the state after the evaluation).
    """
    m, t = job.method, job.training
    st = static_memory(spec, job)
    tokens = t.micro_batch * t.seq_len
    per_token, worst_saved, worst_work = mlx_activations(spec, job)
    h, c = spec.hidden_size, t.compute_bytes
    layers = spec.num_layers - first_trained_layer(spec, m)
    if t.checkpointing == "none":
        saved, recompute = per_token * tokens, 0.0
    else:  # mx.checkpoint around each layer's __call__ (trainer.py grad_checkpoint): its input only
        saved, recompute = c * h * layers * tokens, worst_saved * tokens
    work = worst_work * tokens
    logits = mlx_logits_bytes(spec, job)
    tr = trainable(spec, m)
    trained = t.param_bytes * tr.base + t.adapter_bytes * tr.adapter
    base = ((K.WEIGHTS, st.weights), (K.QUANT_CONSTANTS, st.quant_constants), (K.ADAPTERS, st.adapters),
            (K.OPTIMIZER, st.optimizer))
    candidates = (
        ("forward", ((K.ACTIVATIONS, int(saved)), (K.LOGITS, logits // 2))),
        # measured (benchmarks/mlx_check.py): MLX's evaluation order runs the top layer's
        # recomputation and cotangents while the cross-entropy's arrays are still alive
        # and the top layer's weight gradients
        ("backward", ((K.GRADIENTS, st.gradients // max(1, layers)), (K.ACTIVATIONS, int(saved + recompute)),
                      (K.LOGITS, logits), (K.WORKING, int(work)))),
        ("backward_top", ((K.GRADIENTS, st.gradients), (K.ACTIVATIONS, int(saved + recompute)),
                          (K.WORKING, int(work)))),
        ("optimizer", ((K.GRADIENTS, st.gradients), (K.OPTIMIZER_TEMP, trained + st.optimizer))),
    )
    return _Moments(base, candidates, 0, 0)


def _allocator_bytes(allocated: int, spec: ModelSpec, job: Job) -> int:
    """The caching allocator's overhead (reserved - allocated, bytes): a share of allocated,
    and at least one fp32-logits block where the loss makes one (tuneplan.calibration.
    ALLOCATOR_OVERHEAD: its segment is split by later allocations); none on MLX."""
    t = job.training
    over = int(allocated * t.rt.allocator_overhead)
    block = largest_block(spec, job)  # task hook (tuneplan.memory.tasks): None keeps the SFT loss's rule
    if block is not None:
        over = max(over, block) if t.rt.allocator_overhead else over
    elif t.rt.allocator_overhead and t.loss.fp32_logits_block:
        over = max(over, t.micro_batch * t.seq_len * spec.vocab_size * 4)
    return over


def _with_overhead(allocated: int, spec: ModelSpec, job: Job) -> int:
    """Allocated bytes -> what the device must hold: + the runtime's allocator overhead and
    context (CUDA: caching allocator + CUDA context; Metal/MLX: none)."""
    return allocated + _allocator_bytes(allocated, spec, job) + job.training.rt.context_bytes


def _views(spec: ModelSpec, job: Job) -> tuple[RankView, ...]:
    """The ranks to price: every rank alike, or the pipeline's end stages (tuneplan.memory.ranks)."""
    if job.training.profile.mlx_graph:
        return (RankView("every rank", spec, spec, 1, spec, job.training.seq_len, 1.0, 1),)
    return rank_views(spec, job)


def _rank_peak(spec: ModelSpec, job: Job, view: RankView) -> int:
    mo = _moments(spec, job, view)
    base = sum(b for _, b in mo.base)
    return _with_overhead(base + max(sum(b for _, b in parts) for _, parts in mo.candidates),
                          view.logits_spec or view.spec, job)


def peak_bytes(spec: ModelSpec, job: Job) -> int:
    """Peak per-GPU bytes only, of the rank that peaks (the planner's fast path; same figure
    as estimate_memory)."""
    if job.task_record.online:  # online-RL hook: generation, scoring and loss phases
        from tuneplan.memory.online import online_peak_bytes

        return online_peak_bytes(spec, job)
    return max(_rank_peak(spec, job, v) for v in _views(spec, job))


def estimate_memory(spec: ModelSpec, job: Job) -> MemoryEstimate:
    """Per-GPU memory breakdown and peak of one steady-state training step.

    Args:
        spec: model architecture.
        job: method, training settings and parallel setup.

    Returns:
        MemoryEstimate with components summing to the peak (bytes).

    Raises:
        TuneplanError: the method does not apply to this model (rank, targets, layers).
    """
    if job.task_record.online:  # online-RL hook: generation, scoring and loss phases
        from tuneplan.memory.online import estimate_online

        return estimate_online(spec, job)
    views = _views(spec, job)
    view = views[0] if len(views) == 1 else max(views, key=lambda v: _rank_peak(spec, job, v))
    mo = _moments(spec, job, view)
    tr = trainable(spec, job.method)
    base_total = sum(b for _, b in mo.base)
    totals = {k: base_total + sum(b for _, b in parts) for k, parts in mo.candidates}
    phases = (("forward", totals["forward"]),
              ("backward", max(totals[k] for k in totals if k.startswith("backward"))),
              ("optimizer", totals["optimizer"]))
    peak_key = max(totals, key=lambda k: totals[k])
    peak_phase = "backward" if peak_key.startswith("backward") else peak_key
    parts = dict(mo.base)
    for k, b in dict(mo.candidates)[peak_key]:
        parts[k] = parts.get(k, 0) + b
    world = view.shard_world
    notes = (component_notes(spec, job, mo.autocast_copies, world, _fsdp_root_bytes(spec, job, world) > 0)
             | task_notes(spec, job))  # task hook
    comps = [Component(k, (K.LABELS | TASK_LABELS)[k], int(b), notes[k]) for k, b in parts.items() if b > 0]
    allocated = sum(x.bytes for x in comps)
    rt = job.training.rt
    peak = _with_overhead(allocated, view.logits_spec or view.spec, job)
    alloc_over = peak - allocated - rt.context_bytes
    if rt.allocator_overhead:
        share = int(allocated * rt.allocator_overhead)
        note = (f"{rt.allocator_overhead:.0%} of allocated (caching allocator)" if alloc_over <= share else
                "one fp32 logits block (caching allocator: the loss's segment is split and not reused)")
        comps.append(Component(K.ALLOCATOR, K.LABELS[K.ALLOCATOR], alloc_over, note))
    if rt.context_bytes:
        comps.append(Component(K.CUDA_CONTEXT, K.LABELS[K.CUDA_CONTEXT], rt.context_bytes,
                               "driver, kernels, cuBLAS workspace"))
    return MemoryEstimate(
        model=spec, job=job, components=tuple(comps), peak_bytes=int(peak), peak_phase=peak_phase,
        phase_bytes=tuple((k, int(v)) for k, v in phases), trainable_params=tr.total,
        total_params=param_counts(spec).total, cpu_bytes=int(mo.cpu), assumptions=assumptions(spec, job),
        rank=view.label,
    )
