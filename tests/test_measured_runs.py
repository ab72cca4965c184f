"""Accuracy lock against published measured runs (benchmarks/measured_runs.py).

Scores ../shared/calibration in-process (skipped when that folder is absent) and fails if the
median memory or time error gets worse than the committed figures in
benchmarks/results/measured_runs.json (plus 0.5 percentage point), if fewer rows can be
expressed, or if more OOM rows are predicted to fit; keeps src/tuneplan/data/uncertainty.json equal
to the benchmark's band fit and its leave-one-source-out coverage from falling. Also unit-tests the counter selection
and the OOM rule on hand-made rows. No torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "benchmarks" / "data" / "calibration"  # a copy of ../shared/calibration, in the repo
RESULTS = ROOT / "benchmarks" / "results" / "measured_runs.json"
TOLERANCE = 0.005  # 0.5 percentage point on the median |error|


bench = load_script("benchmarks/measured_runs.py")
needs_data = pytest.mark.skipif(not (CALIBRATION / "memory.csv").exists(), reason=f"{CALIBRATION} absent")


@pytest.fixture(scope="module")
def scored():
    return bench.run(CALIBRATION)


@pytest.fixture(scope="module")
def committed():
    return json.loads(RESULTS.read_text())["summary"]


def test_benchmark_never_imports_torch():
    code = ("import sys, runpy\n"
            f"sys.argv = ['measured_runs.py', '--no-write', '--calibration', {str(CALIBRATION)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'benchmarks' / 'measured_runs.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@needs_data
def test_memory_median_error_not_worse(scored, committed):
    now, was = scored["summary"]["memory"]["overall"], committed["memory"]["overall"]
    assert now["median_abs"] <= was["median_abs"] + TOLERANCE, (now["median_abs"], was["median_abs"])


@needs_data
def test_time_median_error_not_worse(scored, committed):
    now, was = scored["summary"]["time"]["overall"], committed["time"]["overall"]
    assert now["median_abs"] <= was["median_abs"] + TOLERANCE, (now["median_abs"], was["median_abs"])


@needs_data
def test_pytorch_time_median_not_worse(scored, committed):
    """The PyTorch/CUDA rows alone (MLX rows were added later and are scored apart)."""
    now = scored["summary"]["time"]["pytorch_stacks"]
    was = committed["time"].get("pytorch_stacks", committed["time"]["overall"])
    assert now["median_abs"] <= was["median_abs"] + TOLERANCE, (now["median_abs"], was["median_abs"])


@needs_data
def test_apple_mlx_time_within_20_percent(scored):
    """mlx-lm on Apple silicon (MX rows; MX-04 judged wrong): median |error| <= 20%."""
    apple = scored["summary"]["time"]["mlx_apple"]
    assert apple["n"] >= 5 and apple["median_abs"] <= 0.20, apple


@needs_data
def test_memory_share_within_20_percent_not_worse(scored, committed):
    now, was = scored["summary"]["memory"]["overall"], committed["memory"]["overall"]
    assert now["within_20"] >= was["within_20"] - 1e-9, (now["within_20"], was["within_20"])


@needs_data
def test_phi_and_stablelm_litgpt_rows_are_scored(scored):
    """lit-gpt's resource tables on phi-1.5 and StableLM-Alpha-3B (tuneplan.models parallel-block
    layouts): scored, not skipped, each within 20%."""
    rows = {d["id"]: d for d in scored["rows"] if d["kind"] == "memory"}
    for rid in (f"lr{i:02d}" for i in range(1, 11)):
        assert rows[rid].get("error") is not None and abs(rows[rid]["error"]) < 0.20, rows[rid]


@needs_data
def test_expressible_rows_do_not_shrink(scored, committed):
    m, t = scored["summary"]["memory"], scored["summary"]["time"]
    assert m["scored"] >= committed["memory"]["scored"]
    assert m["oom_rows_scored"] >= committed["memory"]["oom_rows_scored"]
    assert t["scored"] >= committed["time"]["scored"]


@needs_data
def test_oom_rows_predicted_to_fit_do_not_increase(scored, committed):
    assert scored["summary"]["memory"]["oom"]["predicted_fit_wrong"] <= committed["memory"]["oom"]["predicted_fit_wrong"]


@needs_data
def test_every_row_is_scored_or_says_why(scored):
    for d in scored["rows"]:
        assert ("skipped" in d and d["skipped"]) or d.get("error") is not None, d["id"]


# ---------------------------------------------------------------- counters and the OOM rule


def _fake_estimate(**named):
    comps = [SimpleNamespace(key="weights", bytes=10 * 2**30), SimpleNamespace(key="activations", bytes=6 * 2**30),
             SimpleNamespace(key="allocator", bytes=2**30), SimpleNamespace(key="cuda_context", bytes=2**29)]
    return SimpleNamespace(components=comps, peak_bytes=int(17.5 * 2**30), **named)


def test_counters_computed_from_components():
    c = bench.counters(_fake_estimate())
    assert c == {"allocated": 16 * 2**30, "reserved": 17 * 2**30, "device": int(17.5 * 2**30)}


def test_counters_prefer_named_attributes():
    est = _fake_estimate(peak_allocated_bytes=1, peak_reserved_bytes=2, device_bytes=3)
    assert bench.counters(est) == {"allocated": 1, "reserved": 2, "device": 3}


@pytest.mark.parametrize("what,group,counter,bound", [
    ("torch max_memory_allocated (GB, /1e9)", "allocated", "allocated", False),
    ("torch active_bytes.all.peak ('Peak Memory Active')", "active", "allocated", False),
    ("torch max_memory_reserved (GB, /1e9)", "reserved", "reserved", False),
    ("nvidia-smi peak", "device", "device", False),
    ("torchtune get_memory_stats peak (active/alloc/reserved not specified)", "unknown", "reserved", False),
    ("GRAM (method not stated)", "unknown", "reserved", False),
    ("OOM (lower bound = 40 GiB device)", "oom", "device", True),
])
def test_counter_selection(what, group, counter, bound):
    assert bench.counter_of(what) == (group, counter, bound)


HAND_ROW = {
    "id": "x01", "framework": "hf-trainer-peft", "model_hf_id": "meta-llama/Llama-3.2-3B", "method": "lora",
    "lora_rank": "16", "lora_targets": "q_proj,v_proj", "quant": "none", "precision": "bf16",
    "optimizer": "torch AdamW", "micro_batch": "1", "seq_len": "1024", "grad_ckpt": "full", "attention": "sdpa",
    "fused_ce": "no", "n_gpus": "1", "sharding": "none", "offload": "none", "device": "RTX 4090 24GB",
    "tokens_per_s": "", "confidence": "high", "notes": "",
}


def _scored_row(**over):
    r = bench.interpret_memory(HAND_ROW | over)
    assert not r.skip, r.skip
    bench.score_memory(r)
    return r


def test_hand_row_compares_the_measured_counter():
    alloc = _scored_row(measured_what="torch max_memory_allocated", measured_gib="5.0")
    res = _scored_row(measured_what="torch max_memory_reserved", measured_gib="5.0")
    c = alloc.extra["counters_gib"]
    assert alloc.predicted == pytest.approx(c["allocated"]) and res.predicted == pytest.approx(c["reserved"])
    assert c["allocated"] < c["reserved"] < c["device"]
    assert alloc.error == pytest.approx(c["allocated"] / 5.0 - 1)


def test_oom_rule():
    device = _scored_row(measured_what="torch max_memory_allocated", measured_gib="1").extra["counters_gib"]["device"]
    below = _scored_row(measured_what="OOM (lower bound = device)", measured_gib=str(device * 0.9))
    above = _scored_row(measured_what="OOM (lower bound = device)", measured_gib=str(device * 1.1))
    assert below.bound and below.counter == "device"
    assert below.verdict.startswith("right")  # predicted more than the bound: predicted OOM
    assert above.verdict.startswith("WRONG")  # predicted to fit a run that went out of memory


def test_optimizer_temporary_follows_the_stack_version():
    """torch AdamW is foreach (one full-size temporary) unless the stack's recipes of the row's
    date build it fused: torchtune configs since PR #1575 (2024-09-14) pass fused=True; a
    torchtune row from May 2024, or an HF row, keeps foreach."""
    base = HAND_ROW | {"optimizer": "torch AdamW", "measured_what": "x", "measured_gib": "1"}
    hf = bench.interpret_memory(base)
    new = bench.interpret_memory(base | {"framework": "torchtune", "source": "pytorch/torchtune@1814feb README (2024-11-18)"})
    old = bench.interpret_memory(base | {"framework": "torchtune", "source": "pytorch/torchtune@0217d44 README (2024-05-09)"})
    assert hf.settings["optimizer"] == "adamw-foreach"
    assert new.settings["optimizer"] == "adamw" and any("fused=True" in c for c in new.caveats)
    assert old.settings["optimizer"] == "adamw-foreach" and old.settings["stack"] == "torchtune-0.2"


def test_versions_come_from_what_the_row_states():
    """A row's --stack comes from its framework, date and stated library versions through
    tuneplan.choices.versions.stack_for, never from its source's name."""
    base = HAND_ROW | {"method": "qlora", "quant": "nf4 (bnb)", "measured_what": "x", "measured_gib": "1"}
    assert "stack" not in bench.interpret_memory(base).settings  # nothing stated: today's stack
    assert bench.interpret_memory(base | {"notes": "ran 2024-03-01"}).settings["stack"] == "2023"
    assert bench.interpret_memory(base | {"notes": "bnb 0.41.1, transformers 4.50"}).settings["stack"] == "bnb-pre-0.43.2"
    assert bench.interpret_memory(base | {"source": "x (2025-01-14)"}).settings["stack"] == "transformers-4.46"
    lit = bench.interpret_memory(base | {"framework": "litgpt", "source": "lit-gpt (2023-10-20; bnb 0.41.1)",
                                         "lora_targets": "q,v"})
    assert lit.settings["stack"] == "litgpt-2023" and lit.settings["lora_dropout"] == 0.05
    bad = bench.interpret_memory(base | {"notes": "bitsandbytes 0.41.1, transformers 4.47.0"})
    assert "no --stack record" in bad.skip


