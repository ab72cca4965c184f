"""The training task (--task, --ref-model) as each stack spells it, and read back for `--from`.

Read from the stacks at the versions the exporters target:
  TRL 1.16.0: `trl dpo|kto|reward --config` (trl/cli/commands/__init__.py registers distillation,
    dpo, grpo, kto, reward, rloo and sft; ORPO and CPO live in trl.experimental, with no command);
    DPOConfig.loss_type (a list: sigmoid, hinge, ipo, robust, ...), KTOConfig.loss_type (kto,
    apo_zero_unpaired), precompute_ref_log_probs (DPO and KTO), ModelConfig.lora_task_type
    (SEQ_CLS for reward models). With PEFT the reference is the policy with its adapters
    disabled (dpo_trainer.py: ref_model None for a PEFT model); the CLI cannot pass another.
  Axolotl 0.19.0: `rl:` RLType dpo|ipo|orpo|kto|simpo (utils/schemas/enums.py; simpo is
    CPOTrainer with loss_type simpo, core/builders/rl.py), `dpo_loss_type`, `reward_model: true`,
    `precompute_ref_log_probs` (passed to DPO/IPO only: core/trainers/dpo DPOStrategy). For full
    fine-tuning train.py setup_reference_model loads a reference copy for every rl but orpo, and
    passes it only to DPO/IPO (so precompute keeps its weights, and KTO/SimPO hold an unused one).
  LLaMA-Factory 0.9.5: `stage: dpo|kto|rm`, `pref_loss: sigmoid|hinge|ipo|kto_pair|orpo|simpo`
    (hparams/finetuning_args.py); the reference is a copy for full/freeze and the disabled
    adapter for LoRA, or the model named by `ref_model` (train/trainer_utils.py create_ref_model);
    its DPO trainer never precomputes (train/dpo/trainer.py: precompute_ref_log_probs = False);
    rm puts TRL's value head on the causal LM, whose forward also computes the vocabulary logits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneplan.choices.tasks import TASKS, reference_for
from tuneplan.errors import TuneplanError
from tuneplan.export.common import Fields, refuse
from tuneplan.job import Job

DPO_LOSS = {"dpo": "sigmoid", "ipo": "ipo", "dpo-hinge": "hinge", "dpo-robust": "robust"}  # TRL DPOConfig.loss_type
TRL_COMMAND = {"sft": "sft", **dict.fromkeys(DPO_LOSS, "dpo"), "kto": "kto", "rm": "reward", "grpo": "grpo",
               "rloo": "rloo"}
# beta written for an online task with a reference (GRPOConfig beta's help text: DeepSeek-R1 uses 0.001;
# RLOOConfig's default is 0.05, rloo_config.py:502); any beta > 0 loads the same reference
TRL_BETA = {"grpo": 0.001, "rloo": 0.05}
TRL_PRECOMPUTES = {"dpo", "kto"}  # commands whose config has precompute_ref_log_probs
AXOLOTL_RL = {"dpo": ("dpo", None), "ipo": ("ipo", None), "dpo-hinge": ("dpo", "hinge"),
              "dpo-robust": ("dpo", "robust"), "orpo": ("orpo", None), "simpo": ("simpo", None), "kto": ("kto", None)}
AXOLOTL_DATASET = {"dpo": "chat_template.default", "ipo": "chat_template.default", "simpo": "chat_template.default",
                   "orpo": "chat_template.argilla", "kto": "chatml.argilla"}
LF_STAGE = {"sft": ("sft", None), "dpo": ("dpo", "sigmoid"), "ipo": ("dpo", "ipo"), "dpo-hinge": ("dpo", "hinge"),
            "orpo": ("dpo", "orpo"), "simpo": ("dpo", "simpo"), "kto": ("kto", None), "rm": ("rm", None)}

# target -> {task it cannot write: (task it writes instead, why)}
_SAME = "the same passes and tensors"
INSTEAD: dict[str, dict[str, tuple[str, str]]] = {
    "trl": {t: ("sft", f"TRL 1.16's CLI has no {t} command (trl sft|dpo|kto|reward; "
                       f"{'CPOTrainer' if t != 'orpo' else 'ORPOTrainer'} is in trl.experimental, run from Python)")
            for t in ("orpo", "cpo", "simpo")},
    "axolotl": {"cpo": ("simpo", f"axolotl runs CPOTrainer only as rl: simpo (loss_type simpo; {_SAME})")},
    "llamafactory": {"dpo-robust": ("dpo", f"LLaMA-Factory's pref_loss has no robust loss (sigmoid: {_SAME})"),
                     "cpo": ("simpo", f"LLaMA-Factory's pref_loss has no cpo (simpo: {_SAME})")},
}
ONLY_SFT = {"torchtune": "tuneplan models preference tasks as TRL's trainers run them, not torchtune 0.6.1's "
                         "lora_dpo/full_dpo recipes",
            "unsloth": "the Unsloth script trains with SFTTrainer"}
LAUNCHERS = ("accelerate", "deepspeed")


def _default_ref(job: Job, task: str | None = None) -> str:
    return reference_for(TASKS[task or job.task], None, job.method.is_adapter)


def _with(job: Job, **settings: Any) -> Job:
    return job.with_settings(**settings)


def writable(target: str, job: Job, cannot: list[str]) -> Job:
    """The job with the task and reference the target's file can say; each change is a
    `cannot` line. A reference equal to the stack's default is written as None (ref_model unset),
    so the file reads back to the same job."""
    task = job.task
    if job.task_record.online:
        return _writable_online(target, job, cannot)
    if task != "sft":
        if target in LAUNCHERS:
            cannot.append(f"--task {task}{' --ref-model ' + job.ref_model if job.ref_model else ''}: the training "
                          "task and its reference belong to your training script (tuneplan export --to trl, axolotl "
                          "or llamafactory writes them)")
            return job
        instead = ("sft", ONLY_SFT[target]) if target in ONLY_SFT else INSTEAD.get(target, {}).get(task)
        if instead is not None:
            new, why = instead
            cannot.append(f"--task {task}: {why}; this file runs {new} (estimated as --task {new})")
            job = _with(job, task=new, ref_model=None)
    ref, adapter = job.ref_model, job.method.is_adapter
    if ref is not None and (ref == "none" or ref == _default_ref(job)):
        return _with(job, ref_model=None)
    rules = REF_RULES.get(target, RefRules())
    why = ""
    if ref == "separate" and adapter and rules.no_separate_with_adapter:
        why = (f"{target} takes the reference from the policy with its adapters disabled under PEFT; a separate copy "
               "cannot be asked for in the config")
    elif ref == "precomputed" and rules.precompute_refused is not None:
        why = rules.precompute_refused(job)
    if why:
        default = _default_ref(job)
        cannot.append(f"--ref-model {ref}: {why} (estimated as --ref-model {default})")
        job = _with(job, ref_model=None)
    return job


def _writable_online(target: str, job: Job, cannot: list[str]) -> Job:
    """An online task: TRL's `trl grpo|rloo` writes it; every other target runs SFT (said)."""
    if target in LAUNCHERS:
        cannot.append(f"--task {job.task}: the training task, its generation and reference belong to your training "
                      "script (tuneplan export --to trl writes them)")
        return job
    if target not in ONLINE_TARGETS:
        cannot.append(f"--task {job.task}: tuneplan models {job.task} as TRL 1.16's trainer runs it; only --to trl "
                      "writes it; this file runs sft (estimated as --task sft)")
        return Job.from_settings(**{k: v for k, v in job.settings().items() if k not in _ROLLOUT_KEYS}
                                 | {"task": "sft", "ref_model": None})
    ref = job.ref_model
    if ref == "separate" and job.method.is_adapter:
        cannot.append("--ref-model separate: TRL takes the reference from the policy with its adapters disabled "
                      "under PEFT (estimated as --ref-model adapter)")
        ref = "adapter"
    if ref is not None and ref == _default_ref(job):
        ref = None
    return _with(job, ref_model=ref)


