"""LLaMA-Factory: the YAML `llamafactory-cli train FILE` loads, checked against
llamafactory 0.9.5 (src/llamafactory/hparams/model_args.py, data_args.py,
finetuning_args.py, training_args.py; hparams/parser.py get_train_args).

Precision follows src/llamafactory/model/adapter.py init_adapter: unless `pure_bf16` (or
DeepSpeed ZeRO-3 without quantisation), every trainable parameter is cast to fp32 after
loading in the compute dtype (bf16/fp16 from the flags, else inferred from the checkpoint).
So full fine-tuning with `bf16: true` is fp32 weights under bf16 autocast (tuneplan's
amp), pure bf16 is `pure_bf16: true` (not with ZeRO-3: hparams/parser.py), and LoRA
adapters are fp32 on a 16-bit base (tuneplan's bf16 with PEFT-style fp32 adapters).
"""

from __future__ import annotations

from typing import Any

from tuneplan.export.common import (
    Built,
    Fields,
    Read,
    Substitutions,
    attention_for_impl,
    deepspeed_config,
    default_loss,
    fill_in,
    fused_loss,
    hf_adapt_parallel,
    hf_compile,
    hf_fsdp,
    hf_read_precision,
    hf_trainer_swaps,
    loss_setting,
    model_id,
    optimizer_from_hf,
    precision_named,
    read_compile,
    read_counts,
    read_embeddings,
    read_parallel,
    read_targets,
    refuse,
    uses_deepspeed,
)
from tuneplan.export.tasks import llamafactory_fields, read_llamafactory
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

VERSION = "llamafactory 0.9.5"
FRAMEWORK = "llamafactory"
# flash_attn (extras/constants.py AttentionFunction) -> transformers attn_implementation
FLASH_ATTN = {"auto": "sdpa", "sdpa": "sdpa", "fa2": "flash_attention_2", "disabled": "eager"}
DEFAULTS = {"finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "cutoff_len": 2048,
            "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "optim": "adamw_torch_fused",
            "quantization_type": "nf4", "double_quantization": True, "freeze_trainable_layers": 2,
            "flash_attn": "auto", "stage": "sft"}


def adapt(spec: ModelSpec, job: Job) -> Substitutions:
    sub = Substitutions(job)
    m, t = job.method, job.training
    hf_trainer_swaps(sub)
    if t.loss.chunks or t.loss.chunk_tokens:
        sub.swap(f"--cross-entropy {t.loss.name}: LLaMA-Factory has the plain loss and Liger's fused one "
                 "(estimated as plain)", cross_entropy=loss_setting(sub.job, default_loss()))
    hf_adapt_parallel(sub)
    job = sub.job
    t, d = job.training, job.training.dtypes
    if uses_deepspeed(job):
        return sub
    if m.is_adapter and d.param_bytes == 4:
        sub.swap(f"--precision {t.precision} with adapters: LLaMA-Factory loads the base in 16-bit (estimated as "
                 "bf16)", precision=precision_named("bfloat16", "bfloat16"))
    elif not m.is_adapter and d.param_bytes == 2 and d.torch_param_dtype == "float16":
        sub.swap(f"--precision {t.precision} for {m.kind}: LLaMA-Factory casts the trained weights to fp32 "
                 "under fp16 autocast (estimated as amp)", precision=precision_named("float32", "bfloat16"))
    elif m.kind == "freeze" and d.param_bytes == 4:
        sub.cannot.append(f"--precision {t.precision} for freeze: LLaMA-Factory keeps the frozen layers in 16-bit "
                          "and casts only the trained ones to fp32; the estimate counts every weight in fp32 (an "
                          "upper bound)")
    return sub


def _precision_flags(job: Job) -> dict[str, Any]:
    m, d = job.method, job.training.dtypes
    if uses_deepspeed(job):
        return {"bf16": bool(d.fp32_master or d.torch_param_dtype == "bfloat16"),
                "fp16": False}
    if m.is_adapter:
        return {"bf16": d.torch_autocast_dtype == "bfloat16", "fp16": d.torch_autocast_dtype == "float16"}
    if d.param_bytes == 2:  # pure bf16 full / freeze
        return {"pure_bf16": True}
    return {"bf16": d.torch_autocast_dtype == "bfloat16"}  # amp: fp32 trained weights under bf16 autocast


