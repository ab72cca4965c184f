"""Per-GPU memory of an online RL step (GRPO, PPO) as verl's hybrid engine runs it, phase by phase.

Read from volcengine/verl@49b08e950 (2025-06). One step of RayPPOTrainer.fit on each GPU of the
hybrid engine (ActorRolloutRefWorker, verl/workers/fsdp_workers.py; CriticWorker for PPO):

1. generation: the FSDP actor syncs its weights into vLLM, then (actor.fsdp_config.param_offload)
   moves its shards to the CPU and vLLM wakes its KV cache (sharding_manager/fsdp_vllm.py
   __enter__ :158-201); vLLM holds gpu_memory_utilization x the device's memory (weights,
   activations, KV cache) and goes to sleep(level=1) after the rollout (:209-217): weights to
   CPU, KV cache discarded, nothing of it left on the GPU in the other phases.
2. log-probs: old log-probs (the actor, always) and the reference's (the actor with its adapter
   disabled for LoRA, :709-710; a separate FSDP ref with CPUOffload(offload_params=True) for
   full fine-tuning, :302, gathering one unit at a time) under no_grad, log_prob_micro_batch_size
   rows at a time; dp_actor.py _forward_micro_batch (:160-178) keeps [nnz, vocab] logits of the
   padding-removed rows (use_remove_padding) in the compute dtype, divided in place by the
   temperature; log-probs by flash-attn's Triton cross_entropy_loss (fp32 per token), entropy by
   the torch.compile'd entropy_from_logits (use_torch_compile true: fused reductions, assumed no
   [nnz, vocab] temporaries).
3. update: the actor's micro-step (ppo_micro_batch_size_per_gpu sequences; ppo_mini_batch x n /
   micro = accumulation steps), gradient checkpointing; the same [nnz, vocab] logits kept for
   backward, whose gradient flash-attn writes in place (inplace_backward=True), so no second
   [nnz, vocab] buffer; the optimizer is loaded back to the GPU for its step (load_fsdp_optimizer).
   PPO adds the critic's update (a value model: no [nnz, vocab] logits, a [hidden, 1] head).

Tokens are counted at --prompt-len + --completion-len per row: with padding removed verl
computes only the rows' real tokens, so the stated lengths are caps and these phases upper
bounds. --offload-params / --offload-optimizer are verl's param_offload / optimizer_offload:
states off the GPU outside the phase that uses them (not DeepSpeed's CPU optimizer step).
Bytes throughout; pure Python.
"""

from __future__ import annotations

from dataclasses import replace

from tuneplan.job import Job, Rollout
from tuneplan.memory import components as K
from tuneplan.memory.activations import logits_bytes
from tuneplan.memory.generation import LABELS as GEN_LABELS
from tuneplan.memory.generation import (
    SCORING,
    VLLM,
    bound_phase,
    local_generation_batch,
    row_tokens,
    vllm_share_bytes,
)
from tuneplan.memory.step import Component, MemoryEstimate, estimate_memory
from tuneplan.model_spec import ModelSpec, param_counts

CRITIC_STATES = "critic_states"
CRITIC_UPDATE = "critic_update"
LABELS = {CRITIC_STATES: "Critic states (PPO value model)", CRITIC_UPDATE: "Critic update (gradients, activations)"}
# fp32 per-token vectors next to the logits: flash-attn cross_entropy_loss's losses and lse
# (flash_attn/ops/triton/cross_entropy.py), the log-probs and the entropy (dp_actor.py :167-178)
VERL_TOKEN_VECTORS = 4
_STATES = (K.WEIGHTS, K.QUANT_CONSTANTS, K.ADAPTERS, K.OPTIMIZER, K.MASTER_WEIGHTS)


def update_job(job: Job) -> Job:
    """The actor's update micro-step as the supervised step the estimators price: --batch sequences
    of prompt + completion tokens, its states on the GPU (verl loads offloaded shards and optimizer
    back before the update), the plain head replaced by verl's below."""
    p = replace(job.parallel, offload_params=False, offload_optimizer=False)
    training = replace(job.training, cross_entropy="plain")
    return replace(job, task="sft", ref_model=None, rollout=Rollout(), training=training, parallel=p)


