"""ModelSpec parsing and parameter counts against published counts."""

import json

import pytest

from tuneplan.errors import TuneplanError
from tuneplan.models import catalog, layer_linears, param_counts, resolve_model, spec_from_config

# Published counts that differ from the text-decoder count for a known, documented reason
# (vision tower, MTP layer, tied lm_head stored twice); each has a count_note in the catalog.
KNOWN_EXCEPTIONS = {
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "google/gemma-3-4b-it", "google/gemma-3-12b-it",
    "google/gemma-3-27b-it", "meta-llama/Llama-4-Scout-17B-16E", "deepseek-ai/DeepSeek-V3",
}


def test_catalog_has_at_least_40_models():
    assert len(catalog()) >= 40


@pytest.mark.parametrize("hf_id", sorted(catalog()))
def test_param_count_matches_published(hf_id):
    m = catalog()[hf_id]
    if m.published_params is None:
        pytest.skip("no published count in the catalog")
    total = param_counts(m.spec).total
    if hf_id in KNOWN_EXCEPTIONS:
        assert m.count_note, "an exception must say why"
        assert total < m.published_params  # the extra is outside the text decoder
        return
    assert abs(total / m.published_params - 1) < 0.005


def test_exceptions_are_explained_by_their_notes():
    # tied lm_head stored twice: published = computed + vocab*hidden exactly
    for hf_id in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B"):
        spec = catalog()[hf_id].spec
        assert param_counts(spec).total + spec.vocab_size * spec.hidden_size == catalog()[hf_id].published_params


def test_moe_active_params():
    pc = param_counts(resolve_model("mixtral-8x7b"))
    assert pc.total == 46_702_792_704
    assert abs(pc.active / 12.9e9 - 1) < 0.01  # Mistral: ~12.9B active
    pc = param_counts(resolve_model("qwen3-30b-a3b"))
    assert abs(pc.active / 3.3e9 - 1) < 0.03


def test_mla_layers_use_latent_projections():
    spec = resolve_model("deepseek-v3")
    names = {lin.name for lin in layer_linears(spec, 10)}
    assert {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"} <= names
    assert not spec.moe_layers[0] and spec.moe_layers[3]  # first_k_dense_replace = 3


def test_alias_and_case_insensitive_lookup():
    assert resolve_model("LLAMA-3.1-8B").name == "meta-llama/Llama-3.1-8B"
    assert resolve_model("meta-llama/llama-3.1-8b").name == "meta-llama/Llama-3.1-8B"


def test_unknown_model_suggests_close_matches():
    with pytest.raises(TuneplanError, match="did you mean.*qwen2.5-7b"):
        resolve_model("qwen2.5-7")


def test_config_file_roundtrip(tmp_path):
    cfg = dict(catalog()["Qwen/Qwen2.5-0.5B"].config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert param_counts(resolve_model(str(path))).total == 494_032_768
    assert param_counts(resolve_model(str(tmp_path))).total == 494_032_768  # folder holding it


@pytest.mark.parametrize("text,msg", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"hidden_size": 64}', "missing"),
    ('{"model_type": "llama", "hidden_size": -64, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10}', "negative"),
    ('{"model_type": "llama", "hidden_size": "big", "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10}', "integer"),
])
def test_malformed_config_is_one_line_error(tmp_path, text, msg):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(TuneplanError, match=msg):
        resolve_model(str(path))


def test_multimodal_config_reads_text_config():
    cfg = {"model_type": "gemma3", "text_config": dict(catalog()["google/gemma-3-4b-it"].config)}
    cfg["text_config"].pop("model_type")
    spec = spec_from_config(cfg)
    assert spec.model_type == "gemma3_text"
    assert param_counts(spec).total == param_counts(catalog()["google/gemma-3-4b-it"].spec).total