def build(spec: ModelSpec, job: Job) -> Built:
    sub = adapt(spec, job)
    job = sub.job
    m, t, p = job.method, job.training, job.parallel
    body: dict[str, Any] = {"model_name_or_path": model_id(spec), **llamafactory_fields(job, model_id(spec)),
                            "do_train": True, "finetuning_type": "lora" if m.is_adapter else m.kind}
    if m.is_adapter:
        body.update(lora_rank=m.rank, lora_alpha=2 * m.rank, lora_dropout=m.lora_dropout,
                    lora_target="all" if isinstance(m.targets, str) else ",".join(m.targets))
        if m.kind == "dora":
            body["use_dora"] = True
        if m.train_embeddings:
            body["additional_target"] = "embed_tokens,lm_head"
        if m.kind == "qlora":
            body.update(quantization_bit=m.weight_bits, quantization_method="bnb")
            if m.weight_bits == 4:
                body.update(quantization_type=m.quant, double_quantization=m.double_quant)
    elif m.kind == "freeze":
        body.update(freeze_trainable_layers=m.trainable_layers, freeze_trainable_modules="all")
        if m.train_embeddings:
            body["freeze_extra_modules"] = "embed_tokens,lm_head"
    body.update(dataset=fill_in("dataset name in data/dataset_info.json"), template="default",
                cutoff_len=t.seq_len)
    if job.task == "sft":
        body["packing"] = True  # LLaMA-Factory packs only supervised data (data/loader.py)
    body.update(per_device_train_batch_size=t.micro_batch,
                gradient_accumulation_steps=t.grad_accum, learning_rate=1e-4 if m.is_adapter else 1e-5,
                num_train_epochs=1.0, optim=t.optim.hf_name)
    if t.optim.hf_optim_args:
        body["optim_args"] = t.optim.hf_optim_args
    body.update(_precision_flags(job))
    body.update(hf_compile(job))
    if t.checkpointing == "none":
        body["disable_gradient_checkpointing"] = True
    elif t.checkpointing == "offload":
        body["use_unsloth_gc"] = True
    body["flash_attn"] = next(k for k, v in FLASH_ATTN.items() if v == t.attn.hf_impl and k != "auto")
    if t.loss.fused:
        body["enable_liger_kernel"] = True
    if uses_deepspeed(job):
        body["deepspeed"] = deepspeed_config(job)
    elif p.sharding == "fsdp":
        body.update(hf_fsdp(job))
    body["output_dir"] = fill_in("output directory")
    launch = ("llamafactory-cli train {file}" if p.num_gpus == 1 else
              f"FORCE_TORCHRUN=1 NPROC_PER_NODE={p.num_gpus} llamafactory-cli train {{file}}")
    notes = ["learning_rate, num_train_epochs and template are usual values (they do not change memory)"]
    if m.is_adapter:
        notes.append("lora_alpha is written as 2 x rank (it does not change memory)")
    return Built(job, body, tuple(sub.cannot), launch, ("dataset", "output_dir"), tuple(notes))


