"""Issue 10: every input gets a right answer or one clear line; nothing is lost or overwritten.

One regression test (or a parametrized case) per example the issue lists, in its order:
uncaught exceptions, hangs, unknown architectures, verdicts against physics, the fit line,
ignored options, files, newcomer friction.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from cli_run import cli

import tuneplan
from tuneplan import api
from tuneplan.errors import TuneplanError, TuneplanWarning
from tuneplan.fit import FITS, NO, UNCERTAIN, fit_verdict, job_verdict, verdict_of
from tuneplan.hardware import resolve_device, resolve_devices
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import HUB_ENV, catalog, resolve_model
from tuneplan.plan import plan
from tuneplan.timing import Dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 128, "intermediate_size": 128, "max_position_embeddings": 4096}




def refused(capsys, *argv, match=""):
    code, out, err = cli(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


def write(tmp_path, data, name="config.json"):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return p


# ---------------------------------------------------------------- uncaught exceptions: config.json


@pytest.mark.parametrize("data,msg", [
    (b"\x80\x81{}", "not UTF-8"),
    (json.dumps(TINY).encode("utf-16"), "UTF-16"),
    (json.dumps(TINY).encode("utf-16-le"), "UTF-16"),
    (b"\x00\x01\x02binary", "binary"),
    (b"[" * 100_000 + b"]" * 100_000, "deeper than"),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, "deeper than"),
    (json.dumps(TINY).replace('"vocab_size": 128', '"vocab_size": NaN').encode(), "NaN"),
    (json.dumps(TINY).replace('"vocab_size": 128', '"vocab_size": Infinity').encode(), "Infinity"),
    (json.dumps(TINY).replace('"vocab_size": 128', '"vocab_size": ' + "9" * 5000).encode(), "5000-digit"),
    (json.dumps(TINY).replace('"vocab_size": 128', '"vocab_size": 1e999').encode(), "beyond float range"),
    (json.dumps({**TINY, "sliding_window": [4096]}).encode(), "sliding_window"),
    (json.dumps({**TINY, "hidden_size": {"a": 1}}).encode(), "hidden_size"),
    (json.dumps({**TINY, "hidden_size": 64.5}).encode(), "hidden_size"),
    (json.dumps({**TINY, "attn_logit_softcapping": "50"}).encode(), "attn_logit_softcapping"),
    (json.dumps({**TINY, "torch_dtype": ["bf16"]}).encode(), "torch_dtype"),
    (json.dumps({**TINY, "model_type": 3}).encode(), "model_type"),
    (json.dumps({**TINY, "text_config": "llama"}).encode(), "text_config"),
    (json.dumps({**TINY, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
                 "moe_intermediate_size": 64, "mlp_only_layers": 5}).encode(), "mlp_only_layers"),
    (json.dumps({**TINY, "model_type": "llama4_text", "num_local_experts": 4, "num_experts_per_tok": 1,
                 "moe_layers": "all"}).encode(), "moe_layers"),
])
def test_bad_config_bytes_are_one_line(tmp_path, capsys, data, msg):
    p = write(tmp_path, data)
    with pytest.raises(TuneplanError, match=msg) as e:
        resolve_model(str(p))
    assert "\n" not in str(e.value)
    refused(capsys, "estimate", p, match=msg)


def test_utf8_bom_is_read(tmp_path):
    p = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(TINY).encode())
    assert resolve_model(str(p)).hidden_size == 64


def test_path_inside_a_file_or_an_unreadable_folder(tmp_path, capsys):
    f = write(tmp_path, TINY)
    refused(capsys, "estimate", f / "config.json", match="cannot read")
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    write(locked / "inner", TINY)
    locked.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads it anyway: the estimate is right, not an exception
            assert cli(capsys, "estimate", locked / "inner" / "config.json")[0] == 0
        else:
            refused(capsys, "estimate", locked / "inner" / "config.json", match="cannot read")
    finally:
        locked.chmod(0o700)


def test_is_dir_permission_error_is_one_line(monkeypatch, capsys):
    def boom(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "is_dir", boom)
    refused(capsys, "estimate", "/some/where/config.json", match="Permission denied")


def test_names_that_are_not_paths(capsys):
    refused(capsys, "estimate", "bad\x00name", match="")
    refused(capsys, "estimate", "x" * 5000, match="")


# ---------------------------------------------------------------- uncaught exceptions: numbers and the API


@pytest.mark.parametrize("argv,msg", [
    (["plan", "llama-3.2-1b", "--samples", "10", "--mean-tokens", "nan"], "got 'nan'"),
    (["plan", "llama-3.2-1b", "--samples", "10", "--mean-tokens", "inf"], "got 'inf'"),
    (["estimate", "llama-3.2-1b", "--batch", "9" * 400], "too large"),
    (["estimate", "llama-3.2-1b", "--seq-len", "9" * 400], "too large"),
    (["plan", "llama-3.2-1b", "--dataset-tokens", "9" * 400], "too large"),
    (["estimate", "llama-3.2-1b", "--batch", "1e400"], "too large"),
    (["estimate", "llama-3.2-1b", "--batch", "1.5"], "not a whole number"),
    (["estimate", "llama-3.2-1b", "--batch", str(10**12)], "above the"),
    (["estimate", "llama-3.2-1b", "--lora-dropout", "nan"], "got 'nan'"),
])
def test_absurd_numbers_are_one_line(capsys, argv, msg):
    refused(capsys, *argv, match=msg)


@pytest.mark.parametrize("settings,msg", [
    ({"seq_len": "4096"}, "whole number"),
    ({"rank": None}, "whole number"),
    ({"seq_len": float("inf")}, "whole number"),
    ({"seq_len": 4096.5}, "whole number"),
    ({"micro_batch": True}, "whole number"),
    ({"rank": 16.7}, "whole number"),
    ({"seq_len": 10**400}, "digit number"),
    ({"batch": 2**40}, "above the"),
    ({"targets": ["q_proj", 3]}, "targets"),
    ({"method": ["lora"]}, "must be a name"),
])
def test_api_type_errors_are_tuneplan_errors(settings, msg):
    with pytest.raises(TuneplanError, match=msg) as e:
        tuneplan.estimate("llama-3.2-1b", **settings)
    assert "\n" not in str(e.value)


def test_api_accepts_list_targets():
    est = tuneplan.estimate("llama-3.2-1b", targets=["q_proj"])
    assert est.job.method.targets == ("q_proj",)


# ---------------------------------------------------------------- hangs


@pytest.mark.parametrize("layers", [10**7, 10**9])
def test_huge_layer_counts_are_refused_at_once(tmp_path, layers):
    p = write(tmp_path, {**TINY, "num_hidden_layers": layers})
    start = time.perf_counter()
    with pytest.raises(TuneplanError, match="num_hidden_layers"):
        resolve_model(str(p))
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_not_read(capsys):
    start = time.perf_counter()
    refused(capsys, "estimate", "/dev/zero", match="not a regular file")
    assert time.perf_counter() - start < 2.0


def test_oversized_config_is_refused_before_reading(tmp_path):
    p = tmp_path / "config.json"
    with open(p, "wb") as f:
        f.truncate(50 * 2**20)
    with pytest.raises(TuneplanError, match="bytes"):
        resolve_model(str(p))


# ---------------------------------------------------------------- unknown architectures


@pytest.mark.parametrize("cfg,msg", [
    ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}, "GPT-2"),
    ({"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
      "vocab_size": 30522}, "encoder"),
    ({"model_type": "t5", "d_model": 512, "num_layers": 6, "num_heads": 8, "vocab_size": 32128}, "encoder-decoder"),
    ({"model_type": "lama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "vocab_size": 10}, "did you mean llama"),
    ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10}, "missing 'model_type'"),
])
def test_unsupported_architectures_are_refused(tmp_path, capsys, cfg, msg):
    refused(capsys, "estimate", write(tmp_path, cfg), match=msg)


def test_bool_fields_given_as_strings_are_refused(tmp_path, capsys):
    refused(capsys, "estimate", write(tmp_path, {**TINY, "tie_word_embeddings": "false"}),
            match="tie_word_embeddings")
    refused(capsys, "estimate", write(tmp_path, {**TINY, "attention_bias": 0}), match="attention_bias")


def test_sequence_length_against_the_context(capsys, tmp_path):
    refused(capsys, "estimate", "llama-3.1-8b", "--seq-len", "1000000000", match="--allow-long-context")
    assert cli(capsys, "estimate", "llama-3.1-8b", "--seq-len", "262144", "--allow-long-context", "--json")[0] == 0
    with pytest.warns(TuneplanWarning, match="context"):
        tuneplan.estimate("llama-3.1-8b", seq_len=262_144)
    tuneplan.estimate("llama-3.1-8b", seq_len=262_144, allow_long_context=True)  # no warning asked
    no_context = {k: v for k, v in TINY.items() if k != "max_position_embeddings"}
    assert cli(capsys, "estimate", write(tmp_path, no_context), "--seq-len", "65536", "--json")[0] == 0


# ---------------------------------------------------------------- verdicts against physics


def test_unified_memory_counts_offloaded_bytes():
    spec, mac = resolve_model("qwen2.5-14b"), resolve_device("m4-max")
    job = Job.from_settings(method="full", offload_optimizer=True)
    est = estimate_memory(spec, job)
    assert est.peak_bytes < mac.usable_bytes < est.peak_bytes + est.cpu_bytes  # the old "fits"
    v = fit_verdict(spec, job, mac)
    assert v.verdict == NO and v.offloaded_bytes == est.cpu_bytes
    assert v.verdict == verdict_of(v.peak_bytes + v.offloaded_bytes, v.usable_bytes)
    assert "same unified memory" in v.summary()
    h100 = fit_verdict(spec, job, resolve_device("h100"))  # discrete GPU: host RAM is elsewhere
    assert h100.offloaded_bytes == 0 and h100.verdict == verdict_of(h100.peak_bytes, h100.usable_bytes)


def test_more_gpus_than_a_machine_holds(capsys):
    """Beyond one machine, GPU counts are whole machines (or --nodes says how they spread)."""
    refused(capsys, "estimate", "llama-3.1-8b", "--gpus", "6", "--gpu", "rtx-4090", match="not whole machines")
    refused(capsys, "estimate", "llama-3.1-8b", "--gpus", "16", "--nodes", "2", "--gpu", "rtx-4090",
            match="one machine holds")
    with pytest.raises(TuneplanError, match="whole machines"):
        fit_verdict(resolve_model("llama-3.1-8b"), Job.from_settings(num_gpus=6), resolve_device("rtx-4090"))
    v = fit_verdict(resolve_model("llama-3.1-8b"), Job.from_settings(num_gpus=8, sharding="fsdp"),
                    resolve_device("rtx-4090"))
    assert v.verdict  # two 4 x RTX 4090 machines: estimated


def test_offload_cpu_ram_is_per_process(capsys):
    code, out, _ = cli(capsys, "estimate", "qwen2.5-7b", "--method", "full", "--gpus", "8", "--sharding", "zero3",
                       "--offload-optimizer")
    text = " ".join(out.split())
    assert code == 0 and "per GPU process" in text and "8 processes" in text


# ---------------------------------------------------------------- the fit line and the headroom rule


def test_fit_line_does_not_contradict_itself():
    v = fit_verdict(resolve_model("llama-3.1-70b"), Job.from_settings(method="qlora"), resolve_device("rtx-4090"))
    assert v.change is not None and "x rtx-4090" in v.change.description
    assert "no single fix" not in v.summary() and "no fix found" not in v.summary()
    none = fit_verdict(resolve_model("llama-3.1-405b"), Job.from_settings(method="full"), resolve_device("m4-max"))
    assert none.change is None and "no fix found" in none.summary() and "cheapest fix" not in none.summary()


@pytest.mark.parametrize("model,settings,device", [
    ("llama-3.2-1b", {"method": "full", "micro_batch": 8, "seq_len": 4096}, "rtx-4090"),
    ("qwen2.5-14b", {"method": "lora", "micro_batch": 8, "seq_len": 4096}, "rtx-3090"),
    ("llama-3.1-8b", {"method": "full", "micro_batch": 8, "seq_len": 4096}, "h100"),
    ("llama-3.1-70b", {"method": "lora", "checkpointing": "none"}, "h100"),
])
def test_fixes_clear_the_tight_threshold(model, settings, device):
    d = resolve_device(device)
    v = fit_verdict(resolve_model(model), Job.from_settings(**settings), d)
    assert v.verdict == NO and v.change is not None
    assert verdict_of(v.change.peak_bytes, d.usable_bytes) == FITS


def test_uncertain_job_gets_a_change_that_clears_the_band():
    # the peak fits with a little headroom (tight before the band), but QLoRA runs of this kind
    # measured up to ~27% above the estimate: uncertain, and the fix clears the band's upper end
    d = resolve_device("rtx-4090")
    v = fit_verdict(resolve_model("llama-3.1-8b"), Job.from_settings(method="qlora", checkpointing="none"), d)
    assert v.verdict == UNCERTAIN and v.change is not None and v.runs
    assert v.peak_bytes <= d.usable_bytes < v.high_bytes
    assert job_verdict(v.change.job, v.change.peak_bytes, d.usable_bytes) == FITS
    assert "uncertain (the peak fits" in v.summary() and "to clear the band" in v.summary()


def test_another_framework_profile_is_offered():
    from tuneplan.choices.frameworks import FRAMEWORKS

    d = resolve_device("rtx-4090")
    v = fit_verdict(resolve_model("qwen3-30b-a3b"), Job.from_settings(method="qlora"), d)
    assert v.verdict == NO and v.change is not None
    profile = FRAMEWORKS[v.change.settings["framework"]]
    assert profile.quantises_fused_experts and v.change.peak_bytes <= d.usable_bytes


def test_top_plan_setup_clears_the_threshold():
    res = plan(resolve_model("llama-3.1-8b"), Job.from_settings(method="full"), Dataset(10_000_000),
               resolve_devices("rtx-3090,rtx-4090,a100-40gb,h100,m4-max"))
    assert res.setups[0].verdict == FITS
    flags = [s.verdict != FITS for s in res.setups]
    assert flags == sorted(flags)


# ---------------------------------------------------------------- options ignored or contradicting


@pytest.mark.parametrize("argv,msg", [
    (["plan", "llama-3.2-1b", "--gpus", "2"], "drop --gpus"),
    (["matrix", "--models", "llama-3.2-1b", "--method", "full"], "use --methods"),
    (["trace", "llama-3.2-1b", "--offload-optimizer"], "cannot offload"),
    (["trace", "llama-3.2-1b", "--method", "full", "--offload-params", "--sharding", "zero3"], "cannot offload"),
    (["estimate", "llama-3.2-1b", "--method", "full", "--rank", "64"], "rank does not apply to method full"),
    (["estimate", "llama-3.2-1b", "--method", "lora", "--quant", "int8"], "quant does not apply"),
    (["estimate", "llama-3.2-1b", "--method", "qlora-nf4", "--quant", "int8"], "means quant nf4"),
    (["estimate", "llama-3.2-1b", "--method", "lora", "--trainable-layers", "4"], "trainable_layers"),
    (["estimate", "llama-3.2-1b", "--targets", "q_proj,foo"], "--targets foo"),
    (["plan", "llama-3.2-1b", "--dataset-tokens", "1M", "--epochs", "inf"], "got 'inf'"),
    (["plan", "llama-3.2-1b", "--dataset-tokens", "1M", "--usd-per-kwh", "nan"], "got 'nan'"),
    (["plan", "llama-3.2-1b", "--max-batch", "-1"], "--max-batch"),
    (["matrix", "--models", "llama-3.2-1b", "--methods", "full", "--rank", "8"], "rank"),
])
def test_ignored_or_contradicting_options_are_refused(capsys, argv, msg):
    refused(capsys, *argv, match=msg)


def test_rank_is_fine_when_not_given_or_when_used(capsys):
    assert cli(capsys, "estimate", "llama-3.2-1b", "--method", "full", "--json")[0] == 0
    assert cli(capsys, "estimate", "llama-3.2-1b", "--method", "qlora-8bit", "--quant", "int8", "--json")[0] == 0
    assert cli(capsys, "matrix", "--models", "llama-3.2-1b", "--methods", "full,lora", "--rank", "8",
               "--devices", "h100", "--json")[0] == 0
    with pytest.raises(TuneplanError, match="rank does not apply"):
        tuneplan.estimate("llama-3.2-1b", method="full", rank=64)
    with pytest.raises(TuneplanError, match="epochs"):
        api.plan("llama-3.2-1b", dataset_tokens="1M", epochs=float("inf"))
    with pytest.raises(TuneplanError, match="electricity|usd-per-kwh"):
        api.plan("llama-3.2-1b", usd_per_kwh=float("nan"))


# ---------------------------------------------------------------- files


MATRIX = ["matrix", "--models", "llama-3.2-1b", "--methods", "lora", "--devices", "rtx-4090"]


def test_csv_is_not_overwritten_without_force(tmp_path, capsys):
    p = tmp_path / "fit.csv"
    p.write_text("keep me")
    refused(capsys, *MATRIX, "--csv", p, match="--force")
    assert p.read_text() == "keep me"
    code, out, _ = cli(capsys, *MATRIX, "--csv", p, "--force")
    assert code == 0 and p.read_text().startswith("model,method") and f"CSV written to {p}" in " ".join(out.split())


def test_symlinks_are_never_followed(tmp_path, capsys):
    target = tmp_path / "README.md"
    target.write_text("precious")
    link = tmp_path / "fit.csv"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        refused(capsys, *MATRIX, "--csv", link, *extra, match="symbolic link")
    assert target.read_text() == "precious" and link.is_symlink()


def test_png_reports_the_path_it_writes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, _ = cli(capsys, *MATRIX, "--png", tmp_path / "out")
    assert code == 0 and (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "out").exists()
    assert f"PNG written to {tmp_path / 'out.png'}" in " ".join(out.split())
    refused(capsys, *MATRIX, "--png", tmp_path / "out.txt", match="must end in .png")


def test_csv_dash_is_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, *MATRIX, "--csv", "-")
    assert code == 0 and out.startswith("model,method,device") and not (tmp_path / "-").exists()


def test_every_output_is_checked_before_any_is_written(tmp_path, capsys, monkeypatch):
    csv_p = tmp_path / "fit.csv"
    refused(capsys, *MATRIX, "--csv", csv_p, "--png", tmp_path / "fit.txt", match=".png")
    assert not csv_p.exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    err = refused(capsys, *MATRIX, "--csv", csv_p, "--png", tmp_path / "fit.png", match="matplotlib")
    assert "pip install -e '.[plot]'" in err and "tuneplan[plot]" not in err
    assert not csv_p.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- newcomer friction


def test_readme_and_make_demo_say_how_to_get_tuneplan_on_path():
    assert "source .venv/bin/activate" in (ROOT / "README.md").read_text()
    assert "activate" in (ROOT / "Makefile").read_text()


def test_plan_without_a_dataset_size(capsys):
    code, out, _ = cli(capsys, "plan", "llama-3.2-1b", "--devices", "rtx-4090,h100", "--json")
    data = json.loads(out)
    assert code == 0 and data["dataset_tokens"] is None and data["setups"]
    top = data["setups"][0]
    assert top["time"]["step"]["tokens_per_s"] > 0 and "run_s" not in top["time"]
    assert top["cloud_usd_per_million_tokens"] > 0
    code, out, _ = cli(capsys, "plan", "llama-3.2-1b", "--devices", "rtx-4090,h100")
    assert code == 0 and "throughput" in out


@pytest.mark.parametrize("flag,text,value", [
    # token lengths: k = 1024 (context lengths are powers of two); an exponent stays decimal
    ("--seq-len", "2k", 2048), ("--seq-len", "8k", 8192), ("--seq-len", "2.5k", 2560), ("--seq-len", "1e3", 1000),
    ("--seq-len", "4096", 4096),
    # counts: k = 1000
    ("--batch", "1_0", 10), ("--grad-accum", "2", 2), ("--rank", "1,024", 1024), ("--rank", "1k", 1000),
])
def test_one_number_parser_for_every_count(capsys, flag, text, value):
    code, out, _ = cli(capsys, "estimate", "llama-3.1-8b", flag, text, "--json")
    data = json.loads(out)
    got = {**data["training"], **data["method"]}[{"--seq-len": "seq_len", "--batch": "micro_batch",
                                                  "--grad-accum": "grad_accum", "--rank": "rank"}[flag]]
    assert code == 0 and got == value


def test_dataset_counts_use_the_same_parser(capsys):
    code, out, _ = cli(capsys, "plan", "llama-3.2-1b", "--dataset-tokens", "1e8", "--devices", "h100", "--json")
    assert code == 0 and json.loads(out)["dataset_tokens"] == 100_000_000


def test_names_are_case_insensitive_everywhere(capsys):
    code, out, _ = cli(capsys, "estimate", "LLAMA-3.2-1B", "--method", "QLoRA", "--precision", "BF16", "--optimizer",
                       "AdamW", "--framework", "HF", "--checkpointing", "Full", "--targets", "Q_PROJ,V_PROJ",
                       "--gpu", "RTX 4090", "--json")
    assert code == 0 and json.loads(out)["method"]["targets"] == "q_proj,v_proj"
    assert tuneplan.estimate("llama-3.2-1b", precision="BF16").job.training.precision == "bf16"


def test_instruct_variants_use_the_base_config(capsys):
    spec = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    base = resolve_model("meta-llama/Llama-3.1-8B")
    assert spec.name == "meta-llama/Llama-3.1-8B-Instruct" and "meta-llama/Llama-3.1-8B" in spec.note
    assert estimate_memory(spec, Job()).peak_bytes == estimate_memory(base, Job()).peak_bytes
    for name in ("Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-9b-it"):
        assert resolve_model(name).note
    code, out, err = cli(capsys, "estimate", "meta-llama/Llama-3.1-8B-Instruct")
    assert code == 0 and "note:" in err


def test_suggestions_keep_case_and_prefer_the_same_size():
    with pytest.raises(TuneplanError) as e:
        resolve_model("meta-llama/Llama-3.1-8B-Instrukt")
    hint = str(e.value).split("did you mean ")[1]
    assert hint.startswith("meta-llama/Llama-3.1-8B") and "meta-llama/llama" not in hint


@pytest.mark.parametrize("argv", [
    ["plan", "llama-3.1-8b", "--method", "qlora", "--devices", "consumer", "--top", "8"],
    ["plan", "llama-3.1-8b", "--method", "qlora", "--devices", "consumer", "--dataset-tokens", "100M"],
    ["matrix"],
])
@pytest.mark.parametrize("width", [80, 100])
def test_tables_fit_narrow_terminals(capsys, monkeypatch, argv, width):
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = cli(capsys, *argv)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= width


def test_trace_validates_before_importing_torch(tmp_path):
    gpt2 = write(tmp_path, {"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1, "vocab_size": 8})
    deep = write(tmp_path, {**TINY, "num_hidden_layers": 2000}, "deep.json")
    code = ("import sys; from tuneplan.cli import main\n"
            f"for argv in (['trace', 'no-such-model'], ['trace', {str(gpt2)!r}], ['trace', 'llama-3.2-1b', '--pp', '2'],"
            f" ['trace', 'llama-3.2-1b', '--optimizer', 'adamw-8bit'], ['trace', {str(deep)!r}]):\n"
            "    assert main(argv) == 2, argv\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_trace_real_is_checked_against_host_ram(capsys, monkeypatch):
    from tuneplan.commands import trace as trace_cmd

    monkeypatch.setattr(trace_cmd, "_available_ram", lambda: 2**30)
    refused(capsys, "trace", "llama-3.1-8b", "--real", match="available")


def test_trace_failure_inside_torch_is_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    odd = write(tmp_path, {**TINY, "hidden_act": "no-such-activation"})
    refused(capsys, "trace", odd, "--seq-len", "16", match="")


def test_public_api_has_the_cli_names():
    assert tuneplan.estimate("llama-3.2-1b", batch=2).job == tuneplan.estimate("llama-3.2-1b", micro_batch=2).job
    assert api.estimate is tuneplan.estimate and api.fit is tuneplan.check_fit and api.plan is tuneplan.plan_job
    assert api.matrix is tuneplan.fit_table and api.models is tuneplan.model_catalog
    assert api.devices is tuneplan.device_catalog
    v = api.fit("llama-3.1-8b", "rtx-4090", method="lora", batch=16, gc="full", optim="adamw")
    assert v.verdict == NO and v.change is not None
    report = api.plan("llama-3.2-1b", devices=["rtx-4090", "h100"], dataset_tokens="1M", method="qlora-8bit")
    assert report.job.method.quant == "int8" and report.result.setups
    cells = api.matrix("llama-3.2-1b", "full,lora", ["h100"])
    assert len(cells) == 2
    assert len(api.models()) == len(catalog()) and all(d.unified for d in api.devices("unified"))
    assert api.estimate(dict(TINY)).total_params > 0
    with pytest.raises(TuneplanError, match="drop gpus"):
        api.plan("llama-3.2-1b", gpus=2)


# ---------------------------------------------------------------- malformed Hub answers


class _Answers(http.server.BaseHTTPRequestHandler):
    bodies = {
        "/acme/binary/resolve/main/config.json": (200, b"\x80\x81\x82"),
        "/acme/html/resolve/main/config.json": (200, b"<html>rate limited</html>"),
        "/acme/array/resolve/main/config.json": (200, b"[1, 2]"),
        "/acme/huge/resolve/main/config.json": (200, b" " * (2 * 2**20)),
        "/acme/gpt2/resolve/main/config.json": (200, json.dumps({"model_type": "gpt2"}).encode()),
        "/acme/error/resolve/main/config.json": (500, b"oops"),
    }

    def do_GET(self):  # noqa: N802
        code, body = self.bodies.get(self.path, (404, b""))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture()
def bad_hub(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Answers))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(HUB_ENV, "1")
    yield tmp_path / "cache"
    server.shutdown()


@pytest.mark.parametrize("repo,msg", [
    ("acme/binary", "not UTF-8"), ("acme/html", "not valid JSON"), ("acme/array", "JSON object"),
    ("acme/huge", "larger than"), ("acme/gpt2", "GPT-2"), ("acme/error", "HTTP 500"),
])
def test_malformed_hub_answers_are_one_line(bad_hub, repo, msg):
    with pytest.raises(TuneplanError, match=msg) as e:
        resolve_model(repo)
    assert "\n" not in str(e.value)
    assert not (bad_hub / "tuneplan" / "hub" / repo / "main" / "config.json").exists()  # nothing bad cached


def test_malformed_hub_endpoint_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(TuneplanError, match="acme/model"):
        resolve_model("acme/model", hub=True)
