"""Step, epoch and run time from FLOPs, device peak and memory/link bandwidth.

(Named timing, not time, so it never shadows the standard library's ``time``.)

FLOPs per token, counted from the model's matrices (tuneplan.model_spec.layer_linears):
- forward: 2 x active matrix params (routed experts: experts_per_token copies) + lm_head
  2*v*h + causal attention 2*span_eff*(q width + v width) per layer (QK^T and AV);
- backward: full fine-tuning 2x forward (input and weight gradients); LoRA/QLoRA/DoRA skip
  base-weight gradients, so 1x the base matmuls plus 2x the adapters; attention always 2x;
  freeze runs no backward below its first trained layer;
- recomputation: with gradient checkpointing one more forward of every decoder layer that
  keeps activations. Total for a dense model: 6N full, ~4N LoRA, +2N with checkpointing.
Time per micro-batch is the largest of the GEMMs' compute (FLOPs / (peak x efficiency)),
their weight reads at the achieved bandwidth (the roofline rule of Williams et al. 2009, on
every device) and overlapped transfers (checkpoint/param offload, ZeRO-3 gathers), plus the
pointwise kernels' memory traffic (tuneplan.traffic: they run between the GEMMs, so their
time adds) and the serial bitsandbytes dequantisation. Every constant is in tuneplan.calibration with its source.

Training tasks (tuneplan.choices.tasks) are timed from the task record's fields, as the memory
model sees them (tuneplan.memory.tasks.forward_view): the graded forward + backward runs
Task.rows_per_sample x micro-batch rows (chosen and rejected concatenated); a scalar head
(reward model) has no lm_head GEMM (2 x hidden x vocab FLOPs per token fewer, no logits
traffic); the no-grad forwards (KTO's KL rows through the policy, the reference model over the
graded and KL rows unless --ref-model precomputed) cost forward-only work: the base matmuls
(~2 x params FLOPs per token, no adapters when the reference is the policy with its adapters
disabled, no backward, no recomputation), their pointwise kernels, one more weight read (and
QLoRA dequantisation) per pass, and their logits written and log-softmaxed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan import lowprec
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job, Method
from tuneplan.memory import Static, first_trained_layer, is_target, quantised_params, static_memory, trainable
from tuneplan.memory.activations import logits_bytes
from tuneplan.memory.mlx import mlx_logits_bytes
from tuneplan.memory.ranks import rank_views
from tuneplan.memory.tasks import forward_view
from tuneplan.model_spec import ModelSpec, layer_linears, param_counts
from tuneplan.parallel import Parallel
from tuneplan.systems import System, system_for
from tuneplan.timing_comm import MicroTimes, layout_terms, rank_shape
from tuneplan.timing_host import (  # noqa: F401  (kernel_count: tuneplan.timing's public name)
    _forward_kernels,
    attention_scores_bytes,
    kernel_count,
    layer_forward_kernels,
    seconds_per_kernel,
    stack_assumptions,
)
from tuneplan.traffic import forward_pass_bytes, fused, pointwise_bytes


@dataclass(frozen=True)
class TokenFlops:
    """FLOPs per token (and per micro-step for token-independent work), one sequence position.

    Args:
        forward / backward / recompute: executed FLOPs per token.
        per_step: FLOPs per micro-step that do not scale with tokens (DoRA weight norms).
    """

    forward: float
    backward: float
    recompute: float
    per_step: float

    @property
    def executed(self) -> float:
        return self.forward + self.backward + self.recompute

    @property
    def model(self) -> float:
        """MFU numerator: forward + backward, recomputation not counted."""
        return self.forward + self.backward


def _attn_widths(spec: ModelSpec) -> tuple[int, int]:
    """(query/key width, value width) summed over heads, for the QK^T and AV products."""
    if spec.is_mla:
        return spec.num_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim), spec.num_heads * spec.v_head_dim
    return spec.num_heads * spec.head_dim, spec.num_heads * spec.head_dim


@lru_cache(maxsize=65536)
def token_flops(spec: ModelSpec, method: Method, checkpointing: str, span: int, lm_head: bool = True) -> TokenFlops:
    """FLOPs per token of one training micro-step.

    Args:
        span: tokens each position attends over (sequence length, or the mean packed sample
            length with varlen attention); causal, so the mean span is (span+1)/2. Sliding
            windows are ignored (conservative).
        lm_head: the model ends in the vocabulary projection (False: a reward model's scalar
            score head, hidden x 1, whose 2 x hidden FLOPs per token are left out).
    """
    qk, vw = _attn_widths(spec)
    attn = 2 * (span + 1) / 2 * (qk + vw)
    r = method.rank
    first_trained = first_trained_layer(spec, method)
    fwd = bwd = rec = per_step = 0.0
    cache: dict[bool, tuple[float, float, float]] = {}
    for i in range(spec.num_layers):
        key = bool(spec.moe_layers[i]) if spec.moe_layers else False
        if key not in cache:
            lin = ad = dora = sac = 0.0
            mm = 0
            for m in layer_linears(spec, i):
                lin += 2 * m.active_params
                # torchtitan op-level selective AC (torchtitan@9dec370 parallelize_llama.py _custom_policy)
                # saves SDPA's and every odd aten.mm's output per block in forward order (wq wk wv wo w1 w3
                # w2: wk, wo, w3 recomputed); routed experts' grouped GEMMs are not aten.mm: recomputed
                mm += m.group != "expert"
                sac += 2 * m.active_params if m.group == "expert" or mm % 2 == 0 else 0.0
                if method.is_adapter and is_target(m, method):
                    ad += 2 * r * (m.d_in + m.d_out) * m.active
                    if method.kind == "dora":  # W + s*B@A formed for the column norm, every expert
                        dora += 2 * r * m.d_in * m.d_out * m.count
            cache[key] = (lin, ad, dora, sac)
        lin, ad, dora, sac = cache[key]
        if method.is_adapter and i < first_trained:  # mlx-lm: adapters on the last lora_layers only
            ad = dora = 0.0
        layer_fwd = lin + attn + ad
        fwd += layer_fwd
        if method.kind == "full":
            layer_bwd = 2 * lin + 2 * attn
        elif method.kind == "freeze":
            layer_bwd = 2 * (lin + attn) if i >= first_trained else 0.0
        else:  # nothing below the lowest adapted layer needs a gradient
            layer_bwd = lin + 2 * attn + 2 * ad if i >= first_trained else 0.0
        bwd += layer_bwd
        keeps = i >= first_trained
        if checkpointing == "selective" and keeps:  # attention is saved, not recomputed
            rec += sac + ad / 2
        elif checkpointing != "none" and keeps:
            rec += layer_fwd
        # forward (+ recomputation) and ~2x that in backward
        per_step += dora * (3 + (1 if checkpointing != "none" and keeps else 0))
    head = 2 * spec.vocab_size * spec.hidden_size if lm_head else 0
    fwd += head
    head_weight_grad = method.kind == "full" or method.train_embeddings
    bwd += head * (2 if head_weight_grad else 1)
    return TokenFlops(fwd, bwd, rec, per_step)


def nograd_passes(job: Job) -> tuple[tuple[int, bool], ...]:
    """The no-grad forwards of one micro-step besides the graded one, as (rows, adapters run):
    KTO's KL rows through the policy (Task.kl_rows_per_sample), then the reference model
    (separate copy, or the policy with its adapters disabled) over the graded rows and the KL
    rows, one pass each (trl/trainer/dpo_trainer.py _compute_loss, kto_trainer.py :1478-1600).
    Empty for SFT, reference-free tasks and --ref-model precomputed.

    Args:
        job: the job as the user gave it (micro_batch in samples: pairs for a pair task).
    """
    tk, b = job.task_record, job.training.micro_batch
    kl = b * tk.kl_rows_per_sample
    out: list[tuple[int, bool]] = [(kl, True)] if kl else []
    if job.reference in ("separate", "adapter"):
        out.append((b * tk.rows_per_sample, False))
        if kl:
            out.append((kl, False))
    return tuple(out)


def pointwise_traffic(spec: ModelSpec, job: Job) -> float:
    """DRAM bytes per token moved by one micro-step's pointwise kernels (not GEMMs, not weights).

    The decoder layers' casts, norms, rotary, activations, residual adds and adapter scalings
    (tuneplan.traffic, eager or fused), the logits' (logits_traffic) and, for a stack with
    unfused attention, the materialised scores' (tuneplan.timing_host.attention_scores_bytes).
    """
    return pointwise_bytes(spec, job) + logits_traffic(spec, job) + attention_scores_bytes(spec, job)


def logits_traffic(spec: ModelSpec, job: Job) -> float:
    """DRAM bytes per token of the logits and the cross-entropy's [tokens, vocab] arrays, written
    and read once each (their bytes are the memory model's: transformers/PEFT, or MLX's for an
    mlx-lm step). A scalar-head task (reward model) has no logits."""
    t = job.training
    if job.task_record.head != "lm":
        return 0.0
    one = replace(t, micro_batch=1)
    if t.profile.mlx_graph:
        return 2 * mlx_logits_bytes(spec, Job(job.method, one)) / t.seq_len
    return 2 * logits_bytes(spec, one)[2] / t.seq_len


@dataclass(frozen=True)
class StepTime:
    """Time of one optimizer step on `count` devices (seconds) and what bounds it.

    Args:
        micro_s: one micro-batch (forward + backward) on one rank: its 1/(tp x pp x cp)
            share of a replica's work.
        step_s: one optimizer step: grad_accum micro-batches on every data rank, the layout's
            exposed communication and pipeline bubble, the update.
        terms: (name, seconds) of every term, per micro-batch or per step as named.
        tokens_per_step: training tokens of one optimizer step over all devices: the tokens of
            the graded rows (micro-batch x Task.rows_per_sample x sequence x accumulation x
            data-parallel ranks). For a pair task (DPO, ORPO, reward model, ...) a "token" is
            a token of a chosen or rejected row, so a pair of two rows of --seq-len counts
            2 x --seq-len: a dataset's tokens counted over both rows of every pair (the prompt
            once per row). KTO's no-grad KL rows are not dataset tokens and are not counted.
        executed_flops_per_token / model_flops_per_token: per token of tokens_per_step, the
            no-grad forwards (reference, KL) included in both.
        mfu: model FLOPs (no recomputation) per second / peak, as the plan predicts it.
        breakdown: (name, seconds per optimizer step) whose sum is step_s: "compute" (the
            micro-batches), each kind of exposed communication, "pipeline bubble", "optimizer".
        bound_by: the breakdown's largest entry.
        system: the machine type the communication was timed on (tuneplan.systems).
    """

    device: str
    count: int
    efficiency: float
    micro_s: float
    step_s: float
    bound: str
    terms: tuple[tuple[str, float], ...]
    tokens_per_step: int
    executed_flops_per_token: float
    model_flops_per_token: float
    mfu: float
    assumptions: tuple[str, ...]
    breakdown: tuple[tuple[str, float], ...] = ()
    bound_by: str = ""
    system: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.count

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["terms"] = dict(self.terms)
        d["breakdown"] = dict(self.breakdown)
        d["assumptions"] = list(self.assumptions)
        d["tokens_per_s"] = self.tokens_per_s
        d["tokens_per_s_per_gpu"] = self.tokens_per_s_per_gpu
        return d


def _gb(nbytes: float, gbps: float) -> float:
    return nbytes / (gbps * 1e9) if gbps > 0 else float("inf")


def optimizer_update_bytes(spec: ModelSpec, job: Job, st: Static | None = None) -> float:
    """Bytes one unsharded optimizer update streams: the trained weights, the states and the
    master copy read and written once, the gradients read once.

    Args:
        st: the job's static memory, when the caller has it already.
    """
    t = job.training
    st = st if st is not None else static_memory(spec, job)
    tr = trainable(spec, job.method)
    trained_w = t.param_bytes * tr.base + t.adapter_bytes * tr.adapter
    return 2 * (trained_w + st.optimizer + st.master) + st.gradients


def step_time(spec: ModelSpec, job: Job, device: Device, span: int | None = None,
              efficiency: float | None = None) -> StepTime:
    """Predict the optimizer-step time of `job` on `job.parallel.num_gpus` x `device`.

    Cached per (spec, job, device, span, efficiency): the planner asks for the same setups
    many times.

    Args:
        span: attention span (default: the sequence length).
        efficiency: override the framework profile's FLOP efficiency (0-1].

    Raises:
        TuneplanError: the device has no published FLOPS figure; the layout does not divide
            the model (heads, layers, experts, sequence).
    """
    if not device.bf16_tflops:
        raise TuneplanError(f"{device.id} has no published TFLOPS figure; time cannot be predicted")
    eff = efficiency if efficiency is not None else job.training.profile.flop_efficiency
    if not 0 < eff <= 1:
        raise TuneplanError(f"efficiency must be in (0, 1], got {eff}")
    span = min(span or job.training.seq_len, job.training.seq_len)
    return _step_time(spec, job, device, span, eff)


@lru_cache(maxsize=16384)
def _rank_spec(spec: ModelSpec, job: Job) -> ModelSpec:
    """The largest rank's shapes under the layout (tuneplan.memory.ranks.rank_views)."""
    if not job.parallel.model_parallel:
        return spec
    views = rank_views(spec, job)
    return max((v.spec for v in views), key=lambda s: param_counts(s).total)


