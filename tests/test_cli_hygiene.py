"""Issue 26: the command line's hygiene, one test (or parametrized case) per item.

4 catalog scripts without ../shared, 7 token lengths are binary (8k = 8,192), 8 MLX/MPS
counters named as those runtimes name them, 10 --help lists only what a command takes,
11 transformers' optimizer names and "did you mean", 12 Ctrl-C and a closed pipe, 13 control
characters in error messages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli
from scripts_loader import load_script

import tuneplan
from tuneplan.choices.optimizers import HF_NOT_MODELLED, OPTIMIZER_ALIASES, OPTIMIZERS, canonical_optimizer
from tuneplan.cli.main import command_parser, printable
from tuneplan.cli.options import CHOICES, NOT_TAKEN, _job_actions, count, token_length
from tuneplan.errors import TuneplanError
from tuneplan.units import parse_count, parse_token_length

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 128, "intermediate_size": 128, "max_position_embeddings": 4096}




def one_line_error(capsys, *argv, match=""):
    code, out, err = cli(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert match in err, err
    return err


# ---------------------------------------------------------------- 4: catalog scripts without ../shared


SCRIPTS = [("scripts/build_device_catalog.py", "src/tuneplan/data/devices.json", "hardware.csv"),
           ("scripts/build_model_catalog.py", "src/tuneplan/data/models.json", "models.csv")]


@pytest.mark.parametrize("script,out,csv_name", SCRIPTS)
def test_catalog_scripts_without_shared_are_one_line(tmp_path, capsys, script, out, csv_name):
    before = (ROOT / out).read_bytes()
    missing = tmp_path / "shared" / "catalog" / csv_name
    # a path that is not there, as the command line gives it
    r = subprocess.run([sys.executable, str(ROOT / script), str(missing)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and str(missing) in r.stderr, r.stderr
    assert "No such file or directory" in r.stderr and r.stdout == ""
    # the default path (../shared next to the repository) missing, as in a clone alone
    mod = load_script(script, f"_hygiene_{Path(script).stem}")
    mod.DEFAULT_CSV = missing
    with pytest.raises(SystemExit) as e:
        mod.main([script])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "shared catalog" in err and str(missing) in err
    assert (ROOT / out).read_bytes() == before  # nothing written


# ---------------------------------------------------------------- 7: token lengths are binary, counts decimal


@pytest.mark.parametrize("text,tokens", [("8k", 8192), ("2k", 2048), ("2.5k", 2560), ("128k", 131_072),
                                         ("4096", 4096), ("1e3", 1000), ("8K", 8192), ("1,024", 1024)])
def test_token_lengths_use_k_1024(text, tokens):
    assert parse_token_length(text) == tokens


@pytest.mark.parametrize("text,n", [("8k", 8000), ("100M", 100_000_000), ("50k", 50_000), ("2B", 2_000_000_000)])
def test_counts_use_k_1000(text, n):
    assert parse_count(text) == n


def test_the_options_table_names_the_parser_of_each_number():
    actions = _job_actions()
    assert actions["seq_len"].type is token_length
    for dest in ("micro_batch", "grad_accum", "rank", "num_gpus", "trainable_layers", "lora_layers"):
        assert actions[dest].type is count, dest


def test_seq_len_8k_is_8192_tokens_and_dataset_sizes_stay_decimal(capsys):
    code, out, _ = cli(capsys, "estimate", "llama-3.2-1b", "--seq-len", "8k", "--json")
    assert code == 0 and json.loads(out)["training"]["seq_len"] == 8192
    code, out, _ = cli(capsys, "plan", "llama-3.2-1b", "--samples", "50k", "--mean-tokens", "2k", "--devices", "h100",
                       "--seq-len", "4k", "--json")
    data = json.loads(out)
    assert code == 0 and data["dataset_tokens"] == 100_000_000 and data["setups"][0]["seq_len"] == 4096
    code, out, _ = cli(capsys, "plan", "llama-3.2-1b", "--dataset-tokens", "100M", "--devices", "h100", "--json")
    assert code == 0 and json.loads(out)["dataset_tokens"] == 100_000_000


@pytest.mark.parametrize("command", ["estimate", "plan", "matrix", "trace"])
def test_help_says_how_token_lengths_are_read(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    text = " ".join(out.split())
    assert code == 0 and "k = 1024" in text and "8k is 8,192" in text and "100M is 100,000,000" in text


def test_the_api_takes_token_lengths_as_ints_only():
    assert tuneplan.estimate("llama-3.2-1b", seq_len=8192).job.training.seq_len == 8192
    with pytest.raises(TuneplanError, match="whole number"):
        tuneplan.estimate("llama-3.2-1b", seq_len="8k")  # no typed strings: no k to misread


# ---------------------------------------------------------------- 8: MLX and Metal counters


def _table(out: str) -> str:
    return out.split("Assumes:")[0]


def test_mlx_breakdown_names_mlx_counters(capsys):
    code, out, _ = cli(capsys, "estimate", "llama-3.2-1b", "--method", "lora", "--framework", "mlx")
    assert code == 0 and "mx.get_peak_memory" in out
    for cuda in ("torch.cuda", "nvidia-smi"):
        assert cuda not in out, cuda
    assert "CUDA" not in _table(out) and "Peak reserved" not in out  # MLX has no reserved counter


def test_mps_breakdown_names_metal_counters(capsys):
    code, out, _ = cli(capsys, "estimate", "llama-3.2-1b", "--method", "lora", "--gpu", "mac-studio-m4-max")
    table = _table(out)
    assert code == 0 and "torch.mps.current_allocated_memory()" in table
    assert "torch.mps.driver_allocated_memory()" in table
    for cuda in ("torch.cuda", "nvidia-smi", "CUDA"):
        assert cuda not in table, cuda


def test_cuda_breakdown_keeps_torch_and_nvidia_smi_names(capsys):
    code, out, _ = cli(capsys, "estimate", "llama-3.2-1b", "--method", "lora")
    assert code == 0 and "torch.cuda.max_memory_allocated()" in out and "torch.cuda.max_memory_reserved()" in out
    assert "nvidia-smi" in out and "CUDA context" in out


# ---------------------------------------------------------------- 10: --help lists only what a command takes

# An argv that uses each option in a setting the command takes (an option that needs another
# one gives both). An option missing here gets a generic value: a flag alone, a count 1, a
# choice's first name; if that is refused, add its row here.
SAMPLES: dict[str, list[str]] = {
    "--method": ["--method", "lora"], "--rank": ["--rank", "8"], "--targets": ["--targets", "attn"], "--quant": ["--method", "qlora", "--quant", "nf4"],
    "--no-double-quant": ["--method", "qlora", "--no-double-quant"],
    "--trainable-layers": ["--method", "freeze", "--trainable-layers", "1"],
    "--lora-layers": ["--framework", "mlx", "--lora-layers", "1"], "--lora-dropout": ["--lora-dropout", "0.1"],
    "--seq-len": ["--seq-len", "512"], "--precision": ["--precision", "bf16"], "--optimizer": ["--optimizer", "adamw"],
    "--checkpointing": ["--checkpointing", "full"], "--attention": ["--attention", "sdpa"],
    "--framework": ["--framework", "hf"], "--cross-entropy": ["--cross-entropy", "plain"],
    "--optimizer-in-backward": ["--framework", "torchtune", "--optimizer-in-backward"],
    "--compile": ["--compile"], "--kbit-prep": ["--method", "qlora", "--kbit-prep", "peft"],
    "--runtime": ["--runtime", "cuda"], "--stack": ["--stack", "current"], "--task": ["--task", "sft"],
    "--gpus": ["--gpus", "2"], "--sharding": ["--gpus", "2", "--sharding", "zero3"],
    "--offload-optimizer": ["--gpus", "2", "--sharding", "zero3", "--offload-optimizer"],
    "--offload-params": ["--gpus", "2", "--sharding", "zero3", "--offload-params"],
    "--gpu": ["--gpu", "h100"], "--from-format": ["--from", "{config}", "--from-format", "axolotl"],
    "--from": ["--from", "{config}"], "--dataset-tokens": ["--dataset-tokens", "1M"],
    "--samples": ["--samples", "1k", "--mean-tokens", "500"], "--mean-tokens": ["--samples", "1k", "--mean-tokens", "500"],
    "--epochs": ["--dataset-tokens", "1M", "--epochs", "2"], "--devices": ["--devices", "h100"],
    "--rank-by": ["--rank-by", "cost"], "--efficiency": ["--efficiency", "0.4"], "--utilisation": ["--utilisation", "0.5"],
    "--usd-per-kwh": ["--usd-per-kwh", "0.2"], "--export": ["--export", "{tmp}/run"],
    "--export-to": ["--export", "{tmp}/run", "--export-to", "trl"], "--force": ["--force"],
    "--models": ["--models", "{model}"], "--methods": ["--methods", "lora"], "--csv": ["--csv", "{tmp}/fit.csv"],
    "--png": ["--png", "{tmp}/fit.png"], "--real": ["--real"], "--ref-model": ["--task", "dpo", "--ref-model", "separate"],
    "--sequence-parallel": ["--framework", "torchtitan", "--method", "full", "--gpus", "2", "--tp", "2",
                            "--sequence-parallel"],
    "--num-generations": ["--task", "grpo", "--num-generations", "4"],
    "--prompt-len": ["--task", "grpo", "--prompt-len", "64"],
    "--completion-len": ["--task", "grpo", "--completion-len", "64"],
    "--generation-engine": ["--task", "grpo", "--generation-engine", "vllm-colocate"],
    "--vllm-memory-utilization": ["--task", "grpo", "--generation-engine", "vllm-colocate",
                                  "--vllm-memory-utilization", "0.3"],
    "--vllm-sleep": ["--task", "grpo", "--generation-engine", "vllm-colocate", "--vllm-sleep"],
    "--generation-gpus": ["--task", "grpo", "--generation-engine", "vllm-server", "--gpus", "2",
                          "--generation-gpus", "1"],
}
# where a command spells the setting another way (matrix: --methods; plan: no --gpus)
SAMPLES_OF = {
    "matrix": {flag: ["--methods" if x == "--method" else x for x in argv] for flag, argv in SAMPLES.items()},
    "plan": {"--sharding": ["--sharding", "zero3"], "--offload-optimizer": ["--sharding", "zero3", "--offload-optimizer"],
             "--offload-params": ["--sharding", "zero3", "--offload-params"],
             "--export-to": ["--export", "{tmp}/run-to", "--export-to", "trl"],
             "--sequence-parallel": ["--framework", "torchtitan", "--method", "full", "--tp", "2", "--sequence-parallel"],
             "--generation-gpus": ["--task", "grpo", "--generation-engine", "vllm-server", "--generation-gpus", "1"]},
}

# each command's run, with a small model (a config.json written to tmp), as cheap as it goes
BASE = {
    "estimate": ["estimate", "{model}", "--json"],
    "plan": ["plan", "{model}", "--devices", "rtx-4090", "--json"],
    "matrix": ["matrix", "--models", "{model}", "--methods", "lora", "--devices", "rtx-4090", "--json"],
    "trace": ["trace", "{model}", "--json"],
}


def _sample(a: argparse.Action, command: str = "") -> list[str]:
    flag = next(o for o in a.option_strings if o.startswith("--"))
    for table in (SAMPLES_OF.get(command, {}), SAMPLES):
        if flag in table:
            return table[flag]
    if a.nargs == 0:
        return [flag]
    if flag[2:] in CHOICES:
        return [flag, CHOICES[flag[2:]][0]]
    return [flag, "1"]


def _listed(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options --help shows (not --help itself)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


@pytest.fixture
def small(tmp_path, capsys):
    model = tmp_path / "config.json"
    model.write_text(json.dumps(TINY))
    config = tmp_path / "axolotl.yaml"
    assert cli(capsys, "export", "llama-3.2-1b", "--to", "axolotl", "-o", config)[0] == 0
    return {"model": str(model), "config": str(config), "tmp": str(tmp_path)}


@pytest.mark.parametrize("command", list(BASE))
def test_every_option_in_help_is_taken(command, small, capsys, monkeypatch):
    import tuneplan.trace

    monkeypatch.setattr(tuneplan.trace, "available", lambda: False)  # trace: validate, then stop before torch
    parser, _ = command_parser(command)
    listed = _listed(parser)
    assert listed
    failures = []
    for a in listed:
        argv = [x.format(**small) for x in BASE[command] + _sample(a, command)]
        code, out, err = cli(capsys, *argv)
        if command == "trace":  # everything was checked; only the (missing) torch stopped it
            taken = code == 2 and err.splitlines()[-1].startswith("tuneplan: error: trace needs torch")
        else:
            taken = code == 0
        failures += [] if taken else [(a.option_strings, argv, err)]
    assert not failures, f"refused (give it a row in SAMPLES if it needs another option): {failures}"


@pytest.mark.parametrize("command", list(NOT_TAKEN))
def test_options_a_command_does_not_take_are_hidden_and_refused(command, capsys):
    parser, _ = command_parser(command)
    hidden = {a.dest for a in parser._actions if a.help == argparse.SUPPRESS}
    actions = {a.dest: a for a in parser._actions}
    help_text = parser.format_help()
    for dest, reason in NOT_TAKEN[command].items():
        if dest not in actions:  # an option not defined (yet): nothing to list or refuse
            continue
        flag = actions[dest].option_strings[0]
        assert dest in hidden and not re.search(rf"^\s+{flag}\b", help_text, re.M), flag
        alone = _sample(actions[dest])[-1 if actions[dest].nargs == 0 else -2:]  # the option alone
        argv = [command, *(["--models", "llama-3.2-1b"] if command == "matrix" else ["llama-3.2-1b"]), *alone]
        one_line_error(capsys, *argv, match=reason.format(flag=flag).split(";")[0])


def test_plan_and_trace_help_do_not_list_refused_options(capsys):
    _, plan_help, _ = cli(capsys, "plan", "--help")
    _, trace_help, _ = cli(capsys, "trace", "--help")
    assert "--gpus" not in plan_help and "--max-gpus" in plan_help
    for flag in ("--offload-optimizer", "--offload-params", "--pp", "--cp", "--ep", "--nodes"):
        assert flag not in trace_help, flag
    assert "--gpus" in trace_help and "--tp" in trace_help  # one rank under a fake process group
    _, est_help, _ = cli(capsys, "estimate", "--help")
    assert "--gpus" in est_help and "--offload-params" in est_help


# ---------------------------------------------------------------- 11: transformers' optimizer names


@pytest.mark.parametrize("alias", sorted(OPTIMIZER_ALIASES))
def test_transformers_optimizer_names_are_aliases(capsys, alias):
    row = OPTIMIZERS[OPTIMIZER_ALIASES[alias]]
    # the row's memory behaviour is what the Trainer builds for the name
    assert row.eight_bit == ("8bit" in alias) and row.paged == ("paged" in alias)
    assert row.states == (1 if "lion" in alias else 2)
    assert row.full_size_temp == (alias == "adamw_torch")  # foreach: torch._foreach_sqrt(exp_avg_sqs)
    code, out, err = cli(capsys, "estimate", "llama-3.2-1b", "--optimizer", alias.upper(), "--json")
    assert code == 0, err
    assert json.loads(out)["training"]["optimizer"] == row.name


def test_aliases_are_a_column_of_the_rows():
    assert OPTIMIZER_ALIASES["adamw_torch_fused"] == "adamw" and OPTIMIZER_ALIASES["adamw_torch"] == "adamw-foreach"
    assert OPTIMIZER_ALIASES["paged_adamw_8bit"] == "paged-adamw-8bit" and OPTIMIZER_ALIASES["lion_32bit"] == "lion"
    for alias, name in OPTIMIZER_ALIASES.items():
        o = OPTIMIZERS[name]
        assert alias in (o.hf_name, *o.hf_aliases) and canonical_optimizer(alias) == name
    assert canonical_optimizer("sgd") == "sgd"  # transformers' "sgd" is momentum 0, the sgd row


def test_every_transformers_optimizer_name_is_a_row_an_alias_or_refused_by_name():
    training_args = pytest.importorskip("transformers.training_args")
    for n in (o.value for o in training_args.OptimizerNames):
        assert n in OPTIMIZERS or n in OPTIMIZER_ALIASES or n in HF_NOT_MODELLED, n


@pytest.mark.parametrize("argv,hint", [
    (["--optimizer", "adamw_torch_fusd"], "did you mean adamw_torch_fused (= adamw)?"),
    (["--optimizer", "adamw-8bt"], "did you mean adamw-8bit?"),
    (["--precision", "bf61"], "did you mean bf16?"),
    (["--framework", "unslot"], "did you mean unsloth?"),
    (["--optimizer", "paged_lion_8bit"], "is not modelled"),
])
def test_a_mistyped_choice_gets_did_you_mean(capsys, argv, hint):
    one_line_error(capsys, "estimate", "llama-3.2-1b", *argv, match=hint)


def test_the_api_takes_or_names_the_row_for_an_alias():
    try:  # the CLI canonicalises; the API either does too or says which row to give
        assert tuneplan.estimate("llama-3.2-1b", optimizer="adamw_torch").job.training.optimizer == "adamw-foreach"
    except TuneplanError as e:
        assert "adamw-foreach" in str(e)
    with pytest.raises(TuneplanError, match="did you mean adamw-foreach"):
        tuneplan.estimate("llama-3.2-1b", optimizer="adamw-foreac")


# ---------------------------------------------------------------- 12: Ctrl-C and a closed pipe

# The child runs the real entry point; at a fixed point inside the long matrix computation it
# says "ready" and waits, and the test sends it SIGINT: the same signal a terminal's Ctrl-C sends.
_INTERRUPTIBLE = """
import sys, time
import tuneplan.commands.matrix as m
def waiting(*a, **k):
    sys.stderr.write("ready\\n"); sys.stderr.flush()
    time.sleep(120)
