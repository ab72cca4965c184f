"""The layout's promises: one record per choice, imports one way, one Job constructor,
fit changes and the plan report as data that every shell renders."""

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tuneplan.choices.attention import ATTENTION
from tuneplan.choices.cross_entropy import CROSS_ENTROPY
from tuneplan.choices.frameworks import FRAMEWORKS
from tuneplan.choices.optimizers import OPTIMIZERS
from tuneplan.choices.precision import PRECISIONS
from tuneplan.cli import main
from tuneplan.errors import TuneplanError
from tuneplan.fit import fit_verdict
from tuneplan.hardware import resolve_device, resolve_devices
from tuneplan.job import Job, Method, Parallel, Training
from tuneplan.memory import estimate_memory, peak_bytes
from tuneplan.models import resolve_model
from tuneplan.plan import plan_report
from tuneplan.timing import Dataset, step_time

SRC = Path(__file__).resolve().parents[1] / "src" / "tuneplan"
SHELLS = ("cli", "commands", "trace", "probe", "web")
CORE_FORBIDDEN = ("tuneplan.cli", "tuneplan.commands", "tuneplan.trace", "tuneplan.probe", "tuneplan.web", "rich",
                  "torch", "matplotlib", "transformers", "peft", "bitsandbytes", "starlette", "uvicorn")


def _modules(exclude=()):
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in exclude:
            continue
        yield rel, ast.parse(path.read_text())


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


# ---------------------------------------------------------------- import graph

def test_core_never_imports_shells_or_heavy_libraries():
    bad = [(str(rel), name) for rel, tree in _modules(exclude=SHELLS) for name in _imports(tree)
           if any(name == f or name.startswith(f + ".") for f in CORE_FORBIDDEN)]
    assert not bad, f"core modules import shell/rendering code: {bad}"


