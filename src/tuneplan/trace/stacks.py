"""Replay another stack's own training step on fake tensors: torchtune 0.6.1's single-device recipes.

`tuneplan trace` otherwise builds the transformers model and runs the HF Trainer + PEFT step
(tuneplan.trace.run). A framework record with `trace_replay = "torchtune"`
(tuneplan.choices.frameworks) is traced here instead, with torchtune's own modules, so the
torchtune profile's mechanisms (GQA k/v repeated before SDPA, LoRA in the model dtype, no
autocast, chunked output + CEWithChunkedOutputLoss, torchtune's activation checkpointing and
optimizer-in-backward) are measured rather than read. What is replayed, torchtune 0.6.1
(pip torchtune==0.6.1; recipes/ as shipped in the wheel):

* model: the family's component builder (torchtune/models/llama3_2/_component_builders.py:43
  llama3_2 / :146 lora_llama3_2 for Llama 3.x: Llama3ScaledRoPE, TiedLinear when tied;
  torchtune/models/qwen2/_component_builders.py:39 qwen2 / :137 lora_qwen2 for Qwen2/2.5) built
  under `training.set_default_dtype(dtype)` (recipes/lora_finetune_single_device.py:431), from
  the config.json's sizes; LoRA through the builder's lora_attn_modules / apply_lora_to_mlp,
  then `set_trainable_params(model, get_adapter_params(model))` (:441);
* checkpointing: `training.set_activation_checkpointing(model,
  auto_wrap_policy={modules.TransformerSelfAttentionLayer})` (:447; torch's checkpoint_wrapper,
  NO_REENTRANT: torchtune/training/activations.py:19);
* loss: `CEWithChunkedOutputLoss(num_output_chunks)` and `model.set_num_output_chunks(...)`
  (:295-302) when the cross-entropy record is chunked, else torch's CrossEntropyLoss on the
  flattened logits (the recipe's non-list branch, :652-654);
* step (recipes/lora_finetune_single_device.py:639-717, full_finetune_single_device.py:632-713):
  labels shifted with an ignore-index column (`torch.hstack`), `logits = model(tokens)`,
  `loss = loss_fn(logits, labels)`, `del logits`, `(loss * num_tokens).backward()`, every
  gradient_accumulation_steps micro-batches `training.scale_grads(model, 1 / num_tokens)`
  (in place), `optimizer.step()`, `zero_grad(set_to_none=True)`; with optimizer_in_bwd one
  optimizer per parameter stepped in its post-accumulate-grad hook
  (torchtune/training/memory.py:219 register_optim_in_bwd_hooks).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from tuneplan.errors import TuneplanError
from tuneplan.job import Job

TORCHTUNE_VERSION = "0.6.1"  # the release whose recipes and modules are replayed (cited above)
IGNORE_INDEX = -100  # torchtune CEWithChunkedOutputLoss(ignore_index=-100), ce_chunked_output_loss.py:30

INSTALL_HINT = (f"trace --framework torchtune replays torchtune's own modules and needs torchtune {TORCHTUNE_VERSION} "
                "and torchao importable: pip install --no-deps torchtune==0.6.1 torchao==0.13.0 (the repository's "
                "dev install, make test, puts them in .venv/validators, which trace finds by itself)")

# tuneplan target module -> torchtune's name for it in lora_attn_modules (modules/peft: LORA_ATTN_MODULES)
_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
_MLP = ("gate_proj", "up_proj", "down_proj")  # torchtune adapts all three or none (apply_lora_to_mlp)

Progress = Callable[[str], None]


# The repository's dev install (Makefile VALIDATORS) puts torchtune and torchao, without their
# dependencies, in <venv>/validators. That torchao (0.13) is older than the one transformers'
# PEFT integration accepts, so it must never enter a process that later runs the HF trace: the
# replay runs in a child process of its own (run_replay) whose path ends with that folder, and
# a torchtune installed in the environment itself always wins.
VALIDATORS = Path(sys.prefix) / "validators"
_MODULES = ("torch", "torchtune", "torchao")


def _replay_path() -> list[str]:
    """sys.path entries the child process adds: the validators folder where it holds torchtune."""
    return [str(VALIDATORS)] if (VALIDATORS / "torchtune").is_dir() else []


def available() -> bool:
    """True when the replay's child process can import torchtune and torchao (from the
    environment or the dev install's validators folder); this process's path is left alone."""
    def found(m: str) -> bool:
        return importlib.util.find_spec(m) is not None or any((Path(d) / m).is_dir() for d in _replay_path())

    return all(found(m) for m in _MODULES)


def check_replayable(config: dict[str, Any], job: Job) -> None:
    """Refuse, in one line and before torch is imported, what the torchtune replay cannot run.

    Raises:
        TuneplanError: a model family without a torchtune builder here, a method or setting the
            torchtune recipes do not have, or torchtune not importable.
    """
    m, t = job.method, job.training
    _family(config)
    if m.kind not in ("full", "lora", "dora"):
        raise TuneplanError(f"trace replays torchtune's full, lora and dora steps; --method {m.kind} is estimated "
                            "only (torchtune's QLoRA NF4 tensors do not run on fake tensors)")
    if m.is_adapter:
        _lora_modules(m)
    if m.train_embeddings:
        raise TuneplanError("torchtune's LoRA recipes do not train the embeddings; drop --train-embeddings")
    if t.autocast:
        raise TuneplanError("torchtune runs without autocast (dtype bf16 or fp32); use --precision bf16 or fp32")
    if t.loss.fused or t.loss.chunk_tokens:
        raise TuneplanError(f"torchtune's recipes have no {t.loss.name} cross-entropy; use its chunked loss "
                            "(the default) or the plain one")
    if t.checkpointing == "offload":
        raise TuneplanError("trace cannot tell host from device memory on a CPU run; use --checkpointing full or none")
    if not available():
        raise TuneplanError(INSTALL_HINT)


def _family(config: dict[str, Any]) -> str:
    """Which torchtune builder builds this config.json (model_type is the config's own field)."""
    mtype = config.get("model_type")
    if mtype == "llama":  # Llama 3.x; the rope scaling changes values, not the [max_seq_len, d/2, 2] cache
        return "llama3_2"
    if mtype == "qwen2":
        return "qwen2"
    raise TuneplanError(f"trace --framework torchtune replays Llama (3.x builders) and Qwen2/2.5 (torchtune's builders); "
                        f"model_type {mtype!r} is estimated only")


def _lora_modules(m) -> tuple[list[str], bool]:
    """(lora_attn_modules, apply_lora_to_mlp) for the method's targets."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", *_MLP) if m.targets == "all-linear" else tuple(m.targets)
    unknown = [n for n in names if n not in _ATTN and n not in _MLP]
    mlp = [n for n in names if n in _MLP]
    if unknown or (mlp and len(mlp) != len(_MLP)):
        raise TuneplanError("torchtune adapts q_proj, k_proj, v_proj, o_proj (output_proj) and the whole MLP "
                            f"(apply_lora_to_mlp); targets {', '.join(names)} cannot be expressed")
    return [_ATTN[n] for n in names if n in _ATTN], bool(mlp)


def _sizes(config: dict[str, Any]) -> dict[str, Any]:
    """The builder's size arguments from config.json (values that do not change memory, such as
    the rope base and norm eps, are left at the builder's defaults)."""
    heads = int(config["num_attention_heads"])
    return {"vocab_size": int(config["vocab_size"]), "num_layers": int(config["num_hidden_layers"]),
            "num_heads": heads, "num_kv_heads": int(config.get("num_key_value_heads") or heads),
            "embed_dim": int(config["hidden_size"]), "intermediate_dim": int(config["intermediate_size"]),
            "max_seq_len": int(config.get("max_position_embeddings") or 4096),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False))}