def logits_tokens(job: Job) -> int:
    """Tokens of one micro-batch whose logits verl materialises: rows x (prompt + completion)."""
    prompt, completion = row_tokens(job)
    return job.training.micro_batch * (prompt + completion)


def head_bytes(spec: ModelSpec, job: Job) -> int:
    """verl's head over one micro-batch: [nnz, vocab] compute-dtype logits (their gradient is
    written in place) and fp32 per-token vectors (bytes)."""
    n = logits_tokens(job)
    return job.training.compute_bytes * n * spec.vocab_size + 4 * VERL_TOKEN_VECTORS * n


def critic_states_bytes(spec: ModelSpec, job: Job) -> tuple[int, int]:
    """(resident states, update's gradients) of PPO's critic per GPU: a value model of the policy's
    shape without lm_head (AutoModelForTokenClassification num_labels=1), loaded fp32
    (fsdp_workers.py CriticWorker: model_dtype default fp32), fp32 AdamW moments, fp32 gradients,
    FSDP-sharded over the GPUs (critic.model.fsdp_config; offload flags as the actor's)."""
    pc = param_counts(spec)
    n = pc.total - pc.lm_head + spec.hidden_size
    world = max(1, job.parallel.data)
    weights, adam = 4 * n // world, 8 * n // world
    p = job.parallel
    resident = (0 if p.offload_params else weights) + (0 if p.offload_optimizer else adam)
    return resident, 4 * n // world


def estimate_verl(spec: ModelSpec, job: Job) -> MemoryEstimate:
    """Per-GPU memory of one verl hybrid-engine step: the largest of generation, log-probs and
    update (MemoryEstimate.phase_bytes holds each; peak_phase names the one that bounds the GPU)."""
    uj = update_job(job)
    lo = estimate_memory(spec, uj)
    t, p, rt = job.training, job.parallel, job.training.rt
    parts = {c.key: c for c in lo.components if c.key not in K.OVERHEAD}
    upcast = 0
    if K.WEIGHTS in parts and K.QUANT_CONSTANTS not in parts and t.param_bytes == 2 and job.method.is_adapter:
        # verl loads the actor in fp32 whatever is trained (fsdp_workers.py:197-199: model_dtype None ->
        # torch.float32 for the actor), so the frozen base's FSDP shards are fp32 too (16-bit gathered)
        w = parts[K.WEIGHTS]
        upcast = w.bytes
        parts[K.WEIGHTS] = replace(w, bytes=2 * w.bytes, note=w.note.replace("bf16", "fp32", 1)
                                   + " (verl loads the actor fp32: fsdp_workers.py:197-199)")
    states = {k: parts[k] for k in _STATES if k in parts}
    kept = [c for k, c in states.items()
            if not ((p.offload_params and k in (K.WEIGHTS, K.QUANT_CONSTANTS, K.ADAPTERS))
                    or (p.offload_optimizer and k in (K.OPTIMIZER, K.MASTER_WEIGHTS)))]
    critic: list[Component] = []
    critic_grads = 0
    if job.task_record.critic:
        resident, critic_grads = critic_states_bytes(spec, job)
        if resident:
            critic.append(Component(CRITIC_STATES, LABELS[CRITIC_STATES], resident,
                                    "fp32 value model and AdamW moments, FSDP-sharded over the GPUs, trained "
                                    "in full (critic.model.lora_rank 0, the default; not offloaded)"))

    share = vllm_share_bytes(job)
    r = job.rollout
    generation = [*kept, *critic, Component(VLLM, GEN_LABELS[VLLM], share,
                                            f"gpu_memory_utilization {r.vllm_memory_utilization:g} x "
                                            f"{r.device_memory_gib:.1f} GiB: vLLM's weights, activations and KV "
                                            "cache, put to sleep (level 1) after the rollout"
                                            if share else "give --gpu to count gpu_memory_utilization x its memory")]

    # log-prob phase: the actor's states on the GPU (offloaded optimizer stays off), one no-grad layer
    # of the micro-batch, the [nnz, vocab] logits
    prompt, completion = row_tokens(job)
    n = logits_tokens(job)
    c = t.compute_bytes
    inter = max(spec.intermediate_size, spec.moe_intermediate_size * max(1, spec.experts_per_token))
    layer = n * c * (3 * spec.hidden_size + 3 * inter)
    head = head_bytes(spec, job)
    stored = 4 * local_generation_batch(job) * completion * 3  # old, reference log-probs, values/entropy (fp32)
    lp_states = [c_ for k, c_ in states.items()
                 if not (p.offload_optimizer and k in (K.OPTIMIZER, K.MASTER_WEIGHTS))]
    passes = ["old log-probs (actor)"] + (["reference log-probs"] if job.reference != "none" else []) \
        + (["critic values"] if job.task_record.critic else [])
    logprob = [*lp_states, *critic,
               Component(SCORING, GEN_LABELS[SCORING], layer + head + stored,
                         f"{', '.join(passes)}: one no-grad layer over {t.micro_batch} rows x "
                         f"{prompt + completion:,} tokens, tokens x vocab logits in the compute dtype, fp32 "
                         "per-token results")]

    # update phase: the supervised micro-step with verl's head in place of the plain cross-entropy's
    pl_fwd, _, pl_bwd = logits_bytes(spec, uj.training)
    ph = dict(lo.phase_bytes)
    h_bwd = head + c * n * spec.hidden_size  # the logits' in-place gradient and lm_head's input gradient
    upd_alloc = upcast + max(ph["forward"] - pl_fwd + head, ph["backward"] - pl_bwd + h_bwd, ph["optimizer"])
    others = [c_ for c_ in parts.values() if c_.key != K.LOGITS]
    rest = upd_alloc - sum(c_.bytes for c_ in others)
    update = others + ([Component(K.LOGITS, K.LABELS[K.LOGITS], rest,
                                  "verl's head: tokens x vocab logits kept for backward, gradient written in place "
                                  "(flash-attn cross_entropy_loss inplace_backward), lm_head's input gradient")]
                       if rest > 0 else []) + critic

    phases = {"generation": generation, "log-probs": logprob, "update": update}
    if job.task_record.critic:
        # critic update: its states, gradients and the actor's activation share (same shape, no vocab head)
        acts = sum(c_.bytes for c_ in others if c_.key in (K.ACTIVATIONS, K.WORKING))
        phases["critic update"] = [*kept, *critic, Component(CRITIC_UPDATE, LABELS[CRITIC_UPDATE],
                                                             critic_grads + acts,
                                                             "fp32 gradients of the value model and the "
                                                             "actor's activation estimate (same shape, "
                                                             "a hidden x 1 head)")]
    return bound_phase(lo, job, rt, phases, verl_assumptions(job, passes)
                       + [a for a in lo.assumptions if not a.startswith("Task ")])


