"""TRL's preference and reward loss steps (DPO, ORPO, KTO, reward modelling) replayed on fake tensors.

The loss is TRL's own code, from the installed trl (read at 1.16.0): the trainer's loss method is
called unbound on a stand-in `self` holding the attributes it reads (the trainer's __init__ loads
datasets and tokenizers, which a fake-tensor step has no use for). Around it the step is the HF
Trainer's, as in tuneplan.trace.run: two steps, the second measured, the optimizer as for SFT.

  dpo  DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py:1285-1612): the policy forward on the
       2 x micro-batch rows [chosen; rejected] through TRL's fused LM head (add_fused_lm_head,
       trl/trainer/utils.py:1548-1695: chunked log-probs, no [rows, seq, vocab] logits), then the
       reference forward under no_grad (a separate frozen copy in the policy's dtype,
       dpo_trainer.py:908-927, or the PEFT adapter disabled, :1328-1336), the loss and metrics.
  kto  KTOTrainer._compute_loss (trl/trainer/kto_trainer.py:1366-1560): the no-grad KL pass over
       the mismatched KL batch, the graded pass, then the reference's KL and graded passes.
  orpo ORPOTrainer.get_batch_loss_metrics (trl/experimental/orpo/orpo_trainer.py:824-877):
       concatenated_forward's full-logits forward, NLL on the chosen half and
       selective_log_softmax over all rows; no reference.
  rm   RewardTrainer.compute_loss (trl/trainer/reward_trainer.py:778-817) on an
       AutoModelForSequenceClassification with num_labels=1 over [chosen; rejected].

Fake tensors hold no data, so the few data-dependent operations the trainers run on masks and
metrics (boolean indexing, nonzero, .item(), `if tensor > 0`) are answered by _AllValid as a batch
with no padding answers them: every mask entry true, every scalar 1.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Method
from tuneplan.trace import REPLAYED_TRAINERS, check_task
from tuneplan.trace.build import build_model, precision_of
from tuneplan.trace.run import (
    ASSUMPTIONS,
    TraceResult,
    _count,
    _cuda_dropout,
    _single_sequence_batches,
    _swappable_fake_params,
    _vocab_size,
    make_optimizer,
    result_of,
    track_optimizer_states,
)
from tuneplan.trace.tracker import CATEGORIES, MemoryTracker

Progress = Callable[[str], None]

# the tracker's categories plus the no-grad forwards (reference and KTO's KL pass) and the reference's weights
TASK_CATEGORIES = (*CATEGORIES, "reference")

TASK_ASSUMPTIONS = (
    "Loss step: the installed trl's trainer method called on a stand-in trainer (its attributes set to the "
    "config defaults: beta 0.1, DPO loss_type sigmoid, KTO loss_type kto with the KL term); batches have no "
    "padding (every completion_mask / attention_mask entry 1, every boolean index all true).",
    "TRL's fused LM head runs its Triton kernels on CUDA (trl/kernels/chunked_logprob.py _use_triton): they "
    "fold each [4096, 32768] logits tile in place and accumulate the gradient GEMMs with out_dtype=float32, "
    "so the CPU fallbacks' tile-sized fp32 temporaries are not counted. selective_log_softmax (ORPO) runs as "
    "TRL's Triton kernel does on CUDA (trl/kernels/logprob_entropy.py): its allocations, not the CPU row loop.",
)

_MASK_OPS = {"nonzero", "_local_scalar_dense", "is_nonzero", "index", "masked_select"}


class _AllValid(TorchDispatchMode):
    """Answer data-dependent ops on fake tensors as for a batch without padding: a boolean mask
    selects every element, .item() and bool() read 1 (torch.nonzero's and boolean indexing's
    output size depends on data a FakeTensor does not hold)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name not in _MASK_OPS:
            return func(*args, **kwargs)
        x = args[0]
        if name == "_local_scalar_dense":
            return True if x.dtype == torch.bool else (1 if not x.is_floating_point() else 1.0)
        if name == "is_nonzero":
            return True
        if name == "nonzero":
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        if name == "masked_select":
            shape = torch.broadcast_shapes(x.shape, args[1].shape)
            return torch.empty((int(torch.Size(shape).numel()),), dtype=x.dtype, device=x.device)
        # aten.index.Tensor(self, indices): a boolean index of k dims -> k long indices over all its elements
        indices = []
        for idx in args[1]:
            if idx is not None and idx.dtype in (torch.bool, torch.uint8):
                whole = torch.arange(idx.numel(), device=idx.device)
                indices.extend(whole // math.prod(idx.shape[d + 1:]) % idx.shape[d] for d in range(idx.dim()))
            else:
                indices.append(idx)
        return func(x, indices)


class _Accelerator:
    """The accelerate.Accelerator calls the loss methods make, on one process: gather is the identity."""

    device = torch.device("cpu")

    @staticmethod
    def unwrap_model(model: nn.Module) -> nn.Module:
        return model

    @staticmethod
    def gather_for_metrics(x: Any) -> Any:
        return x

    gather = gather_for_metrics

    @staticmethod
    def autocast():
        return contextlib.nullcontext()


def _trainer_self(cls: type, model: nn.Module, ref_model: nn.Module | None, **attrs: Any) -> Any:
    """An instance of the TRL trainer class `cls` made without its __init__ (which loads datasets and
    tokenizers), holding what the loss methods read; its own methods stay bound."""
    me = cls.__new__(cls)
    me.__dict__.update(model=model, ref_model=ref_model, accelerator=_Accelerator(),
                       args=SimpleNamespace(gradient_checkpointing_kwargs={"use_reentrant": False},
                                            center_rewards_coefficient=None),
                       _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                       _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False, **attrs)
    return me


def _ones(rows: int, seq: int) -> torch.Tensor:
    return torch.ones(rows, seq, dtype=torch.long)


# ---------------------------------------------------------------- the trainers' loss steps
# Each: (policy, reference, precomputed, batch size, seq, vocab) -> loss. Attribute values are the config
# defaults (DPOConfig/KTOConfig/ORPOConfig at trl 1.16.0).


def _dpo_loss(model: nn.Module, ref: nn.Module | None, precomputed: bool, batch: int, seq: int,
              vocab: int) -> torch.Tensor:
    from trl.trainer.dpo_trainer import DPOTrainer

    me = _trainer_self(DPOTrainer, model, ref, beta=0.1, precompute_ref_logps=precomputed, loss_types=["sigmoid"], loss_weights=[1.0],
                       ld_alpha=None, f_divergence_type="reverse_kl", label_smoothing=0.0, use_weighting=False)
    rows = 2 * batch  # DataCollatorForPreference: [prompt+chosen; prompt+rejected] (dpo_trainer.py:146-207)
    inputs = {"input_ids": torch.randint(0, vocab, (rows, seq)), "attention_mask": _ones(rows, seq),
              "completion_mask": _ones(rows, seq)}
    if precomputed:  # precompute_ref_log_probs: the dataset carries the reference's sequence log-probs
        inputs["ref_chosen_logps"] = torch.zeros(batch)
        inputs["ref_rejected_logps"] = torch.zeros(batch)
    return me._compute_loss(model, inputs, False)


def _kto_loss(model: nn.Module, ref: nn.Module | None, precomputed: bool, batch: int, seq: int,
              vocab: int) -> torch.Tensor:
    from trl.trainer.kto_trainer import KTOTrainer

    me = _trainer_self(KTOTrainer, model, ref, beta=0.1, precompute_ref_logps=precomputed, loss_type="kto", calculate_KL=True,
                       desirable_weight=1.0, undesirable_weight=1.0)
    # DataCollatorForUnpairedPreference (kto_trainer.py:95-207): the completions and, for the KL term,
    # each prompt with another sample's completion
    inputs = {"input_ids": torch.randint(0, vocab, (batch, seq)), "attention_mask": _ones(batch, seq),
              "completion_mask": _ones(batch, seq), "KL_input_ids": torch.randint(0, vocab, (batch, seq)),
              "KL_attention_mask": _ones(batch, seq), "KL_completion_mask": _ones(batch, seq),
              "label": torch.ones(batch, dtype=torch.bool)}
    if precomputed:
        inputs["ref_logps"] = torch.zeros(batch)
        inputs["ref_KL_logps"] = torch.zeros(batch)
    return me._compute_loss(model, inputs, False)


def _orpo_loss(model: nn.Module, ref: nn.Module | None, precomputed: bool, batch: int, seq: int,
               vocab: int) -> torch.Tensor:
    from trl.experimental.orpo import ORPOTrainer

    me = _trainer_self(ORPOTrainer, model, None, beta=0.1, is_encoder_decoder=False, padding_value=0)
    inputs = {}
    for half in ("chosen", "rejected"):  # ORPO's tokenize_row: prompt + answer, labels -100 on the prompt
        ids = torch.randint(0, vocab, (batch, seq))
        inputs.update({f"{half}_input_ids": ids, f"{half}_attention_mask": _ones(batch, seq),
                       f"{half}_labels": ids.clone()})
    loss, _metrics = me.get_batch_loss_metrics(model, inputs, train_eval="train")
    return loss


def _rm_loss(model: nn.Module, ref: nn.Module | None, precomputed: bool, batch: int, seq: int,
             vocab: int) -> torch.Tensor:
    from trl.trainer.reward_trainer import RewardTrainer

    me = _trainer_self(RewardTrainer, model, None)
    rows = 2 * batch  # DataCollatorForPreference: chosen and rejected concatenated (reward_trainer.py:198-210)
    inputs = {"input_ids": torch.randint(1, vocab, (rows, seq)), "attention_mask": _ones(rows, seq)}
    return me.compute_loss(model, inputs)


# Task.trl_class (the TRL trainer a record's fields were read from) -> its replay, and whether
# the trainer puts TRL's fused LM head on the policy and the reference (add_fused_lm_head)
REPLAYS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...] | None]] = {
    "trl.trainer.dpo_trainer.DPOTrainer": (_dpo_loss, ("log_probs", "entropy", "mean_logits", "is_top1")),
    "trl.trainer.kto_trainer.KTOTrainer": (_kto_loss, ("log_probs", "entropy", "mean_logits")),
    "trl.experimental.orpo.ORPOTrainer": (_orpo_loss, None),
    "trl.trainer.reward_trainer.RewardTrainer": (_rm_loss, None),
}
assert set(REPLAYS) == set(REPLAYED_TRAINERS)


