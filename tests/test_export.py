"""`tuneplan export` and `--from`: every exported file loads in its stack's own parser, the
four config formats round-trip to the same job, and bad input is one line with exit code 2.

The parsers run in a subprocess per library (tests/export_validate.py). TRL, accelerate and
DeepSpeed come from the `export` extra; Axolotl, LLaMA-Factory and torchtune from the
Makefile's VALIDATORS folder (.venv/validators: their declared dependencies pin older
transformers). A library that is not installed skips its tests, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneplan.cli import main
from tuneplan.errors import TuneplanError
from tuneplan.export import TARGETS, as_run, export_job, job_from_import, read_config
from tuneplan.export.common import canonical, fused_loss, loss_setting
from tuneplan.export.torchtune import BUILDERS
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.memory.trained import trainable
from tuneplan.models import resolve_model

HERE = Path(__file__).parent
VALIDATORS = Path(sys.prefix) / "validators"
FORMATS = ("trl", "axolotl", "llamafactory", "torchtune")

# the four jobs the issue names, plus ones that exercise every other setting
CORE_JOBS = {
    "full": ("llama-3.1-8b", {"method": "full", "seq_len": 2048}),
    "lora": ("qwen2.5-7b", {"method": "lora", "rank": 32, "targets": "attn", "micro_batch": 2, "seq_len": 4096,
                            "grad_accum": 4}),
    "qlora": ("llama-3.1-8b", {"method": "qlora", "micro_batch": 2, "seq_len": 4096,
                               "optimizer": "paged-adamw-8bit", "checkpointing": "offload"}),
    "fsdp": ("llama-3.1-8b", {"method": "full", "num_gpus": 8, "sharding": "fsdp", "seq_len": 4096}),
}
MORE_JOBS = {
    "zero3-offload-mixed": ("qwen2.5-7b", {"method": "full", "num_gpus": 4, "sharding": "zero3",
                                           "offload_optimizer": True, "offload_params": True, "precision": "mixed"}),
    "zero2-lora-offload": ("llama-3.2-1b", {"method": "lora", "num_gpus": 2, "sharding": "zero2",
                                            "offload_optimizer": True}),
    "fsdp-offload-lora": ("llama-3.2-1b", {"method": "lora", "num_gpus": 4, "sharding": "fsdp",
                                           "offload_optimizer": True, "offload_params": True}),
    "freeze": ("llama-3.2-1b", {"method": "freeze", "trainable_layers": 4, "train_embeddings": True}),
    "dora-eager": ("llama-3.2-1b", {"method": "dora", "rank": 8, "lora_dropout": 0.05, "attention": "eager"}),
    "int8-sgd": ("llama-3.2-1b", {"method": "qlora", "quant": "int8", "optimizer": "sgd-momentum"}),
    "fp4-fused-flash": ("llama-3.2-1b", {"method": "qlora", "quant": "fp4", "double_quant": False, "fused_ce": True,
                                         "attention": "flash"}),
    "fp32-adafactor": ("llama-3.2-1b", {"method": "full", "precision": "fp32", "optimizer": "adafactor",
                                        "checkpointing": "none"}),
    "amp-foreach": ("llama-3.2-1b", {"method": "full", "precision": "amp", "optimizer": "adamw-foreach"}),
    "chunked-embeddings-lion": ("llama-3.2-1b", {"method": "lora", "cross_entropy": "chunked",
                                                 "train_embeddings": True, "optimizer": "lion-8bit"}),
    "optimizer-in-backward": ("llama-3.2-1b", {"method": "full", "optimizer_in_backward": True}),
    "fp16-lora-qv": ("qwen2.5-0.5b", {"method": "lora", "precision": "fp16", "targets": "q_proj,v_proj"}),
}
ALL_JOBS = {**CORE_JOBS, **MORE_JOBS}


def _job(name: str) -> tuple:
    model, settings = ALL_JOBS[name]
    return resolve_model(model), Job.from_settings(**settings)


def _expected(fmt: str, job: Job) -> Job:
    """What a target that can express everything runs: the job under its framework profile;
    TRL 1.16's SFTTrainer always computes the loss with its fused LM head."""
    from tuneplan.export import _writable_layout

    run = as_run(TARGETS[fmt], _writable_layout(TARGETS[fmt], job, []))
    if fmt == "trl":
        run = canonical(run.with_settings(cross_entropy=loss_setting(run, fused_loss())))
    return run


