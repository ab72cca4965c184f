"""bf16 weights without autocast (--precision bf16-true): a custom PyTorch loop on a bf16 model,
as PEFT's method_comparison runs. PEFT then casts each adapter's input to the fp32 adapter
dtype and lora_A keeps that copy (peft tuners/lora/layer.py Linear.forward,
_cast_input_dtype); under autocast the kept copy is in the compute dtype. Traced in
benchmarks/results/traces.json (tests/test_estimate_vs_trace.py); here the rule itself."""

from tuneplan.job import Job
from tuneplan.memory.activations import layer_activations
from tuneplan.models import resolve_model

SPEC = resolve_model("llama-3.2-3b")


def _saved(**settings):
    return layer_activations(SPEC, Job.from_settings(**settings), 0).saved


def test_each_adapter_keeps_an_fp32_copy_of_its_input():
    r, h = 32, SPEC.hidden_size
    lora = dict(method="lora", rank=r, targets="q_proj,v_proj")
    autocast, no_autocast = _saved(precision="bf16", **lora), _saved(precision="bf16-true", **lora)
    # q and v: the input copy goes from 2 to 4 bytes, and so does each lora_A output
    assert no_autocast - autocast == 2 * (4 - 2) * h + 2 * (4 - 2) * r


def test_full_fine_tuning_and_torchtune_are_unchanged():
    """No adapters, no casts; torchtune never autocasts and its LoRA does not cast."""
    assert _saved(method="full", precision="bf16") == _saved(method="full", precision="bf16-true")
    tt = dict(method="lora", framework="torchtune")
    assert _saved(precision="bf16", **tt) == _saved(precision="bf16-true", **tt)


def test_qlora_without_autocast_copies_too():
    """PEFT's 4-bit LoRA layer skips the cast only under autocast (lora/bnb.py Linear4bit.forward)."""
    assert _saved(method="qlora", precision="bf16-true") > _saved(method="qlora", precision="bf16")
