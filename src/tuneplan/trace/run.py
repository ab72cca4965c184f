"""Run a training step of the real model under a memory tracker, on fake or real tensors.

The step is what the Hugging Face Trainer does per micro-batch (trainer.py training_step /
compute_loss): forward with labels (the loss is computed inside the model by
transformers' ForCausalLMLoss), the model outputs dropped, loss.backward(),
optimizer.step(), optimizer.zero_grad(set_to_none=True). Two steps run and the second is
measured, so optimizer states exist as in steady-state training.

No GPU is needed: with fake=True every tensor is a FakeTensor (torch._subclasses.fake_tensor),
so an 8B model at 4096 tokens costs no real memory. The trace runs on the CPU device and
mimics a CUDA run where the two differ (see ASSUMPTIONS).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneplan.choices.optimizers import OPTIMIZERS
from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Training
from tuneplan.trace.build import build_model, precision_of
from tuneplan.trace.tracker import CATEGORIES, MemoryTracker

ASSUMPTIONS = (
    "Traced on the CPU device standing in for one CUDA GPU: sizes rounded to the caching allocator's "
    "512-byte blocks; no CUDA context, cuBLAS workspace or allocator fragmentation (compare with "
    "torch.cuda.max_memory_allocated).",
    "Attention runs torch SDPA's fused flash kernel (CPU variant: saves q, k, v, out and an fp32 logsumexp, "
    "GQA without repeating k/v), as FlashAttention/SDPA-flash do on a GPU; --attention flash is traced as SDPA.",
    "Autocast is CPU autocast with the same lower-precision dtype; PEFT's 4-bit LoRA autocast test reads the "
    "autocast state of the device in use.",
    "HF Trainer step: model outputs dropped before backward, zero_grad(set_to_none=True); inputs are "
    "input_ids and labels without an attention mask (padding-free batch).",
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TraceResult:
    """Measured memory of the second (steady-state) training step, bytes.

    Args:
        peak_bytes: highest live bytes during the measured step.
        peak_phase: forward | backward | optimizer: when it happened.
        phase_peaks: (phase, peak bytes) for each phase of the measured step.
        at_peak: bytes by tracker category at the peak (sum = peak_bytes).
        resident: bytes by category after the step (weights, trainable, optimizer ...).
        first_step_peak: peak of the first step (no optimizer states yet before its update).
        trainable_params / total_params: element counts.
        elapsed_s: wall-clock seconds for build + both steps.
        fake: traced on FakeTensors (True) or real CPU tensors (False).
        ops: aten ops dispatched.
        notes: what the trace assumed.
    """

    model: str
    peak_bytes: int
    peak_phase: str
    phase_peaks: tuple[tuple[str, int], ...]
    at_peak: dict[str, int]
    resident: dict[str, int]
    first_step_peak: int
    trainable_params: int
    total_params: int
    elapsed_s: float
    fake: bool
    ops: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (bytes as integers)."""
        return {
            "model": self.model, "unit": "bytes", "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase,
            "phase_peaks": dict(self.phase_peaks), "at_peak": self.at_peak, "resident": self.resident,
            "first_step_peak": self.first_step_peak, "trainable_params": self.trainable_params,
            "total_params": self.total_params, "elapsed_s": round(self.elapsed_s, 2), "fake": self.fake,
            "ops": self.ops, "notes": list(self.notes),
        }


def make_optimizer(params: list[nn.Parameter], training: Training, bitsandbytes: bool = False) -> torch.optim.Optimizer:
    """The torch optimizer for --optimizer, configured as on a GPU.

    adamw: fused AdamW (HF Trainer's default optim adamw_torch_fused; no temporaries);
    adamw-foreach: AdamW(foreach=True), torch's default on CUDA (torch/optim/optimizer.py
    _default_to_fused_or_foreach), which allocates full-size temporaries; sgd / sgd-momentum:
    SGD(foreach=True); adafactor: transformers.optimization.Adafactor (factored second moment).
    With `bitsandbytes` (the probe, on real tensors), the 8-bit, paged and Lion optimizers
    are the bitsandbytes classes of the Optimizer record (bnb_class).

    Raises:
        TuneplanError: 8-bit, paged and Lion optimizers (bitsandbytes) when not `bitsandbytes`
            (the trace cannot run them on fake tensors), or bitsandbytes is not installed.
    """
    opt = training.optim
    path, kwargs = opt.torch_class, dict(opt.torch_kwargs)
    if path is None and bitsandbytes and opt.bnb_class:
        path, kwargs = opt.bnb_class, {}
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TuneplanError(f"optimizer {opt.name!r} needs bitsandbytes: pip install bitsandbytes")
    if path is None:
        raise TuneplanError(f"trace does not run optimizer {opt.name!r} (bitsandbytes); use one of: "
                            + ", ".join(o.name for o in OPTIMIZERS.values() if o.torch_class))
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(params, lr=1e-5, **kwargs)


