"""Step, epoch and run time from FLOPs, device peak and memory/link bandwidth.

(Named timing, not time, so it never shadows the standard library's ``time``.)

FLOPs per token, counted from the model's matrices (tuneplan.models.layer_linears):
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job, Method
from tuneplan.memory import (
    Static,
    first_trained_layer,
    is_target,
    quantised_params,
    static_memory,
    stores_quantised,
    trainable,
)
from tuneplan.memory.activations import logits_bytes
from tuneplan.memory.mlx import mlx_logits_bytes
from tuneplan.memory.trained import layer_groups, trained_layer_count
from tuneplan.models import ModelSpec, layer_linears, param_counts
from tuneplan.traffic import fused, pointwise_bytes


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
def token_flops(spec: ModelSpec, method: Method, checkpointing: str, span: int) -> TokenFlops:
    """FLOPs per token of one training micro-step.

    Args:
        span: tokens each position attends over (sequence length, or the mean packed sample
            length with varlen attention); causal, so the mean span is (span+1)/2. Sliding
            windows are ignored (conservative).
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
            lin = ad = dora = 0.0
            for m in layer_linears(spec, i):
                lin += 2 * m.active_params
                if method.is_adapter and is_target(m, method):
                    ad += 2 * r * (m.d_in + m.d_out) * m.active
                    if method.kind == "dora":  # W + s*B@A formed for the column norm, every expert
                        dora += 2 * r * m.d_in * m.d_out * m.count
            cache[key] = (lin, ad, dora)
        lin, ad, dora = cache[key]
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
        if checkpointing != "none" and keeps:
            rec += layer_fwd
        # forward (+ recomputation) and ~2x that in backward
        per_step += dora * (3 + (1 if checkpointing != "none" and keeps else 0))
    head = 2 * spec.vocab_size * spec.hidden_size
    fwd += head
    head_weight_grad = method.kind == "full" or method.train_embeddings
    bwd += head * (2 if head_weight_grad else 1)
    return TokenFlops(fwd, bwd, rec, per_step)


def kernel_count(spec: ModelSpec, job: Job) -> int:
    """GPU kernels launched by one micro-step of an eager PyTorch step (counted, not fitted).

    Per decoder layer and forward: cal.KERNELS_PER_LAYER_FORWARD (transformers' Llama-style
    layer), cal.KERNELS_PER_ADAPTER_FORWARD per PEFT-adapted linear, one dequantisation per
    quantised linear. Recomputation repeats the forward of the layers that keep a graph;
    backward launches cal.BACKWARD_KERNELS_PER_FORWARD_KERNEL per forward kernel there.
    """
    t = job.training
    return _kernel_count(spec, job.method, t.checkpointing != "none", t.profile.quantises_fused_experts)


@lru_cache(maxsize=65536)
def _kernel_count(spec: ModelSpec, m: Method, recompute: bool, quantises_fused_experts: bool) -> int:
    total = 0
    for layer, n in layer_groups(spec):
        lins = layer_linears(spec, layer)
        adapted = sum(1 for lin in lins if m.is_adapter and is_target(lin, m))
        quantised = sum(1 for lin in lins if stores_quantised(lin, quantises_fused_experts)) if m.kind == "qlora" else 0
        fwd = cal.KERNELS_PER_LAYER_FORWARD + adapted * cal.KERNELS_PER_ADAPTER_FORWARD + quantised
        graph = trained_layer_count(spec, m, layer, n)  # layers of this shape that keep a graph
        total += fwd * n + fwd * graph * (cal.BACKWARD_KERNELS_PER_FORWARD_KERNEL + (1 if recompute else 0))
    return total


def pointwise_traffic(spec: ModelSpec, job: Job) -> float:
    """DRAM bytes per token moved by one micro-step's pointwise kernels (not GEMMs, not weights).

    The decoder layers' casts, norms, rotary, activations, residual adds and adapter scalings
    (tuneplan.traffic, eager or fused), plus the logits and the cross-entropy's [tokens, vocab]
    arrays written and read once each (their bytes are the memory model's: transformers/PEFT,
    or MLX's for an mlx-lm step).
    """
    t = job.training
    one = replace(t, micro_batch=1)
    if t.profile.mlx_graph:
        logits = mlx_logits_bytes(spec, Job(job.method, one)) / t.seq_len
    else:
        logits = logits_bytes(spec, one)[2] / t.seq_len
    return pointwise_bytes(spec, job) + 2 * logits


