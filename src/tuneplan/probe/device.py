"""The device a probe runs on, and its three memory counters read the same way everywhere.

| counter   | CUDA (and ROCm)                               | CPU                                                  | Apple MPS                          |
|-----------|-----------------------------------------------|------------------------------------------------------|------------------------------------|
| allocated | torch.cuda.max_memory_allocated               | peak of live tensor storages in 512-byte blocks (the trace's dispatch-level tracker) | the same tracker |
| reserved  | torch.cuda.max_memory_reserved                | peak of bytes held from torch's CPU allocator (profiler memory events: kernel scratch included), 512-byte blocks | none (Metal keeps no peak) |
| device    | driver: total - free after the steps, less what other processes held before (NVML) | process RSS high-water mark above the RSS before the model was built | torch.mps.driver_allocated_memory, highest seen at phase ends |

The CPU tracker also follows in-place storage resizes (FSDP2 frees and re-allocates its
unsharded parameters with UntypedStorage.resize_, which dispatch does not see); the CPU
reserved figure is at least the allocated one (storages made before the counters started,
such as DDP's gradient buckets, are seen by the tracker but not by the allocator events).

On CUDA the counters are free, so the measured steps are also the timed steps. On CPU and
MPS the tracker slows every op, so the timed steps run bare and one more step runs under
the counters (a steady-state step: optimizer states exist, as in the timed ones).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneplan.cli.system import available_ram, total_ram
from tuneplan.errors import TuneplanError
from tuneplan.probe.system import cpu_name, peak_rss, reset_peak_rss, rss_bytes
from tuneplan.trace.tracker import CUDA_BLOCK, MemoryTracker, rounded, storage_resizes

KINDS = ("cuda", "mps", "cpu")

COUNTERS = {
    "cuda": {"allocated": "torch.cuda.max_memory_allocated",
             "reserved": "torch.cuda.max_memory_reserved",
             "device": "driver level: total - free after the steps (torch.cuda.mem_get_info), less other processes' "
                       "use before the probe (NVML, when installed)"},
    "cpu": {"allocated": "peak of live tensor storages in 512-byte blocks (dispatch-level tracker, as trace; "
                         "stands for torch.cuda.max_memory_allocated)",
            "reserved": "peak of bytes held from torch's CPU allocator, kernel scratch included (profiler memory "
                        "events, 512-byte blocks, at least allocated; stands for the caching allocator's "
                        "max_memory_reserved)",
            "device": "process RSS high-water mark above the RSS before the model was built (stands for "
                      "nvidia-smi; includes the allocator's cached pages and Python objects)"},
    "mps": {"allocated": "peak of live tensor storages in 512-byte blocks (dispatch-level tracker)",
            "reserved": "not available on MPS (Metal keeps no peak counter)",
            "device": "torch.mps.driver_allocated_memory, the highest seen at the end of each phase"},
}


def pick_kind(asked: str | None) -> str:
    """The device kind to run on: the one asked for (checked), else CUDA, then MPS.

    The CPU is never picked silently: a real step of a billion-parameter model runs for
    minutes there, so it must be asked for with --device cpu.

    Raises:
        TuneplanError: the asked device is not available to this torch, or none was asked
            for and torch sees no GPU.
    """
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if asked == KINDS[0] and not torch.cuda.is_available():
        raise TuneplanError("--device cuda: torch sees no CUDA device (a CPU-only torch build, or no GPU); "
                            "use --device cpu")
    if asked == KINDS[1] and not has_mps:
        raise TuneplanError("--device mps: torch sees no Apple MPS device; use --device cpu")
    if asked:
        return asked
    if torch.cuda.is_available():
        return "cuda"
    if has_mps:
        return "mps"
    raise TuneplanError("torch sees no GPU (no CUDA or MPS device); pass --device cpu to run the step on the CPU "
                        "(slow: minutes for a billion-parameter model)")


def _nvml_used(index: int) -> int | None:
    """Bytes in use on GPU `index` by every process, from NVML, without creating a CUDA context."""
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML missing or refusing: the figure is optional
        return None


def _driver_version() -> str | None:
    if importlib.util.find_spec("pynvml") is not None:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                v = pynvml.nvmlSystemGetDriverVersion()
                return v.decode() if isinstance(v, bytes) else str(v)
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


@dataclass
class Device:
    """One device: what it is, how much memory it has and has free, and its counters.

    Args:
        kind: cuda | mps | cpu.
        index: CUDA device index (local rank in a multi-process probe).
        limit: --memory-limit in bytes (CUDA: enforced with set_per_process_memory_fraction;
            CPU/MPS: a measured allocated peak above it counts as out of memory).
    """

    kind: str
    index: int = 0
    limit: int | None = None
    name: str = ""
    total_bytes: int | None = None
    free_bytes: int | None = None
    driver: str | None = None
    others_bytes: int | None = None  # CUDA: memory other processes held before this one started
    rss_base: int = 0  # CPU: this process's RSS before any model was built
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind == "cuda":
            self.others_bytes = _nvml_used(self.index)  # before this process creates its context
            torch.cuda.set_device(self.index)
            self.name = torch.cuda.get_device_name(self.index)
            self.total_bytes = torch.cuda.get_device_properties(self.index).total_memory
            self.free_bytes = torch.cuda.mem_get_info(self.index)[0]
            hip = getattr(torch.version, "hip", None)
            self.driver = (f"ROCm {hip}" if hip else f"CUDA {torch.version.cuda}, driver {_driver_version() or '?'}")
            if self.limit:
                frac = min(1.0, self.limit / self.total_bytes)
                torch.cuda.set_per_process_memory_fraction(frac, self.index)
        elif self.kind == "mps":
            self.name = f"Apple {platform.machine()} ({_mac_chip()})"
            self.total_bytes = int(torch.mps.recommended_max_memory())
            self.free_bytes = self.total_bytes - int(torch.mps.driver_allocated_memory())
            self.driver = f"macOS {platform.mac_ver()[0]}"
        else:
            self.name = cpu_name()
            self.rss_base = rss_bytes() or 0
            self.total_bytes = total_ram()
            self.free_bytes = available_ram()
            self.driver = f"{platform.system()} {platform.release()}"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind, self.index) if self.kind == "cuda" else torch.device(self.kind)

    @property
    def label(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def free_now(self) -> int | None:
        """Bytes free on the device now (CUDA: driver; CPU: MemAvailable; MPS: recommended - allocated)."""
        if self.kind == "cuda":
            return torch.cuda.mem_get_info(self.index)[0]
        if self.kind == "mps":
            return int(torch.mps.recommended_max_memory()) - int(torch.mps.driver_allocated_memory())
        return available_ram()

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.index)
        elif self.kind == "mps":
            torch.mps.synchronize()

    def release(self) -> None:
        """Give cached memory back (after the model is gone, or before a shape is measured)."""
        gc.collect()
        if self.kind == "cuda":
            torch.cuda.empty_cache()
        elif self.kind == "mps":
            torch.mps.empty_cache()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "name": self.name, "total_bytes": self.total_bytes,
                "free_bytes": self.free_bytes, "driver": self.driver, "memory_limit_bytes": self.limit,
                "others_bytes": self.others_bytes}

    def counters(self) -> Counters:
        """The counters of this device (see the module docstring)."""
        return CudaCounters(self) if self.kind == "cuda" else TrackedCounters(self)

    @property
    def counts_while_timing(self) -> bool:
        """Whether the counters cost nothing, so timed steps can be measured steps (CUDA)."""
        return self.kind == "cuda"


def _mac_chip() -> str:
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        return out or "Apple silicon"
    except (OSError, subprocess.SubprocessError):
        return "Apple silicon"


# ---------------------------------------------------------------- counters


@dataclass
class Peaks:
    """What one measured stretch of steps reached, bytes (None: not measurable here)."""

    allocated: int | None = None
    reserved: int | None = None
    device: int | None = None
    phase: str | None = None
    phase_peaks: dict[str, int] = field(default_factory=dict)


class Counters:
    """Start before the measured steps, mark each phase, stop after: Peaks."""

    def begin(self, resident: list[torch.Tensor]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def phase(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def end(self) -> Peaks:  # pragma: no cover - interface
        raise NotImplementedError

    def abort(self) -> None:
        """Stop counting after an error (out of memory) without reading anything."""


class CudaCounters(Counters):
    """torch.cuda's peak counters, reset at each phase mark so each phase has its own peak."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.i = dev.index
        self.current = "forward"
        self.peaks = Peaks(allocated=0, reserved=0)

    def begin(self, resident: list[torch.Tensor]) -> None:
        torch.cuda.synchronize(self.i)
        torch.cuda.reset_peak_memory_stats(self.i)
        self.current = "forward"

    def _flush(self) -> None:
        torch.cuda.synchronize(self.i)
        a, r = torch.cuda.max_memory_allocated(self.i), torch.cuda.max_memory_reserved(self.i)
        p = self.peaks
        p.phase_peaks[self.current] = max(p.phase_peaks.get(self.current, 0), a)
        if a > (p.allocated or 0):
            p.allocated, p.phase = a, self.current
        p.reserved = max(p.reserved or 0, r)
        torch.cuda.reset_peak_memory_stats(self.i)

    def phase(self, name: str) -> None:
        if name != self.current:
            self._flush()
            self.current = name

    def end(self) -> Peaks:
        self._flush()
        free, total = torch.cuda.mem_get_info(self.i)
        # the caching allocator keeps what it reserved, so used-now is the peak unless it released some
        held_back = max(0, (self.peaks.reserved or 0) - torch.cuda.memory_reserved(self.i))
        self.peaks.device = total - free - (self.dev.others_bytes or 0) + held_back
        return self.peaks