@contextlib.contextmanager
def _single_sequence_batches():
    """Tell transformers the batch holds one sequence per row, as a real run works out.

    masking_utils.find_packed_sequence_indices reads position_ids to detect packed
    sequences; on fake tensors it cannot read them and assumes packing, which builds an
    s x s mask and makes SDPA repeat k/v. On real tensors without packing it returns None;
    the patch returns that answer directly.
    """
    from unittest import mock

    from transformers import masking_utils

    with mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda *a, **k: None):
        yield


@contextlib.contextmanager
def _swappable_fake_params(mode):
    """Let nn.Module.to() convert fake parameters (PEFT casts adapters with .to()).

    Module._apply swaps FakeTensor parameters with torch.utils.swap_tensors, which refuses
    tensors that have weak references; FakeTensorMode's converter memo
    (meta_utils.MetaConverter.tensor_memo, a WeakValueDictionary) holds one to every
    nn.Parameter made from a fake tensor. The memo only serves real->fake conversions,
    which the trace never does, so it is emptied before each swap.
    """
    if mode is None:
        yield
        return
    from unittest import mock

    orig = torch.utils.swap_tensors

    def swap(t1, t2):
        mode.fake_tensor_converter.meta_converter.tensor_memo.clear()
        return orig(t1, t2)

    with mock.patch.object(torch.utils, "swap_tensors", swap):
        yield


@contextlib.contextmanager
def _cuda_dropout():
    """Run dropout as the fused kernel CUDA uses: it saves a 1-byte mask.

    aten dropout (ATen/native/Dropout.cpp) takes the fused native_dropout only on CUDA/XPU
    (is_fused_kernel_acceptable); on the CPU it multiplies by a noise tensor of the input's
    dtype and saves that (4 bytes per element in fp32). The trace stands in for a GPU.
    """
    from unittest import mock

    orig = torch.nn.functional.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if training and 0.0 < p < 1.0 and not inplace and input.numel():
            return torch.ops.aten.native_dropout(input, p, True)[0]
        return orig(input, p, training, inplace)

    with mock.patch.object(torch.nn.functional, "dropout", dropout):
        yield


def _vocab_size(model: nn.Module) -> int:
    return model.get_input_embeddings().num_embeddings


def _install_hooks(model: nn.Module, tracker: MemoryTracker, progress: Progress | None,
                   state: dict[str, Any]) -> list[Any]:
    """Tag gradients, logits and report per-layer progress. Returns hook handles."""
    handles = []
    for p in model.parameters():
        if p.requires_grad:
            handles.append(p.register_post_accumulate_grad_hook(lambda q: tracker.track(q.grad, "gradients")))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()

    def head_pre(_mod, args):
        tracker.category = "logits" if tracker.phase == "forward" else tracker.category
        x = args[0]
        if tracker.phase == "forward" and x.requires_grad:
            # backward reaches the decoder stack once lm_head's input gradient exists
            x.register_hook(lambda g: setattr(tracker, "category", "temporaries"))

    handles.append(head.register_forward_pre_hook(head_pre))
    layers = [m for n, m in inner.named_modules() if isinstance(m, nn.ModuleList) and n.endswith("layers")]
    if layers and progress:
        total = len(layers[0])
        for i, layer in enumerate(layers[0]):
            def pre(_m, _a, i=i):
                what = "forward" if tracker.phase == "forward" else "backward (recompute)"
                progress(f"step {state['step']}/{state['steps']} {what}: layer {i + 1}/{total}")
            handles.append(layer.register_forward_pre_hook(pre))
    return handles


def track_optimizer_states(optimizer: torch.optim.Optimizer, tracker: MemoryTracker) -> None:
    """Tag every optimizer state tensor (exp_avg, exp_avg_sq, momentum, ...) as "optimizer"."""
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                tracker.track(v, "optimizer")


