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
        source: where the fields are read from.
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
    source: str = ""

    @property
    def is_sft(self) -> bool:
        """The plain supervised step (no field differs from SFT's): the estimators' own path."""
        return (self.rows_per_sample == 1 and not self.kl_rows_per_sample and self.reference == "none"
                and self.head == "lm" and self.logps == "cross-entropy" and not self.nll_rows)


_TRL = "huggingface/trl@f2cd577 "
_DPO = Task(
    "dpo", "direct preference optimisation", modelled=True, rows_per_sample=2, reference="policy",
    logps="selective", metric_rows=1.0, trainers=TRL_STACKS,
    source=_TRL + "trl/trainer/dpo_trainer.py: collator input_ids = prompt+chosen | prompt+rejected (:152-207); "
    "reference: None with PEFT or precompute_ref_log_probs, else create_model_from_path (:893-910); "
    "_compute_loss: policy forward, selective_log_softmax, then the reference forward under no_grad while "
    "`outputs` stays referenced (:1329-1400); metrics: entropy_from_logits(shift_logits) reshapes the "
    "non-contiguous shifted logits into a full copy (:1587, utils.py:551), then chosen_logits[mask] (:1605)")
_ORPO = Task(
    "orpo", "odds ratio preference optimisation", modelled=True, rows_per_sample=2, logps="selective",
    nll_rows=0.5, trainers=TRL_STACKS,
    source=_TRL + "trl/experimental/orpo/orpo_trainer.py concatenated_forward (:748-830): one forward of "
    "2 x batch rows, cross_entropy_loss on the chosen half (.contiguous() + CrossEntropyLoss), get_batch_logps "
    "with selective_log_softmax (:708-746); no ref_model")
_CPO = Task(
    "cpo", "contrastive preference optimisation", modelled=True, rows_per_sample=2, logps="selective",
    nll_rows=0.5, trainers=TRL_STACKS,
    source=_TRL + "trl/experimental/cpo/cpo_trainer.py concatenated_forward (:791-860): NLL on the chosen "
    "half while cpo_alpha != 0 (default 1.0, cpo_config.py:133); no reference model")

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
         source=_TRL + "trl/trainer/kto_trainer.py: unpaired batch + KL batch of shifted completions "
         "(collator :95-207); _compute_loss (:1478-1600): no-grad policy KL pass, graded policy pass, "
         "reference KL and reference passes under no_grad; metrics: entropy_from_logits' reshape copy, "
         "then index_select of both label groups and a masked copy of one"),
    Task("rm", "reward modelling (scalar head on pairs)", modelled=True, rows_per_sample=2, head="scalar",
         trainers=TRL_STACKS,
         source=_TRL + "trl/trainer/reward_trainer.py: AutoModelForSequenceClassification num_labels=1 "
         "(:385-388), chosen+rejected concatenated (:198-210), torch.chunk(outputs.logits, 2) (:747); "
         "no reference"),
    Task("grpo", "group relative policy optimisation", modelled=False,
         what_differs="generation of a group of completions per prompt (KV cache or a colocated vLLM), "
                      "scoring passes and an optional reference model"),
    Task("rloo", "REINFORCE leave-one-out", modelled=False,
         what_differs="GRPO's generation machinery and a reference model (beta 0.05 by default)"),
    Task("online-dpo", "online DPO", modelled=False,
         what_differs="generation of 2 completions per prompt, a reward model or judge, and a reference model"),
    Task("ppo", "proximal policy optimisation", modelled=False,
         what_differs="four models (policy, value, reward, reference) and rollout generation with its logits"),
)}


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
