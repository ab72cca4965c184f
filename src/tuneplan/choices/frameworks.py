"""Framework profiles: every rule that differs between training stacks, one row each.

A profile says how a stack stores adapters, whether it runs the forward under autocast,
which cross-entropy it uses by default, what its kernels patch and how efficiently it
uses the GPU. Estimators read these fields; none compares a framework's name.

To add a stack (litgpt, MLX, ...): read its source at a stated version, add one row with
each field cited, and add its FLOP efficiency to tuneplan.calibration with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.choices import lookup


@dataclass(frozen=True)
class FrameworkProfile:
    """How one training stack runs a fine-tuning step.

    Args:
        name: the setting (hf, unsloth, ...).
        label: the stack's name for people.
        adapter_fp32: LoRA/DoRA weights are fp32 on a half-precision model (PEFT
            get_peft_model(autocast_adapter_dtype=True), peft/tuners/tuners_utils.py
            cast_adapter_dtype); False keeps them in the model dtype (torchtune).
        autocast_half: the forward of a bf16/fp16 model runs under torch.autocast (HF
            Trainer with bf16=True wraps it in accelerate's autocast); torchtune does not.
        adapter_input_copies: under autocast each PEFT-adapted module keeps its own
            compute-dtype copy of its input (peft lora Linear.forward casts x to the fp32
            adapter dtype, autocast casts it back for the matmul and saves that copy).
        default_cross_entropy: the loss implementation the stack uses unless told otherwise.
        quantises_fused_experts: QLoRA quantises transformers 5's fused 3-D MoE experts
            (bitsandbytes skips them, issue #1849; Unsloth patches it, unsloth-zoo PR #527).
        offloads_checkpoints: with checkpointing on, layer inputs go to host RAM and back
            (Unsloth's use_gradient_checkpointing="unsloth"); counted in time only, memory
            needs --checkpointing offload.
        trace_exact: `tuneplan trace` replays this stack's step exactly (HF Trainer + PEFT,
            torchtune's no-autocast step); others are traced as the HF step, with a note.
        flop_efficiency: achieved / peak FLOP/s over executed FLOPs (tuneplan.calibration).
        device_notes: (device vendor, caveat) pairs shown when the job runs on that vendor.
        fsdp_fp32_params: under FSDP with bf16/fp16 mixed precision the trainable flat
            parameters are upcast to fp32 even when the model was loaded in 16-bit, so the
            shards, their gradients and the optimizer states are fp32 and the gathered
            copy is 16-bit (accelerate accelerator.py prepare_model, FSDP branch: "if model
            is loaded in 16bit ... we still want to upcast the flat_param"; HF Trainer, TRL,
            Axolotl and LLaMA-Factory launch FSDP through accelerate). torchtune and litgpt
            shard the model in its own dtype.
        fsdp_root_unit: under FSDP the stack wraps only the decoder layers, so the
            embeddings, the final norm and lm_head form the root unit, whose gathered
            16-bit parameters FSDP keeps from the start of forward to the end of backward
            (torch/distributed/fsdp/_runtime_utils.py _post_forward_reshard, torch 2.x:
            `free_unsharded_flat_param = not state._is_root and ...`; accelerate's
            TRANSFORMER_BASED_WRAP wraps the model's _no_split_modules). torchtune shards
            tok_embeddings and output as units of their own (custom_sharded_layers).
        fused_qkv: the stack's own modelling code computes q, k, v with one fused matmul and
            slices views out of it, so SDPA's saved v keeps the whole qkv output alive
            (litgpt model.py CausalSelfAttention: `qkv = self.attn(x)` then split).
        attention_output_copy: the stack's attention re-assembles the heads with a reshape of
            the transposed SDPA output, a copy, which o_proj keeps when it needs its input
            (litgpt model.py CausalSelfAttention: `y.reshape(B, T, C)` of
            `scaled_dot_product_attention(...)`'s `y.transpose(1, 2)`).
        quantises_lm_head: QLoRA quantises an untied lm_head too (Lightning 2.1
            BitsandbytesPrecision.module_init_context replaces every torch.nn.Linear, lm_head
            included, with its 4-bit class; litgpt passes no ignore_modules), so its weight is
            4-bit and dequantised for each logits chunk.
        gelu_kernel: the stack's plain MLP calls torch's one-kernel GELU whatever the config's
            hidden_act (litgpt model.py GptNeoxMLP: `torch.nn.functional.gelu(x,
            approximate=self.config.gelu_approximate)`), not transformers' Python gelu_new.
        expands_kv_heads: the stack's attention repeats k and v to every query head before
            SDPA, a copy that SDPA then saves (torchtune 0.6.1 modules/attention.py
            MultiHeadAttention.forward: `k.unsqueeze(2).expand(expand_shape).flatten(1, 2)`;
            transformers passes GQA k/v to SDPA unrepeated).
        calibration_framework: the stack's name in the `framework` column of measured runs
            (../shared/calibration, benchmarks/measured_runs.py row_profile); empty:
            the setting's own name. `tuneplan probe` records use it.
        runtimes: (device vendor, runtime) pairs: the backend the stack runs on for each
            vendor (tuneplan.choices.runtimes); the first pair is the default when no
            device is named. PyTorch stacks: CUDA on NVIDIA, ROCm on AMD, MPS on Apple.
        quant_libraries: quantisation libraries the stack's QLoRA uses (QuantFormat.library).
        mlx_graph: the step is MLX's (mlx-lm): lazily built graph, mx.compile'd step,
            autodiff through MLX's vjps; the memory model follows tuneplan.memory.mlx.
        defaults: (setting, value) the stack uses when the user gives none (mlx-lm's
            CONFIG_DEFAULTS: rank 8, num_layers 16, no gradient checkpointing).
        optimizers: the optimizer settings the stack offers (empty: every one).
        layer_subset: the stack adapts or trains only the last N decoder layers
            (Method.lora_layers: mlx-lm's num_layers); others refuse --lora-layers.
        full_is_layers: its full fine-tuning trains the last N decoder layers only, the
            embeddings, final norm and lm_head stay frozen (mlx_lm/lora.py train_model:
            model.freeze(), then `for l in model.layers[-num_layers:]: l.unfreeze()`):
            tuneplan's freeze of N layers.
        data_parallel: the stack's multi-GPU data parallelism is modelled (DDP/ZeRO/FSDP).
        precisions / checkpointing_modes / cross_entropies: the settings the stack offers
            (empty: every one).
        eager_kernels: the step launches kernels one by one from eager PyTorch, each with a
            fixed cost (tuneplan.timing.kernel_count x calibration.SECONDS_PER_KERNEL);
            False for a step compiled as one graph (mlx-lm mx.compile's its step).
        fused_pointwise: the stack runs norms, rotary, activation and adapter scaling as fused
            kernels (Unsloth's Triton kernels, mlx-lm's mx.compile'd step) even without
            torch.compile: the time model counts their fused memory traffic (tuneplan.traffic).
        shardings: the --sharding layouts the stack runs on several GPUs
            (tuneplan.choices.layouts): HF Trainer stacks launch DDP, DeepSpeed ZeRO and torch
            FSDP through accelerate (accelerate/utils/dataclasses.py DeepSpeedPlugin,
            FullyShardedDataParallelPlugin with HYBRID_SHARD); torchtune's distributed recipes
            shard with FSDP2 (`training.shard_model`, data_parallel_replicate_dim for HSDP).
        model_parallel: the model-parallel dimensions it runs: "tp" (tensor), "sp" (sequence
            parallel with TP), "pp" (pipeline), "cp" (context), "ep" (expert).
        sequence_parallel_default: with TP, norms and dropout run sequence-parallel unless told
            otherwise (torchtitan parallelize_llama: SequenceParallel on the norms;
            Megatron-Bridge recipes set sequence_parallel=True with TP).
        fsdp_version: the torch FSDP the stack runs: 1 (FlatParameter units: accelerate's
            default fsdp_version 1, Lightning's FSDPStrategy) or 2 (fully_shard, per-parameter
            DTensor shards: torchtune, torchtitan).
        accumulates_unsharded: with gradient accumulation the stack skips the gradient sync on
            the accumulating micro-batches (accelerate Accelerator.accumulate -> no_sync unless
            GradientAccumulationPlugin(sync_each_batch=True); litgpt
            `fabric.no_backward_sync(model, enabled=is_accumulating)`), so under FSDP the
            unsharded gradients of every unit holding a trainable weight stay resident until the
            sync (torch FullyShardedDataParallel.no_sync docs: "FSDP will accumulate the full
            model gradients (instead of gradient shards)"); with use_orig_params=True a unit's
            flat gradient is the size of its whole FlatParameter, frozen weights included.
        fp32_main_grads: gradients accumulate in an fp32 buffer next to the 16-bit weights, with
            fp32 master weights and fp32 Adam states (Megatron-Core DistributedDataParallel
            grad_reduce_in_fp32 / main_grad, optimizer/distrib_optimizer.py; Megatron-LM's
            theoretical_memory_usage.py: 18 bytes per parameter, 6 + 12/DP with the
            distributed optimizer).
        loss_parallel: with TP the logits stay split over the vocabulary and the loss is computed
            on the shards (Megatron-Core vocab_parallel_cross_entropy; torchtitan loss_parallel);
            otherwise lm_head's output is gathered to the whole vocabulary on every rank
            (transformers' tp_plan "colwise_rep" lm_head, torchtune's Replicate() output).
        tp_splits_embedding: with TP the input embedding is split over the vocabulary
            (torchtune base_llama_tp_plan and torchtitan: tok_embeddings RowwiseParallel;
            Megatron VocabParallelEmbedding); transformers' base_model_tp_plan leaves
            embed_tokens replicated and splits only lm_head (colwise_rep).
        model_parallel_shardings: the data-parallel shardings the stack combines with TP or PP:
            torch FSDP / DDP on a 2-D mesh (accelerate ParallelismConfig dp_shard x tp,
            torchtune, torchtitan); DeepSpeed's ZeRO does not shard a DTensor-parallel model
            (its AutoTP trains with ZeRO 0-2 only, not through these stacks' configs); Megatron
            runs its distributed optimizer (--sharding zero1) with TP and PP.
        selective_checkpointing: runs --checkpointing selective, torchtitan's op-level selective
            activation checkpointing (activation_checkpoint.mode "selective", option "op").
        suggest: the fit search may suggest moving to this stack (new layouts' stacks, whose
            exports are not written, are not suggested).
        versioned_libraries: the libraries whose version changes (tuneplan.choices.versions
            RELEASES) reach this stack's step: transformers' loss and bitsandbytes' MatMul4Bit
            for the HF stacks; litgpt runs bitsandbytes but its own model and loss; torchtune
            its own model, loss and torchao NF4; Unsloth its own 4-bit LoRA kernels.
        lora_dropout_default: the LoRA dropout the stack's recipes use when the user states
            none (litgpt/finetune/lora.py `lora_dropout: float = 0.05`, lit-gpt 2023 and today;
            PEFT LoraConfig, torchtune configs since 2024-09-11 and mlx-lm: 0). A Stack record
            may date an older default (versions.Stack.lora_dropout).
        adamw_fused: the stack's recipes build torch.optim.AdamW with fused=True, so the step
            has no foreach full-size temporary (torchtune configs since PR #1575, 2024-09-14:
            `optimizer: {_component_: torch.optim.AdamW, fused: True}`); a Stack record may date
            an older default.
        materialises_attention_scores: the stack's attention is unfused (no flash attention):
            baddbmm writes the [batch, heads, seq, seq] scores, a fused scale-mask-softmax
            and a dropout read and write them, bmm reads them (Megatron-LM legacy
            megatron/model/transformer.py CoreAttention, Megatron-DeepSpeed's default without
            --use-flash-attn; vTrain src/model/gpt_modeling.py ShardedGptSelfAttention): their
            DRAM traffic is timed (tuneplan.timing_host.attention_scores_bytes).
        overlaps_grad_reduce: the data-parallel gradient all-reduce runs bucket by bucket during
            the backward (torch DDP, Megatron-Core --overlap-grad-reduce); False: it starts
            after the last backward and is all exposed (Megatron-DeepSpeed's DeepSpeed engine
            without ZeRO: engine.allreduce_gradients() at the accumulation boundary after the
            backward; vTrain's validation configs: "use_gradient_bucket": false).
        kernels_per_layer_forward: kernels one decoder layer's forward launches in this stack
            (0: transformers' count, calibration.KERNELS_PER_LAYER_FORWARD).
        trace_replay: `tuneplan trace` replays this stack's own modules and recipe step instead of
            the HF Trainer + PEFT step (tuneplan.trace.stacks.REPLAYS: "torchtune" = torchtune
            0.6.1's builders, chunked loss and single-device recipe step); "" = the HF step.
        rope_cache: (config model_type, fp32 values per position per head_dim, one per layer when
            the LoRA builder builds it) for a stack whose RoPE module keeps a precomputed cos/sin
            cache of max_position rows as a buffer (torchtune 0.6.1: Llama3ScaledRoPE
            [max_seq_len, head_dim / 2, 2], one shared by every layer,
            models/llama3_1/_position_embeddings.py:88 and llama3_2/_component_builders.py:89;
            Qwen2RotaryPositionalEmbeddings [max_seq_len, 2 x head_dim],
            models/qwen2/_positional_embeddings.py:51, built once by qwen2() but once per layer
            by lora_qwen2_self_attention). transformers keeps only inv_freq.
        attention: the attention the stack runs whatever --attention says (a tuneplan.choices.attention
            name; empty: the user's --attention): Megatron-DeepSpeed's legacy CoreAttention is "eager",
            so the memory model keeps its [b, heads, s, s] scores and probabilities (the saves
            materialises_attention_scores times).
        methods: the --method kinds the stack runs (empty: every one); others are refused in one line.
        norm_weight_fp32: the stack's RMSNorm multiplies its weight into the fp32 normalised value
            (torchtune 0.6.1 modules/rms_norm.py:38 `F.rms_norm(x.float(), weight=self.scale)
            .to(x.dtype)`: a bf16 weight on an fp32 input takes aten's composite path on every
            device, aten/src/ATen/native/layer_norm.cpp rms_norm_symint, torch 2.13 line 346: "Mismatch
            dtype between input and weight ... Cannot dispatch to fused implementation"), so a trained weight keeps that fp32 value
            (4 bytes per element, not the compute dtype's) for its gradient.
        rl_hybrid_engine: online RL (grpo, ppo) runs as verl's hybrid engine (tuneplan.memory.verl): one
            FSDP actor whose states may leave the GPU between phases, a colocated vLLM put to sleep
            (level 1: weights to CPU, KV cache discarded) after each rollout, [tokens, vocab] logits
            of the padding-removed micro-batch, and for PPO a critic with FSDP states of its own.
        rl_engines: the --generation-engine values the stack runs for online tasks (empty: every one).
        rl_vllm_memory_utilization: the stack's default vLLM gpu_memory_utilization (0: TRL's).
        host_overlaps_device: the host's kernel dispatch runs ahead of the GPU (asynchronous
            CUDA launches), so a micro-batch takes the longer of its dispatch (kernels x
            seconds per kernel) and its GPU work; False: the dispatch cost adds to the GEMMs,
            the form calibration.SECONDS_PER_KERNEL and FRAMEWORK_EFFICIENCY["hf"] were fitted in.
    """

    name: str
    label: str
    adapter_fp32: bool
    autocast_half: bool
    adapter_input_copies: bool
    default_cross_entropy: str
    quantises_fused_experts: bool
    offloads_checkpoints: bool
    trace_exact: bool
    flop_efficiency: float
    device_notes: tuple[tuple[str, str], ...] = ()
    fsdp_fp32_params: bool = False
    fsdp_root_unit: bool = False
    fused_qkv: bool = False
    attention_output_copy: bool = False
    gelu_kernel: bool = False
    quantises_lm_head: bool = False
    calibration_framework: str = ""
    expands_kv_heads: bool = False
    runtimes: tuple[tuple[str, str], ...] = (("NVIDIA", "cuda"), ("AMD", "rocm"), ("Apple", "mps"))
    quant_libraries: tuple[str, ...] = ("bitsandbytes",)
    mlx_graph: bool = False
    defaults: tuple[tuple[str, object], ...] = ()
    optimizers: tuple[str, ...] = ()
    layer_subset: bool = False
    full_is_layers: bool = False
    data_parallel: bool = True
    precisions: tuple[str, ...] = ()
    checkpointing_modes: tuple[str, ...] = ()
    cross_entropies: tuple[str, ...] = ()
    eager_kernels: bool = True
    fused_pointwise: bool = False
    shardings: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3", "fsdp", "hsdp")
    model_parallel: tuple[str, ...] = ()
    sequence_parallel_default: bool = False
    fsdp_version: int = 1
    accumulates_unsharded: bool = False
    fp32_main_grads: bool = False
    loss_parallel: bool = False
    tp_splits_embedding: bool = False
    model_parallel_shardings: tuple[str, ...] = ("ddp", "fsdp", "hsdp")
    selective_checkpointing: bool = False
    suggest: bool = True
    versioned_libraries: tuple[str, ...] = ("bitsandbytes", "transformers")
    lora_dropout_default: float = 0.0
    adamw_fused: bool = False
    materialises_attention_scores: bool = False
    overlaps_grad_reduce: bool = True
    kernels_per_layer_forward: int = 0
    host_overlaps_device: bool = False
    trace_replay: str = ""
    rope_cache: tuple[tuple[str, int, bool], ...] = ()
    norm_weight_fp32: bool = False
    attention: str = ""
    methods: tuple[str, ...] = ()
    rl_hybrid_engine: bool = False
    rl_engines: tuple[str, ...] = ()
    rl_vllm_memory_utilization: float = 0.0

    def runtime_for(self, vendor: str | None) -> str:
        """The runtime this stack runs on for a device vendor (None: the default runtime)."""
        for v, rt in self.runtimes:
            if v == vendor:
                return rt
        return self.runtimes[0][1]


FRAMEWORKS: dict[str, FrameworkProfile] = {f.name: f for f in (
    FrameworkProfile(
        "hf", "HF Transformers Trainer / TRL + PEFT", adapter_fp32=True, autocast_half=True,
        adapter_input_copies=True, default_cross_entropy="plain", quantises_fused_experts=False,
        offloads_checkpoints=False, trace_exact=True, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["hf"],
        fsdp_fp32_params=True, fsdp_root_unit=True, calibration_framework="hf-trainer-peft",
        # transformers tp_plan="auto" + accelerate ParallelismConfig(tp_size) for models with a base_model_tp_plan
        model_parallel=("tp",), accumulates_unsharded=True),
    FrameworkProfile(
        # Unsloth patches PEFT's LoRA forward (no per-adapter input copies) and computes the
        # loss with its fused cross-entropy kernel.
        "unsloth", "Unsloth", adapter_fp32=True, autocast_half=True, adapter_input_copies=False,
        default_cross_entropy="fused", quantises_fused_experts=True, offloads_checkpoints=True,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["unsloth"], fsdp_fp32_params=True,
        fused_pointwise=True, accumulates_unsharded=True, versioned_libraries=("transformers",),
        device_notes=(
            ("Apple", "Unsloth's kernels target NVIDIA GPUs; the unsloth profile is not available on Apple silicon."),
            ("AMD", "Unsloth on AMD (ROCm) is newer than on NVIDIA; its speed profile is not validated there."),
        )),
    FrameworkProfile(
        # TRL's SFTTrainer (1.x) runs the HF Trainer step with a tiled fused LM head: the
        # forward returns per-token log-probabilities "without materializing the (batch,
        # seq_len, vocab) logits" (trl/trainer/utils.py add_fused_lm_head, trl 1.16.0;
        # sft_trainer.py patches the model with it). Everything else is the hf profile.
        "trl", "TRL SFTTrainer (1.x, fused LM head) + PEFT", adapter_fp32=True, autocast_half=True,
        adapter_input_copies=True, default_cross_entropy="fused", quantises_fused_experts=False,
        offloads_checkpoints=False, trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["hf"],
        fsdp_fp32_params=True, fsdp_root_unit=True, calibration_framework="trl", model_parallel=("tp",),
        accumulates_unsharded=True),
    FrameworkProfile(
        # torchtune recipes: model in bf16 without autocast, LoRA in the model dtype,
        # CEWithChunkedOutputLoss. Its own attention repeats GQA k/v before SDPA; `tuneplan
        # trace` replays its own modules and recipe step (tuneplan.trace.stacks).
        "torchtune", "torchtune", adapter_fp32=False, autocast_half=False, adapter_input_copies=False,
        default_cross_entropy="chunked", quantises_fused_experts=False, offloads_checkpoints=False,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["torchtune"],
        expands_kv_heads=True, shardings=("ddp", "fsdp", "hsdp"), model_parallel=("tp",), fsdp_version=2,
        versioned_libraries=(), adamw_fused=True, tp_splits_embedding=True, trace_replay="torchtune",
        rope_cache=(("llama", 1, False), ("qwen2", 2, True)), norm_weight_fp32=True),
    FrameworkProfile(
        "axolotl", "Axolotl", adapter_fp32=True, autocast_half=True, adapter_input_copies=True,
        default_cross_entropy="plain", quantises_fused_experts=False, offloads_checkpoints=False,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["axolotl"], fsdp_fp32_params=True,
        # axolotl ND parallelism through accelerate ParallelismConfig: tensor_parallel_size,
        # context_parallel_size (ring-flash-attn)
        fsdp_root_unit=True, model_parallel=("tp", "cp"), accumulates_unsharded=True),
    FrameworkProfile(
        "llamafactory", "LLaMA-Factory", adapter_fp32=True, autocast_half=True, adapter_input_copies=True,
        default_cross_entropy="plain", quantises_fused_experts=False, offloads_checkpoints=False,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["llamafactory"], fsdp_fp32_params=True,
        fsdp_root_unit=True, accumulates_unsharded=True),
    FrameworkProfile(
        # litgpt (Lightning Fabric) with precision "bf16-true": the whole model, LoRA
        # included, in bf16 with no autocast (litgpt/lora.py LoRALinear creates lora_A/B in
        # the module's dtype); its own GPT modelling code with a fused qkv linear; the
        # lm_head and loss in 128-token chunks. Its model code is otherwise modelled as
        # transformers' (same saved tensors for norms, MLP and SDPA).
        "litgpt", "litgpt (Lightning)", adapter_fp32=False, autocast_half=False, adapter_input_copies=False,
        default_cross_entropy="lm-head-chunked", quantises_fused_experts=False, offloads_checkpoints=False,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["litgpt"], fused_qkv=True,
        attention_output_copy=True, gelu_kernel=True, quantises_lm_head=True, shardings=("ddp", "fsdp"),
        accumulates_unsharded=True, versioned_libraries=("bitsandbytes",), lora_dropout_default=0.05),
    FrameworkProfile(
        # torchtitan (pytorch/torchtitan, torchtitan/models/llama3/infra/parallelize.py): the
        # model under FSDP2 MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) with
        # fp32 sharded parameters and AdamW states (fully_shard keeps the fp32 shards, states
        # follow them), TP with SequenceParallel on the norms and loss parallel, PP schedules
        # (1F1B, Interleaved1F1B), CP (ring attention), EP for MoE. No time rows of its own
        # fitted: it takes torchtune's efficiency (both eager/compiled PyTorch GEMMs; stated).
        "torchtitan", "torchtitan (FSDP2/TP/PP/CP)", adapter_fp32=False, autocast_half=False,
        adapter_input_copies=False, default_cross_entropy="plain", quantises_fused_experts=False,
        offloads_checkpoints=False, trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["torchtune"],
        fsdp_fp32_params=True, shardings=("ddp", "fsdp", "hsdp"), model_parallel=("tp", "sp", "pp", "cp", "ep"),
        sequence_parallel_default=True, fsdp_version=2, suggest=False, calibration_framework="torchtitan",
        loss_parallel=True, selective_checkpointing=True, tp_splits_embedding=True),
    FrameworkProfile(
        # Megatron-Core as NeMo 2 / Megatron-Bridge run it (fine-tuning and LoRA): bf16 weights,
        # fp32 main gradients, fp32 master weights and Adam states (distributed optimizer =
        # --sharding zero1), TP with sequence parallelism, PP (1F1B, interleaved with virtual
        # stages), CP, EP carved out of data x context. Not fitted for time: torchtune's
        # efficiency is borrowed (stated).
        "megatron", "Megatron-Core (NeMo / Megatron-Bridge)", adapter_fp32=False, autocast_half=False,
        adapter_input_copies=False, default_cross_entropy="plain", quantises_fused_experts=False,
        offloads_checkpoints=False, trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["torchtune"],
        shardings=("ddp", "zero1", "fsdp"), model_parallel=("tp", "sp", "pp", "cp", "ep"),
        sequence_parallel_default=True, fsdp_version=2, fp32_main_grads=True, suggest=False, loss_parallel=True,
        model_parallel_shardings=("ddp", "zero1", "fsdp"), tp_splits_embedding=True,
        calibration_framework="megatron"),
    FrameworkProfile(
        # Megatron-DeepSpeed (microsoft/Megatron-DeepSpeed: Megatron-LM's 2021-22 legacy GPT
        # model trained through the DeepSpeed engine), fp16 with fp32 master weights and Adam
        # states, TP and PP (DeepSpeed's 1F1B PipelineEngine) and plain data parallelism:
        # the stack of vTrain's measurements (parallel.csv VT-S rows). Unlike Megatron-Core it
        # runs the unfused attention (no --use-flash-attn), reduces the gradients after the
        # backward, and launches its kernels from eager Python with a larger host cost per
        # kernel (calibration.SECONDS_PER_KERNEL_BY_FRAMEWORK). Forward kernels per layer,
        # counted from megatron/model/transformer.py ParallelTransformerLayer: input
        # LayerNorm 1 (apex fused), QKV linear with bias 1, baddbmm 1, fused scale-mask-softmax
        # 1, attention dropout 1, bmm 1, context permute copy 1, output linear 1, TP
        # all-reduce 1, bias-dropout-add 1 (jit-fused), LayerNorm 1, fc1 1, bias-GeLU 1
        # (jit-fused), fc2 1, TP all-reduce 1, bias-dropout-add 1 = 16 (the two all-reduces are
        # counted at any TP degree, as the per-kernel cost was fitted).
        "megatron-deepspeed", "Megatron-DeepSpeed (legacy Megatron-LM GPT on DeepSpeed)", adapter_fp32=False,
        autocast_half=False, adapter_input_copies=False, default_cross_entropy="plain",
        quantises_fused_experts=False, offloads_checkpoints=False, trace_exact=False,
        flop_efficiency=cal.FRAMEWORK_EFFICIENCY["torchtune"], shardings=("ddp",), model_parallel=("tp", "pp"),
        sequence_parallel_default=False, fp32_main_grads=False, suggest=False, loss_parallel=True,
        model_parallel_shardings=("ddp",), tp_splits_embedding=True, calibration_framework="Megatron-DeepSpeed",
        versioned_libraries=(), materialises_attention_scores=True, overlaps_grad_reduce=False,
        kernels_per_layer_forward=16, host_overlaps_device=True, attention="eager",
        # pre-training / full fine-tuning only: Megatron-DeepSpeed's pretrain_gpt.py has no LoRA/PEFT path
        methods=("full",)),
    FrameworkProfile(
        # verl (volcengine/verl@49b08e950, 2025-06) online RL, read from verl/workers/fsdp_workers.py
        # ActorRolloutRefWorker and verl/trainer/config/ppo_trainer.yaml: the actor is FSDP with
        # MixedPrecision(param_dtype bf16, reduce/buffer fp32) over states loaded fp32 (:275-285);
        # actor.fsdp_config.param_offload / optimizer_offload (defaults false, yaml :263-266) move its
        # shards and Adam states to the CPU outside update and log-prob (offload_fsdp_model_to_cpu,
        # offload_fsdp_optimizer :527-531, :593-624); with lora_rank > 0 the reference is the actor with
        # its adapter disabled (:709-710), otherwise a separate FSDP ref with CPUOffload(offload_params)
        # (:302); the rollout is vLLM (rollout.name vllm, gpu_memory_utilization 0.5, yaml :365) woken
        # for generation and put to sleep(level=1) after it (sharding_manager/fsdp_vllm.py :185-217);
        # dp_actor.py _forward_micro_batch (:160-178) keeps [nnz, vocab] logits of the padding-removed
        # micro-batch (use_remove_padding) and takes log-probs with flash-attn's Triton cross-entropy,
        # backward in place. PPO adds CriticWorker (:798): a value model (num_labels=1, :875) with FSDP
        # states of its own. No time rows of its own fitted: the hf efficiency is borrowed (stated).
        "verl", "verl (FSDP actor + vLLM hybrid engine)", adapter_fp32=True, autocast_half=False,
        adapter_input_copies=False, default_cross_entropy="plain", quantises_fused_experts=False,
        offloads_checkpoints=False, trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["hf"],
        fsdp_fp32_params=True, shardings=("fsdp",), fsdp_version=1, suggest=False,
        calibration_framework="verl", versioned_libraries=("transformers",),
        runtimes=(("NVIDIA", "cuda"), ("AMD", "rocm")), methods=("full", "lora"),
        rl_hybrid_engine=True, rl_engines=("vllm-colocate",), rl_vllm_memory_utilization=0.5,
        # ppo_trainer.yaml: actor_rollout_ref.model.enable_gradient_checkpointing true (:113); the
        # workers are FSDP (strategy fsdp) whatever the GPU count (fsdp_size -1: every GPU)
        defaults=(("sharding", "fsdp"), ("checkpointing", "full"))),
    FrameworkProfile(
        # mlx-lm 0.32.2 (`mlx_lm.lora`): LoRA/DoRA on every linear of the last num_layers
        # blocks (tuner/utils.py linear_to_lora_layers: keys = every nn.Linear/QuantizedLinear
        # of model.layers), lora_a/lora_b created fp32 (tuner/lora.py LoRALinear.__init__:
        # mx.random.uniform / mx.zeros default float32) whatever the model dtype, no autocast;
        # Adam moments zeros_like(param) (mlx/optimizers), so fp32 for adapters; the loss is
        # nn.losses.cross_entropy on the model-dtype logits (tuner/trainer.py default_loss);
        # QLoRA is a model converted with MLX affine quantisation (mlx_lm/utils.py quantize_model).
        "mlx", "MLX (mlx-lm)", adapter_fp32=True, autocast_half=False, adapter_input_copies=False,
        default_cross_entropy="plain", quantises_fused_experts=True, offloads_checkpoints=False,
        trace_exact=False, flop_efficiency=cal.FRAMEWORK_EFFICIENCY["mlx"],
        calibration_framework="mlx", versioned_libraries=(),
        runtimes=(("Apple", "mlx-metal"), ("NVIDIA", "mlx-cuda"), ("CPU", "mlx-cpu")),
        quant_libraries=("mlx",), mlx_graph=True,
        device_notes=(
            ("NVIDIA", "MLX's CUDA backend (mlx-cuda) is recent; its speed is not validated (an A100 mlx-lm run, "
                       "throughput.csv MX-03, is over-predicted by ~33%)."),
            ("AMD", "MLX has no ROCm backend; mlx-lm does not run on AMD GPUs."),
        ),
        # mlx_lm/lora.py CONFIG_DEFAULTS: lora_parameters rank 8, num_layers 16,
        # grad_checkpoint False; `-q` conversions default to 4-bit, group size 64
        defaults=(("rank", 8), ("lora_layers", 16), ("checkpointing", "none"), ("quant", "mlx4")),
        # mlx_lm/lora.py train_model: adam, adamw, muon, sgd, adafactor (Adam's memory is AdamW's)
        optimizers=("adamw", "sgd", "sgd-momentum", "adafactor"),
        layer_subset=True, full_is_layers=True, data_parallel=False,
        # the model dtype (no autocast, no master weights); grad_checkpoint on or off;
        # one loss (nn.losses.cross_entropy)
        precisions=("bf16", "fp16", "fp32"), checkpointing_modes=("none", "full"), cross_entropies=("plain",),
        eager_kernels=False, fused_pointwise=True),
)}


def framework(name: str) -> FrameworkProfile:
    """The FrameworkProfile for a --framework name."""
    return lookup(FRAMEWORKS, "framework", name)