@dataclass(frozen=True)
class StepTime:
    """Time of one optimizer step on `count` devices (seconds) and what bounds it.

    Args:
        micro_s: one micro-batch (forward + backward) on one device.
        step_s: one optimizer step: grad_accum micro-batches, gradient reduction, update.
        terms: (name, seconds) of every term, per micro-batch or per step as named.
        tokens_per_step: tokens of one optimizer step over all devices.
        mfu: model FLOPs (no recomputation) per second / peak, as the plan predicts it.
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

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["terms"] = dict(self.terms)
        d["assumptions"] = list(self.assumptions)
        d["tokens_per_s"] = self.tokens_per_s
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

    Args:
        span: attention span (default: the sequence length).
        efficiency: override the framework profile's FLOP efficiency (0-1].

    Raises:
        TuneplanError: the device has no published FLOPS figure.
    """
    m, t, p = job.method, job.training, job.parallel
    if not device.bf16_tflops:
        raise TuneplanError(f"{device.id} has no published TFLOPS figure; time cannot be predicted")
    eff = efficiency if efficiency is not None else t.profile.flop_efficiency
    if not 0 < eff <= 1:
        raise TuneplanError(f"efficiency must be in (0, 1], got {eff}")
    n = p.num_gpus
    span = min(span or t.seq_len, t.seq_len)
    tf = token_flops(spec, m, t.checkpointing, span)
    tokens = t.micro_batch * t.seq_len
    peak = device.bf16_tflops * 1e12
    bw = device.bandwidth_gbps * cal.BANDWIDTH_EFFICIENCY
    pc = param_counts(spec)
    st = static_memory(spec, job)
    pb, c = t.param_bytes, t.compute_bytes
    recompute = t.checkpointing != "none"
    passes = 3 if recompute else 2  # forward, backward (input gradients), recomputation

    # executed FLOPs at the profile's efficiency, plus a fixed cost per kernel (launch and
    # host dispatch) that small micro-steps cannot hide
    # GEMMs at the device's achievable matmul rate (tuneplan.calibration.MATMUL_SHARE)
    matmul = cal.matmul_scale(device.id)
    compute = (tf.executed * tokens + tf.per_step) / (peak * matmul * eff)
    if t.profile.eager_kernels:
        compute += kernel_count(spec, job) * cal.SECONDS_PER_KERNEL
    if m.kind == "qlora" and not m.fmt.dequant_copy:
        # MLX quantized_matmul reads the packed weight and its constants in the kernel
        dequant = 0.0
        weight_bytes = (st.weights + st.quant_constants) * passes
    elif m.kind == "qlora":
        quantised = quantised_params(spec, t)  # fused 3-D experts may stay 16-bit
        rest = pc.total - quantised
        serial = cal.DEQUANT_BYTES_PER_PARAM[m.quant] - 2  # unpack + write the bf16 copy
        # one streaming kernel per use (bitsandbytes kDequantizeBlockwise; tuneplan.calibration)
        dequant = _gb(quantised * serial * passes, device.bandwidth_gbps * cal.BANDWIDTH_EFFICIENCY)
        weight_bytes = (2 * quantised + pb * rest) * passes  # the GEMMs read the bf16 copy
    else:
        dequant = 0.0
        weight_bytes = pb * pc.total * passes
    # roofline (Williams, Waterman & Patterson, "Roofline: an insightful visual performance
    # model", CACM 52(4), 2009) for the GEMMs: the longer of their FLOPs at the achieved
    # FLOP/s and their weight reads at the achieved bandwidth
    weights = _gb(weight_bytes, bw)
    # the pointwise kernels run between the GEMMs on the same stream: their time adds
    pointwise = _gb(pointwise_traffic(spec, job) * tokens, bw)
    terms = [("compute", compute), ("weight reads", weights), ("pointwise kernels", pointwise)]
    ckpt_layers = spec.num_layers - first_trained_layer(spec, m)
    if t.checkpointing == "offload" or (recompute and t.profile.offloads_checkpoints):
        # layer inputs go to host RAM and come back for the backward (async, overlapped)
        terms.append(("checkpoint offload", _gb(2 * c * spec.hidden_size * ckpt_layers * tokens,
                                                device.host_link_gbps)))
    if p.offload_params:
        terms.append(("param offload", _gb(pb * pc.total / n * passes, device.host_link_gbps)))
    if p.shard_stage == 3 and n > 1:
        gathered = (pb if m.kind != "qlora" else 1) * pc.total * passes + st.gradients
        terms.append(("ZeRO-3 gathers", _gb(gathered * (n - 1) / n, device.peer_gbps(n))))
    overlapped = max([t_ for t_ in terms if t_[0] != "pointwise kernels"], key=lambda x: x[1])
    micro = overlapped[1] + pointwise + dequant
    if dequant:
        terms.append(("QLoRA dequantisation", dequant))

    # once per optimizer step
    shard = n if p.shard_stage >= 1 else 1
    tr = trainable(spec, m)
    trained_w = pb * tr.base + t.adapter_bytes * tr.adapter
    opt_bytes = optimizer_update_bytes(spec, job, st)
    # roofline of the update: its traffic at the streaming bandwidth, or the per-parameter
    # work its kernels measured on an H100 (tuneplan.calibration.OPTIMIZER_UPDATE_S_PER_PARAM:
    # bitsandbytes' 8-bit update is bound by requantising, 0.25 s for 8B), whichever is longer
    update_work = (tr.base + tr.adapter) * t.optim.update_s_per_param
    optimizer = max(_gb(opt_bytes, bw), update_work) / shard if not p.offload_optimizer else 0.0
    opt_offload = 0.0
    if p.offload_optimizer:
        # gradients down and updated weights up over PCIe, then the optimizer step itself on
        # the CPU: streaming weights, gradients and states through host DRAM, which the
        # processes of one machine share (torch AdamW on CPU tensors, DeepSpeed CPUAdam)
        link = _gb((st.gradients + trained_w) / shard, device.host_link_gbps)
        per_machine = min(n, device.max_count)
        opt_offload = link + opt_bytes / shard / (cal.HOST_DRAM_GBPS / per_machine * 1e9)
    comm = 0.0
    if n > 1 and p.shard_stage < 3:
        comm = _gb(2 * (n - 1) / n * st.gradients, device.peer_gbps(n))
    backward_share = tf.backward / tf.executed if tf.executed else 0.5
    exposed_comm = max(0.0, comm - backward_share * micro)  # all-reduce overlaps the last backward
    step = t.grad_accum * micro + exposed_comm + optimizer + opt_offload
    terms += [("gradient all-reduce (per step)", comm), ("optimizer update (per step)", optimizer)]
    if opt_offload:
        terms.append(("optimizer offload (per step)", opt_offload))
    per_step = {"compute": t.grad_accum * compute}
    per_step[overlapped[0]] = max(per_step.get(overlapped[0], 0.0), t.grad_accum * overlapped[1])
    candidates = {**per_step, "pointwise kernels": t.grad_accum * pointwise,
                  "QLoRA dequantisation": t.grad_accum * dequant, "communication": exposed_comm,
                  "optimizer": optimizer + opt_offload}
    bound = max(candidates, key=lambda k: candidates[k])
    tokens_step = tokens * t.grad_accum * n
    mfu = tf.model * tokens_step / step / (peak * n)
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
    if p.offload_optimizer:
        assumptions += (f"Optimizer offload: PCIe transfers and the CPU optimizer step (host DRAM at "
                        f"{cal.HOST_DRAM_GBPS:g} GB/s per machine, shared by its GPUs' processes) counted.",)
    return StepTime(device.id, n, eff, micro, step, bound, tuple(terms), tokens_step, tf.executed,
                    tf.model, mfu, assumptions)


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

    With samples x mean tokens, attention spans the mean sample (packed, varlen kernels).
    """
    span = int(math.ceil(dataset.mean_tokens)) if dataset.mean_tokens else None
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
