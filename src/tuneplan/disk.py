"""Disk needed by a fine-tune: base model cache, dataset, checkpoints (bytes).

- Base model: the safetensors download in the checkpoint's dtype (QLoRA quantises at load
  time, so it still downloads 16-bit weights unless a pre-quantised repo is used).
- Dataset: raw text plus the tokenized Arrow cache (calibration.RAW_/TOKENIZED_BYTES_PER_TOKEN).
- Checkpoints: adapter-only saves (adapter weights + optimizer state for resuming) or
  full saves (model weights + optimizer state + fp32 master weights), times N kept saves.
- Final: the merged 16-bit model for serving (optional figure).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.job import Job
from tuneplan.memory import static_memory, trainable
from tuneplan.model_spec import ModelSpec, param_counts

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes on disk by item; `total` sums what must exist at once during the run."""

    base_model: int
    dataset_raw: int
    dataset_tokenized: int
    checkpoint_each: int
    checkpoints: int
    saves: int
    merged_model: int
    adapter_only: bool
    assumptions: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.base_model + self.dataset_raw + self.dataset_tokenized + self.checkpoints + self.merged_model

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["assumptions"] = list(self.assumptions)
        d["total"] = self.total
        d["unit"] = "bytes"
        return d


def estimate_disk(spec: ModelSpec, job: Job, dataset_tokens: int, saves: int = 3,
                  merged: bool = True) -> DiskEstimate:
    """Disk figures for a run that keeps `saves` checkpoints (HF Trainer save_total_limit).

    Raises:
        TuneplanError: negative saves or tokens.
    """
    if saves < 0 or dataset_tokens < 0:
        raise TuneplanError("checkpoint saves and dataset tokens must not be negative")
    pc = param_counts(spec)
    dtype_b = _DTYPE_BYTES.get(spec.torch_dtype, 2)
    base = dtype_b * pc.total
    st = static_memory(spec, job)  # unsharded optimizer / master bytes
    tr = trainable(spec, job.method)
    adapter_only = job.method.is_adapter and not job.method.train_embeddings
    if adapter_only:
        weights = job.training.adapter_bytes * tr.adapter
        what = "adapter weights + optimizer state (resume)"
    else:
        weights = job.training.param_bytes * pc.total + (job.training.adapter_bytes * tr.adapter)
        what = "full model weights + optimizer state + master weights (resume)"
    each = weights + st.optimizer + st.master
    merged_b = 2 * pc.total if merged else 0
    return DiskEstimate(
        base_model=base,
        dataset_raw=cal.RAW_BYTES_PER_TOKEN * dataset_tokens,
        dataset_tokenized=cal.TOKENIZED_BYTES_PER_TOKEN * dataset_tokens,
        checkpoint_each=each, checkpoints=each * saves, saves=saves, merged_model=merged_b,
        adapter_only=adapter_only,
        assumptions=(
            f"Base model downloaded as {spec.torch_dtype} safetensors ({dtype_b} bytes/param).",
            f"Dataset: {cal.RAW_BYTES_PER_TOKEN} bytes/token raw text + {cal.TOKENIZED_BYTES_PER_TOKEN} "
            "bytes/token tokenized Arrow cache (int64 input_ids, attention_mask, labels).",
            f"Each checkpoint: {what}; {saves} kept (save_total_limit).",
            "Merged 16-bit model for serving included." if merged else "No merged export.",
        ),
    )
