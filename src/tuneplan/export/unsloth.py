"""Unsloth: a short Python script (FastLanguageModel + TRL's SFTTrainer). Unsloth patches
the model with its fused cross-entropy and LoRA kernels, picks its attention kernel itself,
loads 4-bit bases as NF4 with double quantisation (bitsandbytes), and offloads checkpointed
layer inputs with use_gradient_checkpointing="unsloth". It is written here for one GPU.
The keyword dictionaries are literals, so tests check them against SFTConfig and LoraConfig.
"""

from __future__ import annotations

from typing import Any

from tuneplan.choices.compilation import EAGER
from tuneplan.export.common import (
    Built,
    Substitutions,
    fill_in,
    loss_setting,
    model_id,
    precision_named,
    sdpa_attention,
    target_list,
)
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

VERSION = "unsloth 2025.x with trl 1.16 (SFTConfig keywords checked by tuneplan's tests)"
FRAMEWORK = "unsloth"
TORCH_DTYPE = {"bfloat16": "torch.bfloat16", "float16": "torch.float16", "float32": "torch.float32"}


def adapt(spec: ModelSpec, job: Job) -> Substitutions:
    sub = Substitutions(job)
    m, t, p = job.method, job.training, job.parallel
    if m.kind == "freeze":
        sub.swap("--method freeze: Unsloth trains LoRA adapters or every layer (estimated as --method full)",
                 method="full")
    if m.kind == "dora":
        sub.swap("--method dora: Unsloth's fast LoRA kernels do not run DoRA (estimated as lora)", method="lora")
    if m.kind == "qlora" and m.weight_bits == 4 and (m.quant != "nf4" or not m.double_quant or m.quant_blocksize != 64):
        sub.swap("4-bit options: Unsloth loads NF4 with double quantisation, block 64 (estimated as such)",
                 quant="nf4", double_quant=True, quant_blocksize=64)
    if t.compilation.compiled:
        sub.swap("--compile: Unsloth runs its own fused kernels and compiles what it patches itself "
                 "(estimated as written: eager)", compile=EAGER)
    if t.dtypes.fp32_master:
        sub.swap("--precision mixed: Unsloth has no fp32 master copy (estimated as bf16)",
                 precision=precision_named("bfloat16", "bfloat16"))
    if t.attn.quadratic:
        sub.swap(f"--attention {t.attention}: Unsloth picks its own kernel (FlashAttention, xformers or SDPA; "
                 "estimated as sdpa)", attention=sdpa_attention())
    if not t.loss.fused:
        sub.swap(f"--cross-entropy {t.loss.name}: Unsloth always uses its fused cross-entropy (estimated as fused)",
                 cross_entropy=None)
    if t.optimizer_in_backward:
        sub.swap("--optimizer-in-backward: TRL's trainer steps after backward", optimizer_in_backward=False)
    if p.num_gpus > 1 or p.sharding != "ddp" or p.offload_optimizer or p.offload_params:
        sub.swap("several GPUs, sharding or offload: this script trains on one GPU (estimated as 1 GPU)",
                 num_gpus=1, sharding="ddp", offload_optimizer=False, offload_params=False)
    return sub


def _kwargs(d: dict[str, Any], raw: set[str] = frozenset()) -> str:
    items = [f"    {k}={v if k in raw else repr(v)}," for k, v in d.items()]
    return "dict(\n" + "\n".join(items) + "\n)"


def build(spec: ModelSpec, job: Job) -> Built:
    sub = adapt(spec, job)
    job = sub.job
    m, t = job.method, job.training
    d = t.dtypes
    gc = {"none": False, "full": True, "offload": "unsloth"}[t.checkpointing]
    load: dict[str, Any] = {"model_name": model_id(spec), "max_seq_length": t.seq_len,
                            "dtype": TORCH_DTYPE[d.torch_param_dtype],
                            "load_in_4bit": m.kind == "qlora" and m.weight_bits == 4,
                            "load_in_8bit": m.kind == "qlora" and m.weight_bits == 8,
                            "load_in_16bit": m.is_adapter and m.kind != "qlora",
                            "full_finetuning": not m.is_adapter}
    if not m.is_adapter:
        load["use_gradient_checkpointing"] = gc
    lora: dict[str, Any] = {}
    if m.is_adapter:
        targets = target_list(spec, job) + (["embed_tokens", "lm_head"] if m.train_embeddings else [])
        lora = {"r": m.rank, "lora_alpha": 2 * m.rank, "lora_dropout": m.lora_dropout, "target_modules": targets,
                "bias": "none", "use_gradient_checkpointing": gc, "random_state": 3407}
    train = {"output_dir": "OUTPUT_DIR", "dataset_text_field": "text", "max_length": t.seq_len, "packing": True,
             "per_device_train_batch_size": t.micro_batch, "gradient_accumulation_steps": t.grad_accum,
             "bf16": d.torch_autocast_dtype == "bfloat16", "fp16": d.torch_autocast_dtype == "float16",
             "optim": t.optim.hf_name, "learning_rate": 2e-4 if m.is_adapter else 2e-5, "num_train_epochs": 1}
    if t.optim.hf_optim_args:
        train["optim_args"] = t.optim.hf_optim_args
    lines = [
        "# Unsloth must be imported before transformers and TRL: it patches them.",
        "from unsloth import FastLanguageModel  # isort: skip",
        "import torch",
        "from datasets import load_dataset",
        "from trl import SFTConfig, SFTTrainer",
        "",
        f"DATASET = {fill_in('dataset (Hub id or local path) with a text column')!r}",
        f"OUTPUT_DIR = {fill_in('output directory')!r}",
        "",
        f"LOAD = {_kwargs(load, {'dtype'})}",
    ]
    if m.is_adapter:
        lines.append(f"LORA = {_kwargs(lora)}")
    lines += [
        f"TRAIN = {_kwargs(train, {'output_dir'})}",
        "",
        "",
        "def main() -> None:",
        "    model, tokenizer = FastLanguageModel.from_pretrained(**LOAD)",
    ]
    if m.is_adapter:
        lines.append("    model = FastLanguageModel.get_peft_model(model, **LORA)")
    lines += [
        "    dataset = load_dataset(DATASET, split=\"train\")",
        "    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset,",
        "                         args=SFTConfig(**TRAIN))",
        "    trainer.train()",
        "    trainer.save_model(OUTPUT_DIR)",
        "",
        "",
        "if __name__ == \"__main__\":",
        "    main()",
    ]
    job = job.with_settings(cross_entropy=loss_setting(job, t.loss.name))
    notes = ["learning_rate and num_train_epochs are usual values (they do not change memory)"]
    if m.is_adapter:
        notes.append("lora_alpha is written as 2 x rank (it does not change memory)")
    return Built(job, "\n".join(lines) + "\n", tuple(sub.cannot), "python {file}", ("DATASET", "OUTPUT_DIR"),
                 tuple(notes))