@lru_cache(maxsize=16384)
def _step_time(spec: ModelSpec, job: Job, device: Device, span: int, eff: float) -> StepTime:
    tk = job.task_record
    nograd = nograd_passes(job)
    # the graded forward as the task runs it (the same objects for SFT): micro-batch in rows,
    # a scalar head without lm_head (tuneplan.memory.tasks.forward_view)
    spec, job = forward_view(spec, job)
    m, t, p = job.method, job.training, job.parallel
    n = p.num_gpus
    lm_head = tk.head == "lm"
    tf = token_flops(spec, m, t.checkpointing, span, lm_head)
    tokens = t.micro_batch * t.seq_len  # graded rows x sequence
    # no-grad forwards (reference, KL): forward FLOPs (adapters only where they run), their
    # pointwise kernels and logits (written, then log-softmaxed and gathered: ~4 x c bytes
    # per logit; none for a scalar head or TRL's Liger path, use_liger_kernel) and kernels.
    # The graded rows' logits keep SFT's traffic (pointwise_traffic): TRL's selective
    # log-softmax and its metrics' copies move about as much as the fp32 cross-entropy
    ng_flops = ng_bytes = 0.0
    ng_kernels = 0
    liger = t.cross_entropy is not None and t.loss.fused
    ng_logits = 4 * t.compute_bytes * spec.vocab_size if lm_head and not liger else 0
    for rows, adapters in nograd:
        f = tf if adapters else token_flops(spec, Method(kind="full"), "none", span, lm_head)
        ng_flops += f.forward * rows * t.seq_len
        ng_bytes += (forward_pass_bytes(spec, job, adapters) + ng_logits) * rows * t.seq_len
        ng_kernels += _forward_kernels(spec, m, adapters, t.profile.quantises_fused_experts,
                                       layer_forward_kernels(t.profile))
    peak = device.bf16_tflops * 1e12
    bw = device.bandwidth_gbps * cal.BANDWIDTH_EFFICIENCY
    pc = param_counts(spec)
    st = static_memory(spec, job)
    pb, c = t.param_bytes, t.compute_bytes
    recompute = t.checkpointing != "none"
    # forward, backward (input gradients), recomputation; one more per no-grad forward
    passes = (3 if recompute else 2) + len(nograd)
    # each rank runs 1/(tp x pp x cp) of a replica's micro-batch: its heads and MLP columns
    # (TP), its stage's layers (PP), its share of the sequence (CP); expert parallelism moves
    # tokens to their experts without changing a rank's average work
    share = p.tensor * p.pipeline * p.context
    rank_spec = _rank_spec(spec, job)
    held = param_counts(rank_spec).total / pc.total if rank_spec is not spec else 1.0

    # executed FLOPs at the profile's efficiency, plus a fixed cost per kernel (launch and
    # host dispatch) that small micro-steps cannot hide
    # GEMMs at the device's achievable matmul rate (tuneplan.calibration.MATMUL_SHARE)
    matmul = cal.matmul_scale(device.id)
    rate = peak * matmul * eff
    # the last pipeline stage runs lm_head and the loss besides its 1/pp of the layers: stages
    # are split by decoder layers (Megatron-DeepSpeed GPTModelPipe partition_method
    # "type:transformer"; Megatron-Core without account_for_loss_in_pipeline_split; torchtitan's
    # layer split), and the slowest stage paces the pipeline (Narayanan et al. 2021, sec. 2.2)
    edge = p.pipeline - 1 if lm_head else 0
    head_x = tf.executed - token_flops(spec, m, t.checkpointing, span, False).executed if edge else 0.0
    compute = (tf.executed * tokens + tf.per_step + ng_flops + edge * head_x * tokens) / share / rate
    # [lowprec hook] fp8/mxfp8/nvfp4: the blocks' linears at their rate, the rest at bf16
    compute *= lowprec.compute_scale(spec, job, device, tf.executed)
    host = (kernel_count(spec, job) + ng_kernels) / p.pipeline * seconds_per_kernel(t.profile) \
        if t.profile.eager_kernels else 0.0
    if not t.profile.host_overlaps_device:  # the fitted HF form: dispatch adds to the GEMMs
        compute, host = compute + host, 0.0
    if m.kind == "qlora" and not m.fmt.dequant_copy:
        # MLX quantized_matmul reads the packed weight and its constants in the kernel
        dequant = 0.0
        weight_bytes = (st.weights + st.quant_constants) * passes
    elif m.kind == "qlora":
        quantised = quantised_params(spec, t)  # fused 3-D experts may stay 16-bit
        rest = pc.total - quantised
        serial = cal.DEQUANT_BYTES_PER_PARAM[m.quant] - 2  # unpack + write the bf16 copy
        # one streaming kernel per use (bitsandbytes kDequantizeBlockwise; tuneplan.calibration)
        dequant = _gb(quantised * serial * passes * held, device.bandwidth_gbps * cal.BANDWIDTH_EFFICIENCY)
        weight_bytes = (2 * quantised + pb * rest) * passes  # the GEMMs read the bf16 copy
    else:
        dequant = 0.0
        weight_bytes = pb * pc.total * passes
    # roofline (Williams, Waterman & Patterson, "Roofline: an insightful visual performance
    # model", CACM 52(4), 2009) for the GEMMs: the longer of their FLOPs at the achieved
    # FLOP/s and their weight reads at the achieved bandwidth
    weights = _gb(weight_bytes * held, bw)
    # the pointwise kernels run between the GEMMs on the same stream: their time adds
    # [lowprec hook] + the low-precision casts, amax reads and transposes (0 at 16 bits)
    cast = lowprec.cast_bytes_per_token(spec, job)
    pointwise = _gb(((pointwise_traffic(spec, job) + cast + edge * logits_traffic(spec, job)) * tokens + ng_bytes)
                    / share, bw)
    terms = [("compute", compute), ("weight reads", weights), ("pointwise kernels", pointwise)]
    ckpt_layers = (spec.num_layers - first_trained_layer(spec, m)) / p.pipeline
    if t.checkpointing == "offload" or (recompute and t.profile.offloads_checkpoints):
        # layer inputs go to host RAM and come back for the backward (async, overlapped)
        terms.append(("checkpoint offload", _gb(2 * c * spec.hidden_size * ckpt_layers * tokens / p.context,
                                                device.host_link_gbps)))
    if p.offload_params:
        terms.append(("param offload", _gb(pb * pc.total * held / p.shard_world * passes, device.host_link_gbps)))
    overlapped = max(terms, key=lambda x: x[1] if x[0] != "pointwise kernels" else -1.0)
    # dispatch that runs ahead of the GPU (timing_host) bounds the micro-batch when longer
    micro = max(overlapped[1] + pointwise + dequant, host)
    if dequant:
        terms.append(("QLoRA dequantisation", dequant))

    # the layout's communication and bubble (tuneplan.timing_comm), on the default machine type
    system = system_for(device, n)
    domain = _domain(system, p)
    comm_terms: dict[str, float] = {}
    if n > 1:
        fwd_share = tf.forward / tf.executed if tf.executed else 0.5
        if ng_flops:  # the no-grad forwards run before the backward
            fwd_share = (tf.forward * tokens + ng_flops) / (tf.executed * tokens + ng_flops)
        qk, vw = _attn_widths(spec)
        attn_layer = 2 * (span + 1) / 2 * (qk + vw) * tokens / share * p.pipeline / rate
        mt = MicroTimes(micro, fwd_share * micro, (1 - fwd_share) * micro, attn_layer)
        comm_terms = layout_terms(spec, job, system, domain, rank_shape(spec, rank_spec, job), mt)

    # once per optimizer step
    shard = p.shard_world if p.shard_stage >= 1 else 1
    tr = trainable(spec, m)
    trained_w = pb * tr.base + t.adapter_bytes * tr.adapter
    opt_bytes = optimizer_update_bytes(spec, job, st) * held
    # roofline of the update: its traffic at the streaming bandwidth, or the per-parameter
    # work its kernels measured on an H100 (tuneplan.calibration.OPTIMIZER_UPDATE_S_PER_PARAM:
    # bitsandbytes' 8-bit update is bound by requantising, 0.25 s for 8B), whichever is longer
    update_work = (tr.base + tr.adapter) * held * t.optim.update_s_per_param
    optimizer = max(_gb(opt_bytes, bw), update_work) / shard if not p.offload_optimizer else 0.0
    opt_offload = 0.0
    if p.offload_optimizer:
        # gradients down and updated weights up over PCIe, then the optimizer step itself on
        # the CPU: streaming weights, gradients and states through host DRAM, which the
        # processes of one machine share (torch AdamW on CPU tensors, DeepSpeed CPUAdam)
        link = _gb((st.gradients + trained_w) * held / shard, device.host_link_gbps)
        per_machine = min(n, device.max_count)
        opt_offload = link + opt_bytes / shard / (cal.HOST_DRAM_GBPS / per_machine * 1e9)
    bubble = comm_terms.pop("pipeline bubble", 0.0)
    exposed_comm = sum(comm_terms.values())
    step = t.grad_accum * micro + exposed_comm + bubble + optimizer + opt_offload
    terms += [(f"{k} (per step, exposed)", v) for k, v in comm_terms.items()]
    if bubble:
        terms.append(("pipeline bubble (per step)", bubble))
    terms.append(("optimizer update (per step)", optimizer))
    if opt_offload:
        terms.append(("optimizer offload (per step)", opt_offload))
    per_step = {"compute": t.grad_accum * compute}
    per_step[overlapped[0]] = max(per_step.get(overlapped[0], 0.0), t.grad_accum * overlapped[1])
    candidates = {**per_step, "pointwise kernels": t.grad_accum * pointwise,
                  "QLoRA dequantisation": t.grad_accum * dequant, "communication": exposed_comm,
                  "pipeline bubble": bubble, "optimizer": optimizer + opt_offload}
    bound = max(candidates, key=lambda k: candidates[k])
    breakdown = {"compute": t.grad_accum * micro, **comm_terms, "pipeline bubble": bubble,
                 "optimizer": optimizer + opt_offload}
    breakdown = {k: v for k, v in breakdown.items() if v or k in ("compute", "optimizer")}
    bound_by = max(breakdown, key=lambda k: breakdown[k])
    tokens_step = tokens * t.grad_accum * p.data
    executed_pt, model_pt = tf.executed + ng_flops / tokens, tf.model + ng_flops / tokens
    mfu = model_pt * tokens_step / step / (peak * n)
    assumptions = (
        f"{device.bf16_tflops:g} TFLOPS {device.tflops_basis} at {eff:.0%} efficiency "
        f"({t.framework} profile; recomputation counted as work)"
        + (f", x {matmul:.2f} for this device's measured matmul rate against the A100's." if matmul != 1 else "."),
        f"Memory-bound terms at {cal.BANDWIDTH_EFFICIENCY:.0%} of {device.bandwidth_gbps:g} GB/s; pointwise kernels "
        f"({'fused' if fused(t) else 'eager'}) add to the GEMM time.",
        "Causal attention over the full sequence (sliding windows ignored); packed sequences, no padding.",
        f"Optimizer update ({t.optim.name}): the longer of its traffic at the bandwidth above and "
        + (f"{t.optim.update_s_per_param * 1e12:.1f} ps per trained parameter, its kernels' time on an H100 "
           "(benchmarks/results/optimizer_update.md), assumed no shorter on other GPUs."
           if t.optim.update_s_per_param else "no per-parameter figure (not measured)."),
    )
    if not tk.is_sft:
        assumptions += (_task_assumption(job, nograd),)
    assumptions += stack_assumptions(t.profile, host)
    if n > 1:
        assumptions += (_layout_assumption(system, p, domain),)
    if t.dtypes.low_precision:  # [lowprec hook]
        assumptions += (lowprec.assumption(device, t.dtypes),)
    if p.offload_optimizer:
        assumptions += (f"Optimizer offload: PCIe transfers and the CPU optimizer step (host DRAM at "
                        f"{cal.HOST_DRAM_GBPS:g} GB/s per machine, shared by its GPUs' processes) counted.",)
    return StepTime(device.id, n, eff, micro, step, bound, tuple(terms), tokens_step, executed_pt,
                    model_pt, mfu, assumptions, tuple(breakdown.items()), bound_by, system.id if n > 1 else "")