@pytest.mark.parametrize("over,want", [
    ({"lora_targets": "all-linear"}, {"targets": "all-linear"}),
    ({"precision": "bf16-mixed"}, {"precision": "amp"}),
    ({"precision": "bf16 (pure)"}, {"precision": "bf16"}),
    ({"n_gpus": "4", "sharding": "zero3"}, {"sharding": "zero3", "num_gpus": 4}),
    ({"n_gpus": "2", "sharding": "DeepSpeed ZeRO stage 2"}, {"sharding": "zero2"}),
    ({"quant": "nf4 (bnb)"}, {"method": "qlora", "quant": "nf4"}),
    ({"quant": "int8 (bnb LLM.int8)"}, {"method": "qlora", "quant": "int8"}),
    ({"n_gpus": "2", "sharding": "fsdp", "offload": "params"}, {"offload_params": True}),
    ({"n_gpus": "2", "sharding": "zero3", "offload": "optimizer states"}, {"offload_optimizer": True}),
])
def test_calibration_wordings_are_parsed(over, want):
    r = bench.interpret_memory(HAND_ROW | {"measured_what": "x", "measured_gib": "1"} | over)
    assert not r.skip, r.skip
    assert {k: r.settings.get(k) for k in want} == want


@pytest.mark.parametrize("over,why", [
    ({"lora_targets": "q_proj,v_proj,lm_adapter"}, "unrecognised LoRA target"),
    ({"precision": "fp8 (transformer engine)"}, "precision"),
    ({"quant": "GPTQ int4"}, "gptq"),
    ({"method": "full", "quant": "nf4"}, "quantised base"),
    ({"offload": "nvme swap"}, "offload"),
    ({"n_gpus": "2", "sharding": "tensor parallel 2"}, "not expressible"),
    ({"notes": "mlp_class_name GptNeoxMLP"}, "MLP"),
    ({"method": "freeze", "lora_targets": "LayerNorm-only tuning"}, "no layer count"),
])
def test_unexpressible_wordings_are_refused_with_the_reason(over, why):
    r = bench.interpret_memory(HAND_ROW | {"measured_what": "x", "measured_gib": "1"} | over)
    assert why.lower() in r.skip.lower(), r.skip


