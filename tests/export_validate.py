"""Load exported files with each training stack's own parser; run by tests/test_export.py in a
subprocess per library (the libraries set global state, and some patch transformers).

    python tests/export_validate.py LIBRARY FILE [FILE ...]

prints one JSON line per file: {"path", "ok", "error", "parsed"} where `parsed` holds what the
library read (batch, sequence length, rank, quantisation, ZeRO stage, ...), so the test can
check the library understood each setting as tuneplan meant it. The machine has no GPU: the
stacks' "bf16 needs a GPU" checks are told a bf16 GPU is present, and LLaMA-Factory's
"DeepSpeed/FSDP need a distributed launch" check is told the run is distributed.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import traceback
import types
from pathlib import Path

VALIDATORS = Path(sys.prefix) / "validators"  # axolotl, llamafactory, torchtune (Makefile VALIDATORS)
sys.path.append(str(VALIDATORS))
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # llamafactory pins transformers <= 5.6
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# unslothai/unsloth (not installable without a GPU): the keyword arguments of
# FastLanguageModel.from_pretrained (unsloth/models/loader.py) and FastLlamaModel.get_peft_model
# (unsloth/models/llama.py), read at commit 0050c73 of the repository
UNSLOTH_FROM_PRETRAINED = {"model_name", "max_seq_length", "dtype", "load_in_4bit", "load_in_8bit", "load_in_16bit",
                           "full_finetuning", "token", "device_map", "rope_scaling", "fix_tokenizer",
                           "trust_remote_code", "use_gradient_checkpointing", "resize_model_vocab", "revision",
                           "use_exact_model_name", "offload_embedding", "float32_mixed_precision", "fast_inference",
                           "gpu_memory_utilization", "float8_kv_cache", "random_state", "max_lora_rank",
                           "disable_log_stats", "qat_scheme", "load_in_fp8", "unsloth_tiled_mlp", "text_only"}
UNSLOTH_GET_PEFT_MODEL = {"r", "target_modules", "lora_alpha", "lora_dropout", "bias", "layers_to_transform",
                          "layers_pattern", "use_gradient_checkpointing", "random_state", "max_seq_length",
                          "use_rslora", "modules_to_save", "init_lora_weights", "loftq_config", "temporary_location",
                          "qat_scheme", "target_parameters", "ensure_weight_tying"}


def _value(x: object) -> str:
    """An enum member's value, or the string itself (the libraries keep either)."""
    return str(getattr(x, "value", x))


def _bf16_gpu() -> None:
    import transformers.training_args as ta

    ta.is_torch_bf16_gpu_available = lambda *a, **k: True


def _resolve_auto(ds: dict, micro: int, accum: int) -> dict:
    """An HF-embedded DeepSpeed config with its "auto" values filled as the Trainer fills them."""
    out = json.loads(json.dumps(ds))
    out["train_micro_batch_size_per_gpu"] = micro
    out["gradient_accumulation_steps"] = accum
    out["gradient_clipping"] = 1.0
    for key in ("bf16", "fp16"):
        if isinstance(out.get(key), dict) and out[key].get("enabled") == "auto":
            out[key]["enabled"] = True
    return out


def _deepspeed(cfg: dict, world: int) -> dict:
    import deepspeed.comm as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    class MPU:
        def get_data_parallel_world_size(self) -> int:
            return world

    dist.get_rank = lambda *a, **k: 0
    c = DeepSpeedConfig({k: v for k, v in cfg.items()}, mpu=MPU())
    z = c.zero_config
    return {"stage": int(c.zero_optimization_stage),
            "offload_optimizer": bool(z.offload_optimizer and z.offload_optimizer.device == "cpu"),
            "offload_param": bool(z.offload_param and z.offload_param.device == "cpu"),
            "bf16": bool(c.bfloat16_config.enabled),
            "bf16_master": bool(c.bfloat16_config.bf16_master_weights_and_grads),
            "micro_batch": c.train_micro_batch_size_per_gpu, "grad_accum": c.gradient_accumulation_steps,
            "train_batch_size": c.train_batch_size}


