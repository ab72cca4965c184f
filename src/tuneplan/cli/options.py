"""Options shared by the commands, defined once: the job (estimate, plan, matrix, trace)
and the dataset (plan). Each job option's `dest` is its Job.from_settings name, so the
same table turns parsed arguments into a Job and a fit change's settings back into flags.

Valued job options default to None, so a command knows which ones were given (a given
option that the method or the command would ignore is refused, not dropped); every count
goes through tuneplan.units.parse_count (4096, 2k, 1e8, 100M, 1_000: k = 1000), every
token length (--seq-len) through parse_token_length (8k = 8,192: k = 1024), and every other
number through parse_number (finite only); every name is case-insensitive. NOT_TAKEN says
which job options a command does not take: they are left out of its --help and refused,
with the table's reason, when given.
"""

from __future__ import annotations

import argparse
from functools import cache
from typing import Any

from tuneplan.checks import check_device_count, check_job
from tuneplan.choices.tasks import REF_MODELS
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device, resolve_device
from tuneplan.job import (
    ATTENTION_NAMES,
    CHECKPOINTING,
    COMPILE_NAMES,
    CROSS_ENTROPY_NAMES,
    FRAMEWORK_NAMES,
    GENERATION_ENGINE_NAMES,
    KBIT_PREP_NAMES,
    METHODS,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    QUANT_TYPES,
    RUNTIME_NAMES,
    SHARDING,
    STACK_NAMES,
    TARGET_PRESETS,
    TASK_NAMES,
    Job,
)
from tuneplan.models import ModelSpec, resolve_model
from tuneplan.plan import make_dataset
from tuneplan.timing import Dataset
from tuneplan.units import parse_count, parse_number, parse_token_length


def count(text: str) -> int:
    """Every count on the command line: 4096, 2k, 2.5k, 1e8, 100M, 2B, 1_000, 1,000 (k = 1000)."""
    try:
        return parse_count(text)
    except TuneplanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def token_length(text: str) -> int:
    """A token length (--seq-len): 4096, 8k = 8,192, 2.5k = 2,560, 128k = 131,072 (k = 1024,
    as context lengths are in every stack); counts and dataset sizes stay decimal (`count`)."""
    try:
        return parse_token_length(text)
    except TuneplanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# said at the end of every job command's --help
NUMBERS_EPILOG = ("Numbers: 4096, 2.5k, 1e8, 100M, 1_000. Token lengths (--seq-len) use k = 1024, as context "
                  "lengths are powers of two in every stack: --seq-len 8k is 8,192 tokens. Counts and dataset "
                  "sizes use k = 1000: --dataset-tokens 100M is 100,000,000 tokens, --samples 50k is 50,000, "
                  "--mean-tokens 1.5k is 1,500.")


whole = count  # one parser for every count (the old name, kept for callers)


def number(text: str) -> float:
    """A finite number on the command line (0.5, 600, 2k, 1e-3); NaN and infinity are refused."""
    try:
        return float(parse_number(text))
    except TuneplanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def name(text: str) -> str:
    """A choice name: case-insensitive, surrounding spaces dropped."""
    return text.strip().lower()


def add_hub_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", action="store_true",
                   help="allow fetching config.json of a model not in the catalog from the Hugging Face Hub "
                        "(HF_ENDPOINT, HF_TOKEN honoured; cached)")
    p.add_argument("--allow-long-context", action="store_true",
                   help="accept a --seq-len longer than the model's max_position_embeddings (e.g. RoPE scaling)")


# options of the model, not of the job
_NOT_JOB = ("hub", "allow_long_context")


# The names each named job option takes, by its long option: the help texts below and the web
# page's form (tuneplan.web) read this one table.
CHOICES: dict[str, tuple[str, ...]] = {
    "method": (*METHODS[:3], "qlora-8bit", *METHODS[3:]), "quant": QUANT_TYPES, "targets": tuple(TARGET_PRESETS),
    "precision": PRECISION_NAMES, "optimizer": OPTIMIZER_NAMES, "checkpointing": CHECKPOINTING,
    "attention": ATTENTION_NAMES, "framework": FRAMEWORK_NAMES, "cross-entropy": CROSS_ENTROPY_NAMES,
    "compile": COMPILE_NAMES, "kbit-prep": KBIT_PREP_NAMES, "runtime": RUNTIME_NAMES, "sharding": SHARDING, "task": TASK_NAMES, "ref-model": REF_MODELS,
    "generation-engine": GENERATION_ENGINE_NAMES,
    "stack": STACK_NAMES,
}


