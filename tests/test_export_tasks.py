"""`tuneplan export --task ...` and `--from`: the training task and its reference model travel
through the TRL, Axolotl and LLaMA-Factory files as each stack spells them, the stack's own
parser reads them as meant, and reading the file back gives the same job; a stack that cannot
write a task says so in one line.

The parsers run in one subprocess per library (as in tests/test_export.py), through
tests/export_validate.py's loaders (the libraries' own validation), with the task's fields
taken from what the library parsed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneplan.cli import main
from tuneplan.export import export_job, job_from_import, read_config
from tuneplan.job import Job
from tuneplan.models import resolve_model

HERE = Path(__file__).parent
VALIDATORS = Path(sys.prefix) / "validators"
STACKS = ("trl", "axolotl", "llamafactory")

# name -> (settings, {stack: (task the file runs, ref_model it runs)}) ; absent stack: as asked
JOBS = {
    "dpo-lora": ({"method": "lora", "task": "dpo"}, {}),
    "dpo-full-precomputed": ({"method": "full", "task": "dpo", "ref_model": "precomputed"},
                             {"axolotl": ("dpo", None), "llamafactory": ("dpo", None)}),
    "ipo-lora-precomputed": ({"method": "lora", "task": "ipo", "ref_model": "precomputed"},
                             {"llamafactory": ("ipo", None)}),
    "hinge-qlora": ({"method": "qlora", "task": "dpo-hinge"}, {}),
    "robust-full": ({"method": "full", "task": "dpo-robust"}, {"llamafactory": ("dpo", None)}),
    "dpo-lora-separate": ({"method": "lora", "task": "dpo", "ref_model": "separate"},
                          {"trl": ("dpo", None), "axolotl": ("dpo", None)}),
    "orpo-lora": ({"method": "lora", "task": "orpo"}, {"trl": ("sft", None)}),
    "simpo-full": ({"method": "full", "task": "simpo"}, {"trl": ("sft", None)}),
    "cpo-lora": ({"method": "lora", "task": "cpo"}, {"trl": ("sft", None), "axolotl": ("simpo", None),
                                                     "llamafactory": ("simpo", None)}),
    "kto-lora": ({"method": "lora", "task": "kto"}, {}),
    "kto-full-precomputed": ({"method": "full", "task": "kto", "ref_model": "precomputed"},
                             {"axolotl": ("kto", None), "llamafactory": ("kto", None)}),
    "rm-lora": ({"method": "lora", "task": "rm"}, {}),
    "rm-full": ({"method": "full", "task": "rm"}, {}),
}
DEFAULT_REFS = {"adapter", "separate", "none"}  # written as the stack's default (ref_model unset) where it is one

# what each library's parser says about the task (run in a subprocess; prints one JSON line a file)
PARSE = r'''
import json, sys, traceback
sys.path.insert(0, sys.argv[1])
import export_validate as ev

def trl(path, command):
    ev._bf16_gpu()
    import importlib
    from accelerate.commands.launch import launch_command_parser
    parser = importlib.import_module(f"trl.scripts.{command}").make_parser()
    _, t, m, _, rest, _ = parser.parse_args_and_config(["--config", path], return_remaining_strings=True,
                                                        separate_remaining_strings=True)
    launch_command_parser().parse_args(rest + ["train.py"])  # keys no config class has go to accelerate
    return {"config": type(t).__name__, "loss_type": getattr(t, "loss_type", None),
            "precompute": getattr(t, "precompute_ref_log_probs", None), "lora_task_type": m.lora_task_type,
            "seq_len": t.max_length, "micro_batch": t.per_device_train_batch_size, "beta": getattr(t, "beta", None)}

seen = {}

def _keep(module, name):
    """Remember what module.name returns (patched once)."""
    original = getattr(module, name)
    if getattr(original, "kept", False):
        return
    def keep(*a, **k):
        seen[name] = original(*a, **k)
        return seen[name]
    keep.kept = True
    setattr(module, name, keep)

def axolotl(path, command):
    import axolotl.utils.config as ac
    _keep(ac, "validate_config")
    base = ev.axolotl(path)
    c = seen["validate_config"]
    return {**base, "rl": ev._value(c.rl) if c.rl else None, "reward_model": bool(c.reward_model),
            "dpo_loss_type": c.dpo_loss_type, "precompute": c.precompute_ref_log_probs}

def llamafactory(path, command):
    import llamafactory.hparams as lh
    _keep(lh, "get_train_args")
    base = ev.llamafactory(path)
    f = seen["get_train_args"][3]
    return {**base, "stage": f.stage, "pref_loss": f.pref_loss, "use_ref_model": f.use_ref_model,
            "ref_model": f.ref_model}

library = sys.argv[2]
for item in sys.argv[3:]:
    path, command = item.split("::")
    try:
        print(json.dumps({"path": path, "ok": True, "parsed": globals()[library](path, command)}, default=str))
    except BaseException as e:  # noqa: BLE001
        print(json.dumps({"path": path, "ok": False, "error": f"{type(e).__name__}: {e}"[:800],
                          "trace": traceback.format_exc()[-2500:]}))
'''


def _available(module: str) -> bool:
    import importlib.util

    sys.path.append(str(VALIDATORS))
    try:
        return importlib.util.find_spec(module) is not None
    finally:
        sys.path.remove(str(VALIDATORS))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task-exports")
    spec = resolve_model("llama-3.2-1b")
    out = {}
    for stack in STACKS:
        for name, (settings, _) in JOBS.items():
            exp = export_job(stack, spec, Job.from_settings(seq_len=1024, micro_batch=2, **settings))
            path = folder / f"{name}-{exp.file_name}"
            path.write_text(exp.text)
            out[stack, name] = (exp, path)
    return out


@pytest.fixture(scope="module")
def parsed(exported):
    runs = {}
    for stack in STACKS:
        if _available(stack):
            items = [f"{p}::{e.launch.split()[1] if stack == 'trl' else ''}" for (s, _), (e, p) in exported.items()
                     if s == stack]
            runs[stack] = (len(items), subprocess.Popen([sys.executable, "-c", PARSE, str(HERE), stack, *items],
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: dict = dict.fromkeys(STACKS)
    for stack, (n, proc) in runs.items():
        out, err = proc.communicate(timeout=600)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"path"')]
        assert len(lines) == n, err[-3000:]
        results[stack] = {r["path"]: r for r in lines}
    return results


def _expected(stack: str, name: str) -> tuple[str, str | None]:
    settings, instead = JOBS[name]
    if stack in instead:
        return instead[stack]
    ref = settings.get("ref_model")
    if ref == "separate" and stack == "llamafactory":
        return settings["task"], ref  # LoRA with a second copy: ref_model names the model
    return settings["task"], None if ref in DEFAULT_REFS else ref


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("name", list(JOBS))
def test_task_is_written_and_reads_back(exported, stack, name):
    """The file runs the asked task and reference, or names the change in one line; --from
    reads back the job the file runs (task and ref_model included)."""
    exp, path = exported[stack, name]
    assert (exp.job.task, exp.job.ref_model) == _expected(stack, name), exp.cannot
    asked = JOBS[name][0]
    if exp.job.task != asked["task"]:
        lines = [c for c in exp.cannot if c.startswith(f"--task {asked['task']}:")]
        assert len(lines) == 1 and f"estimated as --task {exp.job.task}" in lines[0]
    if asked.get("ref_model") not in (None, *DEFAULT_REFS) and exp.job.ref_model is None:
        assert any(c.startswith(f"--ref-model {asked['ref_model']}:") for c in exp.cannot)
    assert all("\n" not in c for c in exp.cannot)
    imp = read_config(str(path))
    assert imp.format == stack
    job, _ = job_from_import(imp, {})
    assert job == exp.job


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("name", list(JOBS))
def test_the_stacks_parser_reads_the_task(parsed, exported, stack, name):
    if parsed[stack] is None:
        pytest.skip(f"{stack} is not installed (make test installs it: extra `export` / VALIDATORS)")
    exp, path = exported[stack, name]
    r = parsed[stack][str(path)]
    assert r["ok"], f"{stack} refused {name}: {r['error']}\n{r.get('trace', '')}"
    p, job = r["parsed"], exp.job
    t, ref = job.task, job.ref_model
    assert (p["seq_len"], p["micro_batch"]) == (1024, 2)
    if stack == "trl":
        config = {"sft": "SFTConfig", "kto": "KTOConfig", "rm": "RewardConfig"}.get(t, "DPOConfig")
        assert p["config"] == config
        if config == "DPOConfig":
            assert p["loss_type"] == [{"dpo": "sigmoid", "ipo": "ipo", "dpo-hinge": "hinge",
                                       "dpo-robust": "robust"}[t]]
            assert p["beta"] == 0.1  # TRL's default: the file says nothing
        if config in ("DPOConfig", "KTOConfig"):
            assert p["precompute"] == (ref == "precomputed")
        if t == "rm":
            assert p["lora_task_type"] == ("SEQ_CLS" if job.method.is_adapter else "CAUSAL_LM")
    elif stack == "axolotl":
        rl = {"dpo-hinge": "dpo", "dpo-robust": "dpo", "rm": None}.get(t, t)
        assert p["rl"] == rl and p["reward_model"] == (t == "rm")
        assert p["dpo_loss_type"] == ({"dpo-hinge": ["hinge"], "dpo-robust": ["robust"]}.get(t))
        assert bool(p["precompute"]) == (ref == "precomputed")
    else:
        stage = {"kto": "kto", "rm": "rm"}.get(t, "dpo")
        assert p["stage"] == stage
        if stage == "dpo":
            assert p["pref_loss"] == {"dpo": "sigmoid", "ipo": "ipo", "dpo-hinge": "hinge", "orpo": "orpo",
                                      "simpo": "simpo"}[t]
            assert p["use_ref_model"] == (t not in ("orpo", "simpo"))
        assert (p["ref_model"] is not None) == (ref == "separate")


@pytest.mark.parametrize("target", ["torchtune", "unsloth"])
def test_a_stack_without_the_task_names_it_in_one_line(tmp_path, capsys, target):
    out = tmp_path / "f"
    assert main(["export", "llama-3.2-1b", "--method", "lora", "--task", "dpo", "--to", target, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [a for a in err.splitlines() if "cannot express" in a]
    assert len(lines) == 1 and "--task dpo:" in lines[0] and "estimated as --task sft" in lines[0]
    marker = "#"
    header = next(a for a in out.read_text().splitlines() if a.startswith(f"{marker} cannot express: "))
    assert "--task dpo:" in header


def test_launcher_configs_keep_the_task_and_say_it_belongs_to_the_script():
    spec = resolve_model("llama-3.2-1b")
    for target in ("accelerate", "deepspeed"):
        exp = export_job(target, spec, Job.from_settings(method="lora", task="kto"))
        assert exp.job.task == "kto"
        assert sum(c.startswith("--task kto:") for c in exp.cannot) == 1


def test_trl_run_line_carries_the_subcommand(exported, tmp_path):
    exp, path = exported["trl", "rm-full"]
    assert "# run: trl reward --config trl.yaml" in exp.text
    # without tuneplan's header the subcommand is unknown: read as sft, and said
    bare = tmp_path / "bare.yaml"
    bare.write_text("\n".join(line for line in exp.text.splitlines() if not line.startswith("#")) + "\n")
    imp = read_config(str(bare))
    assert "task" not in imp.settings and any("trl subcommand" in n for n in imp.notes)
    # ... and --task from the command line gives it
    job, _ = job_from_import(imp, {"task": "rm"})
    assert job == exp.job


@pytest.mark.parametrize(("text", "msg"), [
    ("base_model: x\nrl: grpo\nmicro_batch_size: 1\nsequence_len: 512\n", "axolotl option rl: 'grpo'"),
    ("model_name_or_path: x\nstage: ppo\nfinetuning_type: lora\ncutoff_len: 512\n", "llamafactory option stage: 'ppo'"),
    ("model_name_or_path: x\nstage: dpo\npref_loss: kto_pair\nfinetuning_type: lora\ncutoff_len: 512\n",
     "llamafactory option pref_loss: 'kto_pair'"),
    ("model_name_or_path: x\nuse_peft: true\nmax_length: 512\nprecompute_ref_log_probs: true\n",
     "not which trainer"),
])
def test_unmodelled_task_options_are_one_line(tmp_path, capsys, text, msg):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["estimate", "--from", str(path)]) == 2
    lines = [a for a in capsys.readouterr().err.splitlines() if a.startswith("tuneplan: error:")]
    assert len(lines) == 1 and msg in lines[0]


def test_from_reads_a_hand_written_dpo_config(tmp_path, capsys):
    path = tmp_path / "ax.yaml"
    path.write_text("base_model: meta-llama/Llama-3.2-1B\nadapter: lora\nlora_r: 16\nrl: dpo\n"
                    "dpo_loss_type: [ipo]\nprecompute_ref_log_probs: true\nmicro_batch_size: 1\nsequence_len: 1024\n")
    imp = read_config(str(path))
    assert (imp.settings["task"], imp.settings["ref_model"]) == ("ipo", "precomputed")
    assert main(["estimate", "--from", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peak_bytes"] > 0