def result_of(tracker: MemoryTracker, categories: tuple[str, ...], *, name: str, first_peak: int,
              counts: tuple[int, int], start: float, fake: bool, notes: list[str] | tuple[str, ...],
              cls: type = TraceResult, **extra: Any) -> TraceResult:
    """The result of a traced step, assembled in one place (run_trace, tuneplan.trace.tasks and the
    fake-process-group trace of tuneplan.trace.dist): the tracker's peak and its breakdown over
    `categories`, what stays resident, (trainable, total) `counts`; `cls` and `extra` for a subclass."""
    trainable, total = counts
    return cls(model=name, peak_bytes=tracker.peak.total, peak_phase=tracker.peak.phase,
               phase_peaks=tuple((k, v) for k, v in tracker.phase_peaks.items() if k != "setup"),
               at_peak={k: tracker.peak.by_category.get(k, 0) for k in categories},
               resident={k: v for k, v in tracker.current.items() if v}, first_step_peak=first_peak,
               trainable_params=trainable, total_params=total, elapsed_s=time.perf_counter() - start, fake=fake,
               ops=tracker.ops, notes=tuple(notes), **extra)


def _count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; 4-bit packed weights count two per byte."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def run_trace(config: dict[str, Any], job: Job, *, name: str = "model", fake: bool = True, steps: int = 2,
              progress: Progress | None = None, block: int = 512) -> TraceResult:
    """Build the model and measure the memory of a training step.

    Args:
        config: config.json dict.
        job: method and training settings (parallel settings must be one GPU).
        name: model name for the result.
        fake: FakeTensors (no memory, any size) or real CPU tensors.
        steps: training steps; the last one is measured (>= 2 for steady state).
        progress: called with a short status line as the trace advances.
        block: allocation rounding in bytes (512 = CUDA caching allocator).

    Returns:
        TraceResult of the last step.

    Raises:
        TuneplanError: settings the trace cannot run (multi-GPU, offload, bitsandbytes optimizers).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    if job.parallel.num_gpus > 1:
        raise TuneplanError("trace runs one GPU's step; drop --gpus (sharding is estimated analytically)")
    t = job.training
    prec = precision_of(t)
    notes = list(ASSUMPTIONS)
    if not t.profile.trace_exact:
        notes.append(f"framework {t.framework} traced as the plain HF Trainer + PEFT step.")
    if job.method.kind == "qlora":
        notes.append("bitsandbytes layers are stand-ins with the same storage (packed uint8 NF4/FP4 + absmax, "
                     "double-quant state; or int8 + fp32 row scales) and the same dequantise-then-matmul "
                     "temporaries; embeddings, norms and lm_head stay in the model dtype (no "
                     "prepare_model_for_kbit_training fp32 upcast).")
    if t.loss.fused or t.loss.chunks:
        notes.append(f"{t.loss.name} cross-entropy is not traced: the step runs transformers' full-logits "
                     "cross-entropy.")
    start = time.perf_counter()
    say = progress or (lambda _s: None)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    torch.manual_seed(0)
    with mode, _single_sequence_batches(), _cuda_dropout():
        say("building model")
        with _swappable_fake_params(mode if fake else None):
            model = build_model(config, job.method, t)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, t)
        tracker = MemoryTracker(block=block)
        for p in model.parameters():
            tracker.track(p, "trainable" if p.requires_grad else "weights")
        for b in model.buffers():
            tracker.track(b, "weights")
        state = {"step": 0, "steps": steps}
        handles = _install_hooks(model, tracker, progress, state)
        vocab = _vocab_size(model)
        autocast = (torch.autocast("cpu", dtype=prec.autocast_dtype) if prec.autocast_dtype
                    else contextlib.nullcontext())
        first_peak = 0
        with tracker:
            for step in range(1, steps + 1):
                state["step"] = step
                if step == steps:
                    first_peak = tracker.peak.total
                    tracker.reset_peak()
                tracker.set_phase("forward", "activations")
                ids = torch.randint(0, vocab, (t.micro_batch, t.seq_len))
                labels = ids.clone()
                with autocast:
                    out = model(input_ids=ids, labels=labels)
                loss = out.loss
                del out  # Trainer.compute_loss returns only the loss
                tracker.set_phase("backward", "logits")
                say(f"step {step}/{steps} backward")
                loss.backward()
                del loss, ids, labels
                tracker.set_phase("optimizer", "temporaries")
                say(f"step {step}/{steps} optimizer")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                track_optimizer_states(optimizer, tracker)
        for h in handles:
            h.remove()
        if any(p.ndim == 3 for p in model.parameters()):
            notes.append("MoE experts are fused 3-D parameters in transformers 5: PEFT targets (all-linear) and "
                         "the QLoRA stand-in leave them as they are (bf16, no adapters).")
        result = result_of(tracker, CATEGORIES, name=name, first_peak=first_peak, counts=_count(model), start=start,
                           fake=fake, notes=notes)
        del model, optimizer
    return result
