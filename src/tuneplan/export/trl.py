"""TRL: the `trl sft|dpo|kto|reward --config FILE` YAML (ScriptArguments + SFTConfig, DPOConfig,
KTOConfig or RewardConfig + ModelConfig fields), checked against trl 1.16.0 (trl/scripts/sft.py,
dpo.py, kto.py, reward.py make_parser, trl/trainer/*_config.py, trl/trainer/model_config.py,
trl/cli/commands/training.py; the task's fields: tuneplan.export.tasks).

Keys that are no dataclass field go to `accelerate launch` (TrlParser.set_defaults_with_config
returns them as `--key value`), so `num_processes` in the file sets the GPU count.
TRL 1.16's SFTTrainer always computes the loss with its fused LM head
(trl/trainer/sft_trainer.py: add_fused_lm_head, "without materializing the full logits"; DPO and
KTO patch the policy and the reference the same way: dpo_trainer.py, kto_trainer.py add_fused_lm_head),
so the logits never exist whatever the config says.
"""

from __future__ import annotations

from typing import Any

from tuneplan.errors import TuneplanError
from tuneplan.export.common import (
    Built,
    Fields,
    Read,
    Substitutions,
    attention_for_impl,
    deepspeed_config,
    fill_in,
    fused_loss,
    hf_adapt_parallel,
    hf_compile,
    hf_fsdp,
    hf_precision,
    hf_read_precision,
    hf_trainer_swaps,
    loss_setting,
    model_id,
    optimizer_from_hf,
    read_compile,
    read_counts,
    read_embeddings,
    read_parallel,
    read_targets,
    refuse,
    uses_deepspeed,
)
from tuneplan.export.tasks import read_trl, trl_fields, trl_online_cannot
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

VERSION = "trl 1.16.0 (transformers 5.23, peft 0.21)"
FRAMEWORK = "hf"

