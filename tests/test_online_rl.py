"""Online RL tasks (GRPO, RLOO as TRL 1.16 runs them): records, phases of memory, time, bad input."""

from __future__ import annotations

import pytest

from tuneplan import calibration as cal
from tuneplan.cli.main import main
from tuneplan.errors import TuneplanError
from tuneplan.hardware import resolve_device
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.memory.generation import KV_CACHE, VLLM, kv_bytes_per_token
from tuneplan.memory.online import fused_head_bytes, loss_job, on_device
from tuneplan.memory.tasks import REF_WEIGHTS
from tuneplan.model_spec import param_counts
from tuneplan.models import resolve_model
from tuneplan.timing_generation import online_time
from tuneplan.units import GiB

SPEC = resolve_model("qwen2.5-7b")
H100 = resolve_device("h100")
GRPO = dict(task="grpo", method="lora", num_generations=8, prompt_len=512, completion_len=1024)


def _job(**kw) -> Job:
    return Job.from_request(**(GRPO | kw))


def test_trl_defaults_and_round_trip():
    j = Job.from_request(task="grpo")
    # TrainingArguments per_device_train_batch_size 8 (completions), max_completion_length 512,
    # num_generations 8, beta 0 (no reference)
    assert (j.training.micro_batch, j.training.seq_len, j.generations, j.reference) == (8, 1024, 8, "none")
    r = Job.from_request(task="rloo", method="full")
    assert (r.generations, r.reference) == (2, "separate")  # RLOO beta 0.05: TRL's reference copy
    assert Job.from_request(task="rloo").reference == "adapter"
    j = _job(generation_engine="vllm-colocate", vllm_memory_utilization=0.4, vllm_sleep=True)
    assert Job.from_settings(**j.settings()) == j
    assert "num_generations" not in Job.from_request(method="lora").settings()


@pytest.mark.parametrize("settings,msg", [
    (dict(num_generations=0), "at least 2"),
    (dict(num_generations=1), "at least 2"),
    (dict(task="sft"), "apply to --task grpo, rloo, online-dpo, ppo only"),
    (dict(ref_model="precomputed"), "does not apply"),
    (dict(method="full", ref_model="adapter"), "needs --method lora"),
    (dict(seq_len=1024), "longer than --seq-len"),
    (dict(seq_len=4096), "a row of prompt \\+ completion"),
    (dict(micro_batch=3), "whole groups of 8"),
    (dict(generation_engine="vllm-colocate", framework="mlx"), "does not run on MLX"),
    (dict(generation_engine="vllm-colocate", vllm_memory_utilization=1.0), "below 1"),
    (dict(generation_gpus=2), "vllm-server"),
    (dict(vllm_sleep=True), "needs --generation-engine vllm-colocate"),
])
def test_bad_input_is_one_line(settings, msg):
    with pytest.raises(TuneplanError, match=msg) as e:
        _job(**settings)
    assert "\n" not in str(e.value)