def _task_assumption(job: Job, nograd: tuple[tuple[int, bool], ...]) -> str:
    """One sentence on how the task is timed, built from its record's fields (job: the forward
    view, micro_batch in graded rows)."""
    tk, t = job.task_record, job.training
    rows = t.micro_batch
    samples = rows // tk.rows_per_sample
    parts = [f"{tk.name.upper()}, {tk.label}: "
             + (f"chosen + rejected rows, {tk.rows_per_sample} x micro-batch = {rows} rows of {t.seq_len} tokens "
                f"through the graded forward + backward; a token (tokens per step, --dataset-tokens) is a token of "
                f"a chosen or rejected row: {rows} x {t.seq_len} per micro-step"
                if tk.rows_per_sample > 1 else f"{rows} rows of {t.seq_len} tokens through the graded forward + backward")]
    if tk.head != "lm":
        parts.append("scalar score head: no lm_head FLOPs (2 x hidden x vocab per token) and no logits traffic")
    if tk.kl_rows_per_sample:
        parts.append(f"{samples * tk.kl_rows_per_sample} KL rows per micro-batch through the policy under no_grad "
                     "(forward only, not counted as dataset tokens)")
    ref = job.reference
    if any(not a for _, a in nograd):
        what = "adapter disabled: the base matmuls, no adapters" if ref == "adapter" else "separate frozen copy"
        parts.append(f"reference forward ({what}) over the graded{' and KL' if tk.kl_rows_per_sample else ''} rows "
                     "counted as forward-only work (~2 x params FLOPs per token, no backward, no recomputation, "
                     "one more weight read per pass); its communication under a layout is not timed")
    elif ref == "precomputed":
        parts.append("reference log-probs precomputed: no reference forward in the step (the one-off forward "
                     "over the dataset before training is not timed)")
    return "; ".join(parts) + "."


