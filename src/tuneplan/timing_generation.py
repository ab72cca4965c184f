"""Time of one online-RL optimizer step (GRPO, RLOO, Online DPO as TRL 1.16 runs them), phase by phase.

- generation: prefill as compute (2 x active params FLOPs per prompt token, Kaplan et al. 2020
  "Scaling laws for neural language models" Table 1, plus attention over the prompt) at the
  device's achievable matmul rate; then one decode step per completion token, each bound by
  moving the weights once for the whole batch plus every sequence's KV cache at the device's
  memory bandwidth, or by its FLOPs, whichever is longer (roofline: Williams, Waterman &
  Patterson, CACM 52(4), 2009). What HF generate moves and launches per decode step is read
  from the libraries (tuneplan.calibration, eager-decoding block): transformers' DynamicCache
  concatenates each layer's cache anew every step (3 passes over it); QLoRA's bitsandbytes
  linears read the packed weight through the fused 4-bit GEMM at up to 4 rows, else dequantise
  to a 16-bit copy first (4.5 bytes/param); the kernels are counted per layer, per PEFT adapter
  (+ the 4-bit layer's clone), per dequantisation and per generate step. HF generate is eager:
  a step takes the longer of its GPU time and the host's dispatch of those kernels
  (EAGER_DECODE_SECONDS_PER_KERNEL, derived from gpt-fast's CPU-bound eager decode); vLLM
  replays CUDA graphs (no host term). Every completion is taken to run to --completion-len (an
  upper bound: sequences that stop early still pad in HF generate and leave vLLM's batch
  early). Gradient checkpointing does not turn the cache off while generating: TRL disables it
  around generate (trl 1.16 models/utils.py:136-138 _unwrap_model_for_generation, also at
  huggingface/trl@c9a9e2572, the GRPO notebook's commit) and transformers 5.25 drops the cache
  only with gradients enabled (modeling_layers.py:96), so no step recomputes the prefix. With
  TRL's sampling defaults (temperature 1, top_p 1, top_k 0) generate adds no logits processor;
  the counted 65 per-step kernels hold softmax and multinomial over the [rows, vocab] logits.
  Online DPO generates once per micro-step (Task.per_micro_step), GRPO/RLOO once per
  optimizer step.
- weight sync (vLLM): TRL pushes the policy's weights into vLLM after each optimizer step
  (trl/generation/vllm_generation.py sync_weights): a device copy of the 16-bit weights
  colocated, an NCCL broadcast to a server.
- scoring: the no-grad forwards over the generation batch (old and reference log-probs),
  each at the forward's FLOPs (tuneplan.timing.token_flops) or the weight reads per chunk.
- training: tuneplan.timing.step_time of the loss phase (per_device_train_batch_size rows of
  prompt + completion tokens, grad_accum micro-steps).

Colocated phases add. TRL's server mode is synchronous (vllm_generation.py:630
vllm_client.generate returns the completions before the step goes on; GRPOConfig has no
asynchronous option in 1.16), so the training GPUs wait for it as well: the step still adds
the phases, and the overlapped figure (max(generation, scoring + training), as an asynchronous
stack such as NeMo-RL's non-colocated mode gets) is given beside it. Seconds throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device
from tuneplan.job import Job, Method
from tuneplan.memory.generation import kv_bytes_per_token, local_generation_batch, row_tokens
from tuneplan.memory.online import loss_job, scoring_passes
from tuneplan.memory.static import quantised_params, static_memory, stores_quantised
from tuneplan.memory.trained import is_target, layer_groups, trainable
from tuneplan.memory.verl import update_job
from tuneplan.model_spec import ModelSpec, layer_linears, param_counts
from tuneplan.timing import StepTime, step_time, token_flops


@dataclass(frozen=True)
class OnlineTime:
    """One online-RL optimizer step (seconds).

    Args:
        phases: (name, seconds) of generation (prefill + decode), weight sync, scoring, training.
        step_s: one optimizer step as TRL runs it (the phases add; server mode included).
        overlapped_s: the step if generation overlapped scoring and training (server mode
            with an asynchronous stack); equal to step_s when generation is colocated.
        bound_by: the phase that takes longest.
        generated_tokens: completion tokens generated per optimizer step over all training GPUs.
        trained_tokens: prompt + completion tokens of the loss phase per optimizer step.
        training: the loss phase's StepTime (tuneplan.timing).
        assumptions: what the figures assume.
    """

    device: str
    phases: tuple[tuple[str, float], ...]
    step_s: float
    overlapped_s: float
    bound_by: str
    generated_tokens: int
    trained_tokens: int
    gpus: int
    training: StepTime
    assumptions: tuple[str, ...]

    @property
    def generated_tokens_per_s(self) -> float:
        return self.generated_tokens / self.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        """Trained (prompt + completion) tokens per second per GPU, generation GPUs included."""
        return self.trained_tokens / self.step_s / self.gpus

    def to_dict(self) -> dict:
        return {"unit": "seconds", "device": self.device, "phases": dict(self.phases), "step_s": self.step_s,
                "overlapped_s": self.overlapped_s, "bound_by": self.bound_by,
                "generated_tokens_per_step": self.generated_tokens, "trained_tokens_per_step": self.trained_tokens,
                "generated_tokens_per_s": self.generated_tokens_per_s,
                "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu, "gpus": self.gpus,
                "training": self.training.to_dict(), "assumptions": list(self.assumptions)}


def _rates(job: Job, device: Device) -> tuple[float, float]:
    """(achievable FLOP/s, achievable bytes/s) on one device: the profile's FLOP efficiency at the
    device's matmul share, and tuneplan.calibration.BANDWIDTH_EFFICIENCY of its bandwidth."""
    if not device.bf16_tflops:
        raise TuneplanError(f"{device.id} has no FLOPS figure; no time estimate")
    rate = device.bf16_tflops * 1e12 * cal.matmul_scale(device.id) * job.training.profile.flop_efficiency
    return rate, device.bandwidth_gbps * 1e9 * cal.BANDWIDTH_EFFICIENCY