ONLINE_TARGETS = ("trl",)  # export targets whose file runs an online task (trl grpo|rloo)
_ROLLOUT_KEYS = ("num_generations", "prompt_len", "completion_len", "generation_engine", "vllm_memory_utilization",
                 "generation_gpus", "vllm_sleep", "device_memory_gib")


def trl_online_cannot(job: Job) -> list[str]:
    """What a `trl grpo|rloo` config cannot say about an online job."""
    if not job.task_record.online:
        return []
    r = job.rollout
    out = [f"--prompt-len {r.prompt_len}: TRL 1.16 has no max_prompt_length (prompts are as long as the dataset's); "
           "the estimate takes this length"]
    if not r.engine.colocated:
        out.append(f"--generation-engine {r.generation_engine}: start the server yourself on the "
                   f"{r.generation_gpus} generation GPU(s): trl vllm-serve --model <model> "
                   f"--gpu_memory_utilization {r.vllm_memory_utilization:g}")
    return out


def unexpressed(target: str, job: Job) -> list[str]:
    """What the file runs beyond the estimate, with no setting to say it (named, nothing swapped)."""
    rules = REF_RULES.get(target, RefRules())
    return rules.unexpressed(job) if rules.unexpressed is not None else []


def _axolotl_precompute(job: Job) -> str:
    if job.task == "kto":
        return "axolotl passes precompute_ref_log_probs to DPO/IPO only"
    if not job.method.is_adapter:
        return ("axolotl loads the reference copy for full fine-tuning whether or not it precomputes "
                "(train.py setup_reference_model)")
    return ""