def read(cfg: dict[str, Any], load_json: Any = None) -> Read:
    f = Fields(cfg, "llamafactory", load_json)
    s: dict[str, Any] = {"framework": FRAMEWORK}
    origin: dict[str, str] = {}
    notes: list[str] = []
    model = f.text("model_name_or_path")
    stage = f.text("stage", DEFAULTS["stage"])
    for key in ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon", "pissa_init", "use_llama_pro"):
        if f.flag(key):
            raise refuse("llamafactory", key, True, "this optimizer or method is not modelled")
    kind = f.choice("finetuning_type", {"lora": "lora", "full": "full", "freeze": "freeze"},
                    DEFAULTS["finetuning_type"])
    bits = f.choice("quantization_bit", {4: 4, 8: 8})
    if bits is not None:
        method_q = f.text("quantization_method", "bnb")
        if method_q != "bnb":
            raise refuse("llamafactory", "quantization_method", method_q, "tuneplan models bitsandbytes (bnb)")
        if kind != "lora":
            raise refuse("llamafactory", "quantization_bit", bits, "a quantised base is trained with LoRA")
    if kind == "lora":
        dora = f.flag("use_dora", False)
        if dora and bits:
            raise refuse("llamafactory", "use_dora", True, "DoRA on a quantised base (QDoRA) is not modelled")
        s["method"] = "dora" if dora else ("qlora" if bits else "lora")
        s["rank"] = f.count("lora_rank", DEFAULTS["lora_rank"])
        s["lora_dropout"] = f.get("lora_dropout", float, 0.0, "a number in [0, 1)")
        s["targets"] = read_targets(f.get("lora_target", (str, list), DEFAULTS["lora_target"]), "llamafactory",
                                    "lora_target")
        origin.update(method="finetuning_type" + (", use_dora" if dora else "") + (", quantization_bit" if bits
                                                                                  else ""),
                      rank="lora_rank", lora_dropout="lora_dropout", targets="lora_target")
        if f.has("additional_target"):
            s["train_embeddings"] = read_embeddings(f.raw("additional_target"), "llamafactory", "additional_target")
            origin["train_embeddings"] = "additional_target"
        if bits == 8:
            s["quant"] = "int8"
        elif bits == 4:
            s["quant"] = f.choice("quantization_type", {"nf4": "nf4", "fp4": "fp4"}, DEFAULTS["quantization_type"])
            s["double_quant"] = f.flag("double_quantization", DEFAULTS["double_quantization"])
            origin["double_quant"] = "double_quantization"
        if bits:
            origin["quant"] = "quantization_bit, quantization_type"
    elif kind == "freeze":
        s["method"] = "freeze"
        layers = f.get("freeze_trainable_layers", int, DEFAULTS["freeze_trainable_layers"], "a whole number")
        if layers < 1:
            raise refuse("llamafactory", "freeze_trainable_layers", layers, "tuneplan models training the last K "
                                                                            "layers (a positive count)")
        s["trainable_layers"] = layers
        modules = f.text("freeze_trainable_modules", "all")
        if modules != "all":
            raise refuse("llamafactory", "freeze_trainable_modules", modules, "tuneplan models whole layers (all)")
        if f.has("freeze_extra_modules"):
            s["train_embeddings"] = read_embeddings(f.raw("freeze_extra_modules"), "llamafactory",
                                                    "freeze_extra_modules")
        origin.update(method="finetuning_type", trainable_layers="freeze_trainable_layers")
    else:
        s["method"] = "full"
        origin["method"] = "finetuning_type"
    read_llamafactory(f, s, origin, notes, stage, kind == "lora")
    read_counts(f, s, origin, DEFAULTS, seq_len="cutoff_len", micro_batch="per_device_train_batch_size",
                grad_accum="gradient_accumulation_steps")
    s["optimizer"] = optimizer_from_hf(f.text("optim", DEFAULTS["optim"]), f.text("optim_args"))
    origin["optimizer"] = "optim"
    off_gc = f.flag("disable_gradient_checkpointing", False)
    s["checkpointing"] = "none" if off_gc else ("offload" if f.flag("use_unsloth_gc", False) else "full")
    origin["checkpointing"] = "disable_gradient_checkpointing, use_unsloth_gc"
    read_compile(f, s, origin)
    s["attention"] = attention_for_impl(f.choice("flash_attn", FLASH_ATTN, DEFAULTS["flash_attn"]))
    origin["attention"] = "flash_attn"
    if f.flag("use_unsloth"):
        s["framework"] = "unsloth"
        notes.append("use_unsloth: estimated with the Unsloth profile")
    loss = fused_loss() if f.flag("enable_liger_kernel", False) else None
    s["cross_entropy"] = loss_setting(Job.from_settings(framework=s["framework"]), loss) if loss else None
    origin["cross_entropy"] = "enable_liger_kernel"
    par, ds = read_parallel(f)
    s.update(par)
    origin.update({k: "deepspeed" if ds is not None else "fsdp, fsdp_config" for k in par})
    s["precision"], note = _read_precision(f, s["method"], ds)
    origin["precision"] = "bf16, fp16, pure_bf16" + (", deepspeed" if ds is not None else "")
    notes += [note] if note else []
    missing = {}
    if par.get("sharding", "ddp") != "ddp":
        missing["num_gpus"] = "llamafactory configs do not hold the GPU count (NPROC_PER_NODE does)"
    return Read(model, s, origin, tuple(f.read), tuple(f.defaults), tuple(notes), missing)


def _read_precision(f: Fields, method: str, ds: dict[str, Any] | None) -> tuple[str, str]:
    pure, bf16, fp16 = f.flag("pure_bf16", False), f.flag("bf16", False), f.flag("fp16", False)
    if ds is not None:
        return hf_read_precision("bfloat16", bf16 or pure, fp16, ds)
    adapters = method in ("lora", "qlora", "dora")
    if pure:
        return precision_named("bfloat16", "bfloat16"), ""
    if adapters:
        if fp16:
            return precision_named("float16", "float16"), ""
        return precision_named("bfloat16", "bfloat16"), ("" if bf16 else "no bf16/fp16 flag: LLaMA-Factory loads "
                                                         "the base in the checkpoint's 16-bit dtype (estimated as bf16)")
    note = ("freeze: LLaMA-Factory keeps the frozen layers in 16-bit and casts only the trained ones to fp32; "
            "estimated with every weight in fp32 (an upper bound)") if method == "freeze" else ""
    if bf16 or fp16:
        return precision_named("float32", "bfloat16"), note
    return precision_named("float32", None), note