def _weight_read_bytes(spec: ModelSpec, job: Job, rows: int) -> float:
    """Bytes one decode step (`rows` sequences) reads for the weights: 16-bit for vLLM (its own
    copy in the compute dtype); the training copy for HF generate. QLoRA's quantised linears
    (tuneplan.memory.static.quantised_params): the packed weight once through bitsandbytes' fused
    4-bit GEMM at up to cal.BNB_FUSED_GEMM_MAX_ROWS rows, else dequantised to a 16-bit copy
    first (cal.DEQUANT_BYTES_PER_PARAM: read packed, write and read the copy); the rest of the
    weights (embedding row gather aside, the lm_head) in the compute dtype."""
    pc = param_counts(spec)
    m, c = job.method, job.training.compute_bytes
    if job.rollout.engine.share or m.kind != "qlora":
        return float(c * pc.total)
    st = static_memory(spec, job)
    per = cal.DEQUANT_BYTES_PER_PARAM.get(m.quant)
    if per is None:  # a quantisation without a dequantisation figure: its stored bytes, read once
        return float(st.weights + st.quant_constants)
    q = quantised_params(spec, job.training)
    if rows <= cal.BNB_FUSED_GEMM_MAX_ROWS:
        per = cal.BNB_FUSED_BYTES_PER_PARAM
    # the input embedding is gathered (a few rows), unless tied: then it is the lm_head, read whole
    rest = pc.total - q - (0 if spec.tie_embeddings else pc.embed)
    return float(per * q + c * max(0, rest) + st.quant_constants)


def decode_kernels(spec: ModelSpec, job: Job, rows: int) -> int:
    """Kernels one eager decode step of HF generate launches (counted: tuneplan.calibration's
    eager-decoding block): every decoder layer's decode forward, PEFT's per adapted linear (and
    the 4-bit layer's defensive clone), bitsandbytes' dequantisation of each quantised linear
    above the fused GEMM's rows, and generate's own per-step kernels."""
    m = job.method
    qlora = m.kind == "qlora"
    fused_experts = job.training.profile.quantises_fused_experts
    dequant = cal.BNB_DEQUANT_KERNELS if rows > cal.BNB_FUSED_GEMM_MAX_ROWS else 0
    total = cal.GENERATE_KERNELS_PER_DECODE_STEP
    for layer, n in layer_groups(spec):
        lins = layer_linears(spec, layer)
        adapted = sum(1 for lin in lins if m.is_adapter and is_target(lin, m))
        quantised = sum(1 for lin in lins if stores_quantised(lin, fused_experts)) if qlora else 0
        lora = cal.KERNELS_PER_ADAPTER_FORWARD + (cal.PEFT_4BIT_CLONE_KERNELS if qlora else 0)
        total += n * (cal.DECODE_KERNELS_PER_LAYER + adapted * lora + quantised * dequant)
    return total