def test_unexpressible_rows_say_why():
    r = bench.interpret_memory(HAND_ROW | {"model_hf_id": "tiiuae/falcon-40b", "measured_what": "x", "measured_gib": "1"})
    assert "Falcon" in r.skip
    r = bench.interpret_memory(HAND_ROW | {"method": "adapter-other", "measured_what": "x", "measured_gib": "1"})
    assert "not a tuneplan method" in r.skip


def test_qwen_q_lora_rows_are_gptq_not_bitsandbytes():
    """Qwen's finetune.py loads Q-LoRA bases with GPTQConfig(bits=4, disable_exllama=True):
    those rows are skipped with that reason, not scored (or fitted) as bitsandbytes NF4."""
    row = {"id": "QW-05", "framework": "HF transformers + PEFT (+bitsandbytes for Q-LoRA) via Qwen finetune.py",
           "model_hf_id": "Qwen/Qwen-7B", "method": "qlora",
           "precision": "bf16", "measured": "s_per_step", "derived_tokens_per_s_total": "683", "n_gpus": "1",
           "sharding": "none", "device": "A100 SXM4 80GB", "seq_len": "256", "value": "3.0"}
    r = bench.interpret_time(row, None)
    assert r.skip == bench.QWEN_GPTQ and "GPTQConfig(bits=4, disable_exllama=True)" in r.skip
    lora = bench.interpret_time(row | {"id": "QW-01", "method": "lora"}, None)
    assert not lora.skip and lora.settings["method"] == "lora"