# TRL / transformers defaults for fields a config may leave out (the dataclass defaults)
DEFAULTS = {"dtype": "float32", "max_length": 1024, "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1, "optim": "adamw_torch_fused", "gradient_checkpointing": True,
            "lora_r": 16, "lora_dropout": 0.05, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": False}


def adapt(spec: ModelSpec, job: Job) -> Substitutions:
    sub = Substitutions(job)
    m = job.method
    if m.kind == "freeze":
        sub.swap("--method freeze: TRL has no layer freezing; this file fine-tunes every layer (estimated as "
                 "--method full)", method="full")
    hf_trainer_swaps(sub)
    loss = sub.job.training.loss
    if not loss.fused:
        sub.swap(f"--cross-entropy {loss.name}: TRL's SFT, DPO and KTO trainers always use a fused LM head (the "
                 "logits never exist; estimated as --cross-entropy fused)", cross_entropy=fused_loss())
    if sub.job.task_record.online and sub.job.training.checkpointing == "offload":
        sub.swap(f"--checkpointing offload: TRL's {sub.job.task} config has no activation_offloading (estimated as "
                 "--checkpointing full)", checkpointing="full")
    hf_adapt_parallel(sub)
    return sub


def build(spec: ModelSpec, job: Job) -> Built:
    sub = adapt(spec, job)
    job = sub.job
    m, t, p = job.method, job.training, job.parallel
    pr = hf_precision(job)
    body: dict[str, Any] = {"model_name_or_path": model_id(spec), "dtype": pr.load_dtype,
                            "attn_implementation": t.attn.hf_impl}
    if m.is_adapter:
        targets = [m.targets] if isinstance(m.targets, str) else list(m.targets)
        body.update(use_peft=True, lora_r=m.rank, lora_alpha=2 * m.rank, lora_dropout=m.lora_dropout,
                    lora_target_modules=targets, use_dora=m.kind == "dora")
        if m.train_embeddings:
            body["lora_modules_to_save"] = ["embed_tokens", "lm_head"]
        if m.kind == "qlora":
            if m.weight_bits == 8:
                body["load_in_8bit"] = True
            else:
                body.update(load_in_4bit=True, bnb_4bit_quant_type=m.quant, use_bnb_nested_quant=m.double_quant)
    command, task_fields = trl_fields(job)
    if command == "reward" and m.is_adapter:
        body["lora_task_type"] = task_fields.pop("lora_task_type")
    body["dataset_name"] = fill_in("dataset (Hub id or local path)")
    if not job.task_record.online:  # GRPOConfig / RLOOConfig have no max_length (max_completion_length)
        body["max_length"] = t.seq_len
    if command == "sft":
        body.update(packing=True,
                    # padding-free packing needs FlashAttention (sft_config.py padding_free); otherwise wrap
                    packing_strategy="bfd" if t.attn.hf_impl.startswith("flash") else "wrapped")
    body.update(task_fields)
    body.update(per_device_train_batch_size=t.micro_batch, gradient_accumulation_steps=t.grad_accum,
                bf16=pr.bf16, fp16=pr.fp16, optim=t.optim.hf_name)
    if t.optim.hf_optim_args:
        body["optim_args"] = t.optim.hf_optim_args
    body["gradient_checkpointing"] = t.checkpointing != "none"
    if not job.task_record.online:  # GRPOConfig / RLOOConfig have no activation_offloading
        body["activation_offloading"] = t.checkpointing == "offload"
    body.update(hf_compile(job))
    if p.num_gpus > 1:
        body["num_processes"] = p.num_gpus  # not an SFTConfig field: TRL passes it to accelerate launch
    if uses_deepspeed(job):
        body["deepspeed"] = deepspeed_config(job)
    elif p.sharding == "fsdp":
        body.update(hf_fsdp(job, switch=True))
    body["output_dir"] = fill_in("output directory")
    return Built(job, body, (*sub.cannot, *trl_online_cannot(job)), f"trl {command} --config {{file}}", ("dataset_name", "output_dir"),
                 ("lora_alpha is written as 2 x rank (it does not change memory)",) if m.is_adapter else ())


def read(cfg: dict[str, Any], load_json: Any = None, command: str | None = None) -> Read:
    """`command`: the trl subcommand (sft, dpo, kto, reward) when the file's comments name it."""
    f = Fields(cfg, "trl", load_json)
    s: dict[str, Any] = {"framework": FRAMEWORK, "cross_entropy": None}
    origin: dict[str, str] = {}
    notes: list[str] = []
    model = f.text("model_name_or_path")
    if f.has("lora_target_parameters"):
        raise refuse("trl", "lora_target_parameters", cfg["lora_target_parameters"],
                     "adapters on MoE expert parameters are not read from configs (use --targets ...,experts)")
    use_peft = f.flag("use_peft", False)
    four, eight = f.flag("load_in_4bit", False), f.flag("load_in_8bit", False)
    if four and eight:
        raise TuneplanError("trl config sets both load_in_4bit and load_in_8bit (TRL refuses that too)")
    if (four or eight) and not use_peft:
        raise refuse("trl", "load_in_4bit" if four else "load_in_8bit", True,
                     "a quantised base model is trained through adapters (set use_peft: true)")
    if use_peft:
        dora = f.flag("use_dora", False)
        s["method"] = "dora" if dora else ("qlora" if four or eight else "lora")
        origin["method"] = "use_peft" + (", use_dora" if dora else "") + (", load_in_4bit/8bit" if four or eight else "")
        s["rank"] = f.count("lora_r", DEFAULTS["lora_r"])
        origin["rank"] = "lora_r"
        s["lora_dropout"] = f.get("lora_dropout", float, DEFAULTS["lora_dropout"], "a number in [0, 1)")
        origin["lora_dropout"] = "lora_dropout"
        targets = f.get("lora_target_modules", (list, str), None, "a list of module names")
        if targets is None:
            s["targets"] = "qv"
            notes.append("lora_target_modules not set: PEFT's default for Llama-style models (q_proj, v_proj)")
        else:
            s["targets"] = read_targets(targets, "trl", "lora_target_modules")
        origin["targets"] = "lora_target_modules"
        save = f.get("lora_modules_to_save", list, None, "a list of module names")
        if save:
            s["train_embeddings"] = read_embeddings(save, "trl", "lora_modules_to_save")
            origin["train_embeddings"] = "lora_modules_to_save"
        if four:
            s["quant"] = f.choice("bnb_4bit_quant_type", {"nf4": "nf4", "fp4": "fp4"}, DEFAULTS["bnb_4bit_quant_type"])
            s["double_quant"] = f.flag("use_bnb_nested_quant", DEFAULTS["use_bnb_nested_quant"])
            origin.update(quant="bnb_4bit_quant_type", double_quant="use_bnb_nested_quant")
        elif eight:
            s["quant"] = "int8"
            origin["quant"] = "load_in_8bit"
    else:
        s["method"] = "full"
        origin["method"] = "use_peft: false"
    read_counts(f, s, origin, DEFAULTS, seq_len="max_length", micro_batch="per_device_train_batch_size",
                grad_accum="gradient_accumulation_steps")
    impl = f.text("attn_implementation")
    if impl is not None:
        s["attention"] = attention_for_impl(impl)
        origin["attention"] = "attn_implementation"
    s["optimizer"] = optimizer_from_hf(f.text("optim", DEFAULTS["optim"]), f.text("optim_args"))
    origin["optimizer"] = "optim"
    gc = f.flag("gradient_checkpointing", DEFAULTS["gradient_checkpointing"])
    offload = f.flag("activation_offloading", False)
    s["checkpointing"] = "offload" if offload else ("full" if gc else "none")
    origin["checkpointing"] = "gradient_checkpointing, activation_offloading"
    read_compile(f, s, origin)
    if offload and not gc:
        notes.append("activation_offloading without gradient_checkpointing: estimated as --checkpointing offload")
    n = f.count("num_processes")
    if n is not None:
        s["num_gpus"] = n
        origin["num_gpus"] = "num_processes"
    par, ds = read_parallel(f)
    s.update(par)
    origin.update({k: "deepspeed" if ds is not None else "fsdp, fsdp_config" for k in par})
    # precision: ModelConfig.dtype (default float32), SFTConfig bf16 (default on unless fp16), DeepSpeed
    dtype = f.choice("dtype", {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32",
                                "auto": "bfloat16"}, DEFAULTS["dtype"])
    fp16 = f.flag("fp16", False)
    s["precision"], note = hf_read_precision(dtype, f.flag("bf16", not fp16), fp16, ds)
    origin["precision"] = "dtype, bf16, fp16" + (", deepspeed" if ds is not None else "")
    notes += [note] if note else []
    missing = {}
    if par.get("sharding", "ddp") != "ddp" and n is None:
        missing["num_gpus"] = "the file shards the model but sets no num_processes"
    s["cross_entropy"] = loss_setting(Job.from_settings(framework=FRAMEWORK), fused_loss())
    origin["cross_entropy"] = "TRL's fused LM head (always on)"
    read_trl(f, s, origin, notes, command)
    return Read(model, s, origin, tuple(f.read), tuple(f.defaults), tuple(notes), missing)
