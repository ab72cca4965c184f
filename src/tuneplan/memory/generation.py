"""Memory of the generation that starts an online step (GRPO, RLOO): bytes on one GPU.

Three engines (tuneplan.choices.tasks.GENERATION_ENGINES):

- hf: transformers `generate` on the training model. Its DynamicCache holds keys and values
  of every sequence of the process's generation batch for prompt + completion tokens
  (transformers 5.25 cache_utils.py DynamicLayer.update: torch.cat of the new token onto the
  layer's cache, so one layer's old and new cache coexist for a moment); each decode step
  keeps only the last position's logits (generation/utils.py:2958 logits_to_keep=1), copied
  to fp32 (:3251) and turned into fp32 probabilities for sampling. Prefill runs one no-grad
  forward over the whole prompt batch.
- vllm-colocate: vLLM reserves gpu_memory_utilization x the device's total memory for its
  own weights, activations and KV cache (vllm v1 worker/gpu_worker.py
  determine_available_memory: requested_memory = total x gpu_memory_utilization, and the KV
  cache is what the weights and the profiled activation peak leave of it). With sleep mode
  (level 2, TRL vllm_generation.py:366/:751) the share is released outside generation.
- vllm-server: nothing on the training GPUs.

Pure Python, no torch; bytes throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuneplan.job import Job
from tuneplan.memory import components as K
from tuneplan.memory.step import Component, MemoryEstimate
from tuneplan.model_spec import ModelSpec, param_counts
from tuneplan.units import GiB

KV_CACHE = "kv_cache"
DECODE_LOGITS = "decode_logits"
PREFILL = "prefill_working_set"
VLLM = "vllm_engine"
GATHERED = "generation_gather"
SCORING = "scoring_forward"
REWARD = "reward_model"
LABELS = {REWARD: "Reward model", KV_CACHE: "KV cache (HF generate)", DECODE_LOGITS: "Decode-step logits",
          PREFILL: "Prefill working set", VLLM: "vLLM engine share", GATHERED: "Gathered weights (ZeRO-3)",
          SCORING: "Scoring forward (no grad)"}


def local_generation_batch(job: Job) -> int:
    """Completions one training process generates per generation: per_device_train_batch_size x
    steps_per_generation (= gradient_accumulation_steps by default; TRL grpo_config.py:1098-1100:
    generation_batch_size = per_device x processes x steps_per_generation, split over the
    processes). A task that generates in every micro-step (Online DPO, Task.per_micro_step) generates
    --batch prompts x its completions per prompt at a time."""
    if job.task_record.per_micro_step:
        return job.training.micro_batch * job.generations
    return job.training.micro_batch * job.training.grad_accum


def row_tokens(job: Job) -> tuple[int, int]:
    """(prompt, completion) tokens of one row. --seq-len is the row (prompt + completion; it
    defaults to --prompt-len + --completion-len, and a request with both is checked to agree),
    so a search over --seq-len (the fit's longest sequence) moves the completion length."""
    p = job.rollout.prompt_len
    return p, max(1, job.training.seq_len - p)


def kv_bytes_per_token(spec: ModelSpec, c: int) -> int:
    """Keys and values of one token over every layer, in the compute dtype (bytes). MLA models
    (DeepSeek) cache the compressed latent and the rotary key instead."""
    if spec.kv_lora_rank:
        return c * spec.num_layers * (spec.kv_lora_rank + spec.qk_rope_head_dim)
    return 2 * c * spec.num_layers * spec.num_kv_heads * spec.head_dim


def vllm_share_bytes(job: Job) -> int:
    """vLLM's reservation on one GPU: gpu_memory_utilization x the device's total memory (0 when
    the device is not known or the engine holds nothing on the training GPUs)."""
    r = job.rollout
    if not (r.engine.share and r.engine.colocated):
        return 0
    return int(r.vllm_memory_utilization * r.device_memory_gib * GiB)


@dataclass(frozen=True)
class GenerationBytes:
    """What generation adds on one training GPU, by component key (bytes), and what it assumes."""

    parts: tuple[tuple[str, int], ...]
    notes: dict[str, str]


def generation_bytes(spec: ModelSpec, job: Job, sharded_weights: int) -> GenerationBytes:
    """The generation phase's own bytes on one training GPU (model states are counted by the caller).

    Args:
        sharded_weights: the policy's per-GPU weight bytes (for the ZeRO-3 gather).
    """
    r, t, p = job.rollout, job.training, job.parallel
    e = r.engine
    c = t.compute_bytes
    parts: list[tuple[str, int]] = []
    notes: dict[str, str] = {}
    g = local_generation_batch(job)
    if e.share and e.colocated:
        share = vllm_share_bytes(job)
        parts.append((VLLM, share))
        notes[VLLM] = (f"gpu_memory_utilization {r.vllm_memory_utilization:g} x {r.device_memory_gib:.1f} GiB: its "
                       "weights, activations and KV cache" if share else
                       f"gpu_memory_utilization {r.vllm_memory_utilization:g} x the device's memory: give --gpu "
                       "to count it")
    elif e.colocated:
        prompt, completion = row_tokens(job)
        rows = prompt + completion
        per_token = kv_bytes_per_token(spec, c)
        kv = g * rows * per_token
        kv += g * rows * per_token // max(1, spec.num_layers)  # one layer's torch.cat copy
        parts.append((KV_CACHE, kv))
        notes[KV_CACHE] = (f"{g} sequences x {rows:,} tokens (prompt + completion) x {per_token:,} B/token "
                           "(K and V, every layer), + one layer's concatenation copy")
        v = spec.vocab_size
        parts.append((DECODE_LOGITS, g * v * (c + 4 + 4)))
        notes[DECODE_LOGITS] = f"last position only: [{g}, vocab] logits, their fp32 copy and fp32 probabilities"
        inter = max(spec.intermediate_size, spec.moe_intermediate_size * max(1, spec.experts_per_token))
        prefill = g * prompt * c * (2 * spec.hidden_size + 3 * inter)
        parts.append((PREFILL, prefill))
        notes[PREFILL] = (f"one no-grad layer over {g} x {prompt} prompt tokens: residual, normed input, "
                          "gate, up and activation outputs")
    if e.colocated and p.shard_stage == 3 and p.shard_world > 1:
        # ds3_gather_for_generation=True (grpo_config.py): the full weights on every GPU while it generates
        full = c * param_counts(spec).total
        parts.append((GATHERED, max(0, full - sharded_weights)))
        notes[GATHERED] = "ZeRO-3/FSDP gathers the whole model for generation (ds3_gather_for_generation=True)"
    return GenerationBytes(tuple(parts), notes)


def server_fits(spec: ModelSpec, job: Job) -> str | None:
    """For vllm-server: a sentence when the server's share cannot hold its weights (None if it can,
    or the device is not known)."""
    r = job.rollout
    if r.engine.colocated or not r.device_memory_gib:
        return None
    share = r.vllm_memory_utilization * r.device_memory_gib * GiB
    weights = job.training.compute_bytes * param_counts(spec).total / r.generation_gpus
    if weights < share:
        return None
    return (f"the vLLM server's share ({share / GiB:.1f} GiB per GPU) cannot hold the weights "
            f"({weights / GiB:.1f} GiB per GPU over {r.generation_gpus} GPUs)")


def bound_phase(lo: MemoryEstimate, job: Job, rt, phases: dict[str, list[Component]],
                assumptions: list[str]) -> MemoryEstimate:
    """The estimate of a step run in phases (generation, scoring, loss, ...): the phase with the
    most allocated bytes bounds the GPU and its components are the breakdown; the caching
    allocator's overhead is added on the training process's own bytes (not on vLLM's
    reservation, which vLLM sizes itself) and the CUDA context once. `rt` is the runtime record."""
    totals = {k: sum(c.bytes for c in v) for k, v in phases.items() if v}
    bound = max(totals, key=lambda k: totals[k])
    comps = list(phases[bound])
    allocated = totals[bound]
    own = allocated - sum(c.bytes for c in comps if c.key == VLLM)
    over = int(own * rt.allocator_overhead)
    if over:
        comps.append(Component(K.ALLOCATOR, K.LABELS[K.ALLOCATOR], over,
                               f"{rt.allocator_overhead:.0%} of the training process's allocated (caching allocator)"))
    if rt.context_bytes:
        comps.append(Component(K.CUDA_CONTEXT, K.LABELS[K.CUDA_CONTEXT], rt.context_bytes,
                               "driver, kernels, cuBLAS workspace"))
    return replace(lo, job=job, components=tuple(comps), peak_bytes=int(allocated + over + rt.context_bytes),
                   peak_phase=bound, phase_bytes=tuple((k, int(v)) for k, v in totals.items()),
                   assumptions=tuple(assumptions))
