"""Training tasks: what one step computes (supervised fine-tuning, preference and reward tasks).

One record per task; tuneplan.memory.tasks reads the fields and never compares names, so a
new task (or loss variant) is a new row. Each offline row is read from TRL's trainer at
huggingface/trl@f2cd577 (1.10.0.dev0, 2026-07-24); the file and lines are in `source`.
Loss variants that only change the per-sequence formula (DPO's ipo, hinge, robust, ...)
change nothing in memory and are rows that copy DPO's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuneplan.choices import lookup
from tuneplan.errors import TuneplanError

# What plays the reference policy (Job.ref_model):
#   separate    - a second, frozen copy of the model's weights in the policy's load dtype (TRL
#                 create_model_from_path with the same init kwargs; prepared like the policy:
#                 sharded under ZeRO-3/FSDP, replicated otherwise)
#   adapter     - the policy itself with its adapters disabled (PEFT use_adapter / disable_adapter):
#                 no extra weights, but a no-grad reference forward
#   precomputed - reference log-probs computed before training (precompute_ref_log_probs=True):
#                 no reference weights and no reference forward in the step
#   none        - the task has no reference (ORPO, CPO, SimPO, reward modelling)
REF_MODELS = ("separate", "adapter", "precomputed", "none")

# Frameworks whose trainer for a non-SFT task is TRL's (HF Trainer + TRL, Unsloth's patched TRL
# trainers, Axolotl and LLaMA-Factory, which call TRL's DPO/ORPO/KTO/reward trainers).
TRL_STACKS = ("hf", "trl", "unsloth", "axolotl", "llamafactory")
# Stacks whose online RL is TRL's GRPOTrainer / RLOOTrainer as modelled: Axolotl's `rl: grpo` builds
# TRL's trainer; LLaMA-Factory has no GRPO stage; Unsloth's fast_inference shares the weights with
# vLLM and its standby frees only the KV cache (not modelled)
TRL_ONLINE_STACKS = ("hf", "trl", "axolotl")
# Stacks whose GRPO is modelled: TRL's and verl's hybrid engine (FrameworkProfile.rl_hybrid_engine)
GRPO_STACKS = (*TRL_ONLINE_STACKS, "verl")


@dataclass(frozen=True)
class Task:
    """One training objective.

    Args:
        name: the setting (sft, dpo, ...).
        label: its name for people.
        modelled: the estimators compute it; otherwise a Job with it is refused in one line.
        what_differs: what a later estimator must add (said in the refusal).
        rows_per_sample: rows of the policy's graded forward per sample of --batch: 2 for a
            chosen/rejected pair concatenated into one batch of 2 x micro-batch rows, as TRL's
            collators do; 1 otherwise.
        kl_rows_per_sample: rows of extra no-grad forwards per sample (KTO's mismatched KL batch,
            run through the policy and the reference); 0 if none.
        reference: "policy" - the stack's default reference is the policy itself (a separate
            copy for full fine-tuning, the adapter disabled for PEFT); "none" - no reference.
        head: "lm" (vocabulary logits) or "scalar" (a score head hidden -> 1, no lm_head:
            AutoModelForSequenceClassification with num_labels=1).
        logps: "cross-entropy" (the model's own loss: tuneplan.memory.activations.logits_bytes)
            or "selective" (TRL's selective_log_softmax: per-row log_softmax of the compute-dtype
            logits, each row's output kept for backward; the logits stay referenced until the
            loss function returns).
        nll_rows: share of the graded rows that also get a plain cross-entropy (ORPO/CPO's NLL on
            the chosen half: a .contiguous() copy and a kept log_softmax of those rows).
        metric_rows: share of the graded rows' logits that the metrics copy at once while the
            loss's tensors are alive (DPO: entropy_from_logits' reshape of the shifted logits, a
            full copy; KTO: index_select of both label groups plus one masked group).
        trainers: frameworks that run this task (their trainer is the one modelled); empty:
            every framework.
        chunked_logps: TRL's trainer for the task scores tokens through TRL's fused LM head in
            trl >= 1.16 (add_fused_lm_head; DPO and KTO): the estimate uses it where the stack
            record's trl_chunked_logps is set (tuneplan.choices.versions), the fields above otherwise.
        trl_class: the TRL trainer class (import path) whose loss step `tuneplan trace --task`
            replays (tuneplan.trace.tasks.REPLAYS); "" if none.
        source: where the fields are read from.
        online: the step generates its own completions first (tuneplan.memory.online): a
            generation phase (HF generate or vLLM), no-grad scoring forwards, then the loss
            phase; micro_batch counts completions (TRL per_device_train_batch_size).
        generations: completions per prompt by default (TRL num_generations).
        ref_by_default: the stack loads a reference by default (TRL beta > 0); False: beta
            defaults to 0 and no reference exists unless --ref-model asks for one.
        old_logps_always: the policy's own no-grad log-probs of every generated row are computed
            each generation (RLOO); False: only when TRL needs them (GRPO: vLLM importance
            sampling, or generation out of step with the optimizer).
        per_micro_step: the trainer generates in every micro-step for that micro-batch (Online
            DPO's training_step): --batch counts prompts, each generates `generations` completions,
            and the loss phase's rows are batch x rows_per_sample; False: GRPO's generation batch
            (per_device_train_batch_size completions x steps_per_generation, once per optimizer step).
        fixed_generations: the trainer fixes the completions per prompt (--num-generations must
            equal `generations`).
        full_logits: the loss phase's forwards return the full [rows, completion, vocab] logits
            and keep their log_softmax (no fused head); the reference forward runs after the
            policy's, its graph alive.
        reward_model: a reward model (a sequence classifier of the policy's shape, by default)
            is held on the GPU and scores every generated row under no_grad.
        beta_zero_ok: an online task whose reference can be dropped (beta = 0: GRPO, RLOO); False:
            the loss needs reference log-probs (Online DPO always builds a reference).
        critic: a value model (the policy's shape, a [hidden, 1] value head) is trained next to the
            policy, with states and an update of its own (PPO as verl runs it).
        min_generations: the fewest completions per prompt the task runs with (a group baseline
            needs 2; PPO's critic baseline 1).
        quantised_prep: the k-bit preparation (tuneplan.choices.kbit_prep) the trainer applies to
            a quantised model when --kbit-prep is left at its default; "" none of its own.
    """

    name: str
    label: str
    modelled: bool
    what_differs: str = ""
    rows_per_sample: int = 1
    kl_rows_per_sample: int = 0
    reference: str = "none"
    head: str = "lm"
    logps: str = "cross-entropy"
    nll_rows: float = 0.0
    metric_rows: float = 0.0
    trainers: tuple[str, ...] = ()
    chunked_logps: bool = False
    trl_class: str = ""
    source: str = ""
    online: bool = False
    generations: int = 0
    ref_by_default: bool = True
    old_logps_always: bool = False
    per_micro_step: bool = False
    fixed_generations: bool = False
    full_logits: bool = False
    reward_model: bool = False
    beta_zero_ok: bool = True
    quantised_prep: str = ""
    critic: bool = False
    min_generations: int = 2

    @property
    def ref_choices(self) -> tuple[str, ...]:
        """The --ref-model values this task can use: none for a reference-free task; an online
        task scores completions it has just generated, so its reference log-probs cannot be
        precomputed, and beta = 0 (no reference) is always allowed."""
        if self.reference == "none":
            return ("none",)
        if self.online:
            return ("separate", "adapter", "none") if self.beta_zero_ok else ("separate", "adapter")
        return ("separate", "adapter", "precomputed")

    @property
    def is_sft(self) -> bool:
        """The plain supervised step (no field differs from SFT's): the estimators' own path."""
        return (not self.online and self.rows_per_sample == 1 and not self.kl_rows_per_sample and self.reference == "none"
                and self.head == "lm" and self.logps == "cross-entropy" and not self.nll_rows)


_TRL = "huggingface/trl@f2cd577 "
_DPO = Task(
    "dpo", "direct preference optimisation", modelled=True, rows_per_sample=2, reference="policy",
    logps="selective", metric_rows=1.0, trainers=TRL_STACKS, chunked_logps=True,
    trl_class="trl.trainer.dpo_trainer.DPOTrainer",
    source=_TRL + "trl/trainer/dpo_trainer.py: collator input_ids = prompt+chosen | prompt+rejected (:152-207); "
    "reference: None with PEFT or precompute_ref_log_probs, else create_model_from_path (:893-910); "
    "_compute_loss: policy forward, selective_log_softmax, then the reference forward under no_grad while "
    "`outputs` stays referenced (:1329-1400); metrics: entropy_from_logits(shift_logits) reshapes the "
    "non-contiguous shifted logits into a full copy (:1587, utils.py:551), then chosen_logits[mask] (:1605)")
_ORPO = Task(
    "orpo", "odds ratio preference optimisation", modelled=True, rows_per_sample=2, logps="selective",
    nll_rows=0.5, trainers=TRL_STACKS, trl_class="trl.experimental.orpo.ORPOTrainer",
    source=_TRL + "trl/experimental/orpo/orpo_trainer.py concatenated_forward (:748-830): one forward of "
    "2 x batch rows, cross_entropy_loss on the chosen half (.contiguous() + CrossEntropyLoss), get_batch_logps "
    "with selective_log_softmax (:708-746); no ref_model")
_CPO = Task(
    "cpo", "contrastive preference optimisation", modelled=True, rows_per_sample=2, logps="selective",
    nll_rows=0.5, trainers=TRL_STACKS,
    source=_TRL + "trl/experimental/cpo/cpo_trainer.py concatenated_forward (:791-860): NLL on the chosen "
    "half while cpo_alpha != 0 (default 1.0, cpo_config.py:133); no reference model")

_TRL16 = "huggingface/trl@v1.16.0 (the installed trl 1.16.0) "
_GRPO = Task(
    "grpo", "group relative policy optimisation", modelled=True, reference="policy", online=True, generations=8,
    ref_by_default=False, trainers=GRPO_STACKS, quantised_prep="trl-online-bf16",
    source=_TRL16 + "trl/trainer/grpo_config.py: num_generations 8 (:480), max_completion_length 512 (:494), "
    "beta 0.0 (:681: no reference unless beta > 0), generation_batch_size = per_device_train_batch_size x "
    "num_processes x steps_per_generation, steps_per_generation = gradient_accumulation_steps (:1098-1100); "
    "grpo_trainer.py: reference None at beta 0 or with PEFT (adapter disabled), else create_model_from_path "
    "(:984-1003); scoring chunks of per_device_train_batch_size rows (:2505), old log-probs only when "
    "gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0 or with vLLM importance "
    "sampling (:2643-2657), reference log-probs when beta != 0 (:2710-2739); fused LM head, no full logits "
    "(add_fused_lm_head :1068, utils.py:1548, kernels/chunked_logprob.py)")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sft", "supervised fine-tuning", modelled=True),
    _DPO,
    # DPO loss variants: the same forward passes and tensors, another per-sequence formula
    # (dpo_trainer.py _compute_loss loss_types, :1440-1560)
    replace(_DPO, name="ipo", label="identity preference optimisation (DPO loss_type=ipo)"),
    replace(_DPO, name="dpo-hinge", label="DPO hinge loss (SLiC, loss_type=hinge)"),
    replace(_DPO, name="dpo-robust", label="robust DPO (loss_type=robust)"),
    _ORPO,
    _CPO,
    # SimPO is CPOTrainer(loss_type="simpo"); cpo_alpha keeps its default 1.0 unless set
    # (AlphaPO sets it to 0: cpo_config.py:177-180), so the NLL term is counted
    replace(_CPO, name="simpo", label="simple preference optimisation (CPO loss_type=simpo)"),
    Task("kto", "Kahneman-Tversky optimisation", modelled=True, kl_rows_per_sample=1, reference="policy",
         logps="selective", metric_rows=1.5, trainers=TRL_STACKS,
         chunked_logps=True, trl_class="trl.trainer.kto_trainer.KTOTrainer",
         source=_TRL + "trl/trainer/kto_trainer.py: unpaired batch + KL batch of shifted completions "
         "(collator :95-207); _compute_loss (:1478-1600): no-grad policy KL pass, graded policy pass, "
         "reference KL and reference passes under no_grad; metrics: entropy_from_logits' reshape copy, "
         "then index_select of both label groups and a masked copy of one"),
    Task("rm", "reward modelling (scalar head on pairs)", modelled=True, rows_per_sample=2, head="scalar",
         trainers=TRL_STACKS, trl_class="trl.trainer.reward_trainer.RewardTrainer",
         source=_TRL + "trl/trainer/reward_trainer.py: AutoModelForSequenceClassification num_labels=1 "
         "(:385-388), chosen+rejected concatenated (:198-210), torch.chunk(outputs.logits, 2) (:747); "
         "no reference"),
    _GRPO,
    Task("rloo", "REINFORCE leave-one-out", modelled=True, reference="policy", online=True, generations=2,
         old_logps_always=True, trainers=TRL_ONLINE_STACKS, quantised_prep="trl-online-bf16",
         source=_TRL16 + "trl/trainer/rloo_config.py: num_generations default 2 (:301-303), beta default 0.05 "
         "(:502-503); rloo_trainer.py shares GRPO's batching, generation backends and fused LM head (:716), and "
         "always scores old log-probs (:1600)"),
    Task("online-dpo", "online DPO", modelled=True, rows_per_sample=2, reference="policy", online=True,
         generations=2, trainers=("hf", "trl"), per_micro_step=True, fixed_generations=True, full_logits=True,
         reward_model=True, beta_zero_ok=False,
         source=_TRL16 + "trl/experimental/online_dpo/online_dpo_trainer.py: num_generations = 2 (:372); "
         "reference: create_reference_model copy, None with PEFT (adapter disabled) (:335-341); training_step "
         "(:1141-1260): per micro-batch, generate 2 completions per prompt (prompt_ids.repeat(2, 1), :1013; HF "
         "generate :1046 or vLLM), the policy _forward over prompt + completion (full logits, "
         "logits.log_softmax kept, :1104-1138), then the reference _forward under no_grad (:1180-1190), "
         "reward functions / reward models (AutoModelForSequenceClassification, :216-247, .logits[:, 0] :1086), "
         "DPO loss on the chosen/rejected split (:1230-1252); online_dpo_config.py beta 0.1, max_new_tokens 64, "
         "max_length 512, gradient_checkpointing True"),
    Task("ppo", "proximal policy optimisation (verl, GAE with a critic)", modelled=True, reference="policy",
         online=True, generations=1, min_generations=1, ref_by_default=False, old_logps_always=True, critic=True,
         trainers=("verl",),
         what_differs="TRL 1.16 ships no PPOTrainer (trl/experimental/ppo is absent from the installed 1.16.0 "
                      "package; last seen at huggingface/trl@f2cd577 trl/experimental/ppo/ppo_trainer.py); verl's "
                      "is modelled (--framework verl)",
         source="volcengine/verl@49b08e950 verl/trainer/config/ppo_trainer.yaml: algorithm.adv_estimator gae, "
                "rollout.n 1, use_kl_loss false and use_kl_in_reward false (no reference worker unless asked, "
                "main_ppo.py adds Role.RefPolicy only then); verl/workers/fsdp_workers.py CriticWorker (:798-): "
                "value model with num_labels=1 (:875), its own FSDP states and optimizer, compute_values and "
                "update_critic; the actor's old log-probs are always computed (ray_trainer.py fit)"),
)}


@dataclass(frozen=True)
class GenerationEngine:
    """What generates an online task's completions (--generation-engine).

    Args:
        name: the setting.
        label: its name for people.
        colocated: it runs on the training GPUs (its memory adds to theirs, its time to the step).
        kv_cache: "dynamic" (transformers DynamicCache: every sequence of the generation batch
            holds prompt + completion tokens, padded to the longest) or "paged" (vLLM: blocks
            inside its own memory share).
        share: it reserves --vllm-memory-utilization x the device's memory (vLLM's
            gpu_memory_utilization: weights, activations and KV cache all inside it).
        cuda_graphs: decode steps replay CUDA graphs (no per-kernel launch cost); False: eager
            Python dispatch per kernel (HF generate).
        runtimes: runtimes it runs on (tuneplan.choices.runtimes names).
        source: where the behaviour is read from.
    """

    name: str
    label: str
    colocated: bool
    kv_cache: str
    share: bool
    cuda_graphs: bool
    runtimes: tuple[str, ...]
    source: str


GENERATION_ENGINES: dict[str, GenerationEngine] = {e.name: e for e in (
    GenerationEngine("hf", "transformers generate on the training GPUs", colocated=True, kv_cache="dynamic",
                     share=False, cuda_graphs=False, runtimes=("cuda", "rocm", "mps"),
                     source=_TRL16 + "grpo_trainer.py:1860-1875 unwrapped_model.generate over the process's "
                     "generation batch (use_vllm False, the default); transformers 5.25 generation/utils.py: "
                     "logits_to_keep=1 (:2958), fp32 copy of the last logits each step (:3251)"),
    GenerationEngine("vllm-colocate", "vLLM in the training processes (vllm_mode colocate)", colocated=True,
                     kv_cache="paged", share=True, cuda_graphs=True, runtimes=("cuda", "rocm"),
                     source=_TRL16 + "trl/generation/vllm_generation.py:347-368 LLM(gpu_memory_utilization, "
                     "max_num_seqs = per_device_train_batch_size x tp x steps_per_generation, "
                     "external_launcher); sleep(level=2) after init and after each generation (:366, :751) "
                     "when vllm_enable_sleep_mode"),
    GenerationEngine("vllm-server", "a vLLM server on other GPUs (vllm_mode server)", colocated=False,
                     kv_cache="paged", share=True, cuda_graphs=True, runtimes=("cuda", "rocm"),
                     source=_TRL16 + "grpo_config.py vllm_mode (:594): trl vllm-serve on --generation-gpus "
                     "devices; weights broadcast to it after each optimizer step"),
)}


def generation_engine(name: str) -> GenerationEngine:
    """The GenerationEngine record for a --generation-engine name."""
    return lookup(GENERATION_ENGINES, "generation engine", name)


def task(name: str) -> Task:
    """The Task record for a --task name."""
    return lookup(TASKS, "training task", name)


def reference_for(t: Task, asked: str | None, adapter: bool) -> str:
    """The reference in effect (one of REF_MODELS): the asked one, else the stack's default for
    the task (TRL: adapter disabled for PEFT, a separate copy for full fine-tuning).

    Raises:
        TuneplanError: an unknown name, a reference for a task that has none, or an adapter-disabled
            reference without adapters.
    """
    if asked is not None and asked not in REF_MODELS:
        raise TuneplanError(f"unknown reference model {asked!r}; choose one of: {', '.join(REF_MODELS)}")
    if t.online:
        if asked is not None and asked not in t.ref_choices:
            raise TuneplanError(f"task {t.name} scores completions it has just generated, so --ref-model {asked} "
                                f"does not apply; choose one of: {', '.join(t.ref_choices)}"
                                + (" (none = beta 0)" if t.beta_zero_ok else " (its loss needs the reference)"))
        if asked == "adapter" and not adapter:
            raise TuneplanError("--ref-model adapter disables the adapters to get the reference; it needs "
                                "--method lora, qlora or dora (full fine-tuning: separate or none)")
        if asked is None:
            return ("adapter" if adapter else "separate") if t.ref_by_default else "none"
        return asked
    if t.reference == "none":
        if asked not in (None, "none"):
            raise TuneplanError(f"task {t.name} ({t.label}) has no reference model; drop --ref-model")
        return "none"
    if asked is None:
        return "adapter" if adapter else "separate"
    if asked == "none":
        raise TuneplanError(f"task {t.name} ({t.label}) needs reference log-probs; use --ref-model "
                            "precomputed to drop the reference from the step")
    if asked == "adapter" and not adapter:
        raise TuneplanError("--ref-model adapter disables the adapters to get the reference; it needs "
                            "--method lora, qlora or dora (full fine-tuning: separate or precomputed)")
    return asked
