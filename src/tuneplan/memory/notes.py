"""What an estimate assumes, in words: a phrase per component and the sentences of its assumptions.

The figures are tuneplan.memory.step's; this module only says what they take for granted
(dtypes, sharding, kernels, the layout, the runtime's overhead, the library versions), so
every shell shows the same words next to the same numbers. The task's own phrases and
sentences come from its hook (tuneplan.memory.tasks).
"""

from __future__ import annotations

from tuneplan.job import Job, Training
from tuneplan.memory import components as K
from tuneplan.memory.activations import attention_kernel
from tuneplan.memory.static import engine_fp32_master, fsdp_fp32_params
from tuneplan.memory.tasks import task_assumptions
from tuneplan.memory.trained import targets_text, trainable
from tuneplan.model_spec import ModelSpec


def component_notes(spec: ModelSpec, job: Job, autocast_copies: int, world: int,
                    root_gathered: bool) -> dict[str, str]:
    """What each component's figure assumes, one short phrase per key.

    `world` is the rank's shard world; `root_gathered` says that the FSDP root unit stays
    gathered through the step (tuneplan.memory.step prices it).
    """
    m, t, p = job.method, job.training, job.parallel
    tr = trainable(spec, m)
    stage = p.shard_stage
    return {
        K.WEIGHTS: ({"qlora": f"{m.quant.upper()} packed" if m.quant != "int8" else "int8"}.get(
            m.kind, "fp32" if t.param_bytes == 4 else t.precision))
        + (", trained parameters fp32 (FSDP upcast)" if fsdp_fp32_params(job) and tr.base else "")
        + _shard_note(3, stage, world, p.offload_params),
        K.QUANT_CONSTANTS: (f"scale + bias per {m.quant_blocksize}, model dtype" if m.fmt.constants == "affine" else
                            f"absmax per {m.quant_blocksize}" + (", double quant" if m.double_quant else "")),
        K.ADAPTERS: f"rank {m.rank}, {tr.adapter:,} params, {t.adapter_bytes * 8}-bit",
        K.PARAM_GATHER: "FSDP/ZeRO-3: current + prefetched layer"
        + (" + the root unit (embeddings, lm_head), gathered from forward to the end of backward"
           if root_gathered else ""),
        K.GRADIENTS: f"{tr.total:,} trainable params" + _shard_note(2, stage, world, False),
        K.OPTIMIZER: t.optimizer + _shard_note(1, stage, world, p.offload_optimizer),
        K.MASTER_WEIGHTS: "fp32 copy of trainable params" + _shard_note(1, stage, world, p.offload_optimizer),
        K.DDP_BUCKETS: ("DeepSpeed reduce/prefetch buckets (HF auto: hidden_size^2 elements)"
                        if p.layout.reduce_buckets else "DDP buckets (gradient_as_bucket_view=False)"),
        K.OPTIMIZER_TEMP: ("fp32 gradient partition made for the optimizer step (DeepSpeed)"
                           if engine_fp32_master(job) and not t.profile.fp32_main_grads
                           else "foreach AdamW full-size temporary"),
        K.ACTIVATIONS: {"none": "no checkpointing", "full": "checkpointed layer inputs + one recomputed layer",
                        "selective": "op-level selective checkpointing (layer inputs, every other matmul output, "
                                     "attention outputs) + one recomputed layer",
                        "offload": "layer inputs offloaded to CPU + one recomputed layer"}[t.checkpointing]
        + f", {attention_kernel(spec, t).name} attention" + (", autocast weight copies" if autocast_copies else ""),
        K.LOGITS: (f"{t.precision} logits + cross-entropy ({'mx.fast.cross_entropy' if t.rt.fast_cross_entropy else 'composed'})"
                   if t.profile.mlx_graph else t.loss.note),
        K.WORKING: "backward working set of one layer" + (", dequantised weight" if m.kind == "qlora"
                                                          and m.fmt.dequant_copy else ""),
    }