def trl(path: str) -> dict:
    _bf16_gpu()
    from accelerate.commands.launch import launch_command_parser
    from trl import (
        DatasetMixtureConfig,
        ModelConfig,
        ScriptArguments,
        SFTConfig,
        TrlParser,
        get_peft_config,
        get_quantization_config,
    )

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    _, t, m, _, config_rest, _ = parser.parse_args_and_config(["--config", path], return_remaining_strings=True,
                                                              separate_remaining_strings=True)
    launch = launch_command_parser().parse_args(config_rest + ["train.py"])  # what `trl sft` hands accelerate
    peft = get_peft_config(m)
    q = get_quantization_config(m)
    out = {"micro_batch": t.per_device_train_batch_size, "grad_accum": t.gradient_accumulation_steps,
           "seq_len": t.max_length, "bf16": t.bf16, "fp16": t.fp16, "optim": _value(t.optim),
           "gradient_checkpointing": bool(t.gradient_checkpointing), "activation_offloading": t.activation_offloading,
           "dtype": m.dtype, "attn": m.attn_implementation, "num_processes": launch.num_processes,
           "rank": peft.r if peft else None, "targets": sorted(peft.target_modules) if peft and not isinstance(
               peft.target_modules, str) else (peft.target_modules if peft else None),
           "use_dora": bool(peft and peft.use_dora),
           "load_in_4bit": bool(q and q.load_in_4bit), "load_in_8bit": bool(q and q.load_in_8bit),
           "quant_type": q.bnb_4bit_quant_type if q and q.load_in_4bit else None,
           "double_quant": bool(q and q.bnb_4bit_use_double_quant), "fsdp": bool(t.fsdp),
           "fsdp_offload": bool(t.fsdp and (t.fsdp_config or {}).get("cpu_offload"))}
    if t.deepspeed:
        out["deepspeed"] = _deepspeed(_resolve_auto(t.deepspeed, t.per_device_train_batch_size,
                                                    t.gradient_accumulation_steps), launch.num_processes or 1)
    return out


def axolotl(path: str) -> dict:
    import yaml
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(yaml.safe_load(Path(path).read_text()))
    prepare_plugins(cfg)
    c = validate_config(cfg)
    out = {"adapter": c.adapter, "load_in_4bit": bool(c.load_in_4bit), "load_in_8bit": bool(c.load_in_8bit),
           "rank": c.lora_r, "seq_len": c.sequence_len, "micro_batch": c.micro_batch_size,
           "grad_accum": c.gradient_accumulation_steps, "optimizer": str(c.optimizer),
           "gradient_checkpointing": c.gradient_checkpointing, "activation_offloading": c.activation_offloading,
           "liger_flce": bool(c.get("liger_fused_linear_cross_entropy")),
           "chunked_ce": bool(c.get("chunked_cross_entropy")), "bf16": c.bf16, "fp16": c.fp16,
           "attn": c.attn_implementation, "unfrozen": c.get("unfrozen_parameters"),
           "fsdp": bool(c.get("fsdp_config")), "bnb": c.get("bnb_config_kwargs"), "use_dora": bool(c.peft_use_dora)}
    if c.deepspeed:
        out["deepspeed"] = _deepspeed(_resolve_auto(c.deepspeed, c.micro_batch_size, c.gradient_accumulation_steps), 8)
    return out


def llamafactory(path: str) -> dict:
    import yaml

    _bf16_gpu()
    import llamafactory.hparams.parser as lp
    import transformers.training_args as ta
    from llamafactory.hparams import get_train_args
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    lp.is_torch_bf16_gpu_available = lambda *a, **k: True
    lp.check_version = lambda *a, **k: None  # liger-kernel, a GPU library, is not installed here
    cfg = yaml.safe_load(Path(path).read_text())
    distributed = "deepspeed" in cfg or "fsdp" in cfg
    original = ta.TrainingArguments.parallel_mode
    if distributed:  # as under FORCE_TORCHRUN=1
        ta.TrainingArguments.parallel_mode = property(lambda self: ta.ParallelMode.DISTRIBUTED)
    try:
        m, d, t, f, _ = get_train_args(cfg)
    finally:
        ta.TrainingArguments.parallel_mode = original
        unset_hf_deepspeed_config()
    out = {"finetuning_type": f.finetuning_type, "rank": f.lora_rank, "targets": f.lora_target,
           "use_dora": f.use_dora, "quant_bit": m.quantization_bit, "quant_type": m.quantization_type,
           "double_quant": m.double_quantization, "seq_len": cfg.get("cutoff_len"), "micro_batch":
           t.per_device_train_batch_size, "grad_accum": t.gradient_accumulation_steps, "optim": _value(t.optim),
           "bf16": t.bf16, "fp16": t.fp16, "pure_bf16": f.pure_bf16, "gc_off": m.disable_gradient_checkpointing,
           "unsloth_gc": m.use_unsloth_gc, "liger": m.enable_liger_kernel, "flash_attn": _value(m.flash_attn),
           "freeze_layers": f.freeze_trainable_layers, "fsdp": bool(t.fsdp)}
    if t.deepspeed:
        ds = cfg["deepspeed"]
        out["deepspeed"] = _deepspeed(_resolve_auto(ds, t.per_device_train_batch_size, t.gradient_accumulation_steps), 8)
    return out


