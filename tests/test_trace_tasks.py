"""`tuneplan trace --task`: TRL's own preference/reward loss step on fake tensors, and the estimate beside it.

The model is Qwen2.5-0.5B's config cut to 2 decoder layers (its 151,936-token vocabulary and
896-wide hidden state kept, so the LM-head terms are real-sized): each trace takes a few
seconds; importing trl takes ~10 s once. The full grid (24-layer models, two sizes) is
benchmarks/trace_tasks.py's job (benchmarks/results/trace_tasks.md). Needs the trace extra
and trl; skipped without them.
"""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tuneplan.cli import main  # noqa: E402
from tuneplan.errors import TuneplanError  # noqa: E402
from tuneplan.job import Job  # noqa: E402
from tuneplan.memory import estimate_memory  # noqa: E402
from tuneplan.models import resolve_config  # noqa: E402
from tuneplan.trace.compare import estimate_allocated  # noqa: E402
from tuneplan.trace.tasks import run_task_trace  # noqa: E402


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    _, cfg = resolve_config("qwen2.5-0.5b")
    path = tmp_path_factory.mktemp("qwen2") / "config.json"
    path.write_text(json.dumps(dict(cfg, num_hidden_layers=2)))
    return str(path)


def _job(task: str, kind: str, ref: str | None = None, **training) -> Job:
    kw = {"kind": kind, "task": task, "seq_len": 512} | training
    if ref:
        kw["ref_model"] = ref
    return Job.from_settings(**kw)


def _trace(config_path: str, job: Job):
    spec, cfg = resolve_config(config_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spec, run_task_trace(cfg, job, name="qwen2-2l")


@pytest.mark.parametrize("task,kind,ref", [
    ("dpo", "full", None),  # separate frozen reference copy
    ("dpo", "lora", None),  # adapter disabled
    ("kto", "lora", "precomputed"),  # the policy's no-grad KL pass stays
    ("orpo", "lora", None),
    ("rm", "full", None),
])
def test_estimate_within_5_percent_of_trls_step(config_path, task, kind, ref):
    job = _job(task, kind, ref)
    spec, r = _trace(config_path, job)
    alloc = estimate_allocated(estimate_memory(spec, job))
    assert abs(alloc - r.peak_bytes) / r.peak_bytes < 0.05, (task, kind, ref, alloc, r.peak_bytes)


def test_reference_is_traced_where_it_lives(config_path):
    """A separate reference holds a second copy of the weights; the adapter-disabled one none;
    precomputed log-probs no reference forward at all."""
    _, sep = _trace(config_path, _job("dpo", "lora", "separate"))
    _, ada = _trace(config_path, _job("dpo", "lora"))
    weights = sep.at_peak["weights"] + sep.at_peak["trainable"]
    # the separate copy: every base weight once more (bf16), counted under "reference"
    assert sep.at_peak["reference"] >= 0.95 * sep.resident["weights"]
    assert ada.resident.get("reference", 0) == 0
    assert sep.peak_bytes - ada.peak_bytes > 0.9 * (weights - sep.at_peak["trainable"])


def test_trl_fused_head_never_builds_the_full_logits(config_path):
    """trl 1.16's DPO scores tokens in [4096, 32768] tiles: far below ORPO's full logits path."""
    _, dpo = _trace(config_path, _job("dpo", "lora", "precomputed"))
    _, orpo = _trace(config_path, _job("orpo", "lora"))
    logits = 2 * 2 * 512 * 151936  # bf16 [2 rows, 512, vocab]
    assert orpo.peak_bytes - dpo.peak_bytes > 2 * logits


def test_cli_json_is_clean_and_compares(config_path, capsys):
    assert main(["trace", config_path, "--task", "rm", "--method", "full", "--seq-len", "512", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout (trl's deepspeed logs go to stderr)
    assert out["trace"]["peak_phase"] == "backward"
    assert abs(out["relative_error"]) < 0.05


@pytest.mark.parametrize("argv,says", [
    (["--task", "cpo"], "trace does not replay --task cpo"),
    (["--task", "dpo", "--real"], "fake tensors only"),
    (["--task", "dpo", "--gpus", "2", "--sharding", "fsdp"], "on one GPU"),
    (["--task", "dpo", "--method", "qlora", "--ref-model", "separate"], "quantised separate reference"),
    (["--task", "dpo", "--stack", "trl-full-logits"], "older TRL"),
])
def test_refusals_are_one_line_exit_2(capsys, argv, says):
    assert main(["trace", "qwen2.5-0.5b", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_online_task_refused_in_one_line(capsys):
    assert main(["trace", "qwen2.5-0.5b", "--task", "grpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "grpo" in err and len(err.splitlines()) == 1


def test_check_task_lists_what_it_replays():
    from tuneplan.trace import check_task

    with pytest.raises(TuneplanError, match="it replays sft and dpo"):
        check_task(_job("cpo", "lora"))
