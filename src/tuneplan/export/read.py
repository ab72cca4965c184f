"""`--from CONFIG`: read an Axolotl, LLaMA-Factory, TRL (`trl sft`) or torchtune YAML into the
job it describes, saying which fields were read and which were ignored.

The file goes through one gate: a regular file of at most 1 MiB, UTF-8, YAML (PyYAML's safe
loader, at most 100 aliases), a mapping at the top. The format is detected from fields only
that stack uses (or given); each reader type-checks what it reads and refuses in one line an
option whose memory tuneplan does not model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneplan.bounds import show_value
from tuneplan.errors import TuneplanError
from tuneplan.export import axolotl, llamafactory, tasks, torchtune, trl
from tuneplan.export.common import Read
from tuneplan.job import Job
from tuneplan.model_config import read_regular_file

MAX_BYTES = 1 << 20
MAX_ALIASES = 100

# format -> (reader, fields only that stack's configs use, for detection)
READERS: dict[str, tuple[Callable[..., Read], frozenset[str]]] = {
    "axolotl": (axolotl.read, frozenset({"base_model", "micro_batch_size", "sequence_len", "adapter",
                                         "sample_packing", "lora_target_linear", "num_epochs", "datasets",
                                         "unfrozen_parameters", "optimizer", "peft_use_dora"})),
    "llamafactory": (llamafactory.read, frozenset({"finetuning_type", "stage", "cutoff_len", "template",
                                                   "lora_target", "lora_rank", "quantization_bit", "dataset",
                                                   "pure_bf16", "flash_attn", "freeze_trainable_layers",
                                                   "do_train", "disable_gradient_checkpointing"})),
    "trl": (trl.read, frozenset({"use_peft", "lora_r", "max_length", "dataset_name", "lora_target_modules",
                                 "use_bnb_nested_quant", "dtype", "packing_strategy", "dataset_train_split",
                                 "num_processes"})),
    "torchtune": (torchtune.read, frozenset({"checkpointer", "tokenizer", "batch_size", "enable_activation_checkpointing",
                                             "loss", "optimizer_in_bwd", "max_steps_per_epoch"})),
}
FORMATS = tuple(READERS)
# formats whose file does not name its task: TRL's subcommand (trl dpo|kto|reward) is on the
# run line of tuneplan's header, which their reader takes as a third argument
TASK_COMMAND_READERS = frozenset({"trl"})


@dataclass(frozen=True)
class Imported:
    """A config read into tuneplan settings.

    Args:
        path: the file as given.
        format: the stack (axolotl, llamafactory, trl, torchtune).
        model: the model the file names (None when it names none tuneplan knows).
        settings: Job.from_settings names -> values.
        origin: setting -> the file field(s) it came from.
        read / ignored: the file's top-level fields tuneplan read / did not read.
        defaults: fields absent from the file, read at the stack's default ("key=value").
        notes: approximations and choices worth saying.
        missing: settings the file cannot give (the GPU count, an unset sequence length) -> why.
    """

    path: str
    format: str
    model: str | None
    settings: dict[str, Any]
    origin: dict[str, str]
    read: tuple[str, ...]
    ignored: tuple[str, ...]
    defaults: tuple[str, ...]
    notes: tuple[str, ...]
    missing: dict[str, str]


def _show(path: str) -> str:
    text = path if path.isprintable() else repr(path)[1:-1]
    return text if len(text) <= 120 else "..." + text[-117:]


def read_text(path: str, what: str = "config") -> str:
    """A regular UTF-8 file of at most 1 MiB (checked before reading), with one-line errors."""
    shown = _show(path)
    data = read_regular_file(path, f"{what} {shown}", MAX_BYTES, "training configs are a few KiB")
    if b"\x00" in data:
        raise TuneplanError(f"{what} {shown} is a binary file, not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TuneplanError(f"{what} {shown} is not UTF-8 text (invalid byte at offset {e.start})") from None


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """YAML text -> a mapping, with one-line errors (line and problem) and an alias limit."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise TuneplanError(f"{where} uses more than {MAX_ALIASES} YAML aliases; not a training config")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise TuneplanError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise TuneplanError(f"{where} nests too deeply; not a training config") from None
    if not isinstance(data, dict):
        raise TuneplanError(f"{where} is not a YAML mapping of settings (got {type(data).__name__})")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise TuneplanError(f"{where} has a non-text field name {show_value(bad[0])}")
    return data