# Job options a command does not take, by dest, each with the one line that refuses it: the
# command's --help leaves them out and a given one is refused (given_settings), so the help
# lists exactly what the command takes. In each command's order of precedence.
_NOT_REPLAYED = ("trace does not replay {flag} yet (pipeline, context and expert parallelism, several machines: "
                 "estimated analytically); it replays --gpus N with --tp, --sequence-parallel and --sharding")
_NO_OFFLOAD = ("trace runs one process on one device and cannot offload; drop {flag} (offload is estimated "
               "analytically)")
_NO_ROLLOUT = ("trace replays one training step of sft and the offline preference tasks; drop {flag} (an online "
               "task's generation phase is estimated analytically: tuneplan estimate --task grpo)")
NOT_TAKEN: dict[str, dict[str, str]] = {
    "plan": {"num_gpus": "plan chooses the GPU count for each device; drop --gpus (cap it with --max-gpus)"},
    "matrix": {"method": "matrix compares methods: use --methods (a comma list), not --method",
               "kbit_prep": "matrix builds one job for every method and --kbit-prep prepares a QLoRA model only; "
                            "drop {flag} (estimate --method qlora {flag} ... gives its figures)"},
    "trace": {"offload_optimizer": _NO_OFFLOAD, "offload_params": _NO_OFFLOAD,
              **{dest: _NOT_REPLAYED for dest in ("pipeline", "virtual_stages", "context", "expert", "nodes")},
              **{dest: _NO_ROLLOUT for dest in ("num_generations", "prompt_len", "completion_len", "generation_engine",
                                                "vllm_memory_utilization", "generation_gpus", "vllm_sleep")}},
}