class _LogProbEntropyStandIn(torch.autograd.Function):
    """The allocations of TRL's Triton selective_log_softmax kernel (trl/kernels/logprob_entropy.py
    _LogProbEntropyFunction :146-247, which imports triton and cannot load on a CPU build): forward
    writes four fp32 [rows, seq] vectors and saves the logits; backward writes one contiguous gradient
    of the logits' shape. The kernels themselves work in registers."""

    @staticmethod
    def forward(ctx, logits, index, temperature, row_mask):
        logprobs = torch.empty(logits.shape[:-1], device=logits.device, dtype=torch.float32)
        entropy, log_z, expected_logit = (torch.empty_like(logprobs) for _ in range(3))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, index, log_z, expected_logit, row_mask)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        logits = ctx.saved_tensors[0]
        return torch.empty_like(logits, memory_format=torch.contiguous_format), None, None, None


def _selective_kernel(logits, index, temperature=1.0, row_mask=None):
    return _LogProbEntropyStandIn.apply(logits, index, temperature, row_mask)


@contextlib.contextmanager
def _cuda_fused_head():
    """TRL's fused LM head as it runs on CUDA: Triton kernels fold each logits tile in place and the
    gradient GEMMs accumulate into fp32 with out_dtype (trl/kernels/chunked_logprob.py _forward_kernel,
    _backward_kernel, _addmm_fp32); only valid positions are projected (utils.py:1642, compact).
    selective_log_softmax takes its Triton kernel on CUDA (trl/trainer/utils.py:572-574,
    _supports_trl_loss_kernel: a CUDA/XPU device): _LogProbEntropyStandIn."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    def in_place(*_a, **_k):  # registers only, like the Triton kernel / cuBLAS out= GEMM
        return None

    with mock.patch.object(chunked_logprob, "_forward_tile", in_place), \
            mock.patch.object(chunked_logprob, "_backward_tile", in_place), \
            mock.patch.object(chunked_logprob, "_addmm_fp32", in_place), \
            mock.patch.object(trl_utils, "_use_triton", lambda _d: True), \
            mock.patch.object(trl_utils, "is_triton_available", lambda: True), \
            mock.patch.object(trl_utils, "_supports_trl_loss_kernel", lambda *_a, **_k: True), \
            mock.patch.object(trl_utils, "_fused_logprob_entropy", _selective_kernel, create=True):
        yield


def _hooks(model: nn.Module, ref: nn.Module | None, tracker: MemoryTracker) -> list[Any]:
    """Tag gradients; no-grad forwards (reference, KL pass) as "reference"; what follows the backbone
    of a graded forward (LM head / fused head / score head, the loss) as "logits"; backward's
    working memory as "temporaries" once the backbone's output gradient exists."""
    handles = []
    for p in model.parameters():
        if p.requires_grad:
            handles.append(p.register_post_accumulate_grad_hook(lambda q: tracker.track(q.grad, "gradients")))
    saved: list[str] = []

    def pre(_m, _a):
        saved.append(tracker.category)
        if tracker.phase == "forward":
            tracker.category = "reference" if not torch.is_grad_enabled() else "activations"

    def post(_m, _a, _out):
        prev = saved.pop() if saved else tracker.category
        if tracker.phase == "forward":
            tracker.category = "logits" if torch.is_grad_enabled() else prev

    def backbone_post(_m, _a, out):
        if tracker.phase != "forward" or not torch.is_grad_enabled():
            return
        tracker.category = "logits"
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        if hidden.requires_grad:
            hidden.register_hook(lambda g: setattr(tracker, "category", "temporaries"))

    for m in (model, ref):
        if m is None:
            continue
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        inner = m.get_base_model() if hasattr(m, "get_base_model") else m
        handles.append(getattr(inner, inner.base_model_prefix).register_forward_hook(backbone_post))
    return handles


