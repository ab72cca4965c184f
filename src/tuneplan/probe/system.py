"""What the probe reads off the machine without torch: process memory, library versions, the
catalog device a GPU name stands for, and where records go.

Nothing here imports torch, so the command can use it before deciding to run anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import sys
from pathlib import Path

from tuneplan.hardware import Device, devices

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "flash-attn", "liger-kernel")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a step depends on (None when absent), plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["tuneplan"] = importlib.metadata.version("tuneplan")
    except importlib.metadata.PackageNotFoundError:
        out["tuneplan"] = None
    return out


# ---------------------------------------------------------------- process memory (the CPU "device" counter)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; None elsewhere)."""
    return _status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0: /proc/self/clear_refs "5").

    Returns False where that is not possible; peak_rss then reports the process lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Resident-set high-water mark since the last reset_peak_rss (Linux VmHWM), else the lifetime peak."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# ---------------------------------------------------------------- catalog device for a GPU name

_FORM = ("sxm", "pcie", "nvl")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _cores(d: Device) -> list[str]:
    """Squashed names that identify a catalog device inside a driver's device name."""
    core = re.sub(r"-\d+gb\b", "", d.id)
    for form in _FORM:
        core = core.replace(f"-{form}", "")
    out = [_squash(core)] + [_squash(a) for a in d.aliases if len(_squash(a)) >= 4]
    return [c for c in dict.fromkeys(out) if c]


def match_catalog(name: str, total_bytes: int | None = None) -> Device | None:
    """The catalog device a driver's name stands for ("NVIDIA H100 80GB HBM3" -> h100-sxm).

    The longest catalog name found inside the squashed driver name wins; among devices of
    that name, the one whose memory is within 15% of `total_bytes`, then the one whose form
    factor (SXM/PCIe/NVL) the name states, else the SXM part. None when nothing matches.
    """
    low = _squash(name)
    best: list[tuple[int, Device]] = []
    for d in devices().values():
        hits = [len(c) for c in _cores(d) if c in low]
        if hits:
            best.append((max(hits), d))
    if not best:
        return None
    top = max(n for n, _ in best)
    family = {_cores(d)[0] for n, d in best if n == top}  # the same part in other sizes and form factors
    cands = [d for _, d in best if _cores(d)[0] in family]
    if total_bytes:
        gib = total_bytes / 2**30
        close = [d for d in cands if abs(d.memory_gib - gib) <= 0.15 * d.memory_gib]
        cands = close or cands
    stated = [f for f in _FORM if f in low] or (["sxm"] if "hbm" in low else [])
    for form in stated + ["sxm"]:
        with_form = [d for d in cands if f"-{form}" in d.id]
        if with_form:
            return with_form[0]
    return cands[0]


# ---------------------------------------------------------------- records


def default_record_path() -> Path:
    """$XDG_CACHE_HOME/tuneplan/probe.jsonl (~/.cache when unset; ~/Library/Caches on macOS)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = Path.home()
        base = str(home / "Library" / "Caches") if sys.platform == "darwin" else str(home / ".cache")
    return Path(base) / "tuneplan" / "probe.jsonl"
