"""Options shared by the commands, defined once: the job (estimate, plan, matrix, trace)
and the dataset (plan). Each job option's `dest` is its Job.from_settings name, so the
same table turns parsed arguments into a Job and a fit change's settings back into flags.
"""

from __future__ import annotations

import argparse
import math
import re
from functools import cache
from typing import Any

from tuneplan.errors import TuneplanError
from tuneplan.job import (
    ATTENTION_NAMES,
    CHECKPOINTING,
    CROSS_ENTROPY_NAMES,
    FRAMEWORK_NAMES,
    METHODS,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    QUANT_TYPES,
    SHARDING,
    TASK_NAMES,
    Job,
)
from tuneplan.timing import Dataset

_QLORA_SPELLINGS = {"8bit": "int8", "int8": "int8", "nf4": "nf4", "fp4": "fp4", "4bit": "nf4"}


def whole(text: str) -> int:
    """A whole number from the command line ('1_000' allowed)."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def count(text: str) -> int:
    """'100M' -> 100_000_000; '50k', '2.5B', '1_000' also accepted."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*", text.replace("_", "").replace(",", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"expected a count like 50000, 50k, 100M or 2B, got {text!r}")
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def add_hub_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", action="store_true",
                   help="allow fetching config.json of a model not in the catalog from the Hugging Face Hub "
                        "(HF_ENDPOINT, HF_TOKEN honoured; cached)")


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by estimate, trace, plan, matrix (what the job is)."""
    add_hub_argument(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", dest="method", type=str.lower, default="lora",
                   help=f"{' | '.join(METHODS)} (also qlora-nf4, qlora-fp4, qlora-8bit); default lora")
    g.add_argument("--rank", "-r", dest="rank", type=whole, default=16,
                   help="LoRA/DoRA rank (default 16; rsLoRA only rescales, same memory)")
    g.add_argument("--targets", dest="targets", default="all-linear",
                   help="LoRA targets: all-linear | attn | qv | mlp | comma list of module names")
    g.add_argument("--quant", dest="quant", default=None,
                   help=f"qlora base-weight format: {' | '.join(QUANT_TYPES)} (default nf4)")
    g.add_argument("--no-double-quant", dest="double_quant", action="store_false",
                   help="qlora without double quantisation")
    g.add_argument("--trainable-layers", dest="trainable_layers", type=whole, default=2,
                   help="freeze: train the last K decoder layers")
    g.add_argument("--lora-dropout", dest="lora_dropout", type=float, default=0.0,
                   help="dropout on adapter inputs (default 0)")
    g.add_argument("--train-embeddings", dest="train_embeddings", action="store_true",
                   help="also train embeddings and lm_head")
    t = p.add_argument_group("training")
    t.add_argument("--task", dest="task", default="sft", help=f"{' | '.join(TASK_NAMES)} (default sft; only sft is modelled)")
    t.add_argument("--batch", "-b", dest="micro_batch", type=whole, default=1, help="micro-batch per GPU (default 1)")
    t.add_argument("--seq-len", "-s", dest="seq_len", type=whole, default=2048, help="tokens per sequence (default 2048)")
    t.add_argument("--grad-accum", dest="grad_accum", type=whole, default=1,
                   help="gradient accumulation steps (default 1)")
    t.add_argument("--precision", dest="precision", default="bf16", help=f"{' | '.join(PRECISION_NAMES)} (default bf16)")
    t.add_argument("--optimizer", "--optim", dest="optimizer", default="adamw",
                   help=f"{' | '.join(OPTIMIZER_NAMES)} (default adamw)")
    t.add_argument("--checkpointing", "--gc", dest="checkpointing", default="full",
                   help=f"gradient checkpointing: {' | '.join(CHECKPOINTING)} (default full)")
    t.add_argument("--attention", dest="attention", default="sdpa", help=f"{' | '.join(ATTENTION_NAMES)} (default sdpa)")
    t.add_argument("--framework", dest="framework", default="hf", help=f"{' | '.join(FRAMEWORK_NAMES)} (default hf)")
    t.add_argument("--cross-entropy", dest="cross_entropy", default=None,
                   help=f"{' | '.join(CROSS_ENTROPY_NAMES)} (default: the framework's; hf plain, torchtune "
                        "chunked, unsloth fused)")
    t.add_argument("--fused-ce", dest="fused_ce", action="store_true",
                   help="fused linear cross-entropy (Liger/Unsloth): same as --cross-entropy fused")
    d = p.add_argument_group("parallel")
    d.add_argument("--gpus", "-n", dest="num_gpus", type=whole, default=1, help="number of GPUs (default 1)")
    d.add_argument("--sharding", dest="sharding", default="ddp", help=f"{' | '.join(SHARDING)} (default ddp)")
    d.add_argument("--offload-optimizer", dest="offload_optimizer", action="store_true",
                   help="optimizer states in CPU RAM")
    d.add_argument("--offload-params", dest="offload_params", action="store_true",
                   help="parameters in CPU RAM (zero3/fsdp)")
    d.add_argument("--tp", dest="tensor", type=whole, default=1, help="tensor-parallel degree (not computed yet)")
    d.add_argument("--pp", dest="pipeline", type=whole, default=1, help="pipeline-parallel degree (not computed yet)")


@cache
def _job_actions() -> dict[str, argparse.Action]:
    """dest -> the option that sets it, from the one definition above."""
    p = argparse.ArgumentParser(add_help=False)
    add_job_arguments(p)
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "hub"}


def job_from_args(args: argparse.Namespace) -> Job:
    """Build the immutable Job from parsed arguments (validation happens in the core)."""
    settings: dict[str, Any] = {dest: getattr(args, dest) for dest in _job_actions()}
    kind = settings["method"]
    if kind.startswith("qlora-"):
        quant = _QLORA_SPELLINGS.get(kind.split("-", 1)[1])
        if quant is None:
            raise TuneplanError(f"unknown method {kind!r}; choose one of: {', '.join(METHODS)}, qlora-nf4, qlora-8bit")
        settings["method"], settings["quant"] = "qlora", quant
    if settings["quant"] is None:
        settings.pop("quant")
    if isinstance(settings["lora_dropout"], float) and not math.isfinite(settings["lora_dropout"]):
        raise TuneplanError(f"--lora-dropout must be a finite number, got {settings['lora_dropout']}")
    return Job.from_settings(**settings)


def flag_text(settings: dict[str, Any]) -> str:
    """Settings -> the flags that set them: {'micro_batch': 2, 'grad_accum': 4} -> '--batch 2 --grad-accum 4'."""
    actions = _job_actions()
    out = []
    for name, value in settings.items():
        a = actions.get(name)
        if a is None:
            out.append(f"{name}={value}")
        elif a.nargs == 0:  # store_true / store_false: the flag only when it changes the default
            if value != a.default:
                out.append(a.option_strings[0])
        else:
            out.append(f"{a.option_strings[0]} {value}")
    return " ".join(out)


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset-tokens", type=count, help="tokens per epoch, e.g. 100M (packed)")
    g.add_argument("--samples", type=count, help="number of samples (with --mean-tokens)")
    g.add_argument("--mean-tokens", type=float, help="mean tokens per sample (with --samples)")
    g.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    if args.samples is not None or args.mean_tokens is not None:
        if args.samples is None or args.mean_tokens is None:
            raise TuneplanError("--samples and --mean-tokens go together")
        if args.dataset_tokens is not None:
            raise TuneplanError("give either --dataset-tokens or --samples with --mean-tokens, not both")
        if not math.isfinite(args.mean_tokens):
            raise TuneplanError(f"--mean-tokens must be a finite number, got {args.mean_tokens}")
        return Dataset.from_samples(args.samples, args.mean_tokens, args.epochs)
    if args.dataset_tokens is None:
        raise TuneplanError("give the dataset size: --dataset-tokens 100M, or --samples 50k --mean-tokens 2048")
    return Dataset(args.dataset_tokens, args.epochs)