def _domain(system: System, p: Parallel) -> int:
    """GPUs that share the fast link for this job: an NVL72 rack's NVLink domain, else a machine
    (num_gpus / nodes when the job says how many machines)."""
    if system.nvlink_domain > system.gpus_per_machine:
        return system.nvlink_domain
    if p.nodes:
        return max(1, p.num_gpus // p.nodes)
    return system.gpus_per_machine


def _layout_assumption(system: System, p: Parallel, domain: int) -> str:
    machines = max(1, -(-p.num_gpus // domain))
    where = f"{machines} machines" if machines > 1 else "one machine"
    return (f"Communication on {system.name} ({where}): {system.intra.kind} at {system.intra_gbps:.0f} GB/s per GPU "
            f"inside, {system.inter.nics} x {system.inter.gbit:g} Gb/s {system.inter.kind} per machine "
            f"({system.inter_gbps:.1f} GB/s per GPU) across; NCCL ring collectives (tuneplan.collectives); each rank "
            f"computes 1/{p.tensor * p.pipeline * p.context} of a replica (TP x PP x CP); overlap per layout in "
            "tuneplan.timing_comm (TP and expert all-to-all on the critical path).")


@dataclass(frozen=True)
class Dataset:
    """Training data size: tokens per epoch (packed), and how many epochs.

    Built from samples x mean tokens per sample, or from total tokens.
    """

    tokens: int
    epochs: float = 1.0
    samples: int | None = None
    mean_tokens: float | None = None

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise TuneplanError(f"dataset must have a positive number of tokens, got {self.tokens}")
        if not self.epochs > 0:
            raise TuneplanError(f"epochs must be positive, got {self.epochs}")

    @classmethod
    def from_samples(cls, samples: int, mean_tokens: float, epochs: float = 1.0) -> Dataset:
        if samples <= 0 or mean_tokens <= 0:
            raise TuneplanError("samples and mean tokens per sample must be positive")
        return cls(int(round(samples * mean_tokens)), epochs, samples, mean_tokens)


@dataclass(frozen=True)
class RunTime:
    """Steps and seconds per epoch and for the whole run."""

    step: StepTime
    steps_per_epoch: int
    epoch_s: float
    run_s: float
    dataset: Dataset

    def to_dict(self) -> dict:
        return {"step": self.step.to_dict(), "steps_per_epoch": self.steps_per_epoch, "epoch_s": self.epoch_s,
                "run_s": self.run_s, "dataset_tokens": self.dataset.tokens, "epochs": self.dataset.epochs}


def run_time(spec: ModelSpec, job: Job, device: Device, dataset: Dataset,
             efficiency: float | None = None) -> RunTime:
    """Time per epoch and per run: ceil(tokens / tokens per optimizer step) steps per epoch.

    With samples x mean tokens, attention spans the mean sample (packed, varlen kernels); for a
    pair task a sample is a pair and its tokens are both rows' (StepTime.tokens_per_step), so
    the span is the mean row: mean tokens / Task.rows_per_sample.
    """
    rows = job.task_record.rows_per_sample
    span = int(math.ceil(dataset.mean_tokens / rows)) if dataset.mean_tokens else None
    st = step_time(spec, job, device, span=span, efficiency=efficiency)
    steps = math.ceil(dataset.tokens / st.tokens_per_step)
    epoch = steps * st.step_s
    return RunTime(st, steps, epoch, epoch * dataset.epochs, dataset)


def fmt_duration(seconds: float) -> str:
    """3725 -> '1h 02m'; 95 -> '1m 35s'; days past 48 h."""
    if seconds == float("inf"):
        return "n/a"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 48 * 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{seconds / 86400:.1f} days"