m.fit_matrix = waiting
from tuneplan.cli.main import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_ctrl_c_is_one_line_and_exit_130():
    p = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, "matrix", "--models", "all", "--devices", "all"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr.readline() == "ready\n"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and err == "tuneplan: interrupted\n" and out == ""


_ENTRY = "import sys; from tuneplan.cli import main; raise SystemExit(main(sys.argv[1:]))"  # the console script


@pytest.mark.parametrize("argv", [
    ["estimate", "llama-3.2-1b"],  # a rich table
    ["models"],
    ["plan", "llama-3.2-1b", "--devices", "h100"],
    ["estimate", "llama-3.2-1b", "--json"],
    ["matrix", "--models", "llama-3.2-1b", "--methods", "lora", "--devices", "h100", "--csv", "-"],
    ["estimate", "--help"],
])
def test_a_closed_pipe_ends_quietly_with_0(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head -c 5` that already exited)
    try:
        r = subprocess.run([sys.executable, "-c", _ENTRY, *argv], stdout=write, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ---------------------------------------------------------------- 13: control characters in errors


@pytest.mark.parametrize("argv,shown", [
    (["estimate", "llama-3.2-1b", "--targets", "q_proj\n\x1b]0;pwned\x07"], r"q_proj\n\x1b]0;pwned\x07"),
    (["estimate", "llama-3.2-1b", "--bogus\nline"], r"--bogus\nline"),
    (["estimate", "llama-3.2-1b", "--method", "lora\x1b[31m"], r"lora\x1b[31m"),
    (["estimat\x1b[2J"], r"estimat\x1b[2J"),
    (["estimate", "llama-3.2-1b", "--devices\u202e"], r"--devices\u202e"),
])
def test_control_characters_are_escaped_in_errors(capsys, argv, shown):
    err = one_line_error(capsys, *argv)
    assert shown in err and "\x1b" not in err and "\x07" not in err and "\u202e" not in err


def test_printable_escapes_as_repr_does():
    assert printable("a\nb\tc\x1bd\x7f é ✓") == r"a\nb\tc\x1bd\x7f é ✓"