# ---------------------------------------------------------------- files, once per module

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(target, job name) -> (Export, path) for every target and job."""
    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for target in TARGETS:
        for name in ALL_JOBS:
            spec, job = _job(name)
            if target == "torchtune" and spec.name not in BUILDERS:
                continue
            exp = export_job(target, spec, job)
            path = folder / f"{name}-{exp.file_name}"
            path.write_text(exp.text)
            out[target, name] = (exp, path)
    return out


def _available(module: str) -> bool:
    sys.path.append(str(VALIDATORS))
    try:
        return importlib.util.find_spec(module) is not None
    finally:
        sys.path.remove(str(VALIDATORS))


LIBRARIES = {"trl": "trl", "axolotl": "axolotl", "llamafactory": "llamafactory", "torchtune": "torchtune",
             "unsloth": "trl", "accelerate": "accelerate", "deepspeed": "deepspeed"}


@pytest.fixture(scope="module")
def validated(exported):
    """target -> {path: result} from the library's own parser: one subprocess per library,
    all running at once."""
    runs = {}
    for target, module in LIBRARIES.items():
        if _available(module):
            paths = [str(p) for (t, _), (_, p) in exported.items() if t == target]
            runs[target] = (paths, subprocess.Popen([sys.executable, str(HERE / "export_validate.py"), target, *paths],
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: dict = dict.fromkeys(LIBRARIES)
    for target, (paths, proc) in runs.items():
        out, err = proc.communicate(timeout=600)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"path"')]
        assert len(lines) == len(paths), err[-3000:]
        results[target] = {r["path"]: r for r in lines}
    return results


def _parsed(validated, exported, target, name):
    if validated[target] is None:
        pytest.skip(f"{LIBRARIES[target]} is not installed (make test installs it: extra `export` / VALIDATORS)")
    exp, path = exported[target, name]
    r = validated[target][str(path)]
    assert r["ok"], f"{target} refused {name}: {r['error']}\n{r.get('trace', '')}"
    return exp, r["parsed"]


# ---------------------------------------------------------------- the libraries' own parsers

@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_trl_parser_reads_the_export(validated, exported, name):
    exp, p = _parsed(validated, exported, "trl", name)
    m, t, par = exp.job.method, exp.job.training, exp.job.parallel
    assert (p["micro_batch"], p["grad_accum"], p["seq_len"]) == (t.micro_batch, t.grad_accum, t.seq_len)
    assert p["optim"] == t.optim.hf_name and p["attn"] == t.attn.hf_impl
    assert p["gradient_checkpointing"] == (t.checkpointing != "none")
    assert p["activation_offloading"] == (t.checkpointing == "offload")
    assert p["rank"] == (m.rank if m.is_adapter else None) and p["use_dora"] == (m.kind == "dora")
    assert p["load_in_4bit"] == (m.weight_bits == 4) and p["load_in_8bit"] == (m.weight_bits == 8)
    if m.weight_bits == 4:
        assert (p["quant_type"], p["double_quant"]) == (m.quant, m.double_quant)
    assert (p["num_processes"] or 1) == par.num_gpus
    assert p["fsdp"] == (par.sharding == "fsdp") and p["fsdp_offload"] == (par.sharding == "fsdp" and par.offload_params)
    if "deepspeed" in p:
        ds = p["deepspeed"]
        assert (ds["stage"], ds["offload_optimizer"], ds["offload_param"]) == (
            par.shard_stage, par.offload_optimizer, par.offload_params)
        assert ds["bf16_master"] == (not t.dtypes.fp32_master and t.dtypes.param_bytes == 2)


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_axolotl_validation_reads_the_export(validated, exported, name):
    exp, p = _parsed(validated, exported, "axolotl", name)
    m, t, par = exp.job.method, exp.job.training, exp.job.parallel
    assert (p["micro_batch"], p["grad_accum"], p["seq_len"]) == (t.micro_batch, t.grad_accum, t.seq_len)
    assert p["optimizer"] == t.optim.hf_name and p["attn"] == t.attn.hf_impl
    assert p["adapter"] == ({"qlora": "qlora" if m.weight_bits == 4 else "lora", "lora": "lora", "dora": "lora"}
                            .get(m.kind))
    assert p["rank"] == (m.rank if m.is_adapter else None) and p["use_dora"] == (m.kind == "dora")
    assert p["liger_flce"] == t.loss.fused and p["chunked_ce"] == bool(t.loss.chunks)
    assert bool(p["activation_offloading"]) == (t.checkpointing == "offload")
    assert p["fsdp"] == (par.sharding == "fsdp")
    if m.kind == "freeze":
        assert len([u for u in p["unfrozen"] if "layers" in u]) == m.trainable_layers
    if "deepspeed" in p:
        assert (p["deepspeed"]["stage"], p["deepspeed"]["offload_optimizer"]) == (par.shard_stage, par.offload_optimizer)


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_llamafactory_parser_reads_the_export(validated, exported, name):
    exp, p = _parsed(validated, exported, "llamafactory", name)
    m, t, par = exp.job.method, exp.job.training, exp.job.parallel
    assert (p["micro_batch"], p["grad_accum"], p["seq_len"]) == (t.micro_batch, t.grad_accum, t.seq_len)
    assert p["optim"] == t.optim.hf_name
    assert p["finetuning_type"] == ("lora" if m.is_adapter else m.kind)
    if m.is_adapter:
        assert p["rank"] == m.rank and p["use_dora"] == (m.kind == "dora")
    assert p["quant_bit"] == m.weight_bits
    assert p["gc_off"] == (t.checkpointing == "none") and p["unsloth_gc"] == (t.checkpointing == "offload")
    assert p["liger"] == t.loss.fused
    if m.kind == "freeze":
        assert p["freeze_layers"] == m.trainable_layers
    assert p["fsdp"] == (par.sharding == "fsdp")
    if "deepspeed" in p:
        assert (p["deepspeed"]["stage"], p["deepspeed"]["offload_param"]) == (par.shard_stage, par.offload_params)


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_torchtune_config_loads_and_builds_the_model(validated, exported, name):
    if ("torchtune", name) not in exported:
        pytest.skip("no torchtune builder for this model")
    exp, p = _parsed(validated, exported, "torchtune", name)
    spec = resolve_model(ALL_JOBS[name][0])
    m, t = exp.job.method, exp.job.training
    assert (p["micro_batch"], p["seq_len"]) == (t.micro_batch, t.seq_len)
    assert p["recipe"] == ("lora" if m.is_adapter else "full") + (
        "_finetune_distributed" if exp.job.parallel.num_gpus > 1 else "_finetune_single_device")
    if m.is_adapter:  # torchtune's own LoRA modules hold exactly the adapter parameters tuneplan counts
        assert p["adapter_params"] == trainable(spec, m).adapter


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_unsloth_script_compiles_and_its_keywords_exist(validated, exported, name):
    exp, p = _parsed(validated, exported, "unsloth", name)
    assert p["micro_batch"] == exp.job.training.micro_batch and p["full"] == (not exp.job.method.is_adapter)


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_deepspeed_config_class_reads_the_export(validated, exported, name):
    exp, p = _parsed(validated, exported, "deepspeed", name)
    par, t = exp.job.parallel, exp.job.training
    assert (p["stage"], p["offload_optimizer"], p["offload_param"], p["world"]) == (
        par.shard_stage, par.offload_optimizer, par.offload_params, par.num_gpus)
    assert (p["micro_batch"], p["grad_accum"]) == (t.micro_batch, t.grad_accum)
    assert p["bf16"] == (t.dtypes.param_bytes == 2) and p["bf16_master"] == t.dtypes.pure_16bit


@pytest.mark.parametrize("name", list(ALL_JOBS))
def test_accelerate_launcher_reads_the_export(validated, exported, name):
    exp, p = _parsed(validated, exported, "accelerate", name)
    par = exp.job.parallel
    assert p["num_processes"] == par.num_gpus and p["fsdp"] == (par.sharding == "fsdp")
    if p["fsdp"]:
        assert (p["fsdp_version"], p["offload"]) == (2, par.offload_params)
    if p["deepspeed"]:
        assert (p["stage"], p["offload_optimizer"]) == (par.shard_stage, "cpu" if par.offload_optimizer else "none")


# ---------------------------------------------------------------- round trip

def _read_back(path: Path, exp) -> Job:
    imp = read_config(str(path))
    given = {k: exp.job.settings()[k] for k in imp.missing}  # what the launcher, not the file, holds
    job, _ = job_from_import(imp, given)
    return job


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CORE_JOBS))
def test_round_trip_gives_the_same_job(exported, fmt, name):
    """export -> --from -> the same job (every field), and nothing in it had to be substituted."""
    exp, path = exported[fmt, name]
    spec, job = _job(name)
    assert exp.job == _expected(fmt, job), exp.cannot
    assert _read_back(path, exp) == exp.job
    assert read_config(str(path)).format == fmt
    # the header's figures are the estimate of that job
    assert f"{estimate_memory(spec, exp.job).device_bytes / 2**30:.2f} GiB device total" in exp.text


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MORE_JOBS))
def test_every_setting_is_carried_or_named(exported, fmt, name):
    """Either the file runs the job asked for, or each difference is named in one line; and
    what the file runs always reads back exactly."""
    if (fmt, name) not in exported:
        pytest.skip("no torchtune builder for this model")
    exp, path = exported[fmt, name]
    _, job = _job(name)
    assert _read_back(path, exp) == exp.job
    if exp.job != _expected(fmt, job):
        assert exp.cannot, f"{fmt} changed {name} without saying so"
        assert all("\n" not in c for c in exp.cannot)
        assert "cannot express: " + "; ".join(exp.cannot) in exp.text


def test_what_a_stack_cannot_express_is_named_in_the_header_and_on_stderr(tmp_path, capsys):
    out = tmp_path / "t.yaml"
    assert main(["export", "llama-3.2-1b", "--method", "freeze", "--to", "torchtune", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    line = next(a for a in err.splitlines() if "cannot express" in a)
    header = next(a for a in out.read_text().splitlines() if a.startswith("# cannot express: "))
    assert "--method freeze" in line and line.split("cannot express: ")[1] == header.split("cannot express: ")[1]


# ---------------------------------------------------------------- the header

def test_header_has_peak_device_verdict_and_a_command_that_reproduces_it(tmp_path, capsys):
    out = tmp_path / "axolotl.yaml"
    assert main(["export", "llama-3.1-8b", "--method", "qlora", "--seq-len", "4096", "--batch", "1",
                 "--to", "axolotl", "--gpu", "rtx-4090", "-o", str(out)]) == 0
    capsys.readouterr()
    head = [line[2:] for line in out.read_text().splitlines() if line.startswith("# ")]
    assert any(h.startswith("predicted peak per GPU:") and "device total" in h and "peak allocated" in h for h in head)
    assert any(h.startswith("device: rtx-4090: fits") for h in head)
    assert any("<FILL IN" in line for line in out.read_text().splitlines() if not line.startswith("#"))
    command = next(h for h in head if h.startswith("reproduce: "))[len("reproduce: tuneplan "):].split()
    assert main(command + ["--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    peak = next(h for h in head if h.startswith("predicted peak"))
    assert f"{figures['peak_bytes'] / 2**30:.2f} GiB device total" in peak


def test_export_warns_on_stderr_in_one_line_when_the_job_does_not_fit_the_gpu(tmp_path, capsys):
    out = tmp_path / "axolotl.yaml"
    args = ["export", "llama-3.1-8b", "--method", "qlora", "--seq-len", "8192", "--batch", "2",
            "--to", "axolotl", "--gpu", "rtx-4090", "-o", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("tuneplan: warning: the exported job does not fit")
    header = next(h[len("# device: "):] for h in out.read_text().splitlines() if h.startswith("# device: "))
    assert header.startswith("rtx-4090: does not fit") and warnings[0].endswith(header)
    # a job that fits (or no --gpu) says nothing
    assert main(args[:2] + ["--method", "qlora", "--seq-len", "2048", "--to", "axolotl", "--gpu", "rtx-4090",
                            "-o", str(tmp_path / "fits.yaml")]) == 0
    assert main(args[:-4] + ["-o", str(tmp_path / "nogpu.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------- --from on the command line

def test_estimate_from_says_what_it_read_and_ignored_and_cli_overrides(tmp_path, capsys):
    cfg = tmp_path / "lf.yaml"
    cfg.write_text("model_name_or_path: Qwen/Qwen2.5-7B\nstage: sft\nfinetuning_type: lora\nlora_rank: 8\n"
                   "cutoff_len: 2048\nper_device_train_batch_size: 2\nbf16: true\nlearning_rate: 1.0e-4\n"
                   "report_to: none\n")
    assert main(["estimate", "--from", str(cfg), "--seq-len", "4096", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["peak_bytes"] == estimate_memory(resolve_model("qwen2.5-7b"), Job.from_settings(
        method="lora", rank=8, seq_len=4096, micro_batch=2, framework="llamafactory")).peak_bytes
    assert "read llamafactory config" in err and "lora_rank" in err
    assert "ignored" in err and "learning_rate" in err and "report_to" in err
    assert "seq_len 4096 from the command line overrides 2048 from cutoff_len" in err


def test_plan_and_trace_take_from_too(tmp_path, capsys):
    cfg = tmp_path / "trl.yaml"
    cfg.write_text("model_name_or_path: HuggingFaceTB/SmolLM2-135M\nuse_peft: true\nmax_length: 512\n"
                   "per_device_train_batch_size: 1\ndtype: bfloat16\n")
    assert main(["plan", "--from", str(cfg), "--devices", "rtx-4090", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["setups"]
    if importlib.util.find_spec("torch") is None:
        pytest.skip("trace extra not installed")
    assert main(["trace", "--from", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_plan_export_writes_the_top_setup(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["plan", "mistral-7b", "--method", "qlora", "--devices", "rtx-4090,h100", "--export", str(folder),
                 "--export-to", "trl,axolotl", "--top", "3"]) == 0
    err = capsys.readouterr().err
    assert (folder / "trl.yaml").is_file() and (folder / "axolotl.yaml").is_file() and "wrote" in err
    assert read_config(str(folder / "axolotl.yaml")).settings["method"] == "qlora"
    # again without --force: refused, nothing rewritten
    before = (folder / "trl.yaml").read_text()
    assert main(["plan", "mistral-7b", "--method", "qlora", "--devices", "rtx-4090,h100", "--export", str(folder),
                 "--top", "3"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and (folder / "trl.yaml").read_text() == before


def test_export_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "x.yaml"
    out.write_text("mine\n")
    assert main(["export", "llama-3.2-1b", "--to", "trl", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --force" in err and out.read_text() == "mine\n"
    assert main(["export", "llama-3.2-1b", "--to", "trl", "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("# tuneplan export --to trl")
    assert main(["export", "llama-3.2-1b", "--to", "deepspeed", "-o", str(tmp_path)]) == 0  # a folder: its name
    # one GPU, bf16: DeepSpeed stage 0 with its bf16 optimizer (fp32 master weights, estimated as mixed)
    assert json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 0


def test_export_to_stdout(capsys):
    assert main(["export", "llama-3.2-1b", "--method", "lora", "--to", "llamafactory"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tuneplan export --to llamafactory") and "finetuning_type: lora" in out


# ---------------------------------------------------------------- bad input: one line, exit 2

BAD = {
    "malformed.yaml": ("base_model: x\n  micro_batch_size: [1, 2\n", "not valid YAML (line"),
    "unknown.yaml": ("foo: 1\nbar: two\n", "cannot tell which stack"),
    "list.yaml": ("- a\n- b\n", "not a YAML mapping"),
    "wrong-type.yaml": ("base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nlora_r: 16\nmicro_batch_size: two\n"
                        "sequence_len: 2048\n", "axolotl field micro_batch_size must be a whole number"),
    "bool-count.yaml": ("model_name_or_path: x\nuse_peft: true\nlora_r: true\nmax_length: 512\n",
                        "trl field lora_r must be a whole number"),
    "rl.yaml": ("base_model: meta-llama/Llama-3.1-8B\nrl: grpo\nmicro_batch_size: 1\nsequence_len: 2048\n",
                "axolotl option rl: 'grpo' is not supported"),
    "oft.yaml": ("model_name_or_path: x\nstage: sft\nfinetuning_type: oft\ncutoff_len: 1024\n",
                 "finetuning_type 'oft' is not modelled"),
    "ia3.yaml": ("base_model: x\nadapter: ia3\nmicro_batch_size: 1\nsequence_len: 2048\n",
                 "adapter 'ia3' is not modelled"),
    "ppo-stage.yaml": ("model_name_or_path: x\nstage: ppo\nfinetuning_type: lora\ncutoff_len: 1024\n",
                       "llamafactory option stage"),
    "optimizer.yaml": ("model_name_or_path: x\nstage: sft\ncutoff_len: 1024\noptim: galore_adamw\n",
                       "optimizer 'galore_adamw' is not modelled"),
    "tt-loss.yaml": ("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n  lora_attn_modules: [q_proj]\n"
                     "tokenizer:\n  max_seq_len: 512\nbatch_size: 1\noptimizer:\n  _component_: torch.optim.AdamW\n"
                     "loss:\n  _component_: torch.nn.KLDivLoss\ndtype: bf16\n", "torchtune option loss._component_"),
    "fsdp-no-gpus.yaml": ("base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: 1\nsequence_len: 2048\n"
                          "fsdp_version: 2\nfsdp_config:\n  offload_params: false\n", "give --gpus N"),
    "binary.yaml": ("\x00\x01\x02", "binary file"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, name):
    text, msg = BAD[name]
    path = tmp_path / name
    path.write_bytes(text.encode())
    assert main(["estimate", "--from", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tuneplan: error:")]
    assert len(lines) == 1 and msg in lines[0], err


def test_from_format_and_missing_inputs(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("base_model: meta-llama/Llama-3.2-1B\nmicro_batch_size: 1\nsequence_len: 512\n")
    assert main(["estimate", "--from", str(path), "--from-format", "torchtune"]) == 2
    assert "no model._component_" in capsys.readouterr().err
    assert main(["estimate", "--from", str(path), "--from-format", "megatron"]) == 2
    assert "unknown config format" in capsys.readouterr().err
    assert main(["estimate", "--from", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["estimate"]) == 2
    assert "give a MODEL" in capsys.readouterr().err
    assert main(["export", "llama-3.1-8b", "--to", "torchtune"]) == 0  # llama 3.1 has a builder
    capsys.readouterr()
    assert main(["export", "qwen3-8b", "--to", "torchtune"]) == 2  # torchtune 0.6.1 has no Qwen3
    assert "no model builder" in capsys.readouterr().err


def test_a_command_line_option_the_files_method_ignores_is_refused(tmp_path, capsys):
    path = tmp_path / "ax.yaml"
    path.write_text("base_model: meta-llama/Llama-3.2-1B\nadapter: lora\nlora_r: 64\nmicro_batch_size: 1\n"
                    "sequence_len: 512\n")
    assert main(["estimate", "--from", str(path), "--method", "full"]) == 0  # the file's rank is dropped, said
    assert "lora_r from the file does not apply to method full" in capsys.readouterr().err
    assert main(["estimate", "--from", str(path), "--quant", "int8"]) == 2  # a given one is refused
    assert "does not apply to method lora" in capsys.readouterr().err


def test_read_config_api_errors_are_tuneplan_errors(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("&a [*a]\n")
    with pytest.raises(TuneplanError):
        read_config(str(path))