def test_core_import_loads_no_shell_at_run_time():
    code = ("import sys, tuneplan, tuneplan.plan, tuneplan.fit, tuneplan.matrix, tuneplan.disk, tuneplan.cost, "
            "tuneplan.search, tuneplan.timing, tuneplan.memory; "
            "print([m for m in sys.modules if m.split('.')[0] in ('rich', 'torch', 'matplotlib') "
            "or m.startswith(('tuneplan.cli', 'tuneplan.commands', 'tuneplan.trace', 'tuneplan.probe'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# A module holds one concern; one much over 600 lines holds several and is split along them.
MAX_MODULE_LINES = 650


def test_no_module_is_much_over_600_lines():
    big = {str(path.relative_to(SRC)): n for path in sorted(SRC.rglob("*.py"))
           if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them along their concerns): {big}"


def test_commands_never_import_each_other_or_the_entry_point():
    for rel, tree in _modules():
        if rel.parts[0] != "commands":
            continue
        names = list(_imports(tree))
        assert "tuneplan.cli.main" not in names and "tuneplan.cli" not in names, rel
        assert not any(n.startswith("tuneplan.commands") for n in names), rel


def test_help_imports_no_command_module():
    code = ("import sys; from tuneplan.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in sys.modules if m.startswith('tuneplan.commands.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "estimate" in out and out.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- one record per choice

CHOICE_NAMES = set(FRAMEWORKS) | set(OPTIMIZERS) | set(ATTENTION) | set(CROSS_ENTROPY) | set(PRECISIONS)


def _string_constants(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def test_no_code_outside_the_tables_compares_choice_names():
    hits = []
    for rel, tree in _modules(exclude=("choices",)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = set(_string_constants(node)) & CHOICE_NAMES
                if names:
                    hits.append(f"{rel}:{node.lineno} {sorted(names)}")
    assert not hits, "choice names compared outside tuneplan.choices: " + "; ".join(hits)


def test_adding_a_framework_is_adding_a_row(monkeypatch):
    row = replace(FRAMEWORKS["hf"], name="newstack", label="New stack", adapter_fp32=False,
                  default_cross_entropy="fused", flop_efficiency=0.5)
    monkeypatch.setitem(FRAMEWORKS, "newstack", row)
    spec = resolve_model("llama-3.1-8b")
    new = estimate_memory(spec, Job.from_settings(method="lora", framework="newstack"))
    hf = estimate_memory(spec, Job.from_settings(method="lora"))
    assert new.component("adapters") == hf.component("adapters") // 2  # bf16 instead of fp32 adapters
    assert new.component("logits") < hf.component("logits")  # its default fused CE
    t = step_time(spec, Job.from_settings(method="lora", framework="newstack"), resolve_device("h100"))
    assert t.efficiency == 0.5


def test_adding_an_optimizer_is_adding_a_row(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "adam-mini-test", replace(OPTIMIZERS["adamw"], name="adam-mini-test", states=1))
    spec = resolve_model("qwen2.5-0.5b")
    one = estimate_memory(spec, Job.from_settings(method="full", optimizer="adam-mini-test")).component("optimizer")
    two = estimate_memory(spec, Job.from_settings(method="full")).component("optimizer")
    assert two == 2 * one


def test_cross_entropy_is_its_own_choice_that_a_profile_only_defaults():
    spec = resolve_model("llama-3.1-8b")
    unsloth = Job.from_settings(method="qlora", framework="unsloth", seq_len=8192)
    plain = Job.from_settings(method="qlora", framework="unsloth", seq_len=8192, cross_entropy="plain")
    hf = Job.from_settings(method="qlora", seq_len=8192)
    assert unsloth.training.loss.name == "fused" and hf.training.loss.name == "plain"
    assert estimate_memory(spec, plain).component("logits") == estimate_memory(spec, hf).component("logits")
    assert Job.from_settings(framework="torchtune").training.loss.name == "chunked"
    assert Job.from_settings(fused_ce=True).training.cross_entropy == "fused"


# ---------------------------------------------------------------- Job.from_settings

def test_from_settings_round_trips():
    j = Job.from_settings(method="qlora", rank=32, targets="attn", micro_batch=2, seq_len=4096, num_gpus=4,
                          sharding="fsdp", optimizer="adamw-8bit", framework="unsloth")
    assert Job.from_settings(**j.settings()) == j
    assert j.method == Method(kind="qlora", rank=32, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    assert j.training == Training(micro_batch=2, seq_len=4096, optimizer="adamw-8bit", framework="unsloth")
    assert j.parallel == Parallel(num_gpus=4, sharding="fsdp")
    assert Job.from_settings(targets=["q_proj", "v_proj"]).method.targets == ("q_proj", "v_proj")
    assert j.with_settings(micro_batch=1).training.micro_batch == 1


@pytest.mark.parametrize("settings,msg", [
    ({"seq_len": "4096"}, "whole number"),
    ({"seq_len": 4096.5}, "whole number"),
    ({"micro_batch": True}, "whole number"),
    ({"rank": 16.7}, "whole number"),
    ({"rank": None}, "whole number"),
    ({"lora_dropout": float("nan")}, "finite"),
    ({"targets": 3}, "targets"),
    ({"fused_ce": "yes"}, "true or false"),
    ({"batch_size": 2}, "unknown setting"),
    ({"fused_ce": True, "cross_entropy": "chunked"}, "contradicts"),
    ({"framework": "nemo-rl"}, "unknown framework"),
    ({"cross_entropy": "sparse"}, "unknown cross-entropy"),
    ({"task": "ppo"}, "ships no PPOTrainer"),
    ({"num_gpus": 4, "tensor": 3}, "cannot be split"),
    ({"num_gpus": 4, "pipeline": 4}, "does not run --pp"),
    ({"num_gpus": 8, "tensor": 2, "sharding": "zero3"}, "does not combine --tp/--pp"),
    ({"num_gpus": 3, "tensor": 2}, "cannot be split"),
])
def test_from_settings_rejects_bad_values_in_one_line(settings, msg):
    with pytest.raises(TuneplanError, match=msg) as e:
        Job.from_settings(**settings)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,msg", [
    (["estimate", "llama-3.1-8b", "--pp", "2", "--gpus", "2"], "does not run --pp"),
    (["estimate", "llama-3.1-8b", "--task", "ppo"], "ships no PPOTrainer"),
    (["estimate", "llama-3.1-8b", "--cross-entropy", "sparse"], "unknown cross-entropy"),
    (["estimat", "llama-3.1-8b"], "did you mean estimate"),
])
def test_cli_refuses_in_one_line(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


# ---------------------------------------------------------------- fit changes and plan report as data

def test_fit_change_is_data_and_the_cli_renders_the_flags(capsys):
    spec, d = resolve_model("llama-3.1-8b"), resolve_device("rtx-4090")
    v = fit_verdict(spec, Job.from_settings(method="lora", micro_batch=16), d)
    ch = v.change
    b, accum = ch.settings["micro_batch"], ch.settings["grad_accum"]
    # the fix keeps 16 samples per step; to clear the uncertainty band it may add the fused loss
    assert set(ch.settings) - {"cross_entropy"} == {"micro_batch", "grad_accum"} and b * accum == 16
    assert ch.peak_bytes == peak_bytes(spec, ch.job) <= d.usable_bytes
    assert ch.job == Job.from_settings(method="lora", **ch.settings)
    data = v.to_dict()
    assert "--" not in json.dumps(data["change"]) and "--" not in data["summary"]
    assert main(["estimate", "llama-3.1-8b", "--batch", "16", "--gpu", "rtx-4090"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"(--batch {b} --grad-accum {accum})" in out


def test_chained_change_keeps_every_step():
    spec, d = resolve_model("llama-3.1-70b"), resolve_device("rtx-4090")
    v = fit_verdict(spec, Job.from_settings(method="full"), d)
    assert v.change is not None and v.change.peak_bytes <= d.usable_bytes
    merged = v.change.settings
    assert v.change.job == Job.from_settings(method="full").with_settings(**merged)


def test_plan_report_is_what_the_cli_prints(capsys):
    spec = resolve_model("llama-3.2-1b")
    job = Job.from_settings(method="qlora")
    report = plan_report(spec, job, Dataset(1_000_000), resolve_devices("rtx-4090,h100"))
    assert main(["plan", "llama-3.2-1b", "--method", "qlora", "--dataset-tokens", "1M", "--devices",
                 "rtx-4090,h100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report.to_dict()))
    assert report.assumptions and report.disk.total > 0 and report.result.setups
