"""A TorchDispatchMode that follows tensor storages from allocation to death, in bytes.

Every op that runs while the tracker is active hands its outputs to the tracker; each
new storage is counted once (views share their base's storage) and a weak reference
with a callback subtracts it when the storage dies. This is the same mechanism as
torch.distributed._tools.mem_tracker.MemTracker (torch/distributed/_tools/mem_tracker.py,
_WeakRefInfo.create_winfo), trimmed to what a training step needs: categories that can
be re-tagged (a gradient is first seen as a backward temporary), a phase label and the
breakdown at the peak. It works on real tensors and on FakeTensors alike, because a
FakeTensor has an untyped storage with a size and a lifetime but no data.

Sizes are rounded up to 512 bytes, the CUDA caching allocator's smallest block
(c10/cuda/CUDACachingAllocator.cpp kMinBlockSize; what torch.cuda.max_memory_allocated
counts), so the figures read as a CUDA run would report them.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

CUDA_BLOCK = 512  # bytes, CUDACachingAllocator kMinBlockSize

# What a live storage is, as far as the step is concerned.
CATEGORIES = (
    "weights",  # frozen parameters, buffers, quantisation state
    "trainable",  # parameters that receive gradients (full weights or adapters)
    "gradients",  # .grad of trainable parameters
    "optimizer",  # optimizer states (exp_avg, exp_avg_sq, momentum, ...)
    "activations",  # tensors created in the forward pass (saved for backward or in flight)
    "logits",  # lm_head output, its fp32 upcast and the cross-entropy tensors
    "temporaries",  # backward working memory, recomputed layers, optimizer scratch
)


def rounded(nbytes: int, block: int = CUDA_BLOCK) -> int:
    """Bytes a caching allocator hands out for a request of `nbytes` (multiple of `block`)."""
    if block <= 1:
        return nbytes
    return max(block, -(-nbytes // block) * block) if nbytes else 0


@dataclass
class Snapshot:
    """Live bytes by category at one moment, and which phase it was in."""

    total: int = 0
    phase: str = ""
    by_category: dict[str, int] = field(default_factory=dict)


class MemoryTracker(TorchDispatchMode):
    """Count the bytes of every live storage, by category, and remember the peak.

    Use as a context manager around the work to measure. Tensors that exist before
    (parameters, buffers) are registered with :meth:`track`.

    Args:
        block: allocation granularity in bytes (512 mimics CUDA; 1 counts exact bytes).
    """

    def __init__(self, block: int = CUDA_BLOCK) -> None:
        super().__init__()
        self.block = block
        self._live: dict[int, tuple[weakref.ref, int, str]] = {}
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.phase = "setup"
        self.category = "activations"  # tag for storages created by ops from now on
        self.peak = Snapshot()
        self.phase_peaks: dict[str, int] = {}
        self.ops = 0

    # -------------------------------------------------------------- bookkeeping

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is None:
            return
        _, nbytes, cat = entry
        self.current[cat] -= nbytes
        self.total -= nbytes

    def _add(self, storage: torch.UntypedStorage, category: str) -> None:
        key = id(storage)
        if key in self._live:
            return
        nbytes = rounded(storage.nbytes(), self.block)
        ref = weakref.ref(storage, lambda _r, k=key: self._free(k))
        self._live[key] = (ref, nbytes, category)
        self.current[category] += nbytes
        self.total += nbytes
        if self.total > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.total
        if self.total > self.peak.total:
            self.peak = Snapshot(self.total, self.phase, dict(self.current))

    def track(self, tensor: torch.Tensor, category: str) -> None:
        """Count `tensor`'s storages (storages_of: through a DTensor to its local tensor) under
        `category`, re-tagging any already counted."""
        if tensor is None:
            return
        for storage in storages_of(tensor):
            entry = self._live.get(id(storage))
            if entry is None:
                self._add(storage, category)
            elif entry[2] != category:
                ref, nbytes, old = entry
                self.current[old] -= nbytes
                self.current[category] += nbytes
                self._live[id(storage)] = (ref, nbytes, category)

    def resized(self, storage: torch.UntypedStorage) -> None:
        """Re-count a storage whose size changed in place (UntypedStorage.resize_, which FSDP2
        uses to free and re-allocate unsharded parameters); dispatch never sees that call."""
        key = id(storage)
        entry = self._live.get(key)
        if entry is None:
            if storage.nbytes():
                self._add(storage, self.category)
            return
        ref, old, cat = entry
        new = rounded(storage.nbytes(), self.block)
        self._live[key] = (ref, new, cat)
        self.current[cat] += new - old
        self.total += new - old
        if self.total > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.total
        if self.total > self.peak.total:
            self.peak = Snapshot(self.total, self.phase, dict(self.current))

    def category_of(self, tensor: torch.Tensor) -> str | None:
        """The category `tensor`'s storage is counted under (None if untracked)."""
        entry = self._live.get(id(tensor.untyped_storage()))
        return entry[2] if entry else None

    def set_phase(self, phase: str, category: str) -> None:
        """Label what follows (forward/backward/optimizer) and how new storages are tagged."""
        self.phase = phase
        self.category = category
        self.phase_peaks.setdefault(phase, self.total)

    def reset_peak(self) -> None:
        """Forget peaks so far (e.g. after a warm-up step); live bytes stay counted."""
        self.peak = Snapshot(self.total, self.phase, dict(self.current))
        self.phase_peaks = {}

    # -------------------------------------------------------------- dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        # a DTensor op (tensor parallelism, FSDP2's sharded parameters) reaches the mode with
        # DTensor outputs while its local ops run below it: count outputs by their local storages
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                for storage in storages_of(t):
                    self._add(storage, self.category)
        return out


def storages_of(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages behind `t`, through tensor subclasses (a DTensor -> its local tensor), as
    torch.distributed._tools.common_utils.get_untyped_storages does: what a tracker counts
    when a DTensor op reaches the dispatch mode (trace under a fake process group, probe)."""
    out, todo = [], [t]
    while todo:
        x = todo.pop()
        if is_traceable_wrapper_subclass(x):
            attrs, _ = x.__tensor_flatten__()
            todo.extend(v for v in (getattr(x, a) for a in attrs) if isinstance(v, torch.Tensor))
        else:
            out.append(x.untyped_storage())
    return out


@contextlib.contextmanager
def storage_resizes(tracker: MemoryTracker):
    """Tell the tracker about in-place storage resizes: FSDP frees unsharded parameters with
    UntypedStorage.resize_(0) and re-allocates them with resize_(n), which dispatch never sees."""
    from unittest import mock

    orig = torch.UntypedStorage.resize_

    def resize_(storage, size):
        out = orig(storage, size)
        tracker.resized(storage)
        return out

    with mock.patch.object(torch.UntypedStorage, "resize_", resize_):
        yield