def run_task_trace(config: dict[str, Any], job: Job, *, name: str = "model", steps: int = 2,
                   progress: Progress | None = None, block: int = 512) -> TraceResult:
    """Build the policy (and a separate reference) and measure TRL's loss step for job.task.

    Args:
        config: config.json dict.
        job: method, training settings, task and reference (one GPU).
        name: model name for the result.
        steps: training steps; the last one is measured.
        progress: called with a short status line.
        block: allocation rounding in bytes (512 = CUDA caching allocator).

    Returns:
        TraceResult of the last step; at_peak has a "reference" category (the separate reference's
        weights and every no-grad forward).

    Raises:
        TuneplanError: a task the trace does not replay, or several GPUs.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    check_task(job)
    with contextlib.redirect_stdout(sys.stderr):  # deepspeed, imported by trl, logs to stdout (--json)
        importlib.import_module(job.task_record.trl_class.rpartition(".")[0])
        from trl.trainer.utils import add_fused_lm_head
    if job.parallel.num_gpus > 1:
        raise TuneplanError("trace replays a task's step on one GPU; drop --gpus")
    tk, t = job.task_record, job.training
    replay, fused_outputs = REPLAYS[tk.trl_class]
    prec = precision_of(t)
    ref_kind = job.reference
    notes = [*ASSUMPTIONS[:3], *TASK_ASSUMPTIONS,
             f"Task {tk.name}: {tk.trl_class} from the installed trl; reference: {ref_kind}."]
    if t.loss.fused or t.loss.chunks:
        notes.append(f"{t.loss.name} cross-entropy is not traced: the step runs TRL's own loss path.")
    head = "scalar" if tk.head == "scalar" else "lm"
    start = time.perf_counter()
    say = progress or (lambda _s: None)
    mode = FakeTensorMode()
    torch.manual_seed(0)
    # deepspeed (imported by trl, some of it lazily) logs to stdout: the trace's stdout goes to stderr (--json)
    with contextlib.redirect_stdout(sys.stderr), mode, _single_sequence_batches(), _cuda_dropout(), \
            _cuda_fused_head():
        say("building model")
        with _swappable_fake_params(mode):
            model = build_model(config, job.method, t, head=head)
            ref = None
            if ref_kind == "separate":  # create_model_from_path with the policy's dtype (dpo_trainer.py:908-927)
                ref = build_model(config, Method(kind="full"), replace(t, checkpointing="none"), head=head)
                ref.requires_grad_(False)
                ref.eval()  # accelerator.prepare_model(ref_model, evaluation_mode=True)
        if fused_outputs is not None:
            add_fused_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model,
                              outputs=fused_outputs)
            if ref is not None:
                add_fused_lm_head(ref)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, t)
        tracker = MemoryTracker(block=block)
        tracker.current["reference"] = 0
        for p in model.parameters():
            tracker.track(p, "trainable" if p.requires_grad else "weights")
        for b in model.buffers():
            tracker.track(b, "weights")
        if ref is not None:
            for x in (*ref.parameters(), *ref.buffers()):
                tracker.track(x, "reference")
        handles = _hooks(model, ref, tracker)
        vocab = _vocab_size(model)
        autocast = (torch.autocast("cpu", dtype=prec.autocast_dtype) if prec.autocast_dtype
                    else contextlib.nullcontext())
        first_peak = 0
        with tracker, _AllValid():
            for step in range(1, steps + 1):
                if step == steps:
                    first_peak = tracker.peak.total
                    tracker.reset_peak()
                tracker.set_phase("forward", "activations")
                say(f"step {step}/{steps} forward + loss ({tk.name})")
                with autocast:  # Trainer.compute_loss under accelerate's autocast
                    loss = replay(model, ref, ref_kind == "precomputed", t.micro_batch, t.seq_len, vocab)
                tracker.set_phase("backward", "logits")
                say(f"step {step}/{steps} backward")
                loss.backward()
                del loss
                tracker.set_phase("optimizer", "temporaries")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                track_optimizer_states(optimizer, tracker)
        for h in handles:
            h.remove()
        result = result_of(tracker, TASK_CATEGORIES, name=name, first_peak=first_peak, counts=_count(model),
                           start=start, fake=True, notes=notes)
        del model, ref, optimizer
    return result