def test_cli_refuses_with_exit_2(capsys):
    rc = main(["estimate", "qwen2.5-7b", "--task", "grpo", "--num-generations", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "at least 2" in err


def test_hf_generation_kv_cache_is_exact():
    j = _job()
    est = estimate_memory(SPEC, j)
    per_token = kv_bytes_per_token(SPEC, 2)
    assert per_token == 2 * 2 * 28 * 4 * 128  # K and V, 28 layers, 4 KV heads of 128, bf16
    phases = dict(est.phase_bytes)
    assert set(phases) == {"generation", "loss"}  # beta 0 and HF: no scoring forward
    gen = estimate_memory(SPEC, _job(micro_batch=32))  # 4 prompts x 8: the KV cache grows 4x
    kv8 = 8 * 1536 * per_token * 29 // 28
    assert kv8 == pytest.approx(8 * 1536 * per_token + 8 * 1536 * per_token // 28, abs=1)
    kv32 = 32 * 1536 * per_token * 29 // 28
    assert dict(gen.phase_bytes)["generation"] - phases["generation"] == pytest.approx(
        kv32 - kv8 + (32 - 8) * SPEC.vocab_size * 10 + (32 - 8) * 512 * 2 * (2 * 3584 + 3 * 18944), rel=1e-6)
    assert est.peak_phase == max(phases, key=phases.get)


def test_vllm_share_stays_reserved_unless_sleeping():
    j = on_device(_job(generation_engine="vllm-colocate", vllm_memory_utilization=0.3), H100)
    share = int(0.3 * (H100.reported_gib or H100.memory_gib) * GiB)
    est = estimate_memory(SPEC, j)
    assert est.component(VLLM) == share
    asleep = estimate_memory(SPEC, on_device(_job(generation_engine="vllm-colocate", vllm_sleep=True), H100))
    awake, slept = dict(est.phase_bytes), dict(asleep.phase_bytes)
    assert awake["generation"] == slept["generation"]
    assert awake["loss"] - slept["loss"] == share and awake["scoring"] - slept["scoring"] == share
    # vLLM's importance sampling asks for the old log-probs: a scoring phase exists
    assert "scoring" in awake
    # without --gpu the share is unknown: not counted, and said
    bare = estimate_memory(SPEC, _job(generation_engine="vllm-colocate"))
    assert bare.component(VLLM) == 0 and any("give --gpu" in a for a in bare.assumptions)


def test_vllm_share_that_leaves_no_room_does_not_fit():
    from tuneplan.fit import fit_verdict

    j = on_device(_job(generation_engine="vllm-colocate", vllm_memory_utilization=0.95), H100)
    assert fit_verdict(SPEC, j, H100).verdict == "no"


def test_reference_copy_in_every_phase_and_loss_is_the_sft_step():
    base = _job(method="full", ref_model="none")
    ref = _job(method="full", ref_model="separate")
    a, b = dict(estimate_memory(SPEC, base).phase_bytes), dict(estimate_memory(SPEC, ref).phase_bytes)
    weights = estimate_memory(SPEC, ref).component(REF_WEIGHTS)
    assert weights == 2 * param_counts(SPEC).total  # bf16 copy as the policy loads it
    assert b["generation"] - a["generation"] == weights and b["loss"] - a["loss"] == weights
    # the loss phase is the supervised micro-step with TRL's fused head in place of the loss's
    from tuneplan.memory.activations import logits_bytes

    lj = loss_job(base)
    sft = dict(estimate_memory(SPEC, lj).phase_bytes)
    fwd, bwd = fused_head_bytes(SPEC, base, 8, grad=True)
    assert bwd > 4 * SPEC.vocab_size * SPEC.hidden_size  # full fine-tuning: fp32 lm_head gradient
    lig_fwd, _, lig_bwd = logits_bytes(SPEC, lj.training)
    assert a["loss"] == max(sft["forward"] - lig_fwd + fwd, sft["backward"] - lig_bwd + bwd, sft["backward"],
                            sft["optimizer"])


def test_zero3_gathers_the_model_for_hf_generation():
    z = estimate_memory(SPEC, _job(method="full", num_gpus=8, sharding="zero3", micro_batch=8))
    full = 2 * param_counts(SPEC).total
    assert dict(z.phase_bytes)["generation"] > full  # ds3_gather_for_generation: whole model per GPU


def test_time_phases_add_and_decode_is_bandwidth_bound():
    j = on_device(_job(generation_engine="vllm-colocate"), H100)
    t = online_time(SPEC, j, H100)
    ph = dict(t.phases)
    assert t.step_s == pytest.approx(sum(ph.values())) and t.overlapped_s == t.step_s
    # 8 sequences: each decode step reads the 16-bit weights once plus the KV cache
    bw = H100.bandwidth_gbps * 1e9 * cal.BANDWIDTH_EFFICIENCY
    step_bytes = 2 * param_counts(SPEC).total + 8 * (512 + 512) * kv_bytes_per_token(SPEC, 2)
    assert ph["generation decode"] == pytest.approx(1024 * step_bytes / bw, rel=1e-9)
    assert t.bound_by == "generation decode" and t.generated_tokens == 8 * 1024
    hf = online_time(SPEC, _job(), H100)  # eager HF generate pays a host cost per kernel per step
    assert dict(hf.phases)["generation decode"] > ph["generation decode"]


def test_eager_decode_counts_kernels_and_takes_the_longer_of_host_and_gpu():
    from tuneplan.memory.static import quantised_params
    from tuneplan.timing_generation import _weight_read_bytes, decode_kernels, generation_seconds

    layers = SPEC.num_layers
    q8 = Job.from_request(**(GRPO | dict(method="qlora", rank=32)))  # all 7 linears adapted by default
    # 8 rows: 43 layer kernels + 7 x (LoRA 6 + the 4-bit clone 1) + 7 x 3 dequantisation kernels, + 65 per step
    assert decode_kernels(SPEC, q8, 8) == 65 + layers * (43 + 7 * 7 + 7 * 3)
    assert decode_kernels(SPEC, q8, 4) == 65 + layers * (43 + 7 * 7)  # bnb's fused 4-bit GEMM: no dequantisation
    assert decode_kernels(SPEC, Job.from_request(**(GRPO | dict(method="full"))), 8) == 65 + layers * 43
    q = quantised_params(SPEC, q8.training)
    assert _weight_read_bytes(SPEC, q8, 8) - _weight_read_bytes(SPEC, q8, 4) == pytest.approx(4.0 * q)
    # 8 sequences of QLoRA on an H100: the host's dispatch (23.7 us a kernel) bounds each step
    prefill, decode = generation_seconds(SPEC, q8, H100, 8)
    assert decode == pytest.approx(1024 * decode_kernels(SPEC, q8, 8) * cal.EAGER_DECODE_SECONDS_PER_KERNEL)
    assert cal.EAGER_DECODE_SECONDS_PER_KERNEL == pytest.approx(23.7e-6, rel=1e-3)


def test_liger_grpo_loss_holds_lm_head_gradients():
    from tuneplan.memory.online import liger_head_bytes

    j = Job.from_request(**(GRPO | dict(method="qlora", cross_entropy="fused")))
    c, v, h = 2, SPEC.vocab_size, SPEC.hidden_size
    fwd, bwd = liger_head_bytes(SPEC, j, 8)
    # Liger's accumulator and one chunk's [vocab, hidden] gradient even though lm_head is frozen
    assert fwd >= 2 * c * v * h and bwd == c * v * h + c * 8 * 1024 * h  # 1,024 completion tokens a row
    plain = estimate_memory(SPEC, Job.from_request(**(GRPO | dict(method="qlora"))))
    liger = estimate_memory(SPEC, j)
    assert dict(liger.phase_bytes)["loss"] > dict(plain.phase_bytes)["loss"]
    assert "Liger fused linear GRPO loss" in next(x.note for x in liger.components if x.key == "logits")


def test_server_mode_waits_and_reports_the_overlap():
    j = on_device(_job(generation_engine="vllm-server", generation_gpus=1), H100)
    est = estimate_memory(SPEC, j)
    assert est.component(VLLM) == 0 and est.component(KV_CACHE) == 0
    t = online_time(SPEC, j, H100)
    gen = dict(t.phases)["generation prefill"] + dict(t.phases)["generation decode"]
    assert t.step_s == pytest.approx(sum(dict(t.phases).values()))
    assert t.overlapped_s == pytest.approx(max(gen, t.step_s - gen)) and t.gpus == 2


def test_estimate_command_shows_phases_and_time(capsys):
    rc = main(["estimate", "qwen2.5-7b", "--method", "lora", "--task", "grpo", "--num-generations", "8",
               "--prompt-len", "512", "--completion-len", "1024", "--generation-engine", "vllm-colocate",
               "--vllm-memory-utilization", "0.3", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "phase bounds the GPU" in out and "vLLM engine share" in out
    assert "Time (one optimizer step" in out and "generation decode" in out


# ---------------------------------------------------------------- export and --from (TRL GRPOConfig)

EXPORTS = {
    "grpo-lora-vllm": dict(GRPO, generation_engine="vllm-colocate", vllm_memory_utilization=0.4, vllm_sleep=True,
                           ref_model="adapter"),
    "grpo-full-hf": dict(task="grpo", method="full", num_generations=4, micro_batch=8, completion_len=256),
    "rloo-full-server": dict(task="rloo", method="full", generation_engine="vllm-server", generation_gpus=2),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_trl_export_reads_back_to_the_same_job(tmp_path, name):
    from tuneplan.export import export_job, job_from_import, read_config

    job = Job.from_request(**EXPORTS[name])
    exp = export_job("trl", SPEC, job)
    assert exp.launch.startswith(f"trl {job.task} --config")
    assert any(c.startswith("--prompt-len") for c in exp.cannot) and all("\n" not in c for c in exp.cannot)
    path = tmp_path / exp.file_name
    path.write_text(exp.text)
    back, _ = job_from_import(read_config(str(path)), {"prompt_len": job.rollout.prompt_len})
    want = exp.job if job.rollout.engine.colocated else exp.job.with_settings(generation_gpus=1)
    assert back == want  # the server's GPU count is not in TRL's file (its own command line)


@pytest.mark.parametrize("target", ["axolotl", "llamafactory"])
def test_other_stacks_say_they_write_sft_for_grpo(target):
    from tuneplan.export import export_job

    exp = export_job(target, SPEC, _job())
    assert exp.job.task == "sft"
    assert sum(c.startswith("--task grpo:") and "estimated as --task sft" in c for c in exp.cannot) == 1


PARSE_GRPO = r'''
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import export_validate as ev
ev._bf16_gpu()
from accelerate.commands.launch import launch_command_parser
for item in sys.argv[2:]:
    path, command = item.split("::")
    parser = importlib.import_module(f"trl.scripts.{command}").make_parser()
    _, t, m, _, rest, _ = parser.parse_args_and_config(["--config", path], return_remaining_strings=True,
                                                        separate_remaining_strings=True)
    launch_command_parser().parse_args(rest + ["train.py"])
    print(json.dumps({"config": type(t).__name__, "num_generations": t.num_generations,
                      "max_completion_length": t.max_completion_length, "beta": t.beta, "use_vllm": t.use_vllm,
                      "vllm_mode": t.vllm_mode, "util": t.vllm_gpu_memory_utilization,
                      "sleep": t.vllm_enable_sleep_mode, "batch": t.per_device_train_batch_size,
                      "generation_batch_size": t.generation_batch_size, "peft": m.use_peft}))
'''


def test_trls_own_parser_reads_the_grpo_config(tmp_path):
    """Slow (~10-20 s: imports trl and torch in a subprocess). TRL 1.16's `trl grpo|rloo` parser reads
    every key of the exported files, and what it parsed is the job."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tuneplan.export import export_job

    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed")
    items, jobs = [], []
    for name, settings in EXPORTS.items():
        exp = export_job("trl", SPEC, Job.from_request(**settings))
        path = tmp_path / f"{name}.yaml"
        path.write_text(exp.text)
        items.append(f"{path}::{exp.job.task}")
        jobs.append(exp.job)
    out = subprocess.run([sys.executable, "-c", PARSE_GRPO, str(Path(__file__).parent), *items],
                         capture_output=True, text=True, timeout=300)
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == len(jobs), out.stderr[-3000:]
    for got, job in zip(lines, jobs, strict=True):
        r = job.rollout
        assert got["config"] == {"grpo": "GRPOConfig", "rloo": "RLOOConfig"}[job.task]
        assert got["num_generations"] == job.generations and got["batch"] == job.training.micro_batch
        assert got["max_completion_length"] == job.training.seq_len - r.prompt_len
        assert (got["beta"] > 0) == (job.reference != "none") and got["peft"] == job.method.is_adapter
        assert got["use_vllm"] == r.engine.share
        if r.engine.share:
            assert got["vllm_mode"] == ("colocate" if r.engine.colocated else "server")
        if r.engine.colocated and r.engine.share:
            assert got["util"] == r.vllm_memory_utilization and got["sleep"] == r.vllm_sleep
        assert got["generation_batch_size"] == job.training.micro_batch * job.training.grad_accum


def test_plan_places_generation_and_training_on_one_machine(capsys):
    from tuneplan.timing_generation import placements

    rows = placements(SPEC, _job(generation_engine="vllm-colocate"), H100)
    splits = {(p.engine, p.training_gpus, p.generation_gpus) for p in rows}
    # colocated on all 8 (HF and vLLM), or a server on 1..7 GPUs and training on the rest
    assert splits == {("hf", 8, 0), ("vllm-colocate", 8, 0), *(("vllm-server", 8 - g, g) for g in range(1, 8))}
    rates = [p.generated_tokens_per_s for p in rows if p.fits]
    assert rates == sorted(rates, reverse=True)
    server = next(p for p in rows if p.generation_gpus == 1)
    # 7 training GPUs x 8 completions go to one server GPU; TRL waits for it, an async stack would not
    assert server.time.generated_tokens == 7 * 8 * 1024 and server.overlapped_tokens_per_s > server.generated_tokens_per_s
    rc = main(["plan", "qwen2.5-7b", "--method", "lora", "--task", "grpo", "--completion-len", "1024",
               "--generation-engine", "vllm-colocate", "--devices", "h100"])
    out = capsys.readouterr().out
    assert rc == 0 and "generation vs training GPUs" in out and "vllm-server" in out


# ---------------------------------------------------------------- Online DPO (trl/experimental/online_dpo, TRL 1.16)

ODPO = dict(task="online-dpo", method="lora", prompt_len=448, completion_len=64)


def test_online_dpo_record_and_bad_input():
    j = Job.from_request(**ODPO)
    assert (j.generations, j.reference, j.training.micro_batch) == (2, "adapter", 8)  # 8 prompts x 2 completions
    assert Job.from_request(**(ODPO | dict(method="full"))).reference == "separate"  # create_reference_model
    with pytest.raises(TuneplanError, match="generates 2 completions per prompt"):
        Job.from_request(**(ODPO | dict(num_generations=4)))
    with pytest.raises(TuneplanError, match="its loss needs the reference"):
        Job.from_request(**(ODPO | dict(ref_model="none")))


def test_online_dpo_memory_phases():
    from tuneplan.memory.generation import REWARD, local_generation_batch
    from tuneplan.memory.online import full_logits_bytes, loss_job

    j = Job.from_request(**ODPO)
    assert local_generation_batch(j) == 16 and loss_job(j).training.micro_batch == 16  # both completions a row
    c, v, rows = 2, SPEC.vocab_size, 16
    full, kept = c * rows * 512 * v, c * rows * 64 * v
    fwd, bwd, ref = full_logits_bytes(SPEC, j)
    assert bwd == full + 2 * kept and ref > full + kept and fwd == kept + ref
    est = estimate_memory(SPEC, j)
    pc = param_counts(SPEC)
    phases = dict(est.phase_bytes)
    assert set(phases) == {"generation", "scoring", "loss"}
    # the reward model (policy-shaped classifier, no lm_head) stays resident in every phase
    gen = estimate_memory(SPEC, on_device(j, H100))
    assert est.component(REWARD) == c * (pc.total - pc.lm_head + SPEC.hidden_size) == gen.component(REWARD)
    grpo = estimate_memory(SPEC, Job.from_request(**(ODPO | dict(task="grpo", micro_batch=16))))
    assert dict(grpo.phase_bytes)["loss"] + est.component(REWARD) < phases["loss"]  # full logits cost more


def test_online_dpo_generates_every_micro_step(capsys):
    one = online_time(SPEC, Job.from_request(**ODPO), H100)
    two = online_time(SPEC, Job.from_request(**(ODPO | dict(grad_accum=2))), H100)
    assert dict(two.phases)["generation decode"] == pytest.approx(2 * dict(one.phases)["generation decode"])
    assert two.generated_tokens == 2 * one.generated_tokens == 2 * 16 * 64
    rc = main(["estimate", "qwen2.5-7b", "--method", "lora", "--task", "online-dpo", "--prompt-len", "448",
               "--completion-len", "64", "--gpu", "h100"])
    out = capsys.readouterr().out
    assert rc == 0 and "Reward model" in out and "counts prompts" in out


def test_trl_online_trainers_cast_qlora_adapters_to_bf16():
    q = Job.from_request(**(GRPO | dict(method="qlora")))
    assert q.training.adapter_bytes == 4 and loss_job(q).training.adapter_bytes == 2  # grpo_trainer.py:534-541
    asked = Job.from_request(**(GRPO | dict(method="qlora", kbit_prep="peft")))
    assert loss_job(asked).training.kbit_prep == "peft"  # an asked preparation is kept
    odpo = Job.from_request(**(ODPO | dict(method="qlora")))
    assert loss_job(odpo).training.adapter_bytes == 4  # Online DPO does not recast
