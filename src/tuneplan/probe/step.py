"""Build the real model on the device and run real training steps on it: warm-up, timed steps,
and the peaks of the memory counters.

The step is the one `tuneplan trace` replays (the HF Trainer's training_step: forward with
labels under the precision's autocast, loss / grad_accum, backward, after grad_accum
micro-batches optimizer.step() and zero_grad(set_to_none=True)), built by the same code
(tuneplan.trace.build) and with the same optimizer records (tuneplan.trace.run.make_optimizer),
but on real tensors of the asked shape on the device at hand, with the real libraries:
PEFT LoRA/DoRA, bitsandbytes 4-bit/8-bit layers and optimizers, gradient checkpointing,
the attention kernel. Token batches are random ids of the asked shape (full-length, no
padding: a packed batch).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory import MemoryEstimate
from tuneplan.memory import components as K
from tuneplan.models import ModelSpec, param_counts
from tuneplan.probe.device import COUNTERS, Device, Peaks
from tuneplan.probe.quant import bnb_quantiser, quant_state_tensors
from tuneplan.trace.build import build_model, precision_of
from tuneplan.trace.run import make_optimizer

Progress = Callable[[str], None]
# (model, device) -> the model wrapped for data parallelism (DDP / FSDP), or None for one process
Wrap = Callable[[nn.Module, Device], nn.Module]


# ---------------------------------------------------------------- what the estimate says the device needs


def build_bytes(spec: ModelSpec, job: Job) -> int:
    """QLoRA builds the model in its 16-bit dtype before quantising it layer by layer: the
    bytes that exist once, during the build (0 for other methods, whose build is the model)."""
    if job.method.weight_bits is None:
        return 0
    return param_counts(spec).total * job.training.param_bytes  # every process builds the whole model


def needed_bytes(est: MemoryEstimate, spec: ModelSpec, job: Job, kind: str, limit: int | None = None) -> int:
    """Bytes the estimate says this job takes on a device of `kind` (what free memory must hold).

    CUDA: the device figure less the CUDA context (it exists by the time free memory is read);
    with a --memory-limit, the reserved figure (what set_per_process_memory_fraction caps).
    CPU and MPS: the allocated figure (no CUDA context, no caching allocator). At least the
    QLoRA build's 16-bit model.
    """
    if kind == "cuda":
        need = est.peak_reserved_bytes if limit else est.device_bytes - est.component(K.CUDA_CONTEXT)
    else:
        need = est.peak_allocated_bytes
    return max(need, build_bytes(spec, job))


def check_free(need: int, dev: Device, force: bool, processes: int = 1) -> None:
    """Refuse (one line) when the estimate exceeds what the device has free, unless `force`.

    Raises:
        TuneplanError: need x processes > free (or > --memory-limit).
    """
    if force:
        return
    GiB = 2**30
    if dev.limit is not None:
        if need > dev.limit:
            raise TuneplanError(f"the estimate needs {need / GiB:.2f} GiB on {dev.label}, more than --memory-limit "
                                f"{dev.limit / GiB:.2f} GiB; --force runs it anyway (an out-of-memory is then "
                                "reported as a result)")
        return
    free = dev.free_now
    if free is None:
        return
    total = need * processes
    if total > free:
        who = f" for {processes} processes" if processes > 1 else ""
        raise TuneplanError(f"the estimate needs {total / GiB:.2f} GiB{who} on {dev.label} ({dev.name}) but "
                            f"{free / GiB:.2f} GiB is free; --force runs it anyway (an out-of-memory is then "
                            "reported as a result)")


# ---------------------------------------------------------------- results


@dataclass
class StepRun:
    """One probe of one shape: measured peaks and step times, or where it ran out of memory.

    status: ok | oom (the device ran out of memory) | over-limit (CPU/MPS: the measured
    allocated peak exceeded --memory-limit).
    """

    micro_batch: int
    seq_len: int
    status: str
    peaks: Peaks = field(default_factory=Peaks)
    step_times: list[float] = field(default_factory=list)
    tokens_per_step: int = 0
    oom_phase: str | None = None
    oom_message: str | None = None

    @property
    def step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None

    @property
    def tokens_per_s(self) -> float | None:
        s = self.step_s
        return self.tokens_per_step / s if s else None

    def to_dict(self) -> dict[str, Any]:
        p = self.peaks
        return {"micro_batch": self.micro_batch, "seq_len": self.seq_len, "status": self.status,
                "peak_allocated_bytes": p.allocated, "peak_reserved_bytes": p.reserved, "device_bytes": p.device,
                "peak_phase": p.phase, "phase_peaks": dict(p.phase_peaks), "step_s": self.step_s,
                "step_times_s": [round(x, 6) for x in self.step_times], "tokens_per_step": self.tokens_per_step,
                "tokens_per_s": self.tokens_per_s, "oom_phase": self.oom_phase, "oom_message": self.oom_message}


def is_oom(e: BaseException) -> bool:
    """A device out-of-memory: torch.OutOfMemoryError (CUDA), MemoryError (CPU), MPS's RuntimeError."""
    oom_cls = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(e, (MemoryError, oom_cls)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


# ---------------------------------------------------------------- the session


class Session:
    """The model and optimizer on one device, ready to run steps of any shape.

    Args:
        config: config.json dict.
        job: the job (its micro_batch/seq_len are the default shape).
        dev: where it runs.
        wrap: DDP/FSDP wrapping for a multi-process probe.
        progress: short status lines.
    """

    def __init__(self, config: dict[str, Any], job: Job, dev: Device, wrap: Wrap | None = None,
                 progress: Progress | None = None) -> None:
        self.config, self.job, self.dev, self.wrap = config, job, dev, wrap
        self.say = progress or (lambda _s: None)
        self.notes: list[str] = []
        self.model: nn.Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.build_s = 0.0
        self.trainable = self.total = 0
        self.attn_impl = ""
        self.batch_seed: int | None = None  # tensor parallel: ids from a generator shared by the TP group
        self.position_ids = False  # sequence parallel: the model is given the full sequence's positions
        self.step_context: Callable[[], Any] = contextlib.nullcontext
        self._gen: torch.Generator | None = None

    def tensor_parallel(self, data_rank: int, sequence_parallel: bool = False) -> None:
        """Run the steps of a tensor-parallel rank: every rank of a tensor group takes the same
        token ids (a generator seeded with the data-parallel rank), plain tensors meet DTensors
        as replicated (torch's implicit_replication, as the trace runs it), and under sequence
        parallelism the model is handed the positions of the whole sequence (its embeddings'
        output holds the rank's sequence shard)."""
        from torch.distributed.tensor.experimental import implicit_replication

        self.batch_seed = 1000 + data_rank
        self.position_ids = sequence_parallel
        self.step_context = implicit_replication
        self.notes.append("Tensor parallel: transformers' base_model_tp_plan (q/k/v/gate/up colwise, o/down "
                          "rowwise), lm_head colwise with gathered logits, embeddings and norms replicated"
                          + ("; sequence-parallel norms and residual (torchtitan plan)" if sequence_parallel else "")
                          + "; LoRA factors split with their base layer (DTensor parallelize_module).")

    # ------------------------------------------------------------ build

    def _attention(self) -> str:
        attn = self.job.training.attn
        if attn.hf_impl == attn.trace_impl:
            return attn.hf_impl
        if self.dev.kind == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            return attn.hf_impl
        self.notes.append(f"--attention {attn.name}: transformers' {attn.hf_impl} needs the flash-attn package on "
                          f"CUDA; ran {attn.trace_impl} (the same O(s) saved tensors).")
        return attn.trace_impl

    def build(self) -> None:
        """Build the model on the device (QLoRA: quantised layer by layer) and its optimizer."""
        t, m = self.job.training, self.job.method
        start = time.perf_counter()
        self.say("building the model")
        torch.manual_seed(0)
        target = self.dev.torch_device
        self.attn_impl = self._attention()
        if self.dev.kind != "cuda" and m.weight_bits is not None:
            self.notes.append("PEFT's bitsandbytes LoRA layers test CUDA's autocast state; off CUDA the probe lets "
                              "them test this device's, so the step keeps what a CUDA step keeps (no fp32 copy of "
                              "each 4-bit layer's input).")
        quantiser = bnb_quantiser(target) if m.weight_bits is not None else None
        build_on = target
        if quantiser is not None and self.dev.kind != "cpu":
            free = self.dev.free_now or 0
            whole = _config_bytes(self.config, t.param_bytes)
            if whole > 0.8 * free:  # the 16-bit model would not fit next to its quantised copy: build on the CPU
                build_on = torch.device("cpu")
                self.notes.append("QLoRA: the 16-bit model was built on the CPU and quantised onto the device layer "
                                  "by layer (it does not fit the device before quantisation).")
        with torch.device(build_on):
            model = build_model(self.config, m, t, attn_impl=self.attn_impl, quantiser=quantiser)
        model.to(target)
        if self.wrap is not None:
            model = self.wrap(model, self.dev)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        if t.optimizer_in_backward:
            self.optimizers = [make_optimizer([p], t, bitsandbytes=True) for p in params]
            for p, opt in zip(params, self.optimizers, strict=True):
                p.register_post_accumulate_grad_hook(_step_in_backward(opt))
        else:
            self.optimizers = [make_optimizer(params, t, bitsandbytes=True)]
        for p in model.parameters():
            n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # packed 4-bit: two values a byte
            self.total += n
            self.trainable += n if p.requires_grad else 0
        self.dev.synchronize()
        self.build_s = time.perf_counter() - start

    # ------------------------------------------------------------ steps

    def _resident(self) -> list[torch.Tensor]:
        assert self.model is not None
        out = list(self.model.parameters()) + list(self.model.buffers()) + quant_state_tensors(self.model)
        for opt in self.optimizers:
            for st in opt.state.values():
                out += [v for v in st.values() if isinstance(v, torch.Tensor)]
        return [getattr(t, "_local_tensor", t) for t in out]  # FSDP2 shards are DTensors

    def _step(self, micro_batch: int, seq_len: int, mark: Callable[[str], None]) -> None:
        """One optimizer step: grad_accum micro-batches (forward, backward), then the update."""
        assert self.model is not None
        t = self.job.training
        prec = precision_of(t)
        vocab = _vocab_size(self.model)
        dev = self.dev.torch_device
        autocast = (torch.autocast(self.dev.kind, dtype=prec.autocast_dtype) if prec.autocast_dtype
                    else contextlib.nullcontext())
        kwargs: dict[str, Any] = {}
        if self.position_ids:
            kwargs["position_ids"] = torch.arange(seq_len, device=dev).unsqueeze(0).expand(micro_batch, -1)
        for _ in range(t.grad_accum):
            mark("forward")
            if self.batch_seed is None:
                ids = torch.randint(0, vocab, (micro_batch, seq_len), device=dev)
            else:
                if self._gen is None:
                    self._gen = torch.Generator().manual_seed(self.batch_seed)
                ids = torch.randint(0, vocab, (micro_batch, seq_len), generator=self._gen).to(dev)
            labels = ids.clone()
            with autocast, self.step_context():
                out = self.model(input_ids=ids, labels=labels, **kwargs)
            loss = out.loss / t.grad_accum if t.grad_accum > 1 else out.loss
            del out  # Trainer.compute_loss keeps only the loss
            mark("backward")
            with self.step_context():
                loss.backward()
            del loss, ids, labels
        mark("optimizer")
        if not t.optimizer_in_backward:
            with self.step_context():
                for opt in self.optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def _device_autocast_test(self):
        """Off CUDA, let PEFT's bitsandbytes LoRA forward read this device's autocast state.

        peft/tuners/lora/bnb.py tests torch.is_autocast_enabled() with no device, which is
        CUDA's autocast: under a CUDA autocast it skips casting the adapter input to fp32; on
        the CPU it would keep an fp32 copy of every 4-bit layer's input that a GPU run does
        not (the trace's stand-in makes the same test, tuneplan.trace.build._lora_4bit_class).
        """
        if self.dev.kind == "cuda" or self.job.method.weight_bits is None:
            yield
            return
        from unittest import mock

        orig = torch.is_autocast_enabled
        kind = self.dev.kind

        def enabled(device_type: str | None = None) -> bool:
            return orig(device_type or kind)

        with mock.patch.object(torch, "is_autocast_enabled", enabled):
            yield

    def run(self, micro_batch: int, seq_len: int, steps: int, warmup: int) -> StepRun:
        """Warm up, time `steps` optimizer steps and read the memory counters; an out-of-memory
        is returned as a result (status oom), with the device's cache released."""
        t = self.job.training
        result = StepRun(micro_batch, seq_len, "ok", tokens_per_step=micro_batch * seq_len * t.grad_accum)
        counters = self.dev.counters()
        phase = {"now": "build"}
        counting = {"on": False}

        def mark(name: str) -> None:
            phase["now"] = name
            if counting["on"]:
                counters.phase(name)

        oom: BaseException | None = None
        # Start each shape from an empty cache: the build's freed blocks (QLoRA: the 16-bit
        # layers it quantised; a search: the last shape's blocks) are not something a real run
        # that loads its weights tensor by tensor would hold, and they would inflate reserved.
        self.dev.release()
        patch = self._device_autocast_test()
        patch.__enter__()
        try:
            for i in range(warmup):
                self.say(f"warm-up step {i + 1}/{warmup} ({micro_batch} x {seq_len})")
                self._step(micro_batch, seq_len, mark)
            self.dev.synchronize()
            timed_counts = self.dev.counts_while_timing
            if timed_counts:
                counters.begin(self._resident())
                counting["on"] = True
            for i in range(steps):
                self.say(f"measured step {i + 1}/{steps} ({micro_batch} x {seq_len})")
                start = time.perf_counter()
                self._step(micro_batch, seq_len, mark)
                self.dev.synchronize()
                result.step_times.append(time.perf_counter() - start)
            if not timed_counts:
                self.say(f"memory step ({micro_batch} x {seq_len})")
                counters.begin(self._resident())
                counting["on"] = True
                self._step(micro_batch, seq_len, mark)
            counting["on"] = False
            result.peaks = counters.end()
        except Exception as e:  # noqa: BLE001 - only an out-of-memory becomes a result
            if not is_oom(e):
                counters.abort()
                raise
            oom = e
            e.__traceback__ = None  # drop the frames holding the step's tensors
        finally:
            patch.__exit__(None, None, None)
        if oom is not None:
            counters.abort()
            result.status, result.oom_phase = "oom", phase["now"]
            result.oom_message = (str(oom).strip().splitlines() or [type(oom).__name__])[0][:200]
            result.step_times = []
            del oom
            self._recover()
            return result
        limit = self.dev.limit
        if limit is not None and self.dev.kind != "cuda" and (result.peaks.allocated or 0) > limit:
            result.status = "over-limit"
        return result

    def _recover(self) -> None:
        """After an out-of-memory: drop gradients and cached blocks so the next shape starts clean."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.model is not None:
            for p in self.model.parameters():
                p.grad = None
        self.dev.release()

    def close(self) -> None:
        """Free the model, optimizer and the device's cache."""
        self.model = None
        self.optimizers = []
        gc.collect()
        self.dev.release()

    def info(self) -> dict[str, Any]:
        return {"build_s": round(self.build_s, 3), "trainable_params": self.trainable, "total_params": self.total,
                "attn_implementation": self.attn_impl, "counters": COUNTERS[self.dev.kind], "notes": list(self.notes)}


def _step_in_backward(opt: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    """torchtune's optimizer_in_bwd: step each parameter as soon as its gradient is complete and free it."""
    def hook(_p: torch.Tensor) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    return hook


def _vocab_size(model: nn.Module) -> int:
    inner = getattr(model, "module", model)  # DDP
    emb = inner.get_input_embeddings()
    return getattr(emb, "num_embeddings", None) or inner.config.vocab_size


def _config_bytes(config: dict[str, Any], param_bytes: int) -> int:
    """Bytes of the model in its 16-bit dtype, from config.json (for where to build a QLoRA model)."""
    from tuneplan.models import spec_from_config

    try:
        return param_counts(spec_from_config(config)).total * param_bytes
    except TuneplanError:
        return 0