def _axolotl_unexpressed(job: Job) -> list[str]:
    if not job.method.is_adapter and job.task in ("kto", "simpo"):
        return [f"--task {job.task} with {job.method.kind} fine-tuning: axolotl also loads a reference copy of the "
                "model that it does not pass to the trainer (train.py setup_reference_model); the estimate does not "
                "count it"]
    return []


def _llamafactory_unexpressed(job: Job) -> list[str]:
    if job.task_record.head == "scalar":
        return ["--task rm: LLaMA-Factory's rm stage puts a value head on the causal LM (TRL's "
                "AutoModelForCausalLMWithValueHead), whose forward also computes the vocabulary logits; the estimate "
                "(a scalar head, no logits) does not count them"]
    return []


@dataclass(frozen=True)
class RefRules:
    """What one export target's config cannot say about the reference model or runs beyond
    the estimate (a row per target in REF_RULES; targets without a row have none).

    Args:
        no_separate_with_adapter: under PEFT the stack takes the reference from the policy with
            its adapters disabled; a separate copy cannot be asked for.
        precompute_refused: why --ref-model precomputed cannot be written for this job ("" if it can).
        unexpressed: what the file runs beyond the estimate with no setting to say it.
    """

    no_separate_with_adapter: bool = False
    precompute_refused: Callable[[Job], str] | None = None
    unexpressed: Callable[[Job], list[str]] | None = None


REF_RULES: dict[str, RefRules] = {
    "trl": RefRules(no_separate_with_adapter=True),
    "axolotl": RefRules(no_separate_with_adapter=True, precompute_refused=_axolotl_precompute,
                        unexpressed=_axolotl_unexpressed),
    "llamafactory": RefRules(precompute_refused=lambda job: "LLaMA-Factory's DPO/KTO trainers never precompute "
                                                            "reference log-probs",
                             unexpressed=_llamafactory_unexpressed),
}


# ---------------------------------------------------------------- TRL

def trl_fields(job: Job) -> tuple[str, dict[str, Any]]:
    """(the trl subcommand, the task's config fields)."""
    if job.task not in TRL_COMMAND:  # Online DPO: trl.experimental, no command (trl/cli/commands, 1.16)
        raise TuneplanError(f"TRL 1.16's CLI has no command for --task {job.task} ({job.task_record.label}: "
                            "trl.experimental, run from Python); tuneplan cannot export it")
    cmd = TRL_COMMAND[job.task]
    out: dict[str, Any] = {}
    if job.task_record.online:
        r = job.rollout
        out.update(num_generations=job.generations, max_completion_length=job.training.seq_len - r.prompt_len,
                   beta=TRL_BETA[cmd] if job.reference != "none" else 0.0)
        if r.engine.share:
            out.update(use_vllm=True, vllm_mode="colocate" if r.engine.colocated else "server")
            if r.engine.colocated:
                out["vllm_gpu_memory_utilization"] = r.vllm_memory_utilization
                if r.vllm_sleep:
                    out["vllm_enable_sleep_mode"] = True
        return cmd, out
    if cmd == "dpo":
        out["loss_type"] = [DPO_LOSS[job.task]]
    elif cmd == "kto":
        out["loss_type"] = "kto"
    elif cmd == "reward" and job.method.is_adapter:
        out["lora_task_type"] = "SEQ_CLS"  # ModelConfig: "use 'SEQ_CLS' for reward modeling"
    if job.ref_model == "precomputed":
        out["precompute_ref_log_probs"] = True
    return cmd, out


_TRL_RUN = re.compile(r"^#.*\btrl (\w+) --config\b", re.MULTILINE)


def trl_command(text: str) -> str | None:
    """The trl subcommand named in a config's comments (tuneplan's header: `# run: trl dpo --config ...`)."""
    m = _TRL_RUN.search(text)
    return m.group(1) if m else None