def add_job_arguments(p: argparse.ArgumentParser, command: str | None = None) -> None:
    """Options shared by estimate, trace, plan, matrix (what the job is); those `command` does
    not take (NOT_TAKEN) are parsed but left out of its --help (hide_not_taken), and refused
    when given."""
    if command is not None:
        p.set_defaults(_command=command)
        p.epilog = p.epilog or NUMBERS_EPILOG
    add_hub_argument(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", dest="method", type=name, default=None,
                   help=f"{' | '.join(METHODS)} (also qlora-nf4, qlora-fp4, qlora-8bit); default lora")
    g.add_argument("--rank", "-r", dest="rank", type=count, default=None,
                   help="LoRA/DoRA rank (default 16; rsLoRA only rescales, same memory)")
    g.add_argument("--targets", dest="targets", type=name, default=None,
                   help="LoRA targets: all-linear | attn | qv | mlp | comma list of module names (default all-linear)")
    g.add_argument("--quant", dest="quant", type=name, default=None,
                   help=f"qlora base-weight format: {' | '.join(QUANT_TYPES)} (default nf4; --framework mlx: "
                        "mlx4, MLX affine 4-bit, group size 64)")
    g.add_argument("--no-double-quant", dest="double_quant", action="store_false",
                   help="qlora without double quantisation")
    g.add_argument("--trainable-layers", dest="trainable_layers", type=count, default=None,
                   help="freeze: train the last K decoder layers (default 2)")
    g.add_argument("--lora-layers", dest="lora_layers", type=count, default=None,
                   help="--framework mlx: adapt (or, with --method full, train) only the last N decoder layers "
                        "(mlx-lm num_layers, default 16)")
    g.add_argument("--lora-dropout", dest="lora_dropout", type=number, default=None,
                   help="dropout on adapter inputs (default 0)")
    g.add_argument("--train-embeddings", dest="train_embeddings", action="store_true",
                   help="also train embeddings and lm_head")
    t = p.add_argument_group("training")
    t.add_argument("--task", dest="task", type=name, default=None,
                   help=f"{' | '.join(TASK_NAMES)} (default sft; ppo is not modelled: TRL 1.16 has no PPOTrainer)")
    t.add_argument("--ref-model", dest="ref_model", type=name, default=None,
                   help=f"reference policy of dpo/kto: {' | '.join(REF_MODELS)} (default: TRL's, separate for "
                        "full fine-tuning, adapter disabled for LoRA/QLoRA)")
    t.add_argument("--batch", "-b", dest="micro_batch", type=count, default=None,
                   help="micro-batch per GPU (default 1; grpo/rloo: completions, online-dpo: prompts, TRL's "
                        "per_device_train_batch_size, default 8)")
    t.add_argument("--seq-len", "-s", dest="seq_len", type=token_length, default=None,
                   help="tokens per sequence, e.g. 4096 or 8k (k = 1024: 8k = 8,192; default 2048)")
    t.add_argument("--grad-accum", dest="grad_accum", type=count, default=None,
                   help="gradient accumulation steps (default 1)")
    t.add_argument("--precision", dest="precision", type=name, default=None,
                   help=f"{' | '.join(PRECISION_NAMES)} (default bf16)")
    t.add_argument("--optimizer", "--optim", dest="optimizer", type=optimizer_name, default=None,
                   help=f"{' | '.join(OPTIMIZER_NAMES)} (default adamw; transformers' TrainingArguments.optim "
                        "names too: adamw_torch_fused, adamw_torch, adamw_8bit, paged_adamw_8bit, lion_8bit, ...)")
    t.add_argument("--checkpointing", "--gc", dest="checkpointing", type=name, default=None,
                   help=f"gradient checkpointing: {' | '.join(CHECKPOINTING)} (default full)")
    t.add_argument("--attention", dest="attention", type=name, default=None,
                   help=f"{' | '.join(ATTENTION_NAMES)} (default sdpa)")
    t.add_argument("--framework", dest="framework", type=name, default=None,
                   help=f"{' | '.join(FRAMEWORK_NAMES)} (default hf)")
    t.add_argument("--cross-entropy", dest="cross_entropy", type=name, default=None,
                   help=f"{' | '.join(CROSS_ENTROPY_NAMES)} (default: the framework's; hf plain, torchtune "
                        "chunked, unsloth fused)")
    t.add_argument("--fused-ce", dest="fused_ce", action="store_true",
                   help="fused linear cross-entropy (Liger/Unsloth): same as --cross-entropy fused")
    t.add_argument("--optimizer-in-backward", dest="optimizer_in_backward", action="store_true",
                   help="step each parameter during backward and free its gradient (torchtune optimizer_in_bwd)")
    t.add_argument("--compile", dest="compile", type=name, nargs="?", const="inductor", default=None,
                   help=f"torch.compile: {' | '.join(COMPILE_NAMES)} (--compile alone: inductor; default none)")
    t.add_argument("--kbit-prep", dest="kbit_prep", type=name, default=None,
                   help=f"QLoRA with bitsandbytes: how the script prepares the quantised model: "
                        f"{' | '.join(KBIT_PREP_NAMES)} (default none; peft = peft.prepare_model_for_kbit_training, "
                        "which upcasts embeddings, lm_head and norms to fp32; trl-bf16 = TRL SFTTrainer before 2025-12)")
    t.add_argument("--runtime", dest="runtime", type=name, default=None,
                   help=f"execution backend: {' | '.join(RUNTIME_NAMES)} (default: the framework's on the --gpu "
                        "device's vendor; hf cuda, mlx mlx-metal)")
    t.add_argument("--stack", dest="stack", default="current",
                   help=f"library versions: {' | '.join(STACK_NAMES)} (default current)")
    o = p.add_argument_group("online RL (grpo, rloo, online-dpo; ppo with --framework verl)")
    o.add_argument("--num-generations", dest="num_generations", type=count, default=None,
                   help="completions per prompt (TRL num_generations; default grpo 8, rloo 2, ppo 1; online-dpo fixed 2)")
    o.add_argument("--prompt-len", dest="prompt_len", type=token_length, default=None,
                   help="prompt tokens per row, k = 1024 (default 512)")
    o.add_argument("--completion-len", dest="completion_len", type=token_length, default=None,
                   help="max_completion_length, k = 1024 (default 512); --seq-len defaults to prompt + completion")
    o.add_argument("--generation-engine", dest="generation_engine", type=name, default=None,
                   help=f"{' | '.join(GENERATION_ENGINE_NAMES)} (default hf: TRL's use_vllm False; --framework verl: vllm-colocate)")
    o.add_argument("--vllm-memory-utilization", dest="vllm_memory_utilization", type=number, default=None,
                   help="vLLM gpu_memory_utilization: the share of each GPU's memory it reserves (default 0.3; verl 0.5)")
    o.add_argument("--generation-gpus", dest="generation_gpus", type=count, default=None,
                   help="GPUs running the vLLM server, besides the GPUs that train (vllm-server; default 1)")
    o.add_argument("--vllm-sleep", dest="vllm_sleep", action="store_true",
                   help="vLLM sleep mode (vllm_enable_sleep_mode): its share is freed outside generation")
    d = p.add_argument_group("parallel")
    d.add_argument("--gpus", "-n", dest="num_gpus", type=count, default=None, help="number of GPUs (default 1)")
    d.add_argument("--sharding", dest="sharding", type=name, default=None, help=f"{' | '.join(SHARDING)} (default ddp)")
    d.add_argument("--offload-optimizer", dest="offload_optimizer", action="store_true",
                   help="optimizer states in CPU RAM (verl: optimizer_offload, on the GPU for the update only)")
    d.add_argument("--offload-params", dest="offload_params", action="store_true",
                   help="parameters in CPU RAM (zero3/fsdp; verl: param_offload, off the GPU while vLLM generates)")
    d.add_argument("--tp", dest="tensor", type=count, default=None,
                   help="tensor-parallel degree: heads, MLP width and vocabulary split (default 1)")
    d.add_argument("--pp", dest="pipeline", type=count, default=None,
                   help="pipeline-parallel degree: decoder layers in stages (default 1)")
    d.add_argument("--vp", dest="virtual_stages", type=count, default=None,
                   help="virtual pipeline stages per rank: interleaved 1F1B (default 1)")
    d.add_argument("--cp", dest="context", type=count, default=None,
                   help="context-parallel degree: the sequence split, ring attention (default 1)")
    d.add_argument("--ep", dest="expert", type=count, default=None,
                   help="expert-parallel degree for MoE, carved out of data x context (default 1)")
    d.add_argument("--sequence-parallel", dest="sequence_parallel", action="store_const", const=True, default=None,
                   help="with --tp, split norms and residual activations over the sequence too "
                        "(default: the stack's: torchtitan and megatron on)")
    d.add_argument("--nodes", dest="nodes", type=count, default=None,
                   help="machines the GPUs span (default: as few as the device allows)")


