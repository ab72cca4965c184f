"""Command-line shell: parse arguments into Job values, call the core, render tables or JSON.

Every command lives in a module that exposes ``register(subparsers)``; the list in
COMMAND_MODULES wires them in. Errors raised as TuneplanError become one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from rich.console import Console

from tuneplan import __version__
from tuneplan.errors import TuneplanError
from tuneplan.job import (
    ATTENTION,
    CHECKPOINTING,
    FRAMEWORKS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    QUANT_TYPES,
    SHARDING,
    Job,
    Method,
    Parallel,
    Training,
    parse_targets,
)
from tuneplan.models import HUB_ENV

# Modules with a register(subparsers) function, one per command group.
COMMAND_MODULES = [
    "tuneplan.commands.estimate",
    "tuneplan.commands.trace",
    "tuneplan.commands.plan",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102
        sys.stderr.write(f"tuneplan: error: {message}\n")
        raise SystemExit(2)


def _int(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _method_name(text: str) -> str:
    """Accept qlora-nf4 / qlora-8bit spellings as qlora + --quant."""
    return text.lower()


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by estimate, trace, plan and probe (what the job is)."""
    p.add_argument("--hub", action="store_true",
                   help="allow fetching config.json of a model not in the catalog from the Hugging Face Hub "
                        "(HF_ENDPOINT, HF_TOKEN honoured; cached)")
    g = p.add_argument_group("method")
    g.add_argument("--method", type=_method_name, default="lora",
                   help=f"{' | '.join(METHODS)} (also qlora-nf4, qlora-fp4, qlora-8bit); default lora")
    g.add_argument("--rank", "-r", type=_int, default=16,
                   help="LoRA/DoRA rank (default 16; rsLoRA only rescales, same memory)")
    g.add_argument("--targets", default="all-linear",
                   help="LoRA targets: all-linear | attn | qv | mlp | comma list of module names")
    g.add_argument("--quant", default=None, help=f"qlora base-weight format: {' | '.join(QUANT_TYPES)} (default nf4)")
    g.add_argument("--no-double-quant", action="store_true", help="qlora without double quantisation")
    g.add_argument("--trainable-layers", type=_int, default=2, help="freeze: train the last K decoder layers")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on adapter inputs (default 0)")
    g.add_argument("--train-embeddings", action="store_true", help="also train embeddings and lm_head")
    t = p.add_argument_group("training")
    t.add_argument("--batch", "-b", type=_int, default=1, help="micro-batch per GPU (default 1)")
    t.add_argument("--seq-len", "-s", type=_int, default=2048, help="tokens per sequence (default 2048)")
    t.add_argument("--grad-accum", type=_int, default=1, help="gradient accumulation steps (default 1)")
    t.add_argument("--precision", default="bf16", help=f"{' | '.join(PRECISIONS)} (default bf16)")
    t.add_argument("--optimizer", "--optim", default="adamw", help=f"{' | '.join(OPTIMIZERS)} (default adamw)")
    t.add_argument("--checkpointing", "--gc", default="full",
                   help=f"gradient checkpointing: {' | '.join(CHECKPOINTING)} (default full)")
    t.add_argument("--attention", default="sdpa", help=f"{' | '.join(ATTENTION)} (default sdpa)")
    t.add_argument("--framework", default="hf", help=f"{' | '.join(FRAMEWORKS)} (default hf)")
    t.add_argument("--fused-ce", action="store_true", help="chunked/fused cross-entropy (no full fp32 logits)")
    d = p.add_argument_group("parallel")
    d.add_argument("--gpus", "-n", type=_int, default=1, help="number of GPUs (default 1)")
    d.add_argument("--sharding", default="ddp", help=f"{' | '.join(SHARDING)} (default ddp)")
    d.add_argument("--offload-optimizer", action="store_true", help="optimizer states in CPU RAM")
    d.add_argument("--offload-params", action="store_true", help="parameters in CPU RAM (zero3/fsdp)")


def job_from_args(args: argparse.Namespace) -> Job:
    """Build the immutable Job from parsed arguments (validation happens in the dataclasses)."""
    kind = args.method
    quant = args.quant
    if kind.startswith("qlora-"):
        suffix = kind.split("-", 1)[1]
        quant = {"8bit": "int8", "int8": "int8", "nf4": "nf4", "fp4": "fp4", "4bit": "nf4"}.get(suffix)
        if quant is None:
            raise TuneplanError(f"unknown method {kind!r}; choose one of: {', '.join(METHODS)}, qlora-nf4, qlora-8bit")
        kind = "qlora"
    method = Method(
        kind=kind, rank=args.rank, targets=parse_targets(args.targets), quant=quant or "nf4",
        double_quant=not args.no_double_quant, trainable_layers=args.trainable_layers,
        lora_dropout=args.lora_dropout, train_embeddings=args.train_embeddings,
    )
    training = Training(
        micro_batch=args.batch, seq_len=args.seq_len, grad_accum=args.grad_accum, precision=args.precision,
        optimizer=args.optimizer, checkpointing=args.checkpointing, attention=args.attention,
        framework=args.framework, fused_ce=args.fused_ce,
    )
    parallel = Parallel(num_gpus=args.gpus, sharding=args.sharding, offload_optimizer=args.offload_optimizer,
                        offload_params=args.offload_params)
    return Job(method, training, parallel)


def make_console(stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal (a pipe, a file, CI), use a wide page so
    tables are not squeezed into 80 columns (COLUMNS still wins when set)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=200)
    return console


def print_json(obj: Any) -> None:
    """Write JSON to stdout (sorted keys stay in dataclass order)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuneplan", description="Plan an LLM fine-tune: memory, fit, time, cost.")
    parser.add_argument("--version", action="version", version=f"tuneplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "hub", False):
        os.environ[HUB_ENV] = "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TuneplanError as e:
        sys.stderr.write(f"tuneplan: error: {e}\n")
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