def _build(config: dict[str, Any], job: Job, dtype):
    """torchtune's model for config.json + method, in `dtype`, adapters trainable (torchtune's builders)."""
    from torchtune import training
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    m = job.method
    family = _family(config)
    kwargs = _sizes(config)
    if family == "llama3_2":
        from torchtune.models.llama3_2._component_builders import llama3_2 as base
        from torchtune.models.llama3_2._component_builders import lora_llama3_2 as lora

        kwargs["scale_factor"] = int((config.get("rope_scaling") or {}).get("factor", 32))
    else:
        from torchtune.models.qwen2._component_builders import lora_qwen2 as lora
        from torchtune.models.qwen2._component_builders import qwen2 as base
    with training.set_default_dtype(dtype):
        if not m.is_adapter:
            model = base(**kwargs)
            model.requires_grad_(True)
            return model
        attn, mlp = _lora_modules(m)
        model = lora(lora_attn_modules=attn, apply_lora_to_mlp=mlp, apply_lora_to_output=False,
                     lora_rank=m.rank, lora_alpha=2 * m.rank, lora_dropout=m.lora_dropout,
                     use_dora=m.kind == "dora", **kwargs)
    set_trainable_params(model, get_adapter_params(model))
    return model


@contextlib.contextmanager
def _fake_rope_scaling():
    """Llama3ScaledRoPE.apply_scaling loops over the frequencies in Python and branches on their
    values (torchtune/models/llama3_1/_position_embeddings.py:103), which fake tensors cannot do.
    Its output has the input's shape and dtype, so on fake tensors a copy stands in (the values
    never matter for memory); the [max_seq_len, head_dim / 2, 2] fp32 cache is built as in torchtune."""
    from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE

    with mock.patch.object(Llama3ScaledRoPE, "apply_scaling", lambda self, freqs, *a, **k: freqs.clone()):
        yield


