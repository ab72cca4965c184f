"""Task-aware step time (tuneplan.timing from tuneplan.choices.tasks' fields): pair rows through
the graded forward + backward, the reference and KL forwards as forward-only work, the reward
model's scalar head, what a "token" of a pair task is, and SFT unchanged. No torch."""

from __future__ import annotations

import math

import pytest

import tuneplan
from tuneplan.hardware import resolve_device
from tuneplan.job import Job, Method
from tuneplan.models import resolve_model
from tuneplan.timing import Dataset, nograd_passes, run_time, step_time, token_flops

SPEC = resolve_model("llama-3.1-8b")
H100 = resolve_device("h100")
BASE = dict(batch=2, seq_len=2048)


def _st(device=H100, **kw):
    return step_time(SPEC, Job.from_settings(**{**BASE, **kw}), device)


def _base_forward(span=2048):
    """Forward FLOPs per token of the base model, no adapters: the reference's work."""
    return token_flops(SPEC, Method(kind="full"), "none", span).forward


def test_sft_is_unchanged_by_the_task_path():
    a, b = _st(method="lora"), _st(method="lora", task="sft")
    assert a == b
    assert a.tokens_per_step == 2 * 2048
    assert a.executed_flops_per_token == token_flops(SPEC, Method(), "full", 2048).executed
    assert not any(s.startswith("SFT") for s in a.assumptions)
    assert nograd_passes(Job.from_settings(method="lora")) == ()


@pytest.mark.parametrize("device", ["h100", "rtx-4090"])
def test_dpo_lora_costs_the_pair_and_the_reference_forward(device):
    """Expected factor from FLOPs, per token with N ~ 8e9 parameters (LoRA, HF's default full
    checkpointing): SFT runs forward 2N + backward ~2N (input gradients only, the adapters are
    tiny) + recomputation 2N = ~6N per token over micro-batch x seq tokens. DPO at the same
    micro-batch runs 2 x micro-batch rows of that (12N per SFT token) plus the adapter-disabled
    reference forward over the same 2 x rows (2 x 2N = 4N): 16N / 6N = ~2.7x the FLOPs. The
    per-step costs that do not scale with rows (optimizer update, kernel launches) bring the
    step ratio a little lower; without checkpointing it would be (8N + 4N) / 4N = 3x."""
    d = resolve_device(device)
    sft, dpo = _st(d, method="lora"), _st(d, method="lora", task="dpo")
    assert 1.8 < dpo.step_s / sft.step_s < 3.5
    # a "token" of a pair task is a token of a chosen or rejected row: 2 x micro-batch x seq
    assert dpo.tokens_per_step == 2 * sft.tokens_per_step
    # per token: SFT's work plus the reference's forward-only base matmuls (no adapters)
    assert dpo.executed_flops_per_token == pytest.approx(sft.executed_flops_per_token + _base_forward())
    assert dpo.executed_flops_per_token / sft.executed_flops_per_token == pytest.approx(8 / 6, rel=0.02)
    line = next(s for s in dpo.assumptions if s.startswith("DPO"))
    assert "chosen + rejected rows, 2 x micro-batch" in line and "adapter disabled" in line
    assert "forward-only" in line


def test_precomputed_reference_is_faster_than_the_adapter_reference():
    ad = _st(method="lora", task="dpo")
    pre = _st(method="lora", task="dpo", ref_model="precomputed")
    sft = _st(method="lora")
    assert pre.step_s < ad.step_s
    # no reference forward: exactly SFT's work per token, over twice the rows
    assert pre.executed_flops_per_token == sft.executed_flops_per_token
    assert 1.7 < pre.step_s / sft.step_s < 2.05
    assert any("precomputed" in s for s in pre.assumptions)


def test_full_dpo_separate_reference_is_forward_only():
    """Full fine-tuning: SFT ~8N per token (2N + 4N + 2N recomputed), the separate copy's forward
    adds 2N: 10N / 8N."""
    sft, dpo = _st(method="full"), _st(method="full", task="dpo")
    assert dpo.executed_flops_per_token == pytest.approx(sft.executed_flops_per_token + _base_forward())
    assert 1.8 < dpo.step_s / sft.step_s < 3.5
    assert any("separate frozen copy" in s for s in dpo.assumptions)


def test_reward_model_drops_the_lm_head_flops():
    sft, rm = _st(method="lora"), _st(method="lora", task="rm")
    head = 2 * SPEC.hidden_size * SPEC.vocab_size
    # LoRA: the lm_head's forward and its input gradient (no weight gradient), 2 x head per token
    assert sft.executed_flops_per_token - rm.executed_flops_per_token == pytest.approx(2 * head)
    assert rm.tokens_per_step == 2 * sft.tokens_per_step
    assert rm.step_s < _st(method="lora", task="orpo").step_s  # same rows, no vocabulary
    assert any("scalar score head" in s for s in rm.assumptions)


def test_kto_kl_rows_are_forward_only_and_not_dataset_tokens():
    sft, kto = _st(method="lora"), _st(method="lora", task="kto")
    pre = _st(method="lora", task="kto", ref_model="precomputed")
    assert kto.tokens_per_step == sft.tokens_per_step  # unpaired rows; KL rows not counted
    # KL pass through the policy (its adapters on) + reference over the graded and KL rows
    kl = token_flops(SPEC, Method(), "full", 2048).forward
    assert kto.executed_flops_per_token == pytest.approx(sft.executed_flops_per_token + kl + 2 * _base_forward())
    assert pre.executed_flops_per_token == pytest.approx(sft.executed_flops_per_token + kl)
    assert sft.step_s < pre.step_s < kto.step_s
    assert nograd_passes(Job.from_settings(method="lora", task="kto", batch=3)) == ((3, True), (3, False), (3, False))


def test_qlora_reference_pass_reads_and_dequantises_the_weights_again():
    dpo = dict(_st(method="qlora", task="dpo").terms)
    pre = dict(_st(method="qlora", task="dpo", ref_model="precomputed").terms)
    # checkpointed QLoRA: forward, backward, recomputation + the reference: 4 passes against 3
    assert dpo["QLoRA dequantisation"] == pytest.approx(pre["QLoRA dequantisation"] * 4 / 3)
    assert dpo["weight reads"] == pytest.approx(pre["weight reads"] * 4 / 3)


def test_run_time_counts_pair_tokens_and_the_span_is_a_row():
    job = Job.from_settings(method="lora", task="dpo", **BASE)
    rt = run_time(SPEC, job, H100, Dataset(10_000_000))
    assert rt.steps_per_epoch == math.ceil(10_000_000 / (2 * 2 * 2048))
    # samples are pairs, their tokens both rows': the attention spans a row (mean / 2)
    by_samples = run_time(SPEC, job, H100, Dataset.from_samples(1000, 2048))
    assert by_samples.step.step_s == step_time(SPEC, job, H100, span=1024).step_s


def test_plan_dpo_differs_from_sft():
    kw = dict(method="lora", devices="h100,rtx-4090", dataset_tokens="10M", max_gpus=1)
    sft = tuneplan.plan_job("llama-3.1-8b", **kw).to_dict()
    dpo = tuneplan.plan_job("llama-3.1-8b", task="dpo", **kw).to_dict()
    for d in ("h100-sxm", "rtx-4090"):
        s = next(x["time"] for x in sft["setups"] if x["device"] == d)
        p = next(x["time"] for x in dpo["setups"] if x["device"] == d)
        assert p["run_s"] != s["run_s"] and p["step"]["tokens_per_step"] != s["step"]["tokens_per_step"]
    assert any(s.startswith("DPO") for s in dpo["assumptions"])