def hide_not_taken(p: argparse.ArgumentParser) -> None:
    """Leave the options the parser's command does not take (NOT_TAKEN) out of its --help;
    called once the command's parser is complete (tuneplan.cli.main.command_parser)."""
    not_taken = NOT_TAKEN.get(p.get_default("_command"), {})
    for a in p._actions:
        if a.dest in not_taken:
            a.help = argparse.SUPPRESS


def optimizer_name(text: str) -> str:
    """--optimizer: a row's name, or transformers' TrainingArguments.optim name for it
    (adamw_torch -> adamw-foreach); anything else is left for the Job to refuse."""
    from tuneplan.choices.optimizers import canonical_optimizer

    return canonical_optimizer(name(text))


@cache
def _job_actions() -> dict[str, argparse.Action]:
    """dest -> the option that sets it, from the one definition above."""
    p = argparse.ArgumentParser(add_help=False)
    add_job_arguments(p)
    return {a.dest: a for a in p._actions if a.option_strings and a.dest not in _NOT_JOB}


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The job settings the user gave: valued options not left at None, flags that were set.

    Raises:
        TuneplanError: a given option the command does not take (NOT_TAKEN), with its reason.
    """
    out: dict[str, Any] = {}
    for dest, a in _job_actions().items():
        value = getattr(args, dest, None)
        if a.nargs == 0:  # store_true / store_false: given when it differs from its default
            if value != a.default:
                out[dest] = value
        elif value is not None and value != a.default:
            out[dest] = value
    for dest, reason in NOT_TAKEN.get(getattr(args, "_command", None), {}).items():
        if dest in out:
            raise TuneplanError(reason.format(flag=_job_actions()[dest].option_strings[0]))
    return out


def job_from_args(args: argparse.Namespace, optional: tuple[str, ...] = ()) -> Job:
    """Build the immutable Job from parsed arguments (validation happens in the core):
    a given option that the method ignores (--rank with full, --quant with lora) is refused.
    With --from CONFIG the file's settings come first and the given options override them
    (each override said on stderr); `optional` names settings the file may leave out
    (plan chooses the GPU count)."""
    imported = imported_config(args)
    if imported is None:
        return Job.from_request(**given_settings(args))
    from tuneplan.export import job_from_import

    job, notes = job_from_import(imported, given_settings(args), optional)
    _report_import(imported, notes)
    return job


def add_from_arguments(p: argparse.ArgumentParser) -> None:
    """--from CONFIG (and --from-format): the job, and the model, from a stack's config file."""
    g = p.add_argument_group("from a training config")
    g.add_argument("--from", dest="from_config", metavar="CONFIG", default=None,
                   help="read the model and job from an Axolotl, LLaMA-Factory, TRL (trl sft) or torchtune YAML; "
                        "options given on the command line override the file's (each override is said)")
    g.add_argument("--from-format", dest="from_format", type=name, default=None,
                   help="axolotl | llamafactory | trl | torchtune (default: detected from the file's fields)")


