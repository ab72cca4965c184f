"""Training tasks: what one step computes (supervised fine-tuning today)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class Task:
    """One training objective.

    Args:
        name: the setting (sft, dpo, ...).
        label: its name for people.
        modelled: the estimators compute it; otherwise a Job with it is refused in one line.
        what_differs: what a later estimator must add (said in the refusal).
    """

    name: str
    label: str
    modelled: bool
    what_differs: str = ""


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sft", "supervised fine-tuning", modelled=True),
    Task("dpo", "direct preference optimisation", modelled=False,
         what_differs="chosen and rejected sequences per sample and a frozen reference model's forward"),
    Task("grpo", "group relative policy optimisation", modelled=False,
         what_differs="generation of a group of completions per prompt, a reference model and reward scoring"),
)}


def task(name: str) -> Task:
    """The Task record for a --task name."""
    return lookup(TASKS, "training task", name)