def _shard_note(stage_needed: int, stage: int, world: int, offloaded: bool) -> str:
    if offloaded:
        return ", offloaded to CPU"
    if world > 1 and stage >= stage_needed:
        return f", sharded /{world}"
    return ""


def _layout_sentence(spec: ModelSpec, job: Job) -> str:
    """The layout in one sentence: degrees, sharding, which rank the figures describe."""
    p, t = job.parallel, job.training
    parts = [f"{p.num_gpus} GPUs" + (f" over {p.nodes} machines" if p.nodes > 1 else ""),
             f"data {p.data} with {p.layout.label}"]
    if p.tensor > 1:
        sp = p.sequence_parallel if p.sequence_parallel is not None else t.profile.sequence_parallel_default
        parts.append(f"TP {p.tensor} ({'with' if sp else 'without'} sequence parallelism: "
                     f"{'every activation' if sp else 'attention and MLP internals'} split by {p.tensor}, "
                     "Korthikanti et al. 2022)")
    if p.pipeline > 1:
        sched = f"interleaved 1F1B, {p.virtual_stages} virtual stages" if p.virtual_stages > 1 else "1F1B"
        parts.append(f"PP {p.pipeline} ({sched}: the first stage keeps min(PP, grad-accum) micro-batches in flight)")
    if p.context > 1:
        parts.append(f"CP {p.context} (sequence split {p.context} ways)")
    if p.expert > 1:
        parts.append(f"EP {p.expert} (experts split; states of every parameter sharded over data x context / EP, "
                     "an over-estimate for the dense part)")
    text = "; ".join(parts) + "."
    if engine_fp32_master(job):
        text += (" The optimizer keeps fp32 master weights and fp32 Adam states next to the 16-bit model whatever "
                 "--precision says (" + ("Megatron-Core's distributed optimizer and fp32 main_grad buffer"
                                        if t.profile.fp32_main_grads else
                                        "DeepSpeed ZeRO's fp32 partitions, stage_1_and_2.py / stage3.py") + ").")
    if p.nodes and p.tensor > p.num_gpus // p.nodes:
        text += f" Warning: TP {p.tensor} is larger than a machine ({p.num_gpus // p.nodes} GPUs): its all-reduces cross the network."
    return text


def _overhead_sentence(job: Job) -> str:
    """What sits on top of the live tensors on this runtime, in one sentence."""
    rt = job.training.rt
    if rt.context_bytes or rt.allocator_overhead:
        return (f"{rt.context_label or 'Driver context'} {rt.context_bytes / 2**30:.2f} GiB and "
                f"{rt.allocator_overhead:.0%} allocator "
                "overhead (at least one fp32 logits block where the loss makes one) are included.")
    return (f"{rt.label}: nothing is added on top of the live buffers (no driver context, no caching-allocator "
            "overhead); the peak is the runtime's own "
            "counter of live buffers" + (" (MLX has no 'reserved': its buffer cache is not counted)."
                                          if job.training.profile.mlx_graph else "."))


def _kbit_prep_note(t: Training) -> str:
    """What stays 16-bit beside a bitsandbytes model, per the k-bit preparation."""
    prep = t.prep
    if not prep.fp32_residual:
        return ("embeddings, norms and lm_head stay in bf16 (no k-bit preparation; a script that calls "
                "peft.prepare_model_for_kbit_training upcasts them to fp32: --kbit-prep peft).")
    return f"{prep.label}; so norm outputs, MLP intermediates, the residual stream and the checkpoints are fp32."