class TrackedCounters(Counters):
    """CPU and MPS: the trace's dispatch-level tracker (allocated), torch's CPU allocator events
    from the profiler (reserved, CPU only), RSS high-water mark (CPU) or the Metal driver (MPS)."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.tracker = MemoryTracker(block=CUDA_BLOCK)
        self.profiler = None
        self.base = 0
        self.driver_peak = 0
        self._stack = contextlib.ExitStack()

    def begin(self, resident: list[torch.Tensor]) -> None:
        for t in resident:
            self.tracker.track(t, "weights")
        self.base = self.tracker.total
        self.tracker.reset_peak()
        if self.dev.kind == "cpu":
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with _quiet_stderr():  # kineto prints "profiler_start/stop" lines straight to fd 2
                self._stack.enter_context(self.profiler)
            self._stack.callback(_quiet_exit, self._stack.pop_all())
            reset_peak_rss()
        self._stack.enter_context(self.tracker)
        self._stack.enter_context(storage_resizes(self.tracker))
        self.tracker.set_phase("forward", "activations")

    def phase(self, name: str) -> None:
        if self.dev.kind == "mps":
            torch.mps.synchronize()
            self.driver_peak = max(self.driver_peak, int(torch.mps.driver_allocated_memory()))
        self.tracker.set_phase(name, "activations")

    def abort(self) -> None:
        self._stack.close()

    def end(self) -> Peaks:
        self.phase(self.tracker.phase)
        self._stack.close()
        t = self.tracker
        peaks = Peaks(allocated=t.peak.total, phase=t.peak.phase,
                      phase_peaks={k: v for k, v in t.phase_peaks.items() if k != "setup"})
        if self.dev.kind == "cpu":
            # storages made before the counters started and not resident (DDP's gradient buckets)
            # are seen by the tracker when used but never by the allocator events: at least allocated
            peaks.reserved = max(self.base + _allocator_peak(self.profiler), t.peak.total)
            peaks.device = max(0, peak_rss() - self.dev.rss_base)
        else:
            peaks.device = self.driver_peak
        return peaks


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging that Python cannot redirect) for a moment."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_exit(stack: contextlib.ExitStack) -> None:
    with _quiet_stderr():
        stack.close()


def _allocator_peak(prof: Any) -> int:
    """Highest net bytes allocated from torch's CPU allocator while `prof` ran, in 512-byte blocks.

    The profiler reports every allocation and free of the allocator (c10
    ProfiledCPUMemoryReporter) made while it runs, kernel-internal scratch included; memory
    allocated before it started is counted by the caller (the tracker's resident bytes).
    """
    from torch._C._profiler import _EventType

    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            if str(f.device).startswith("cpu"):
                size = int(f.alloc_size)
                events.append((node.start_time_ns, rounded(size) if size > 0 else -rounded(-size)))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak
