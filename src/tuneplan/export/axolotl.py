"""Axolotl: the YAML `axolotl train FILE` loads, checked against axolotl 0.19.0
(src/axolotl/utils/schemas/config.py AxolotlInputConfig, peft.py, training.py, fsdp.py;
src/axolotl/loaders/model.py for the bitsandbytes config; src/axolotl/utils/config/__init__.py
normalize_config for the load dtype: bf16/bfloat16 -> bfloat16, fp16/float16 -> float16,
else float32; src/axolotl/utils/freeze.py for unfrozen_parameters).
"""

from __future__ import annotations

import re
from typing import Any

from tuneplan.choices.cross_entropy import CROSS_ENTROPY
from tuneplan.errors import TuneplanError
from tuneplan.export.common import (
    Built,
    Fields,
    Read,
    Substitutions,
    attention_for_impl,
    chunked_loss,
    deepspeed_config,
    default_loss,
    fill_in,
    fused_loss,
    hf_adapt_parallel,
    hf_compile,
    hf_precision,
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
from tuneplan.export.tasks import axolotl_dataset, axolotl_fields, read_axolotl
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

VERSION = "axolotl 0.19.0"
FRAMEWORK = "axolotl"
LIGER = "axolotl.integrations.liger.LigerPlugin"
# axolotl schema defaults (training.py, config.py)
DEFAULTS = {"sequence_len": 2048, "micro_batch_size": 1, "gradient_accumulation_steps": 1,
            "optimizer": "adamw_torch_fused"}


def adapt(spec: ModelSpec, job: Job) -> Substitutions:
    sub = Substitutions(job)
    t = job.training
    hf_trainer_swaps(sub)
    loss = t.loss
    if loss.chunk_tokens:
        sub.swap(f"--cross-entropy {loss.name}: Axolotl has plain, chunked (chunked_cross_entropy) and fused "
                 "(Liger) losses (estimated as chunked)", cross_entropy=chunked_loss())
    d = t.dtypes
    if d.torch_param_dtype == "float32" and d.torch_autocast_dtype:
        sub.swap(f"--precision {t.precision}: Axolotl loads the model in the autocast dtype when bf16 is on "
                 "(normalize_config), so fp32 weights under autocast are bf16 weights (estimated as bf16)",
                 precision=precision_named("bfloat16", "bfloat16"))
    hf_adapt_parallel(sub)
    return sub


def build(spec: ModelSpec, job: Job) -> Built:
    sub = adapt(spec, job)
    job = sub.job
    m, t, p = job.method, job.training, job.parallel
    pr = hf_precision(job)
    body: dict[str, Any] = {"base_model": model_id(spec)}
    if m.is_adapter:
        eight = m.weight_bits == 8
        body["adapter"] = "qlora" if m.kind == "qlora" and not eight else "lora"
        if m.kind == "qlora":
            body["load_in_8bit" if eight else "load_in_4bit"] = True
            if not eight and (m.quant != "nf4" or not m.double_quant):
                body["bnb_config_kwargs"] = {"bnb_4bit_quant_type": m.quant,
                                             "bnb_4bit_use_double_quant": m.double_quant}
        body.update(lora_r=m.rank, lora_alpha=2 * m.rank, lora_dropout=m.lora_dropout)
        if isinstance(m.targets, str):
            body["lora_target_linear"] = True
        else:
            body["lora_target_modules"] = list(m.targets)
        if m.kind == "dora":
            body["peft_use_dora"] = True
        if m.train_embeddings:
            body["lora_modules_to_save"] = ["embed_tokens", "lm_head"]
    elif m.kind == "freeze":
        body["unfrozen_parameters"] = ([f"^model.layers.{i}." for i in
                                        range(spec.num_layers - m.trainable_layers, spec.num_layers)]
                                       + (["^model.embed_tokens.", "^lm_head."] if m.train_embeddings else []))
    body.update(axolotl_fields(job))
    body.update(datasets=[{"path": fill_in("dataset (Hub id or local path)"), "type": axolotl_dataset(job)}],
                sequence_len=t.seq_len)
    if job.task == "sft":
        body["sample_packing"] = True
    body.update(micro_batch_size=t.micro_batch,
                gradient_accumulation_steps=t.grad_accum, num_epochs=1,
                learning_rate=2e-4 if m.is_adapter else 2e-5, optimizer=t.optim.hf_name)
    if t.optim.hf_optim_args:
        body["optim_args"] = t.optim.hf_optim_args
    body.update(bf16=pr.bf16 or pr.load_dtype == "bfloat16", fp16=pr.fp16 or pr.load_dtype == "float16",
                gradient_checkpointing=t.checkpointing != "none",
                attn_implementation=t.attn.hf_impl)
    body.update(hf_compile(job))
    if t.checkpointing == "offload":
        body["activation_offloading"] = True  # axolotl 0.19: gradient_checkpointing "offload" is deprecated for this
    loss = t.loss
    if loss.fused:
        body.update(plugins=[LIGER], liger_fused_linear_cross_entropy=True)
    elif loss.chunks:
        body.update(chunked_cross_entropy=True, chunked_cross_entropy_num_chunks=loss.chunks)
    if uses_deepspeed(job):
        body["deepspeed"] = deepspeed_config(job)
    elif p.sharding == "fsdp":
        body.update(fsdp_version=2, fsdp_config={"offload_params": p.offload_params, "reshard_after_forward": True,
                                                 "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                                 "state_dict_type": "SHARDED_STATE_DICT"})
    body["output_dir"] = fill_in("output directory")
    launch = ("axolotl train {file}" if p.num_gpus == 1 else
              f"accelerate launch --num_processes {p.num_gpus} -m axolotl.cli.train {{file}}")
    notes = ["learning_rate and num_epochs are usual values (they do not change memory)"]
    if m.is_adapter:
        notes.append("lora_alpha is written as 2 x rank (it does not change memory)")
    return Built(job, body, tuple(sub.cannot), launch, ("datasets[0].path", "output_dir"), tuple(notes))


_LAYER = re.compile(r"^\^?model\.layers\.(\d+)\.?\$?$")


def read(cfg: dict[str, Any], load_json: Any = None) -> Read:
    f = Fields(cfg, "axolotl", load_json)
    s: dict[str, Any] = {"framework": FRAMEWORK}
    origin: dict[str, str] = {}
    notes: list[str] = []
    model = f.text("base_model")
    for key, why in (("gptq", "GPTQ-quantised bases are not modelled"),
                     ("fp8", "Axolotl's FP8 (torchao float8) is not read from the file; estimate with --precision fp8-torchao"),
                     ("tiled_mlp", "tiled MLP activations are not modelled"),
                     ("relora", "ReLoRA is not modelled")):
        value = f.raw(key)
        if value not in (None, False, "", "sft"):
            raise refuse("axolotl", key, value, why)
    for key in ("tensor_parallel_size", "context_parallel_size", "sequence_parallel_degree"):
        value = f.raw(key)
        if value not in (None, 1):
            raise refuse("axolotl", key, value, "only data parallelism is modelled (tensor, context and sequence "
                                                 "parallelism are not)")
    adapter = f.choice("adapter", {"lora": "lora", "qlora": "qlora", "": None, None: None})
    four, eight = f.flag("load_in_4bit", False), f.flag("load_in_8bit", False)
    dora = f.flag("peft_use_dora", False)
    if four and adapter != "qlora":
        raise refuse("axolotl", "load_in_4bit", True, "a 4-bit base is trained with adapter: qlora")
    if adapter is None:
        unfrozen = f.get("unfrozen_parameters", list, None, "a list of patterns")
        if unfrozen:
            s.update(_freeze(unfrozen))
            origin.update(method="unfrozen_parameters", trainable_layers="unfrozen_parameters")
        else:
            s["method"] = "full"
            origin["method"] = "no adapter"
    else:
        quant = "int8" if eight else ("nf4" if adapter == "qlora" else None)
        if dora and quant:
            raise refuse("axolotl", "peft_use_dora", True, "DoRA on a quantised base (QDoRA) is not modelled")
        s["method"] = "dora" if dora else ("qlora" if quant else "lora")
        origin["method"] = "adapter" + (", peft_use_dora" if dora else "") + (", load_in_8bit" if eight else "")
        r = f.count("lora_r")
        if r is None:
            raise TuneplanError("axolotl field lora_r is missing (an adapter needs its rank)")
        s["rank"] = r
        s["lora_dropout"] = f.get("lora_dropout", float, 0.0, "a number in [0, 1)")
        origin.update(rank="lora_r", lora_dropout="lora_dropout")
        if f.flag("lora_target_linear", False):
            s["targets"] = "all-linear"
            origin["targets"] = "lora_target_linear"
        elif f.has("lora_target_modules"):
            s["targets"] = read_targets(f.raw("lora_target_modules"), "axolotl", "lora_target_modules")
            origin["targets"] = "lora_target_modules"
        else:
            s["targets"] = "qv"
            notes.append("no lora_target_modules or lora_target_linear: PEFT's default for Llama-style models "
                         "(q_proj, v_proj)")
        if f.has("lora_modules_to_save"):
            s["train_embeddings"] = read_embeddings(f.raw("lora_modules_to_save"), "axolotl", "lora_modules_to_save")
            origin["train_embeddings"] = "lora_modules_to_save"
        if quant:
            s["quant"] = quant
            origin["quant"] = "adapter, load_in_4bit/8bit"
            kwargs = f.get("bnb_config_kwargs", dict, None, "a mapping")
            if kwargs and quant == "nf4":
                qt = kwargs.get("bnb_4bit_quant_type", "nf4")
                if qt not in ("nf4", "fp4"):
                    raise refuse("axolotl", "bnb_config_kwargs.bnb_4bit_quant_type", qt, "nf4 and fp4 are modelled")
                s["quant"] = qt
                dq = kwargs.get("bnb_4bit_use_double_quant", True)
                if not isinstance(dq, bool):
                    raise TuneplanError(f"axolotl field bnb_config_kwargs.bnb_4bit_use_double_quant must be true or "
                                        f"false, got {dq!r}")
                s["double_quant"] = dq
                origin.update(quant="bnb_config_kwargs", double_quant="bnb_config_kwargs")
    read_axolotl(f, s, origin, notes, adapter is not None)
    read_counts(f, s, origin, DEFAULTS, seq_len="sequence_len", micro_batch="micro_batch_size",
                grad_accum="gradient_accumulation_steps")
    s["optimizer"] = optimizer_from_hf(f.text("optimizer", DEFAULTS["optimizer"]), _optim_args(f))
    origin["optimizer"] = "optimizer"
    gc = f.choice("gradient_checkpointing", {True: "full", False: "none", "offload": "offload"}, False)
    if f.flag("activation_offloading") is True:
        gc = "offload"
    s["checkpointing"] = gc
    origin["checkpointing"] = "gradient_checkpointing"
    read_compile(f, s, origin)
    s["attention"] = _attention(f)
    origin["attention"] = "attn_implementation"
    s["cross_entropy"], note = _loss(f)
    notes += [note] if note else []
    origin["cross_entropy"] = "chunked_cross_entropy / liger_fused_linear_cross_entropy / cut_cross_entropy"
    par, ds = _parallel(f)
    s.update(par)
    origin.update({k: "deepspeed" if ds is not None else "fsdp_config" for k in par})
    bf16 = f.choice("bf16", {True: True, False: False, "auto": True}, False)
    fp16 = f.flag("fp16", False)
    load = ("bfloat16" if bf16 or f.flag("bfloat16") else
            "float16" if fp16 or f.flag("float16") or eight else "float32")
    s["precision"], note = hf_read_precision(load, bf16, fp16, ds)
    origin["precision"] = "bf16, fp16" + (", deepspeed" if ds is not None else "")
    notes += [note] if note else []
    missing = {}
    if par.get("sharding", "ddp") != "ddp":
        missing["num_gpus"] = "axolotl configs do not hold the GPU count (accelerate launch --num_processes does)"
    return Read(model, s, origin, tuple(f.read), tuple(f.defaults), tuple(notes), missing)


def _optim_args(f: Fields) -> str | None:
    value = f.raw("optim_args")
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return value if isinstance(value, str) or value is None else str(value)


def _freeze(patterns: list[Any]) -> dict[str, Any]:
    layers: set[int] = set()
    embeddings = False
    for pat in patterns:
        text = str(pat)
        m = _LAYER.match(text)
        if m:
            layers.add(int(m.group(1)))
        elif text.strip("^$.") in ("model.embed_tokens", "lm_head"):
            embeddings = True
        else:
            raise refuse("axolotl", "unfrozen_parameters", pat, "tuneplan reads whole decoder layers "
                         "(^model.layers.N.) and ^model.embed_tokens. / ^lm_head.")
    if not layers:
        raise refuse("axolotl", "unfrozen_parameters", patterns, "no decoder layer is unfrozen")
    return {"method": "freeze", "trainable_layers": len(layers), "train_embeddings": embeddings}


def _attention(f: Fields) -> str:
    impl = f.text("attn_implementation")
    legacy = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager"}
    for key, value in legacy.items():
        if f.flag(key) and impl is None:
            impl = value
    for key in ("xformers_attention", "flex_attention", "sage_attention"):
        if f.flag(key):
            raise refuse("axolotl", key, True, "tuneplan models sdpa, flash_attention_2 and eager")
    return attention_for_impl(impl or "sdpa")


def _loss(f: Fields) -> tuple[str | None, str]:
    chunked = f.flag("chunked_cross_entropy", False)
    fused = bool(f.flag("liger_fused_linear_cross_entropy", False) or f.flag("cut_cross_entropy", False))
    if chunked and fused:
        raise TuneplanError("axolotl config asks for both chunked and fused cross-entropy; choose one")
    loss = chunked_loss() if chunked else (fused_loss() if fused else default_loss())
    chunks = f.count("chunked_cross_entropy_num_chunks") if chunked else None
    modelled = CROSS_ENTROPY[loss].chunks
    note = (f"chunked_cross_entropy_num_chunks {chunks}: estimated with {modelled} chunks (torchtune's default)"
            if chunks is not None and chunks != modelled else "")
    return loss_setting(Job.from_settings(framework=FRAMEWORK), loss), note


def _parallel(f: Fields) -> tuple[dict[str, Any], dict[str, Any] | None]:
    fsdp_config = f.get("fsdp_config", dict, None, "a mapping")
    version = f.raw("fsdp_version")
    return read_parallel(f, fsdp_on=bool(fsdp_config or version))  # axolotl: fsdp_config turns FSDP on