def assumptions(spec: ModelSpec, job: Job) -> tuple[str, ...]:
    """Plain sentences for what the estimate assumes."""
    m, t, p = job.method, job.training, job.parallel
    out = [
        f"Steady-state step (optimizer states exist), micro-batch {t.micro_batch} x {t.seq_len} tokens, "
        f"{t.precision} precision, {attention_kernel(spec, t).name} attention, framework profile {t.framework}.",
        "Activations are what autograd saves in the transformers modelling code; padding-free batches.",
        _overhead_sentence(job),
    ]
    if t.profile.mlx_graph:
        out[1] = ("Activations are what MLX's vjps read in mlx-lm's modelling code (tuneplan.memory.mlx); "
                  "padding-free batches.")
        if m.is_adapter or m.kind == "freeze":
            out.append(f"mlx-lm trains the last {m.lora_layers or m.trainable_layers} decoder layers only "
                       "(num_layers); embeddings and lm_head stay frozen.")
    if t.rt.note:
        out.append(t.rt.note)
    if m.is_adapter:
        out.append(f"Adapters on {targets_text(m.targets)} (rank {m.rank}) stored in "
                   f"{'fp32 (' + ('mlx-lm LoRALinear' if t.profile.mlx_graph else 'PEFT autocast_adapter_dtype') + ')' if t.adapter_bytes == 4 else 'the model dtype'}.")
    if m.kind == "dora" and not t.autocast and t.profile.adapter_input_copies:
        out.append("DoRA without autocast: PEFT's fp32 DoRA path is not modelled in detail (tuneplan trace "
                   "measures about 8% more on Llama-3.2-1B).")
    if m.kind == "qlora":
        out.append(f"{m.fmt.label}: every linear, the embedding and lm_head whose input width divides by "
                   f"{m.quant_blocksize} are quantised (mlx-lm convert); norms stay in the model dtype."
                   if m.fmt.quantises_embeddings else
                   "Every decoder nn.Linear is quantised; " + _kbit_prep_note(t))
        if spec.is_moe:
            out.append("Routed experts " + ("are quantised (Unsloth's patch)." if t.profile.quantises_fused_experts else
                       "stay bf16: transformers 5 fuses them into 3-D parameters, which bitsandbytes skips."))
    if attention_kernel(spec, t).name != (t.profile.attention or t.attention):
        out.append(f"transformers has no SDPA attention for {spec.model_type}: eager attention (s x s scores) is assumed; "
                   "--attention flash for FlashAttention-2.")
    if spec.is_moe and m.is_adapter:
        out.append("Routed experts are adapted (one adapter per expert, PEFT target_parameters)."
                   if m.targets != "all-linear" and "experts" in m.targets else
                   "Routed experts get no adapters (fused 3-D parameters; add 'experts' to --targets to adapt them).")
    if p.num_gpus > 1:
        out.append(_layout_sentence(spec, job))
    if t.optim.paged:
        out.append("Paged optimizer states are counted on the GPU (device total) but live in CUDA managed memory, "
                   "which torch's allocated/reserved counters do not see; under pressure they page to CPU RAM.")
    if t.optimizer_in_backward:
        out.append("Optimizer in backward: each parameter is stepped and its gradient freed during backward, so "
                   "at most one layer's gradients exist.")
    if fsdp_fp32_params(job):
        out.append(f"FSDP under {t.profile.label}: accelerate upcasts the trained flat parameters to fp32 "
                   "(fp32 shards, gradients and optimizer states; 16-bit all-gathered copies)."
                   if t.profile.fsdp_version == 1 else
                   f"FSDP2 under {t.profile.label}: fp32 parameter shards with MixedPrecisionPolicy(param_dtype="
                   "bf16, reduce_dtype=fp32): fp32 shards, gradients and optimizer states; bf16 all-gathered copies.")
    if t.versions.bnb_4bit_saves_input and m.kind == "qlora":
        out.append(f"Library versions: {t.versions.label}; every 4-bit linear keeps its input for backward.")
    if t.loss.chunk_tokens:
        out.append(f"Loss: {t.loss.note}; the logit chunks and their log-probabilities stay alive through backward.")
    out.extend(task_assumptions(spec, job))  # task hook (tuneplan.memory.tasks)
    return tuple(out)