def test_readme_accuracy_table_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_accuracy_table.py"), "--check",
                          str(ROOT / "README.md")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- uncertainty band, leave-one-source-out
BAND_TABLE = ROOT / "src" / "tuneplan" / "data" / "uncertainty.json"


@needs_data
def test_committed_band_table_is_current(scored):
    committed = json.loads(BAND_TABLE.read_text())
    band = scored["summary"]["memory"]["band"]
    stale = "src/tuneplan/data/uncertainty.json is stale: run python benchmarks/measured_runs.py"
    assert committed["kinds"] == band["table"], stale
    assert (committed["level"], committed["rows"], committed["sources"]) == (band["level"], band["rows"],
                                                                             band["sources"]), stale
    assert committed["loso_coverage"] == band["overall"]["loso"]["share"], stale


@needs_data
def test_band_coverage_not_worse(scored, committed):
    now, then = scored["summary"]["memory"]["band"]["overall"], committed["memory"]["band"]["overall"]
    assert now["in_sample"]["share"] >= 0.9
    assert now["loso"]["share"] >= then["loso"]["share"] - 1e-9
    assert now["loso"]["share"] >= 0.85  # 62 of 69 when the band was introduced


@needs_data
def test_loso_judges_each_source_by_the_other_sources_only(scored):
    band = scored["summary"]["memory"]["band"]
    total = band["rows"]
    for d in scored["rows"]:
        if "band" not in d:
            continue
        loso, own = d["band"]["loso"], len(band["sources"][d["source"]])
        assert loso["key"] is not None and loso["rows"] <= total - own, d["id"]
        assert loso["covered"] == (loso["low"] <= d["measured_gib"] / d["predicted_gib"] <= loso["high"])
    # nothing in the memory estimate is fitted to these rows: the LOSO point error is the in-sample one
    assert band["overall"]["error"]["median_abs"] == pytest.approx(
        bench.stats([d["error"] for d in scored["rows"] if "band" in d])["median_abs"])


def test_source_is_the_repository():
    assert bench.source_group({"source": 'pytorch/torchtune@30b8519 README.md "Memory" (2024-09-24) | x'}) == "torchtune"
    assert bench.source_group({"source": "github.com/meta-pytorch/torchtune/pull/961 (rohan-varma)"}) == "torchtune"
    assert bench.source_group({"source": "Lightning-AI/litgpt@0cc02afa tutorials/resource-tables.md"}) == "litgpt"
    assert bench.source_group({}) == "records"
