"""torch.compile (--compile): the saved-activation rules of tuneplan.choices.compilation.

The check runs real tiny decoder layers and torchtune's chunk loss on the CPU, eager and
compiled, and compares what autograd saves with tuneplan's per-layer figures
(benchmarks/compile_saved.py; the full table is benchmarks/results/compile_saved.md).
"""

import sys
from pathlib import Path

import pytest

from tuneplan.cli.main import main
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _peak(**kw):
    return estimate_memory(resolve_model("llama-3.2-3b"), Job.from_settings(**kw))


def test_compile_lowers_saved_activations_without_checkpointing():
    eager = _peak(method="full", checkpointing="none", seq_len=4096, micro_batch=2)
    compiled = _peak(method="full", checkpointing="none", seq_len=4096, micro_batch=2, compile="inductor")
    act = {c.key: c.bytes for c in eager.components}["activations"]
    act_c = {c.key: c.bytes for c in compiled.components}["activations"]
    # Llama-3.2-3B: norms (2 x 6h) and act(gate) (2I) recomputed, o_proj input copied (2h)
    spec = resolve_model("llama-3.2-3b")
    per_token_layer = 2 * 6 * spec.hidden_size + 2 * spec.intermediate_size - 2 * spec.hidden_size
    assert act - act_c == per_token_layer * spec.num_layers * 2 * 4096


def test_compiled_chunk_loss_keeps_only_the_compute_dtype_chunks():
    from tuneplan.memory.activations import logits_bytes

    spec = resolve_model("llama-3.2-3b")
    kw = dict(framework="torchtune", cross_entropy="chunked", seq_len=4096, micro_batch=2)
    eager = logits_bytes(spec, Job.from_settings(**kw).training)
    compiled = logits_bytes(spec, Job.from_settings(**kw, compile="inductor").training)
    logits = 2 * (2 * 4096) * spec.vocab_size  # bf16 bytes of the logits
    assert eager[1] == 2 * logits  # fp32 log-probs
    assert compiled[1] == logits  # the bf16 chunks
    assert compiled[2] < eager[2]


def test_compile_option_and_bad_value(capsys):
    assert main(["estimate", "llama-3.2-1b", "--compile", "--json"]) == 0
    assert main(["estimate", "llama-3.2-1b", "--compile", "fast"]) == 2
    assert "unknown compile mode 'fast'" in capsys.readouterr().err


def test_torchtune_export_carries_compile(tmp_path):
    out = tmp_path / "tt.yaml"
    assert main(["export", "llama-3.2-1b", "--framework", "torchtune", "--method", "lora", "--compile",
                 "--to", "torchtune", "-o", str(out)]) == 0
    assert "compile: true" in out.read_text()
    from tuneplan.export.read import read_config

    got = read_config(str(out))
    assert got.settings["compile"] == "inductor"


@pytest.mark.parametrize("targets", [None, ("q_proj", "v_proj")], ids=["full", "lora-qv"])
def test_real_compiled_layer_saves_what_tuneplan_says(targets):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import compile_saved as cs

    for compiled in (False, True):
        measured = cs.hf_layer(targets, compiled)
        predicted = cs.predicted_layer("hf", targets, compiled)
        assert abs(predicted / measured - 1) < 0.03, (compiled, measured, predicted)


def test_real_chunk_loss_keeps_what_tuneplan_says():
    pytest.importorskip("torch")
    import compile_saved as cs

    for compiled in (False, True):
        assert abs(cs.predicted_loss(compiled) / cs.chunk_loss(compiled) - 1) < 0.02