def detect(cfg: dict[str, Any], where: str) -> str:
    """Which stack a config is for, from the fields only that stack uses."""
    scores = {name: len(keys & cfg.keys()) for name, (_, keys) in READERS.items()}
    if any(isinstance(v, dict) and "_component_" in v for v in cfg.values()):
        scores["torchtune"] += 10
    best = max(scores.values())
    winners = [n for n, s in scores.items() if s == best]
    if best == 0 or len(winners) > 1:
        raise TuneplanError(f"cannot tell which stack {where} is for"
                            + (f" (it reads like {' or '.join(winners)})" if best else "")
                            + f"; pass --from-format {'|'.join(FORMATS)}")
    return winners[0]


def read_config(path: str, fmt: str | None = None) -> Imported:
    """Read and interpret a training config file.

    Raises:
        TuneplanError: unreadable file, bad YAML, unknown format, a field with a wrong type,
            or an option tuneplan does not model.
    """
    where = _show(path)
    text = read_text(path)
    cfg = parse_yaml(text, where)
    if fmt is None:
        fmt = detect(cfg, where)
    elif fmt not in READERS:
        raise TuneplanError(f"unknown config format {show_value(fmt)}; choose one of: {', '.join(FORMATS)}")
    reader = READERS[fmt][0]
    base = Path(path).parent

    def load_json(named: str, key: str) -> dict[str, Any]:
        if not isinstance(named, str) or not named:
            raise TuneplanError(f"{fmt} field {key} must be a path or a mapping, got {show_value(named)}")
        candidates = [base / named, Path(named)]
        for p in candidates:
            if p.is_file():
                text = read_text(str(p), f"{key} file")
                try:
                    data = json.loads(text)
                except ValueError as e:
                    raise TuneplanError(f"{key} file {_show(str(p))} is not valid JSON: {e}") from None
                if not isinstance(data, dict):
                    raise TuneplanError(f"{key} file {_show(str(p))} is not a JSON object")
                return data
        raise TuneplanError(f"{fmt} field {key} names {_show(named)}, which is neither next to {where} nor in the "
                            "current folder; give its settings with --sharding/--offload-* instead")

    got = reader(cfg, load_json, tasks.trl_command(text)) if fmt in TASK_COMMAND_READERS else reader(cfg, load_json)
    read = set(got.read)
    return Imported(path, fmt, got.model, got.settings, got.origin, tuple(got.read),
                    tuple(k for k in cfg if k not in read), got.defaults, got.notes, dict(got.missing))


def job_from_import(imp: Imported, given: dict[str, Any], optional: tuple[str, ...] = ()) -> tuple[Job, list[str]]:
    """The job a config describes, with the command line's settings (`given`) overriding the
    file's. A file setting the final method does not read (the file's rank when --method
    full is given) is dropped with a note; a given one is refused, as without --from.
    A setting the file cannot give (imp.missing) must be given, unless it is `optional`
    (plan chooses the GPU count itself).

    Returns:
        (job, notes): notes name each override and each dropped file setting.
    """
    missing = {k: why for k, why in imp.missing.items() if k not in given and k not in optional}
    if missing:
        key, why = next(iter(missing.items()))
        flag = {"num_gpus": "--gpus N", "seq_len": "--seq-len N"}.get(key, key)
        raise TuneplanError(f"{imp.path}: {why}; give {flag}")
    notes = []
    for k, v in given.items():
        if k in imp.settings and imp.settings[k] != v:
            notes.append(f"{k} {v} from the command line overrides {imp.settings[k]} from {imp.origin.get(k, k)}")
    merged = {**imp.settings, **given}
    job = Job.from_settings(**merged)
    file_only = [k for k in imp.settings if k not in given]
    dropped = job.method.ignored(file_only)
    for k in dropped:
        notes.append(f"{imp.origin.get(k, k)} from the file does not apply to method {job.method.kind}; dropped")
    kept = {k: v for k, v in merged.items() if k not in dropped}
    return Job.from_request(**kept), notes
