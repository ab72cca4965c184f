"""Runtimes (CUDA, MPS, MLX) and the MLX framework profile: records, refusals, no CUDA overhead off CUDA."""

from __future__ import annotations

import pytest

from tuneplan import calibration as cal
from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.choices.runtimes import RUNTIMES
from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.memory import components as K
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_model
from tuneplan.timing import step_time

SPEC = resolve_model("qwen2.5-0.5b")


def test_every_profile_runtime_exists_and_cuda_is_the_pytorch_default():
    for prof in FRAMEWORKS.values():
        assert all(rt in RUNTIMES for _, rt in prof.runtimes)
    assert FRAMEWORKS["hf"].runtime_for("Apple") == "mps"
    assert FRAMEWORKS["hf"].runtime_for(None) == "cuda"
    assert FRAMEWORKS["mlx"].runtime_for("Apple") == "mlx-metal"
    assert FRAMEWORKS["mlx"].runtime_for("NVIDIA") == "mlx-cuda"


def test_cuda_keeps_context_and_allocator_overhead():
    est = estimate_memory(SPEC, Job.from_settings(method="lora"))
    assert est.component(K.CUDA_CONTEXT) == cal.CUDA_CONTEXT_BYTES
    assert est.component(K.ALLOCATOR) > 0


@pytest.mark.parametrize("settings", [
    {"method": "lora", "runtime": "mps"},
    {"method": "lora", "framework": "mlx"},
    {"method": "qlora", "framework": "mlx", "quant": "mlx8"},
])
def test_no_cuda_context_or_allocator_overhead_off_cuda(settings):
    est = estimate_memory(SPEC, Job.from_settings(**settings))
    assert est.component(K.CUDA_CONTEXT) == 0 and est.component(K.ALLOCATOR) == 0
    assert est.peak_bytes == est.peak_allocated_bytes


def test_hf_on_an_apple_device_runs_on_mps():
    job = Job.from_settings(method="lora").on_vendor(resolve_device("mac-studio-m4-max").vendor)
    assert job.training.rt.name == "mps"
    assert estimate_memory(SPEC, job).component(K.CUDA_CONTEXT) == 0


def test_mlx_defaults_are_mlx_lm_defaults():
    job = Job.from_settings(framework="mlx", method="qlora")
    assert (job.method.rank, job.method.lora_layers, job.method.quant, job.training.checkpointing) == (
        8, 16, "mlx4", "none")
    # mlx-lm's full fine-tuning: the last N layers (tuneplan's freeze)
    full = Job.from_settings(framework="mlx", method="full", lora_layers=4)
    assert (full.method.kind, full.method.trainable_layers) == ("freeze", 4)


@pytest.mark.parametrize("settings,words", [
    ({"framework": "mlx", "method": "qlora", "quant": "nf4"}, "use --quant mlx4"),
    ({"method": "qlora", "quant": "mlx4"}, "use --quant nf4"),
    ({"method": "lora", "runtime": "mps", "optimizer": "adamw-8bit"}, "does not run on PyTorch on Apple MPS"),
    ({"method": "lora", "runtime": "mps", "optimizer": "paged-adamw"}, "--framework mlx"),
    ({"method": "lora", "lora_layers": 4}, "mlx-lm's num_layers"),
    ({"framework": "mlx", "runtime": "cuda"}, "does not run on runtime cuda"),
    ({"framework": "mlx", "optimizer": "adamw-8bit"}, "has no optimizer"),
    ({"framework": "mlx", "checkpointing": "offload"}, "has no checkpointing mode"),
])
def test_contradictions_are_refused_in_one_line(settings, words):
    with pytest.raises(TuneplanError, match=words.replace("(", r"\(")) as e:
        Job.from_settings(**settings)
    assert "\n" not in str(e.value)


def test_mlx_sharding_is_refused_for_a_request():
    with pytest.raises(TuneplanError, match="does not shard"):
        Job.from_request(framework="mlx", gpus=2, sharding="fsdp")


def test_mlx_layers_beyond_the_model_are_refused():
    with pytest.raises(TuneplanError, match="exceeds the model's"):
        estimate_memory(SPEC, Job.from_settings(framework="mlx", lora_layers=SPEC.num_layers + 1))


def test_mlx_affine_quantisation_bytes():
    """4-bit affine: 0.5 B per weight + a bf16 scale and bias per 64 weights, embeddings included."""
    est = estimate_memory(SPEC, Job.from_settings(framework="mlx", method="qlora", quant="mlx4"))
    h, v = SPEC.hidden_size, SPEC.vocab_size
    assert est.component(K.QUANT_CONSTANTS) >= 4 * (h // 64) * v  # the (tied) embedding's constants at least
    lora = estimate_memory(SPEC, Job.from_settings(framework="mlx", method="lora"))
    assert est.component(K.WEIGHTS) < lora.component(K.WEIGHTS) / 3


def test_mlx_adapts_only_the_last_layers():
    few = estimate_memory(SPEC, Job.from_settings(framework="mlx", lora_layers=4))
    all_ = estimate_memory(SPEC, Job.from_settings(framework="mlx", lora_layers=SPEC.num_layers))
    assert few.trainable_params * SPEC.num_layers == all_.trainable_params * 4
    assert few.component(K.ACTIVATIONS) < all_.component(K.ACTIVATIONS)


def test_memory_traffic_bounds_a_bandwidth_starved_device():
    """Roofline on every device: a small-batch step on a slow-memory device is bandwidth-bound."""
    from dataclasses import replace

    slow = replace(resolve_device("mac-studio-m4-max"), bandwidth_gbps=20.0)
    job = Job.from_settings(framework="mlx", method="qlora", seq_len=64).on_vendor("Apple")
    st = step_time(resolve_model("llama-3.1-8b"), job, slow)
    assert st.bound in ("weight reads", "pointwise kernels")
    assert dict(st.terms)["pointwise kernels"] > 0


def test_mlx_time_has_no_kernel_launch_cost_nor_serial_dequantisation():
    dev = resolve_device("mac-studio-m4-max")
    job = Job.from_settings(framework="mlx", method="qlora").on_vendor(dev.vendor)
    st = step_time(resolve_model("llama-3.1-8b"), job, dev)
    assert "QLoRA dequantisation" not in dict(st.terms)
    assert st.efficiency == cal.FRAMEWORK_EFFICIENCY["mlx"]
