"""verl's hybrid engine (tuneplan.memory.verl): the framework record, GRPO and PPO phases, bad input,
and the verl brackets of tasks.csv (benchmarks/tasks_runs.py). Pure Python, a few seconds."""

from __future__ import annotations

import pytest

from tuneplan.choices.frameworks import framework
from tuneplan.cli.main import main
from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.memory import components as K
from tuneplan.memory import estimate_memory
from tuneplan.memory.generation import VLLM
from tuneplan.memory.online import on_device
from tuneplan.memory.verl import CRITIC_STATES, head_bytes
from tuneplan.model_spec import param_counts
from tuneplan.models import resolve_model
from tuneplan.timing_generation import online_time
from tuneplan.units import GiB

H100 = resolve_device("h100")
Q7 = resolve_model("qwen2.5-7b")
Q05 = resolve_model("qwen2.5-0.5b")
GRPO = dict(task="grpo", framework="verl", method="lora", num_gpus=8, num_generations=8, prompt_len=512,
            completion_len=1024)


def _est(spec, **kw):
    job = on_device(Job.from_request(**kw).on_vendor(H100.vendor), H100)
    return job, estimate_memory(spec, job)


def test_record_and_defaults():
    f = framework("verl")
    assert f.rl_hybrid_engine and f.rl_engines == ("vllm-colocate",) and f.methods == ("full", "lora")
    j = Job.from_request(**GRPO)
    # verl's rollout (vLLM colocated, gpu_memory_utilization 0.5), FSDP, gradient checkpointing on
    assert j.rollout.generation_engine == "vllm-colocate" and j.rollout.vllm_memory_utilization == 0.5
    assert j.parallel.sharding == "fsdp" and j.training.checkpointing == "full"


def test_grpo_phases_and_offload():
    job, e = _est(Q7, **GRPO)
    phases = dict(e.phase_bytes)
    assert set(phases) == {"generation", "log-probs", "update"} and e.peak_phase == "generation"
    share = int(0.5 * (H100.reported_gib or H100.memory_gib) * GiB)
    assert e.component(VLLM) == share
    # the frozen base is fp32 in verl's actor: 4 bytes x params / 8 GPUs
    assert e.component(K.WEIGHTS) == pytest.approx(4 * param_counts(Q7).total / 8, rel=0.01)
    # param_offload + optimizer_offload: nothing of the actor on the GPU while vLLM generates
    _, off = _est(Q7, **GRPO, offload_params=True, offload_optimizer=True)
    assert dict(off.phase_bytes)["generation"] == share
    assert dict(off.phase_bytes)["update"] == phases["update"]  # loaded back for the update
    # verl's head: [tokens, vocab] bf16 logits of the micro-batch (8 x 1536 tokens)
    assert head_bytes(Q7, job) == 2 * 8 * 1536 * Q7.vocab_size + 16 * 8 * 1536
    assert phases["update"] > head_bytes(Q7, job)
    # --batch counts sequences: doubling it roughly doubles the head
    _, big = _est(Q7, **(GRPO | dict(micro_batch=16)))
    assert dict(big.phase_bytes)["update"] - phases["update"] >= head_bytes(Q7, job)


def test_offload_transfers_are_timed():
    job, _ = _est(Q7, **GRPO, offload_params=True, offload_optimizer=True)
    t = dict(online_time(Q7, job, H100).phases)
    plain, _ = _est(Q7, **GRPO)
    assert "offload transfers" not in dict(online_time(Q7, plain, H100).phases)
    # 6 copies of the fp32 shards and 2 of the fp32 Adam moments of the LoRA matrices, per GPU, over the host link
    lora = 40_370_176  # rank 16 on every linear of Qwen2.5-7B (the adapter count estimate shows)
    moved = (6 * 4 * param_counts(Q7).total + 2 * 8 * lora) / 8
    assert t["offload transfers"] == pytest.approx(moved / (H100.host_link_gbps * 1e9), rel=1e-6)


def test_ppo_with_critic_and_time():
    kw = dict(task="ppo", framework="verl", method="full", micro_batch=2, prompt_len=1024, completion_len=512)
    job, e = _est(Q05, **kw)
    assert job.generations == 1 and job.reference == "none"  # verl PPO: n 1, no KL by default
    pc = param_counts(Q05)
    critic = 12 * (pc.total - pc.lm_head + Q05.hidden_size)  # fp32 weights + AdamW moments, 1 GPU
    assert e.component(CRITIC_STATES) == critic
    assert "critic update" in dict(e.phase_bytes)
    t = online_time(Q05, job, H100)
    names = dict(t.phases)
    assert names["critic update"] > 0 and names["training"] > 0 and t.step_s == pytest.approx(sum(names.values()))


@pytest.mark.parametrize(("settings", "msg"), [
    (dict(task="ppo", method="full"), "ships no PPOTrainer"),
    (GRPO | dict(generation_engine="hf"), "generation-engine hf is not modelled"),
    (GRPO | dict(method="qlora"), "has no method qlora"),
    (GRPO | dict(num_generations=1), "at least 2"),
    (GRPO | dict(sharding="ddp"), "ddp"),
])
def test_bad_combinations_are_one_line(settings, msg):
    with pytest.raises(TuneplanError, match=msg) as e:
        Job.from_request(**settings)
    assert "\n" not in str(e.value)


def test_cli(capsys):
    rc = main(["estimate", "qwen2.5-7b", "--method", "lora", "--task", "grpo", "--framework", "verl", "--gpus", "8",
               "--generation-engine", "vllm-colocate", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert rc == 0 and "log-probs" in out and "verl" in out and "generation phase bounds the GPU" in out
    rc = main(["estimate", "qwen2.5-0.5b", "--method", "full", "--task", "ppo", "--framework", "verl", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert rc == 0 and "critic update" in out and "Critic states" in out
    rc = main(["estimate", "qwen2.5-0.5b", "--method", "full", "--task", "ppo"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "PPOTrainer" in err


def test_tasks_csv_verl_brackets():
    from pathlib import Path

    from scripts_loader import load_script

    bench = load_script("benchmarks/tasks_runs.py")
    calibration = Path(bench.DEFAULT_CALIBRATION)
    if not (calibration / "tasks.csv").exists():
        pytest.skip(f"{calibration} absent")
    rows = {r.id: r for r in bench.run(calibration)["rows"]}
    verl = {k: rows[k] for k in bench.VERL}
    # at the stated caps: no bracket wrong; the OOM rows of each bisection predicted OOM, vl01 / vl03 / vl12 fit
    assert not [r.id for r in verl.values() if r.verdict.startswith("WRONG")]
    assert {k for k, r in verl.items() if r.verdict.startswith("right")} == {
        "vl01", "vl03", "vl05", "vl07", "vl09", "vl11", "vl12"}
    assert rows["vl05"].predicted["device"] == pytest.approx(111.4, abs=0.5)
    assert rows["vl04"].predicted["device"] < rows["vl05"].predicted["device"]
    # at GSM8K's mean lengths every LoRA row is predicted to fit (the OOM rows on the wrong side)
    assert all(r.typical < 80 for k, r in verl.items() if r.typical is not None)
    assert rows["vl14"].kind == "skipped" and "Megatron" in rows["vl14"].reason