def generation_seconds(spec: ModelSpec, job: Job, device: Device, sequences: int) -> tuple[float, float]:
    """(prefill, decode) seconds for `sequences` completions on one device.

    A decode step takes the longer of its GPU time (the weights and every sequence's KV cache
    moved at the bandwidth, or its FLOPs) and, for eager HF generate, the host's dispatch of its
    kernels (decode_kernels x cal.EAGER_DECODE_SECONDS_PER_KERNEL): a batch of a few sequences
    is CPU-bound there, as gpt-fast's eager trace is. vLLM replays CUDA graphs (no host term).
    """
    r = job.rollout
    rate, bw = _rates(job, device)
    c = job.training.compute_bytes
    full = Method(kind="full")
    p, n = row_tokens(job)
    prefill = token_flops(spec, full, "none", p).forward * sequences * p / rate
    weights = _weight_read_bytes(spec, job, sequences)
    kv_token = kv_bytes_per_token(spec, c)
    mean_ctx = p + n / 2
    # transformers DynamicCache grows by torch.cat each step and layer (cache_utils.py
    # DynamicLayer.update :136-137): the old cache is read and a new one written, then attention
    # reads it: 3 passes; vLLM's paged cache is written in place: attention's one read
    kv_passes = 3 if r.engine.kv_cache == "dynamic" else 1
    step_bytes = weights + kv_passes * sequences * mean_ctx * kv_token
    step_flops = token_flops(spec, full, "none", int(2 * mean_ctx)).forward * sequences
    per_step = max(step_bytes / bw, step_flops / rate)
    if not r.engine.cuda_graphs:
        per_step = max(per_step, decode_kernels(spec, job, sequences) * cal.EAGER_DECODE_SECONDS_PER_KERNEL)
    return prefill, n * per_step


def _trained(spec: ModelSpec, job: Job) -> int:
    """Trained elements of the job's method (original weights trained plus adapter matrices)."""
    tr = trainable(spec, job.method)
    return tr.base + tr.adapter


def online_time(spec: ModelSpec, job: Job, device: Device) -> OnlineTime:
    """One optimizer step of an online task on `device` (tuneplan.timing for the loss phase)."""
    r, t, p = job.rollout, job.training, job.parallel
    e = r.engine
    hybrid = t.profile.rl_hybrid_engine  # verl: its update step, offload transfers, PPO's critic update
    train = step_time(spec, update_job(job) if hybrid else loss_job(job), device)
    rate, bw = _rates(job, device)
    c = t.compute_bytes
    pc = param_counts(spec)
    g_local = local_generation_batch(job)
    # generations per optimizer step: one generation batch (GRPO, RLOO), or one per micro-step
    # (Online DPO's training_step generates for its own micro-batch)
    rounds = t.grad_accum if job.task_record.per_micro_step else 1
    prompt, completion = row_tokens(job)
    generated = g_local * p.data * completion * rounds
    if e.colocated:
        sequences = g_local
    else:
        sequences = math.ceil(g_local * p.data / r.generation_gpus)
    prefill, decode = generation_seconds(spec, job, device, sequences)
    prefill, decode = prefill * rounds, decode * rounds
    phases = [("generation prefill", prefill), ("generation decode", decode)]
    if e.share:
        if e.colocated:  # read the training copy, write vLLM's
            sync = 2 * c * pc.total / bw
        else:  # NCCL broadcast over the GPU link (link_gbps is the bidirectional total: half each way)
            link = device.link_gbps / 2 if device.link_gbps else device.host_link_gbps
            sync = c * pc.total / (link * 1e9)
        phases.append(("weight sync", sync))
    passes = scoring_passes(job)
    rows_tokens = g_local * (prompt + completion)
    fwd = token_flops(spec, Method(kind="full"), "none", prompt + completion).forward
    chunks = max(1, math.ceil(g_local / loss_job(job).training.micro_batch))
    score = rounds * len(passes) * max(fwd * rows_tokens / rate, chunks * c * pc.total / bw)
    phases += [("scoring", score), ("training", train.step_s)]
    if job.task_record.critic:  # verl CriticWorker.update_critic: a full update of a policy-shaped model
        critic = replace(update_job(job), method=Method(kind="full"))
        phases.append(("critic update", step_time(spec, critic, device).step_s))
    if hybrid and (p.offload_params or p.offload_optimizer):
        # verl's param_offload / optimizer_offload (fsdp_workers.py :527-624, :670-795): the actor's fp32
        # shards go to the GPU and back around weight sync, log-probs and update (6 copies), the fp32 Adam
        # moments around the update (2), over the host link
        moved = (6 * 4 * pc.total if p.offload_params else 0) \
            + (2 * 8 * _trained(spec, job) if p.offload_optimizer else 0)
        phases.append(("offload transfers", moved / max(1, p.data) / (device.host_link_gbps * 1e9)))
    step = sum(s for _, s in phases)
    gen = prefill + decode
    overlapped = step if e.colocated else max(gen, step - gen)
    bound = max(phases, key=lambda x: x[1])[0]
    gpus = p.num_gpus + r.generation_gpus
    kind = "eager per-kernel host cost per decode step" if not e.cuda_graphs else "CUDA graphs, no launch cost"
    notes = (f"Generation of {sequences} sequences per GPU" + (f", {rounds} times (once per micro-step)" if rounds > 1
                                                                else "") + ": prefill of {prompt:,} tokens as compute, "
             f"{completion:,} decode steps each reading the weights once and the KV cache "
             f"({device.bandwidth_gbps:g} GB/s at {cal.BANDWIDTH_EFFICIENCY:.0%}), {kind}; every completion runs "
             "to --completion-len.",
             "Scoring: " + (", ".join(passes) or "none") + "; training: tuneplan.timing.step_time of the loss phase.",
             ("Phases add (colocated generation)." if e.colocated else
              f"TRL's server mode waits for the server: phases add; overlapped (asynchronous) {overlapped:.3g} s."))
    return OnlineTime(device.id, tuple(phases), step, overlapped, bound, generated,
                      train.tokens_per_step, gpus, train, notes + train.assumptions)


