"""torchtune: a recipe config for `tune run RECIPE --config FILE`, checked against torchtune
0.6.1 (recipes/lora_finetune_single_device.py, lora_finetune_distributed.py,
full_finetune_single_device.py, full_finetune_distributed.py: the cfg fields they read;
torchtune/models/*/_model_builders.py: the builders and their LoRA arguments;
torchtune/training/checkpointing/_utils.py ModelType).

torchtune has no autocast (dtype bf16 or fp32), QLoRA is torchao NF4 with quantised scalers
(`quantize_base: True`, double quantisation always on), LoRA targets attention projections
by name and the MLP as a whole (`apply_lora_to_mlp`), and its distributed recipes always shard
with FSDP2 (`fsdp_cpu_offload` moves parameters, gradients and optimizer states together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneplan.choices.optimizers import OPTIMIZERS
from tuneplan.errors import TuneplanError
from tuneplan.export.common import (
    Built,
    Fields,
    Read,
    Substitutions,
    chunked_loss,
    fill_in,
    loss_setting,
    precision_named,
    read_compile,
    read_counts,
    refuse,
    sdpa_attention,
)
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

VERSION = "torchtune 0.6.1"
FRAMEWORK = "torchtune"
CHUNKED_LOSS = "torchtune.modules.loss.CEWithChunkedOutputLoss"
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # recipe dtype -> torch dtype (no fp16: recipes refuse it)


@dataclass(frozen=True)
class Builder:
    """A torchtune model builder for a catalog model."""

    module: str  # torchtune.models.<module>
    name: str  # full-weight builder; the LoRA one is lora_<name>
    model_type: str  # FullModelHFCheckpointer model_type
    tokenizer: str
    tokenizer_files: tuple[str, ...]  # argument names of the tokenizer's files


_LLAMA3_TOK = ("llama3.llama3_tokenizer", ("path",))
_QWEN_TOK = ("qwen2_5.qwen2_5_tokenizer", ("path", "merges_file"))


def _b(module: str, name: str, model_type: str, tok: tuple[str, tuple[str, ...]]) -> Builder:
    return Builder(module, name, model_type, f"torchtune.models.{tok[0]}", tok[1])


# catalog id -> builder (torchtune 0.6.1 has no Qwen3, Llama 4, Mistral v0.3 or MoE builders)
BUILDERS: dict[str, Builder] = {
    "meta-llama/Llama-3.2-1B": _b("llama3_2", "llama3_2_1b", "LLAMA3_2", _LLAMA3_TOK),
    "meta-llama/Llama-3.2-3B": _b("llama3_2", "llama3_2_3b", "LLAMA3_2", _LLAMA3_TOK),
    "meta-llama/Llama-3.1-8B": _b("llama3_1", "llama3_1_8b", "LLAMA3", _LLAMA3_TOK),
    "meta-llama/Llama-3.1-70B": _b("llama3_1", "llama3_1_70b", "LLAMA3", _LLAMA3_TOK),
    "meta-llama/Llama-3.1-405B": _b("llama3_1", "llama3_1_405b", "LLAMA3", _LLAMA3_TOK),
    "meta-llama/Llama-3.3-70B-Instruct": _b("llama3_3", "llama3_3_70b", "LLAMA3", _LLAMA3_TOK),
    "Qwen/Qwen2.5-0.5B": _b("qwen2_5", "qwen2_5_0_5b", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-1.5B": _b("qwen2_5", "qwen2_5_1_5b_base", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-3B": _b("qwen2_5", "qwen2_5_3b", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-7B": _b("qwen2_5", "qwen2_5_7b_base", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-14B": _b("qwen2_5", "qwen2_5_14b_base", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-32B": _b("qwen2_5", "qwen2_5_32b_base", "QWEN2", _QWEN_TOK),
    "Qwen/Qwen2.5-72B": _b("qwen2_5", "qwen2_5_72b_base", "QWEN2", _QWEN_TOK),
    "google/gemma-2-2b": _b("gemma2", "gemma2_2b", "GEMMA2", ("gemma.gemma_tokenizer", ("path",))),
    "google/gemma-2-9b": _b("gemma2", "gemma2_9b", "GEMMA2", ("gemma.gemma_tokenizer", ("path",))),
    "google/gemma-2-27b": _b("gemma2", "gemma2_27b", "GEMMA2", ("gemma.gemma_tokenizer", ("path",))),
    "microsoft/phi-4": _b("phi4", "phi4_14b", "PHI4", ("phi4.phi4_tokenizer", ("vocab_path", "merges_path"))),
}
# builder component -> (catalog id, method)
_BY_COMPONENT: dict[str, tuple[str, str]] = {}
for _id, _bd in BUILDERS.items():
    _BY_COMPONENT[f"torchtune.models.{_bd.module}.{_bd.name}"] = (_id, "full")
    _BY_COMPONENT[f"torchtune.models.{_bd.module}.lora_{_bd.name}"] = (_id, "lora")
    _BY_COMPONENT[f"torchtune.models.{_bd.module}.qlora_{_bd.name}"] = (_id, "qlora")

ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")
# torch's own defaults for the optimizer keyword arguments a record names (torch/optim/adamw.py,
# sgd.py: fused None -> off, foreach None -> on for CUDA tensors, momentum 0)
TORCH_DEFAULTS = {"fused": False, "foreach": True, "momentum": 0.0}


def builder(spec: ModelSpec) -> Builder:
    b = BUILDERS.get(spec.name)
    if b is None:
        raise TuneplanError(f"torchtune 0.6.1 has no model builder for {spec.name}; it has: "
                            + ", ".join(BUILDERS))
    return b


def adapt(spec: ModelSpec, job: Job) -> Substitutions:
    builder(spec)
    sub = Substitutions(job)
    m, t, p = job.method, job.training, job.parallel
    if m.kind == "freeze":
        sub.swap("--method freeze: torchtune recipes train every layer or LoRA (estimated as --method full)",
                 method="full")
    if m.is_adapter:
        if m.train_embeddings:
            sub.swap("--train-embeddings: torchtune's LoRA builders cannot train the embeddings",
                     train_embeddings=False)
        if m.kind == "qlora" and (m.quant != "nf4" or not m.double_quant or m.quant_blocksize != 64):
            sub.swap(f"--quant {m.quant}{' --no-double-quant' if not m.double_quant else ''}: torchtune's QLoRA is "
                     "torchao NF4 with quantised scalers (estimated as nf4, double quant, block 64)",
                     quant="nf4", double_quant=True, quant_blocksize=64)
        names = m.targets if isinstance(m.targets, tuple) else None
        if names is not None:
            unknown = [n for n in names if n not in ATTN and n not in MLP]
            partial = any(n in MLP for n in names) and not all(n in names for n in MLP)
            if unknown:
                sub.swap(f"--targets {','.join(unknown)}: torchtune adapts q/k/v/o projections and the whole MLP "
                         "(estimated as all-linear)", targets="all-linear")
            elif partial:
                keep = [n for n in names if n in ATTN] + list(MLP)
                sub.swap("--targets with part of the MLP: torchtune adapts the MLP as a whole (apply_lora_to_mlp; "
                         f"estimated as {','.join(keep)})", targets=",".join(keep))
    d = t.dtypes
    if (d.torch_param_dtype, d.torch_autocast_dtype) not in (("bfloat16", "bfloat16"), ("float32", None)):
        sub.swap(f"--precision {t.precision}: torchtune trains in bf16 or fp32 without autocast (estimated as "
                 "bf16)", precision=precision_named("bfloat16", "bfloat16"))
    if not t.attn.needs_sdpa:
        sub.swap(f"--attention {t.attention}: torchtune chooses its kernel (SDPA, flex attention for packed "
                 "batches; estimated as sdpa)", attention=sdpa_attention())
    if t.loss.name != chunked_loss():
        sub.swap(f"--cross-entropy {t.loss.name}: the recipes' loss is CEWithChunkedOutputLoss (estimated as "
                 "chunked)", cross_entropy=None)
    if t.optimizer_in_backward and sub.job.method.is_adapter:
        sub.swap("--optimizer-in-backward: only torchtune's full fine-tuning recipes have optimizer_in_bwd",
                 optimizer_in_backward=False)
    if p.num_gpus == 1 and (p.sharding != "ddp" or p.offload_optimizer or p.offload_params):
        sub.swap("sharding/offload on one GPU: torchtune's single-device recipe neither shards nor offloads",
                 sharding="ddp", offload_optimizer=False, offload_params=False)
    elif p.num_gpus > 1:
        if p.sharding != "fsdp":
            sub.swap(f"--sharding {p.sharding}: torchtune's distributed recipes shard with FSDP2 (estimated as "
                     "--sharding fsdp)", sharding="fsdp")
        if p.offload_optimizer != p.offload_params:
            sub.swap("fsdp_cpu_offload moves parameters, gradients and optimizer states together (estimated with "
                     "both offloads)", offload_optimizer=True, offload_params=True)
    return sub


def recipe(job: Job) -> str:
    kind = "lora" if job.method.is_adapter else "full"
    return f"{kind}_finetune_{'distributed' if job.parallel.num_gpus > 1 else 'single_device'}"


def build(spec: ModelSpec, job: Job) -> Built:
    sub = adapt(spec, job)
    job = sub.job
    m, t, p = job.method, job.training, job.parallel
    b = builder(spec)
    model: dict[str, Any] = {"_component_": f"torchtune.models.{b.module}.{'lora_' if m.is_adapter else ''}{b.name}"}
    if m.is_adapter:
        names = ("q_proj", "k_proj", "v_proj", "o_proj") + MLP if isinstance(m.targets, str) else m.targets
        model.update(lora_attn_modules=[ATTN[n] for n in names if n in ATTN], apply_lora_to_mlp=names[-1] in MLP,
                     lora_rank=m.rank, lora_alpha=2 * m.rank, lora_dropout=m.lora_dropout,
                     use_dora=m.kind == "dora", quantize_base=m.kind == "qlora")
    folder = fill_in(f"local folder of {spec.name} (tune download {spec.name} --output-dir DIR)")
    tokenizer: dict[str, Any] = {"_component_": b.tokenizer}
    for arg in b.tokenizer_files:
        tokenizer[arg] = fill_in(f"tokenizer file ({arg}) in that folder")
    tokenizer["max_seq_len"] = t.seq_len
    o = t.optim
    optimizer: dict[str, Any] = {"_component_": o.component, **dict(o.torch_kwargs),
                                 "lr": 2e-4 if m.is_adapter else 2e-5}
    body: dict[str, Any] = {
        "output_dir": fill_in("output directory"),
        "model": model,
        "tokenizer": tokenizer,
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": folder,
                         "checkpoint_files": [fill_in("the *.safetensors files in that folder")],
                         "recipe_checkpoint": None, "output_dir": "${output_dir}", "model_type": b.model_type},
        "resume_from_checkpoint": False,
        "dataset": {"_component_": "torchtune.datasets.instruct_dataset", "source": "json",
                    "data_files": fill_in("dataset file (JSON lines with input/output)"), "split": "train",
                    "packed": True},
        "seed": None, "shuffle": True,
        "batch_size": t.micro_batch, "epochs": 1, "max_steps_per_epoch": None,
        "gradient_accumulation_steps": t.grad_accum,
        "optimizer": optimizer,
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 100},
        "loss": {"_component_": CHUNKED_LOSS},
        "clip_grad_norm": None, "compile": t.compilation.compiled,
        "device": "cuda", "dtype": next(k for k, v in DTYPES.items() if v == t.dtypes.torch_param_dtype),
        "enable_activation_checkpointing": t.checkpointing != "none",
        "enable_activation_offloading": t.checkpointing == "offload",
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": "${output_dir}/logs"},
        "log_every_n_steps": 1, "log_peak_memory_stats": True,
    }
    if m.is_adapter:
        body["save_adapter_weights_only"] = True
    else:
        body["optimizer_in_bwd"] = t.optimizer_in_backward
    if p.num_gpus > 1:
        body.update(fsdp_cpu_offload=p.offload_params, fsdp_reshard_after_forward=True)
    launch = (f"tune run {'--nproc_per_node ' + str(p.num_gpus) + ' ' if p.num_gpus > 1 else ''}"
              f"{recipe(job)} --config {{file}}")
    notes = ["optimizer lr and the scheduler are usual values (they do not change memory)"]
    if m.is_adapter:
        notes.append("lora_alpha is written as 2 x rank (it does not change memory)")
    return Built(job, body, tuple(sub.cannot), launch,
                 ("output_dir", "tokenizer", "checkpointer.checkpoint_dir", "checkpointer.checkpoint_files",
                  "dataset.data_files"), tuple(notes))


def read(cfg: dict[str, Any], load_json: Any = None) -> Read:
    f = Fields(cfg, "torchtune", load_json)
    s: dict[str, Any] = {"framework": FRAMEWORK}
    origin: dict[str, str] = {}
    notes: list[str] = []
    missing: dict[str, str] = {}
    model_cfg = f.get("model", dict, None, "a mapping with _component_")
    if not model_cfg or not isinstance(model_cfg.get("_component_"), str):
        raise TuneplanError("torchtune config has no model._component_ (the model builder)")
    comp = model_cfg["_component_"]
    known = _BY_COMPONENT.get(comp)
    name = comp.rsplit(".", 1)[-1]
    if known is None:
        kind = "qlora" if name.startswith("qlora_") else ("lora" if name.startswith("lora_") else "full")
        model = None
        notes.append(f"model builder {comp} is not in tuneplan's table; the model comes from the command line")
    else:
        model, kind = known
    if kind != "full":
        if model_cfg.get("apply_lora_to_output"):
            raise refuse("torchtune", "model.apply_lora_to_output", True, "LoRA on the output projection is not "
                                                                          "modelled")
        if model_cfg.get("quantize_base"):
            kind = "qlora"
        dora = model_cfg.get("use_dora", False)
        if dora and kind == "qlora":
            raise refuse("torchtune", "model.use_dora", True, "DoRA on a quantised base (QDoRA) is not modelled")
        s["method"] = "dora" if dora else kind
        attn = model_cfg.get("lora_attn_modules", [])
        if not isinstance(attn, list) or any(a not in ATTN.values() for a in attn):
            raise TuneplanError(f"torchtune field model.lora_attn_modules must list q_proj, k_proj, v_proj, "
                                f"output_proj; got {attn!r}")
        names = [k for k, v in ATTN.items() if v in attn] + (list(MLP) if model_cfg.get("apply_lora_to_mlp") else [])
        if not names:
            raise TuneplanError("torchtune config adapts no module (empty lora_attn_modules, no apply_lora_to_mlp)")
        s["targets"] = "all-linear" if len(names) == 7 else tuple(names)
        rank = model_cfg.get("lora_rank", 8)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise TuneplanError(f"torchtune field model.lora_rank must be a whole number >= 1, got {rank!r}")
        s["rank"] = rank
        dropout = model_cfg.get("lora_dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
            raise TuneplanError(f"torchtune field model.lora_dropout must be a number, got {dropout!r}")
        s["lora_dropout"] = float(dropout)
        if s["method"] == "qlora":
            s.update(quant="nf4", double_quant=True)
        origin.update(method="model._component_, quantize_base, use_dora", rank="model.lora_rank",
                      targets="model.lora_attn_modules, apply_lora_to_mlp", lora_dropout="model.lora_dropout")
    else:
        s["method"] = "full"
        origin["method"] = "model._component_"
    tok = f.get("tokenizer", dict, None, "a mapping")
    seq = (tok or {}).get("max_seq_len")
    if seq is None:
        missing["seq_len"] = "tokenizer.max_seq_len is null (sequences are as long as the data's)"
    elif not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise TuneplanError(f"torchtune field tokenizer.max_seq_len must be a whole number >= 1, got {seq!r}")
    else:
        s["seq_len"] = seq
        origin["seq_len"] = "tokenizer.max_seq_len"
    f.raw("dataset")
    read_counts(f, s, origin, {"batch_size": 1, "gradient_accumulation_steps": 1}, micro_batch="batch_size",
                grad_accum="gradient_accumulation_steps")
    s["optimizer"] = _optimizer(f.get("optimizer", dict, None, "a mapping with _component_"))
    origin["optimizer"] = "optimizer"
    if f.flag("optimizer_in_bwd", False):
        s["optimizer_in_backward"] = True
        origin["optimizer_in_backward"] = "optimizer_in_bwd"
    loss = f.get("loss", dict, None, "a mapping with _component_")
    if loss is not None and loss.get("_component_") != CHUNKED_LOSS:
        raise refuse("torchtune", "loss._component_", loss.get("_component_"),
                     f"tuneplan models the recipes' {CHUNKED_LOSS}")
    s["cross_entropy"] = loss_setting(Job.from_settings(framework=FRAMEWORK), chunked_loss())
    origin["cross_entropy"] = "loss"
    dtype = f.choice("dtype", DTYPES, "bf16")
    s["precision"] = precision_named(dtype, dtype if dtype == "bfloat16" else None)
    origin["precision"] = "dtype"
    gc = f.flag("enable_activation_checkpointing", False)
    off = f.flag("enable_activation_offloading", False)
    s["checkpointing"] = "offload" if gc and off else ("full" if gc else "none")
    origin["checkpointing"] = "enable_activation_checkpointing, enable_activation_offloading"
    if off and not gc:
        notes.append("enable_activation_offloading needs enable_activation_checkpointing (the recipes refuse it)")
    tp = f.raw("tensor_parallel_dim")
    if tp not in (None, 1):
        raise refuse("torchtune", "tensor_parallel_dim", tp, "only data parallelism is modelled")
    if f.has("fsdp_cpu_offload") or f.has("fsdp_reshard_after_forward"):
        s["sharding"] = "fsdp"
        origin["sharding"] = "fsdp_* fields (a distributed recipe)"
        if f.flag("fsdp_cpu_offload", False):
            s.update(offload_params=True, offload_optimizer=True)
            origin.update(offload_params="fsdp_cpu_offload", offload_optimizer="fsdp_cpu_offload")
        if f.flag("fsdp_reshard_after_forward", True) is False:
            s["sharding"] = "zero2"
            notes.append("fsdp_reshard_after_forward: false keeps parameters gathered between forward and backward "
                         "(estimated as --sharding zero2)")
        missing["num_gpus"] = "torchtune configs do not hold the GPU count (tune run --nproc_per_node does)"
    read_compile(f, s, origin, "compile")
    return Read(model, s, origin, tuple(f.read), tuple(f.defaults), tuple(notes), missing)


def _optimizer(cfg: dict[str, Any] | None) -> str:
    if not cfg or not isinstance(cfg.get("_component_"), str):
        raise TuneplanError("torchtune config has no optimizer._component_")
    comp = cfg["_component_"]
    found = [o for o in OPTIMIZERS.values() if o.component == comp]
    if not found:
        raise refuse("torchtune", "optimizer._component_", comp, "tuneplan models: "
                     + ", ".join(sorted({o.component for o in OPTIMIZERS.values() if o.component})))
    for o in found:
        if all(cfg.get(k, TORCH_DEFAULTS.get(k)) == v for k, v in o.torch_kwargs if k in TORCH_DEFAULTS):
            return o.name
    return found[0].name