def run_torchtune_trace(config: dict[str, Any], job: Job, *, name: str = "model", steps: int = 2,
                        progress: Progress | None = None, block: int = 512):
    """torchtune's single-device step for `job` on fake tensors, measured like tuneplan.trace.run.

    Returns:
        tuneplan.trace.run.TraceResult of the last optimizer step.

    Raises:
        TuneplanError: what check_replayable refuses.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tuneplan.trace.build import precision_of
    from tuneplan.trace.run import (
        _count,
        _cuda_dropout,
        make_optimizer,
        result_of,
        track_optimizer_states,
    )
    from tuneplan.trace.tracker import CATEGORIES, MemoryTracker

    check_replayable(config, job)
    if job.parallel.num_gpus > 1:
        raise TuneplanError("the torchtune replay runs one GPU's step; drop --gpus")
    from torchtune import modules, training
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    t = job.training
    say = progress or (lambda _s: None)
    dtype = precision_of(t).param_dtype
    notes = [f"torchtune {TORCHTUNE_VERSION}'s own modules and recipe step (lora/full_finetune_single_device.py), "
             "traced on the CPU device standing in for one CUDA GPU: sizes rounded to 512-byte blocks, no CUDA "
             "context or allocator fragmentation.",
             "SDPA runs torch's fused flash kernel (CPU variant) on k/v repeated to every query head, as "
             "torchtune's MultiHeadAttention passes them; batch of tokens + labels, no mask (padded_collate_sft)."]
    start = time.perf_counter()
    mode = FakeTensorMode()
    torch.manual_seed(0)
    with mode, _cuda_dropout(), _fake_rope_scaling():
        say("building torchtune model")
        model = _build(config, job, dtype)
        if t.checkpointing == "full":
            training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
        if t.loss.chunks:
            loss_fn = CEWithChunkedOutputLoss(num_output_chunks=t.loss.chunks, ignore_index=IGNORE_INDEX)
            model.set_num_output_chunks(loss_fn.num_output_chunks)
        else:
            loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        model.train()
        tracker = MemoryTracker(block=block)
        for p in model.parameters():
            tracker.track(p, "trainable" if p.requires_grad else "weights")
        for b in model.buffers():
            tracker.track(b, "weights")
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:  # registered before the optimizer-in-backward hooks, so a gradient is tagged first
            p.register_post_accumulate_grad_hook(lambda q: tracker.track(q.grad, "gradients"))
        if t.optimizer_in_backward:
            optims = {p: make_optimizer([p], t) for p in params}
            training.register_optim_in_bwd_hooks(model=model, optim_dict=optims)
            optimizer = None
        else:
            optims = {}
            optimizer = make_optimizer(list(model.parameters()), t)

        def norm_out(_mod, _args, out):  # the final norm's output feeds the output projection
            if tracker.phase == "forward":
                tracker.category = "logits"
                if out.requires_grad:
                    out.register_hook(lambda g: setattr(tracker, "category", "temporaries"))

        handle = model.norm.register_forward_hook(norm_out)
        vocab = model.tok_embeddings.num_embeddings
        ignore = torch.full((t.micro_batch, 1), IGNORE_INDEX, dtype=torch.long)
        first_peak = 0
        with tracker:
            for step in range(1, steps + 1):
                if step == steps:
                    first_peak = tracker.peak.total
                    tracker.reset_peak()
                num_tokens = 0
                for micro in range(t.grad_accum):
                    say(f"step {step}/{steps}, micro-batch {micro + 1}/{t.grad_accum}")
                    tracker.set_phase("forward", "activations")
                    tokens = torch.randint(0, vocab, (t.micro_batch, t.seq_len))
                    labels = torch.hstack((tokens[..., 1:], ignore))
                    current = (labels != IGNORE_INDEX).sum()
                    num_tokens = num_tokens + current
                    logits = model(tokens)
                    if not isinstance(logits, list):
                        labels = labels.reshape(-1)
                        logits = logits.reshape(-1, logits.size(-1))
                    loss = loss_fn(logits, labels)
                    del logits  # "free logits otherwise it peaks backward memory" (the recipe)
                    loss = loss * current
                    tracker.set_phase("backward", "logits")
                    loss.backward()
                    del loss, tokens, labels
                tracker.set_phase("optimizer", "temporaries")
                if optimizer is not None:
                    training.scale_grads(model, 1 / num_tokens)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    track_optimizer_states(optimizer, tracker)
                for opt in optims.values():
                    track_optimizer_states(opt, tracker)
        handle.remove()
        result = result_of(tracker, CATEGORIES, name=name, first_peak=first_peak, counts=_count(model), start=start,
                           fake=True, notes=notes)
        del model, optimizer, optims
    return result


# FrameworkProfile.trace_replay -> (torch-free check, replay)
REPLAYS = {"torchtune": (check_replayable, run_torchtune_trace)}


def check_replay(replay: str, config: dict[str, Any], job: Job, real: bool = False) -> None:
    """Refuse, before torch is imported, what the framework's replay cannot run (one line).

    Raises:
        TuneplanError: --real, an unknown replay, or what the replay's check refuses.
    """
    if replay not in REPLAYS:
        raise TuneplanError(f"no trace replay named {replay!r}; known: {', '.join(REPLAYS)}")
    if real:
        raise TuneplanError(f"trace replays {replay}'s step on fake tensors only; drop --real")
    REPLAYS[replay][0](config, job)


def run_replay(replay: str, config: dict[str, Any], job: Job, *, name: str = "model",
               progress: Progress | None = None):
    """Run the framework's replay (REPLAYS) in a child process and return its
    tuneplan.trace.run.TraceResult: the replayed library's imports (and the validators' torchao)
    stay out of this process.

    Raises:
        TuneplanError: the child failed (its last line).
    """
    if progress:
        progress(f"replaying {replay}'s step in a child process")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*sys.path, *_replay_path()]))
    with tempfile.TemporaryDirectory(prefix="tuneplan-replay-") as tmp:
        src, out = Path(tmp) / "job.pickle", Path(tmp) / "result.pickle"
        src.write_bytes(pickle.dumps((replay, config, job, name)))
        proc = subprocess.run([sys.executable, "-m", "tuneplan.trace.stacks", str(src), str(out)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TuneplanError(f"the {replay} replay failed: {last}")
        return pickle.loads(out.read_bytes())


def _child(src: str, out: str) -> None:
    """The child process of run_replay: read (replay, config, job, name), write the result."""
    replay, config, job, name = pickle.loads(Path(src).read_bytes())
    result = REPLAYS[replay][1](config, job, name=name)
    Path(out).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:3])


__all__ = ["INSTALL_HINT", "REPLAYS", "TORCHTUNE_VERSION", "available", "check_replay", "check_replayable",
           "run_replay", "run_torchtune_trace"]