@dataclass(frozen=True)
class Placement:
    """One way to split a machine between generation and training (seconds, bytes).

    Args:
        engine: the generation engine (colocated on every GPU, or a server on `generation_gpus`).
        training_gpus / generation_gpus: GPUs that train / that only generate.
        time: the optimizer step (OnlineTime) of this split at the job's per-GPU batch.
        peak_bytes: the training GPUs' device peak; fits: it fits the device's usable memory and,
            for a server, its share holds the weights.
    """

    engine: str
    training_gpus: int
    generation_gpus: int
    time: OnlineTime
    peak_bytes: int
    fits: bool
    why: str = ""

    @property
    def generated_tokens_per_s(self) -> float:
        """Completion tokens per second of the whole machine, as TRL runs it (phases add)."""
        return self.time.generated_tokens / self.time.step_s

    @property
    def overlapped_tokens_per_s(self) -> float:
        """The same if generation overlapped training (an asynchronous stack)."""
        return self.time.generated_tokens / self.time.overlapped_s

    def to_dict(self) -> dict:
        return {"engine": self.engine, "training_gpus": self.training_gpus, "generation_gpus": self.generation_gpus,
                "peak_bytes": self.peak_bytes, "fits": self.fits, "why": self.why,
                "generated_tokens_per_s": self.generated_tokens_per_s,
                "overlapped_tokens_per_s": self.overlapped_tokens_per_s, "step_s": self.time.step_s,
                "overlapped_s": self.time.overlapped_s, "bound_by": self.time.bound_by}


def placements(spec: ModelSpec, job: Job, device: Device, gpus: int | None = None) -> list[Placement]:
    """Every split of one machine of `device` (`gpus` devices, default its max_count) between
    generation and training for an online job, fastest first (completion tokens per second as TRL
    runs it): generation colocated on every GPU (each engine that colocates), or a vLLM server on
    1 .. gpus-1 GPUs and training on the rest. The per-GPU batch, accumulation and vLLM share are
    the job's; the machine's usable memory decides what fits (tuneplan.hardware.Device.usable_bytes).
    """
    from dataclasses import replace

    from tuneplan.choices.tasks import GENERATION_ENGINES
    from tuneplan.memory import estimate_memory
    from tuneplan.memory.generation import server_fits
    from tuneplan.memory.online import on_device

    n = gpus or device.max_count
    base = job.settings()
    options: list[tuple[str, int, int]] = []
    allowed = job.training.profile.rl_engines  # the stack's own engines (verl: vLLM colocated); empty: all
    # the runtime the stack runs on this device (an asked one wins): MPS has no vLLM
    rt = job.training.runtime or job.training.profile.runtime_for(device.vendor)
    for e in GENERATION_ENGINES.values():
        if (allowed and e.name not in allowed) or rt not in e.runtimes:
            continue
        if e.colocated:
            options.append((e.name, n, 0))
        else:
            options += [(e.name, n - g, g) for g in range(1, n)]
    out = []
    for name, train, gen in options:
        j = Job.from_settings(**(base | {"generation_engine": name, "num_gpus": train, "generation_gpus": gen,
                                          "vllm_sleep": base.get("vllm_sleep", False) and name == "vllm-colocate"}))
        j = on_device(j.on_vendor(device.vendor), device)
        peak = estimate_memory(spec, j).device_bytes
        why = server_fits(spec, j) or ""
        fits = peak <= device.usable_bytes and not why
        if peak > device.usable_bytes:
            why = f"training GPUs need {peak / 2**30:.1f} GiB of {device.usable_bytes / 2**30:.1f} GiB usable"
        out.append(Placement(name, train, gen, online_time(spec, replace(j), device), peak, fits, why))
    return sorted(out, key=lambda p: (not p.fits, -p.generated_tokens_per_s))
