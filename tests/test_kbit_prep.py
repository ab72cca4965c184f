"""The k-bit preparation of a bitsandbytes model (tuneplan.choices.kbit_prep) and the
transformers 4.46-4.48 loss (tuneplan.choices.versions): what each changes, byte for byte.

The full estimates are checked against `tuneplan trace` in tests/test_estimate_vs_trace.py
(benchmarks/results/traces.json holds PEFT-upcast and TRL-recast QLoRA traces); these
tests pin each mechanism on its own so a change to one cannot hide behind another.
"""

import pytest

from tuneplan.cli import main
from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Training
from tuneplan.memory import estimate_memory
from tuneplan.memory.activations import logits_bytes
from tuneplan.models import param_counts, resolve_model

LLAMA8 = resolve_model("llama-3.1-8b")  # untied embeddings
LLAMA1 = resolve_model("llama-3.2-1b")  # tied embeddings


def _est(spec, **settings):
    return estimate_memory(spec, Job.from_settings(method="qlora", **settings))


def _component(est, key):
    return sum(c.bytes for c in est.components if c.key == key)


@pytest.mark.parametrize("spec", [LLAMA8, LLAMA1], ids=["untied", "tied"])
def test_peft_upcasts_every_unquantised_weight_to_fp32(spec):
    """prepare_model_for_kbit_training: embeddings, lm_head and norms go from 2 to 4 bytes."""
    none, peft = _est(spec), _est(spec, kbit_prep="peft")
    pc = param_counts(spec)
    unquantised = pc.total - pc.linear_in_layers
    assert _component(peft, "weights") - _component(none, "weights") == 2 * unquantised


def test_trl_recast_keeps_embeddings_16_bit_and_adapters_bf16():
    none, trl = _est(LLAMA8), _est(LLAMA8, kbit_prep="trl-bf16")
    pc = param_counts(LLAMA8)
    emb = 2 * LLAMA8.vocab_size * LLAMA8.hidden_size
    norms = pc.total - pc.linear_in_layers - emb
    assert _component(trl, "weights") - _component(none, "weights") == 2 * norms
    assert _component(trl, "adapters") * 2 == _component(none, "adapters")  # fp32 -> bf16


def test_fp32_residual_doubles_the_checkpoints():
    """With checkpointing, each layer keeps its input: the residual stream, fp32 after the prep."""
    seq = 8192
    base = dict(checkpointing="full", seq_len=seq)
    none = estimate_memory(LLAMA8, Job.from_settings(method="qlora", **base))
    trl = estimate_memory(LLAMA8, Job.from_settings(method="qlora", kbit_prep="trl-bf16", **base))
    extra = _component(trl, "activations") - _component(none, "activations")
    checkpoints = 2 * LLAMA8.hidden_size * LLAMA8.num_layers * seq  # 2 more bytes per element
    # at the forward peak exactly the checkpoints; in backward also the recomputed layer's fp32 MLP
    assert checkpoints <= extra < 1.5 * checkpoints


def test_the_peak_grows_in_the_order_of_what_is_upcast():
    peaks = [_est(LLAMA8, seq_len=8192, kbit_prep=p).peak_bytes for p in ("none", "trl-bf16", "peft")]
    assert peaks == sorted(peaks) and peaks[0] < peaks[2]


def test_kbit_prep_needs_a_bitsandbytes_model():
    for settings in ({"method": "lora"}, {"method": "full"}, {"method": "qlora", "quant": "mlx4", "framework": "mlx"}):
        with pytest.raises(TuneplanError, match="--kbit-prep peft prepares a bitsandbytes-quantised model"):
            Job.from_settings(kbit_prep="peft", **settings)
    Job.from_settings(method="qlora", quant="int8", kbit_prep="peft")  # LLM.int8 models too


@pytest.mark.parametrize("argv,msg", [
    (["estimate", "llama-3.1-8b", "--method", "lora", "--kbit-prep", "peft"], "needs --method qlora"),
    (["estimate", "llama-3.1-8b", "--method", "qlora", "--kbit-prep", "axolotl"], "unknown k-bit preparation"),
])
def test_cli_refuses_in_one_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_estimate_names_the_preparation(capsys):
    assert main(["estimate", "llama-3.1-8b", "--method", "qlora", "--kbit-prep", "peft"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table wraps long lines
    assert "prepare_model_for_kbit_training" in out
    assert main(["estimate", "llama-3.1-8b", "--method", "qlora"]) == 0
    assert "--kbit-prep peft" in " ".join(capsys.readouterr().out.split())  # the default says how to ask for it


def test_export_runs_today_loader_and_says_so(capsys):
    assert main(["export", "llama-3.1-8b", "--method", "qlora", "--kbit-prep", "peft", "--to", "trl"]) == 0
    out = capsys.readouterr().out
    assert "cannot express: --kbit-prep peft" in out


def test_transformers_446_loss_keeps_the_callers_logits():
    """4.46-4.48: ForCausalLMLoss upcasts its own argument; the caller's bf16 logits stay alive."""
    t44 = Training(seq_len=4096, stack="transformers-4.4x")
    t46 = Training(seq_len=4096, stack="transformers-4.46")
    logits = 4096 * LLAMA8.vocab_size
    assert logits_bytes(LLAMA8, t44)[0] == 12 * logits
    assert logits_bytes(LLAMA8, t46)[0] == 14 * logits
    assert logits_bytes(LLAMA8, t44)[1:] == logits_bytes(LLAMA8, t46)[1:]  # the same after the forward