def read_trl(f: Fields, s: dict[str, Any], origin: dict[str, str], notes: list[str], command: str | None) -> None:
    """task and ref_model from a TRL config: loss_type, lora_task_type, precompute_ref_log_probs,
    and the subcommand when the file's comments name it."""
    commands = {"sft": "sft", "dpo": "dpo", "kto": "kto", "reward": "rm", "grpo": "grpo", "rloo": "rloo"}
    if command is not None and command not in commands:
        raise refuse("trl", "command", f"trl {command}", "tuneplan models trl sft, dpo, kto, reward, grpo and rloo")
    if command in ("grpo", "rloo") or (command is None and f.has("num_generations")):
        _read_trl_online(f, s, origin, notes, commands.get(command or "grpo", "grpo"))
        return
    loss = f.raw("loss_type")
    task, where = (commands[command], f"trl {command} (the file's run line)") if command else (None, "")
    if loss is not None:
        names = [loss] if isinstance(loss, str) else loss
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise TuneplanError(f"trl field loss_type must be a loss name or a list of them, got {loss!r}")
        kto = {"kto", "apo_zero_unpaired"}
        if task in (None, "kto") and isinstance(loss, str) and loss in kto:
            found = "kto"
        elif task in (None, "dpo"):
            variants = {v: k for k, v in DPO_LOSS.items()}
            found = variants.get(names[0], "dpo") if len(names) == 1 else "dpo"
            if found == "dpo" and names != ["sigmoid"]:
                notes.append(f"loss_type {names}: estimated as dpo (DPO's loss types share its passes and tensors)")
        else:
            raise TuneplanError(f"trl field loss_type {loss!r} does not belong to trl {command}")
        task, where = found, "loss_type" + (f", {where}" if where else "")
    if f.text("lora_task_type") == "SEQ_CLS" and task in (None, "rm"):
        task, where = "rm", "lora_task_type"
    precompute = f.flag("precompute_ref_log_probs", False)
    if precompute and task is None:
        raise TuneplanError("trl config sets precompute_ref_log_probs but not which trainer (trl dpo or kto); "
                            "give --task")
    if task is None:
        notes.append("the trl subcommand is on the command line, not in the file: read as trl sft (give --task "
                     "for dpo, kto or reward)")
        return
    if task != "sft":
        s["task"] = task
        origin["task"] = where
    if precompute and task in ("dpo", "ipo", "dpo-hinge", "dpo-robust", "kto"):
        s["ref_model"] = "precomputed"
        origin["ref_model"] = "precompute_ref_log_probs"


def _read_trl_online(f: Fields, s: dict[str, Any], origin: dict[str, str], notes: list[str], task: str) -> None:
    """A GRPOConfig / RLOOConfig: the rollout settings, and beta as the reference (TRL 1.16 defaults:
    grpo_config.py num_generations 8, max_completion_length 512, beta 0.0, use_vllm False,
    vllm_mode colocate, vllm_gpu_memory_utilization 0.3; rloo_config.py num_generations 2, beta 0.05)."""
    rec = TASKS[task]
    s["task"], origin["task"] = task, f"trl {task}" + ("" if f.has("num_generations") else " (run line)")
    n = f.count("num_generations", rec.generations)
    if n != rec.generations:  # the task's default stays unset, as the Job keeps it
        s["num_generations"], origin["num_generations"] = n, "num_generations"
    completion = f.count("max_completion_length", 512)
    s["completion_len"], origin["completion_len"] = completion, "max_completion_length"
    s.pop("seq_len", None)  # the row is prompt + completion (GRPOConfig has no max_length)
    origin.pop("seq_len", None)
    f.defaults[:] = [d for d in f.defaults if not d.startswith("max_length=")]
    notes.append("TRL 1.16 has no max_prompt_length: the prompt is taken as 512 tokens (give --prompt-len)")
    beta = f.get("beta", (int, float), 0.0 if task == "grpo" else 0.05, "a number")
    ref = ("adapter" if s.get("method") != "full" else "separate") if beta else "none"
    if ref != reference_for(rec, None, s.get("method") != "full"):
        s["ref_model"], origin["ref_model"] = ref, "beta"
    if f.flag("use_vllm", False):
        mode = f.choice("vllm_mode", {"colocate": "vllm-colocate", "server": "vllm-server"}, "colocate")
        s["generation_engine"], origin["generation_engine"] = mode, "use_vllm, vllm_mode"
        if mode == "vllm-colocate":
            s["vllm_memory_utilization"] = f.get("vllm_gpu_memory_utilization", (int, float), 0.3, "a number")
            s["vllm_sleep"] = f.flag("vllm_enable_sleep_mode", False)
            origin["vllm_memory_utilization"] = "vllm_gpu_memory_utilization"


# ---------------------------------------------------------------- Axolotl