def torchtune(path: str) -> dict:
    import re

    import torch
    import torchtune as tt
    from omegaconf import OmegaConf
    from torchtune import config
    from torchtune.modules.peft import get_adapter_params

    cfg = OmegaConf.load(path)
    config.validate(cfg)
    recipe = ("lora" if "lora_" in cfg.model._component_ else "full") + (
        "_finetune_distributed" if "fsdp_cpu_offload" in cfg else "_finetune_single_device")
    source = (Path(tt.__file__).parent.parent / "recipes" / f"{recipe}.py").read_text()
    unread = [k for k in cfg if not re.search(rf"cfg\.{k}\b|[\"']{k}[\"']", source)]
    if unread:
        raise ValueError(f"{recipe} does not read {unread}")
    with torch.device("meta"):
        model = config.instantiate(cfg.model)
    adapter = sum(p.numel() for p in get_adapter_params(model).values()) if "lora_" in cfg.model._component_ else 0
    return {"recipe": recipe, "adapter_params": adapter, "micro_batch": cfg.batch_size,
            "seq_len": cfg.tokenizer.max_seq_len, "dtype": cfg.dtype}


def deepspeed(path: str) -> dict:
    cfg = json.loads(Path(path).read_text())
    world = cfg["train_batch_size"] // (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"])
    return _deepspeed(cfg, world) | {"world": world}


def accelerate(path: str) -> dict:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", path, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    out = {"num_processes": args.num_processes, "mixed_precision": args.mixed_precision,
           "fsdp": bool(args.use_fsdp), "deepspeed": bool(args.use_deepspeed)}
    if args.use_fsdp:
        os.environ.update(prepare_multi_gpu_env(args))
        p = FullyShardedDataParallelPlugin()
        offload = type(p.cpu_offload).__name__ == "CPUOffloadPolicy" or getattr(p.cpu_offload, "offload_params", 0) is True
        out.update(fsdp_version=p.fsdp_version, offload=offload, reshard=p.reshard_after_forward)
    elif args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
        os.environ.update(prepare_deepspeed_cmd_env(args)[1])
        p = DeepSpeedPlugin()
        out.update(stage=p.zero_stage, offload_optimizer=p.offload_optimizer_device,
                   offload_param=p.offload_param_device)
    return out


def unsloth(path: str) -> dict:
    _bf16_gpu()
    from peft import LoraConfig
    from trl import SFTConfig

    tree = ast.parse(Path(path).read_text())
    compile(tree, path, "exec")
    fake_torch = types.SimpleNamespace(bfloat16="bfloat16", float16="float16", float32="float32")
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = eval(compile(ast.Expression(node.value), path, "eval"),  # noqa: S307
                                             {"torch": fake_torch, "OUTPUT_DIR": "out", "dict": dict})
    load, train, lora = found["LOAD"], found["TRAIN"], found.get("LORA")
    if set(load) - UNSLOTH_FROM_PRETRAINED:
        raise ValueError(f"FastLanguageModel.from_pretrained has no {sorted(set(load) - UNSLOTH_FROM_PRETRAINED)}")
    sft = SFTConfig(**train)
    out = {"micro_batch": sft.per_device_train_batch_size, "seq_len": sft.max_length, "optim": _value(sft.optim),
           "load_in_4bit": load["load_in_4bit"], "full": load["full_finetuning"]}
    if lora is not None:
        if set(lora) - UNSLOTH_GET_PEFT_MODEL:
            raise ValueError(f"get_peft_model has no {sorted(set(lora) - UNSLOTH_GET_PEFT_MODEL)}")
        cfg = LoraConfig(**{k: v for k, v in lora.items() if k in LoraConfig.__dataclass_fields__})
        out.update(rank=cfg.r, gc=lora["use_gradient_checkpointing"])
    return out


def main() -> None:
    library, paths = sys.argv[1], sys.argv[2:]
    check = globals()[library]
    for path in paths:
        try:
            print(json.dumps({"path": path, "ok": True, "parsed": check(path)}, default=str), flush=True)
        except BaseException as e:  # noqa: BLE001 - report every failure as data
            first = (str(e).strip().splitlines() or [""])[0][:500]
            print(json.dumps({"path": path, "ok": False, "error": f"{type(e).__name__}: {first}",
                              "trace": traceback.format_exc()[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