def imported_config(args: argparse.Namespace) -> Any:
    """The --from config read once (tuneplan.export.Imported), or None without --from."""
    path = getattr(args, "from_config", None)
    if path is None:
        if getattr(args, "from_format", None):
            raise TuneplanError("--from-format needs --from CONFIG")
        return None
    cached = getattr(args, "_imported", None)
    if cached is None:
        from tuneplan.export import read_config

        cached = read_config(path, getattr(args, "from_format", None))
        args._imported = cached
    return cached


def checked_request(args: argparse.Namespace) -> tuple[ModelSpec, Job, Device | None]:
    """The model, the job and the --gpu device of a command line, checked together
    (context length, targets, method; GPU count against the device) before any work."""
    job = job_from_args(args)
    spec = resolve_model(model_from_args(args), hub=args.hub)
    device = resolve_device(args.gpu) if args.gpu else None
    check_job(spec, job, args.allow_long_context)
    if device:
        check_device_count(job, device)
    return spec, job, device


def model_from_args(args: argparse.Namespace) -> str:
    """The MODEL argument, else the model the --from config names."""
    imported = imported_config(args)
    if getattr(args, "model", None):
        if imported is not None and imported.model and imported.model != args.model:
            import sys

            from tuneplan.cli.main import printable

            sys.stderr.write(printable(f"tuneplan: note: MODEL {args.model} overrides {imported.model} from "
                                       f"{imported.path}") + "\n")
        return args.model
    if imported is None:
        raise TuneplanError("give a MODEL (catalog id, alias or path to config.json) or --from CONFIG")
    if imported.model is None:
        raise TuneplanError(f"{imported.path} names no model tuneplan can resolve; give MODEL as well")
    return imported.model


def _report_import(imported: Any, notes: list[str]) -> None:
    import sys

    from tuneplan.cli.main import printable

    def line(text: str) -> None:
        sys.stderr.write(printable(f"tuneplan: {text}") + "\n")

    line(f"read {imported.format} config {imported.path}: {', '.join(imported.read) or 'no field'}")
    if imported.ignored:
        line(f"ignored (no effect on memory, or not modelled): {', '.join(imported.ignored)}")
    if imported.defaults:
        line(f"not in the file, {imported.format}'s default used: {', '.join(imported.defaults)}")
    for note in (*imported.notes, *notes):
        line(f"note: {note}")


def job_command(model: str, job: Job, device: Any = None, command: str = "estimate") -> str:
    """The tuneplan command that reproduces a job's figures: its settings that differ from
    the defaults (and that its method reads) as flags."""
    from tuneplan.memory.trained import targets_text

    default = Job().settings()
    diff = {}
    for k, v in job.settings().items():
        if (v == default.get(k) and k != "method") or k == "device_memory_gib":  # that one is --gpu's memory
            continue
        diff[k] = targets_text(v) if k == "targets" else v
    for k in job.method.ignored(list(diff)):
        del diff[k]
    text = f"tuneplan {command} {model} {flag_text(diff)}"
    return text + (f" --gpu {device.id}" if device is not None else "")


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
    g = p.add_argument_group("dataset (optional: without it, throughput and cost per million tokens)")
    g.add_argument("--dataset-tokens", type=count, help="tokens per epoch, e.g. 100M (packed)")
    g.add_argument("--samples", type=count, help="number of samples (with --mean-tokens)")
    g.add_argument("--mean-tokens", type=number, help="mean tokens per sample (with --samples)")
    g.add_argument("--epochs", type=number, default=None, help="epochs (default 1)")


def dataset_from_args(args: argparse.Namespace) -> Dataset | None:
    """The dataset asked for, or None when no size was given (plan then ranks throughput)."""
    return make_dataset(args.dataset_tokens, args.samples, args.mean_tokens, args.epochs)
