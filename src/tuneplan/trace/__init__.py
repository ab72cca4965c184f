"""Ground truth for the estimator: the real model's training step under a memory tracker.

Needs the optional extra (pip install -e '.[trace]' in the repository: torch, transformers, peft).
Nothing here is imported by the core package.
"""

from __future__ import annotations


def available() -> bool:
    """True when torch, transformers and peft can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft"))


# TRL trainers (Task.trl_class) whose loss step tuneplan.trace.tasks replays
REPLAYED_TRAINERS = ("trl.trainer.dpo_trainer.DPOTrainer", "trl.trainer.kto_trainer.KTOTrainer",
                     "trl.experimental.orpo.ORPOTrainer", "trl.trainer.reward_trainer.RewardTrainer")


def check_task(job) -> None:
    """Refuse, in one line and before torch is imported, a task the trace does not replay.

    Raises:
        TuneplanError: an online task, or an offline one whose TRL trainer is not replayed.
    """
    from tuneplan.choices.tasks import TASKS
    from tuneplan.errors import TuneplanError

    tk = job.task_record
    if tk.is_sft or tk.trl_class in REPLAYED_TRAINERS:
        return
    known = ", ".join(t.name for t in TASKS.values() if t.trl_class in REPLAYED_TRAINERS)
    raise TuneplanError(f"trace does not replay --task {tk.name} ({tk.label}); it replays sft and {known}")