def verl_assumptions(job: Job, passes: list[str]) -> list[str]:
    """What a verl estimate assumes, in words."""
    t, p, r = job.training, job.parallel, job.rollout
    prompt, completion = row_tokens(job)
    ref = {"adapter": "the actor with its adapter disabled (lora_rank > 0)",
           "separate": "a separate FSDP ref worker with its parameters on the CPU (one unit gathered at a time)",
           "none": "none (use_kl_loss and use_kl_in_reward false)"}[job.reference]
    off = [w for w, on in (("param_offload", p.offload_params), ("optimizer_offload", p.offload_optimizer)) if on]
    return [
        f"Task {job.task} as verl's hybrid engine runs it (volcengine/verl@49b08e950): --batch {t.micro_batch} "
        f"sequences per micro-step (ppo_micro_batch_size_per_gpu), {t.grad_accum} micro-steps per mini-batch; each "
        f"GPU generates {local_generation_batch(job)} responses of up to {completion:,} tokens after "
        f"{prompt:,}-token prompts; reference: {ref}.",
        "Tokens counted at prompt + completion per row: verl removes padding (use_remove_padding), so these "
        "lengths are caps and the figures upper bounds.",
        f"Generation: vLLM colocated, gpu_memory_utilization {r.vllm_memory_utilization:g} of each GPU while it "
        "generates, asleep (level 1) otherwise; actor "
        + (" and ".join(off) + " on: those states are on the CPU while vLLM runs" if off else
           "states stay on the GPU (no param_offload / optimizer_offload)") + ".",
        f"Phases: the GPU's peak is the largest of {', '.join(['generation', 'log-probs', 'update'] + (['critic update'] if job.task_record.critic else []))}; "
        f"log-probs: {', '.join(passes)}.",
    ]


__all__ = ["estimate_verl"]