def axolotl_fields(job: Job) -> dict[str, Any]:
    if job.task == "rm":
        return {"reward_model": True}
    if job.task not in AXOLOTL_RL:
        return {}
    rl, loss = AXOLOTL_RL[job.task]
    out: dict[str, Any] = {"rl": rl}
    if loss:
        out["dpo_loss_type"] = [loss]
    if rl == "kto":
        out["remove_unused_columns"] = False  # axolotl's schema requires it for kto
    if job.ref_model == "precomputed":
        out["precompute_ref_log_probs"] = True
    return out


def axolotl_dataset(job: Job) -> str:
    """A dataset type of the task's prompt strategies (prompt_strategies/dpo, kto, orpo, bradley_terry)."""
    if job.task == "rm":
        return "bradley_terry.chat_template"
    return AXOLOTL_DATASET.get(AXOLOTL_RL.get(job.task, ("",))[0], "alpaca")


def read_axolotl(f: Fields, s: dict[str, Any], origin: dict[str, str], notes: list[str], adapter: bool) -> None:
    rl = f.raw("rl")
    reward = f.flag("reward_model", False)
    if f.flag("process_reward_model"):
        raise refuse("axolotl", "process_reward_model", True, "process reward models are not modelled")
    if rl in (None, False, "", "sft"):
        if reward:
            s["task"], origin["task"] = "rm", "reward_model"
        return
    tasks = {v[0]: k for k, v in AXOLOTL_RL.items() if v[1] is None}
    if rl not in tasks:
        raise refuse("axolotl", "rl", rl, f"tuneplan models rl: {', '.join(tasks)} (and reward_model: true)")
    if reward:
        raise TuneplanError(f"axolotl config sets both rl: {rl} and reward_model; choose one")
    task = tasks[rl]
    loss = f.raw("dpo_loss_type")
    if loss is not None and rl == "dpo":
        if not isinstance(loss, list) or not loss or not all(isinstance(n, str) for n in loss):
            raise TuneplanError(f"axolotl field dpo_loss_type must be a list of loss names, got {loss!r}")
        variants = {v: k for k, v in DPO_LOSS.items()}
        task = variants.get(loss[0], "dpo") if len(loss) == 1 else "dpo"
        if task == "dpo" and loss != ["sigmoid"]:
            notes.append(f"dpo_loss_type {loss}: estimated as dpo (DPO's loss types share its passes and tensors)")
    s["task"], origin["task"] = task, "rl" + (", dpo_loss_type" if loss is not None and rl == "dpo" else "")
    if f.flag("precompute_ref_log_probs", False) and rl in ("dpo", "ipo"):
        if adapter:
            s["ref_model"], origin["ref_model"] = "precomputed", "precompute_ref_log_probs"
        else:
            notes.append("precompute_ref_log_probs with full fine-tuning: axolotl still loads the reference copy "
                         "(estimated as --ref-model separate)")


# ---------------------------------------------------------------- LLaMA-Factory

def llamafactory_fields(job: Job, model: str) -> dict[str, Any]:
    stage, loss = LF_STAGE[job.task]
    out: dict[str, Any] = {"stage": stage}
    if loss:
        out["pref_loss"] = loss
    if job.ref_model == "separate":  # LoRA: a second copy, loaded from the same checkpoint
        out["ref_model"] = model
    return out


def read_llamafactory(f: Fields, s: dict[str, Any], origin: dict[str, str], notes: list[str], stage: str,
                      lora: bool) -> None:
    if stage in ("sft", "pt"):
        return
    if stage not in ("dpo", "kto", "rm"):
        raise refuse("llamafactory", "stage", stage, "tuneplan models sft, pt, dpo, kto and rm (ppo is not modelled)")
    if stage == "dpo":
        losses = {v[1]: k for k, v in LF_STAGE.items() if v[0] == "dpo"}
        loss = f.text("pref_loss", "sigmoid")
        if loss not in losses:
            raise refuse("llamafactory", "pref_loss", loss, f"tuneplan models {', '.join(losses)}")
        task = losses[loss]
    else:
        task = stage
    s["task"], origin["task"] = task, "stage" + (", pref_loss" if stage == "dpo" else "")
    if f.raw("ref_model_quantization_bit") is not None:
        raise refuse("llamafactory", "ref_model_quantization_bit", f.raw("ref_model_quantization_bit"),
                     "a quantised reference model is not modelled")
    ref = f.text("ref_model")
    if ref is not None and TASKS[task].reference != "none":
        if lora:
            s["ref_model"], origin["ref_model"] = "separate", "ref_model"
        notes.append(f"ref_model {ref}: estimated as a copy of the trained model")
