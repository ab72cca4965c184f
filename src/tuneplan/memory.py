"""Analytical per-GPU memory estimate of one fine-tuning step, by component, in bytes.

(Interface first; the implementation lands in the next commit.)
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.job import Job
from tuneplan.models import ModelSpec


@dataclass(frozen=True)
class Component:
    """One line of the breakdown: resident bytes per GPU and what the figure assumes."""

    key: str
    label: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of a training step.

    Args:
        components: resident/peak-contributing parts; they sum to `peak_bytes`.
        peak_bytes: estimated peak reserved memory per GPU (bytes), incl. CUDA context.
        peak_phase: forward | backward | optimizer: when the peak happens.
        phase_bytes: (phase, bytes) peak of each phase.
        trainable_params / total_params: element counts.
        cpu_bytes: bytes held in CPU RAM by offload (not in peak_bytes).
        assumptions: human sentences naming every assumption used.
    """

    model: ModelSpec
    job: Job
    components: tuple[Component, ...]
    peak_bytes: int
    peak_phase: str
    phase_bytes: tuple[tuple[str, int], ...]
    trainable_params: int
    total_params: int
    cpu_bytes: int
    assumptions: tuple[str, ...]

    def component(self, key: str) -> int:
        """Bytes of one component by key (0 if absent)."""
        return sum(c.bytes for c in self.components if c.key == key)


def estimate_memory(spec: ModelSpec, job: Job) -> MemoryEstimate:
    raise NotImplementedError
