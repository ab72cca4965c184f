"""Memory estimator: components against hand-computed values, and invariants."""

import math

import pytest

import tuneplan
from tuneplan.errors import TuneplanError
from tuneplan.job import Job, Method, Training
from tuneplan.memory import estimate_memory, layer_activations, logits_bytes, static_memory, trainable
from tuneplan.models import resolve_model

LLAMA8 = resolve_model("llama-3.1-8b")  # dense, GQA, untied
MIXTRAL = resolve_model("mixtral-8x7b")  # MoE
QWEN05 = resolve_model("qwen2.5-0.5b")  # tied embeddings, qkv bias


def job(kind="lora", **kw):
    return Job.from_settings(method=kind, **kw)


# ---- hand-computed components -------------------------------------------------------

def test_llama8b_lora_adapter_count():
    # r=16 on q,k,v,o,gate,up,down: 16*((4096+4096)*2 + (4096+1024)*2 + (4096+14336)*3) per layer
    per_layer = 16 * (8192 * 2 + 5120 * 2 + 18432 * 3)
    assert trainable(LLAMA8, Method("lora", rank=16)).total == 32 * per_layer == 41_943_040


def test_llama8b_qlora_weights_and_constants():
    st = static_memory(LLAMA8, job("qlora"))
    linear_per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    other = 2 * 128256 * 4096 + 32 * 2 * 4096 + 4096  # embed + lm_head + norms (bf16)
    assert st.weights == 32 * linear_per_layer // 2 + 2 * other
    # double quant: 1 byte per 64-block + fp32 per 256 blocks + 256-entry code, offset, nf4 code
    def consts(n):
        blocks = n // 64
        return blocks + 4 * math.ceil(blocks / 256) + 1024 + 4 + 64
    per_layer = (2 * consts(4096 * 4096) + 2 * consts(4096 * 1024) + 3 * consts(4096 * 14336))
    assert st.quant_constants == 32 * per_layer
    no_dq = static_memory(LLAMA8, job("qlora", double_quant=False))
    assert no_dq.quant_constants == 32 * (linear_per_layer // 64 * 4 + 7 * 64)
    assert no_dq.quant_constants > 3.9 * st.quant_constants  # DQ saves ~0.37 bit/param


def test_llama8b_qlora_int8_weights():
    st = static_memory(LLAMA8, job("qlora", quant="int8"))
    linear_per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert st.quant_constants == 32 * 4 * (4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096)
    assert st.weights == 32 * linear_per_layer + 2 * (2 * 128256 * 4096 + 32 * 2 * 4096 + 4096)


def test_llama8b_full_activation_per_token_per_layer():
    # bf16, sdpa, full FT: 2 RMSNorms (fp32 input 4h + normalised 2h), shared q/k/v input 2h,
    # q,k,v,out 2*(4096+1024+1024+4096) + fp32 lse 4*32 (o_proj's input is that out),
    # MLP input 2h, gate/act/up 3*2*14336, down input 2*14336.
    # `tuneplan trace` measures 200,840 per token per layer (+8: the two fp32 rsqrt [s, 1]).
    h, inter = 4096, 14336
    expected = 2 * 6 * h + 2 * h + 2 * (4096 + 1024 + 1024 + 4096) + 4 * 32 + 2 * h + 8 * inter
    assert layer_activations(LLAMA8, job("full", checkpointing="none"), 0).saved == expected == 200_832


def test_logits_bytes_hand_computed():
    t = Training(micro_batch=1, seq_len=1000)
    fwd, kept, bwd = logits_bytes(LLAMA8, t)
    v = 128256
    assert fwd == 1000 * v * (2 + 4 + 4)  # bf16 logits + fp32 upcast + fp32 log-probs
    assert kept == 1000 * v * 4  # Trainer drops the outputs: only fp32 log-probs kept (trace-measured)
    assert bwd == kept + 1000 * v * 8  # + nll grad and log_softmax input grad (fp32)


def test_tied_full_finetune_static():
    st = static_memory(QWEN05, job("full", precision="bf16"))
    n = 494_032_768  # tied: embedding counted once
    assert st.weights == 2 * n and st.gradients == 2 * n
    assert st.optimizer == 4 * n  # torch AdamW states in the bf16 param dtype
    mixed = static_memory(QWEN05, job("full", precision="mixed"))
    assert mixed.master == 4 * n and mixed.optimizer == 8 * n


def test_moe_lora_attention_only():
    tr = trainable(MIXTRAL, Method("lora", rank=16, targets=("q_proj", "k_proj", "v_proj", "o_proj")))
    assert tr.total == 32 * 16 * (8192 * 2 + 5120 * 2)
    # transformers 5 fuses routed experts into 3-D parameters: PEFT's all-linear skips them
    all_lin = trainable(MIXTRAL, Method("lora", rank=16))
    assert all_lin.total == tr.total
    # naming "experts" adapts them: one rank-16 adapter per expert and matrix
    with_experts = trainable(MIXTRAL, Method("lora", rank=16, targets=("q_proj", "k_proj", "v_proj", "o_proj", "experts")))
    assert with_experts.total == tr.total + 32 * 8 * 16 * (18432 * 3)
    est = estimate_memory(MIXTRAL, job("lora"))
    assert est.component("weights") == 2 * 46_702_792_704


def test_moe_qlora_experts_stay_bf16_unless_unsloth():
    experts = 32 * 8 * 3 * 4096 * 14336
    hf = static_memory(MIXTRAL, job("qlora"))
    unsloth = static_memory(MIXTRAL, job("qlora", framework="unsloth"))
    # bitsandbytes skips fused 3-D expert parameters (bnb issue #1849): 2 bytes instead of 0.5
    assert hf.weights - unsloth.weights == 2 * experts - experts // 2


@pytest.mark.parametrize("opt,per_param", [("sgd", 0), ("sgd-momentum", 4), ("lion", 4), ("adamw", 8)])
def test_optimizer_bytes_per_adapter_param(opt, per_param):
    st = static_memory(LLAMA8, job("lora", optimizer=opt))
    assert st.optimizer == per_param * 41_943_040


def test_adamw_8bit_blockwise():
    st = static_memory(LLAMA8, job("lora", optimizer="adamw-8bit"))
    tr = trainable(LLAMA8, Method("lora"))
    expected = sum(2 * (n + 4 * math.ceil(n / 256)) * k for n, _, _, k in tr.tensors)
    assert st.optimizer == expected
    assert 2.0 * 41_943_040 < st.optimizer < 2.1 * 41_943_040


def test_adafactor_is_factored():
    full = static_memory(LLAMA8, job("full", optimizer="adafactor"))
    assert full.optimizer < 0.01 * static_memory(LLAMA8, job("full")).optimizer


# ---- invariants ------------------------------------------------------------------

@pytest.mark.parametrize("spec", [LLAMA8, MIXTRAL, QWEN05])
@pytest.mark.parametrize("kind", ["full", "lora", "qlora", "dora", "freeze"])
def test_grows_with_seq_len_and_batch(spec, kind):
    base = estimate_memory(spec, job(kind, seq_len=1024)).peak_bytes
    assert estimate_memory(spec, job(kind, seq_len=2048)).peak_bytes > base
    assert estimate_memory(spec, job(kind, seq_len=1024, micro_batch=2)).peak_bytes > base


@pytest.mark.parametrize("spec", [LLAMA8, MIXTRAL, QWEN05])
@pytest.mark.parametrize("kind", ["full", "lora", "qlora"])
def test_checkpointing_lowers_activations(spec, kind):
    none = estimate_memory(spec, job(kind, checkpointing="none", seq_len=4096))
    ckpt = estimate_memory(spec, job(kind, checkpointing="full", seq_len=4096))
    no_acts = sum(layer_activations(spec, none.job, i).saved for i in range(spec.num_layers)) * 4096
    assert ckpt.peak_bytes <= none.peak_bytes  # equal when gradients, not activations, set the peak
    assert ckpt.component("activations") < no_acts


@pytest.mark.parametrize("spec", [LLAMA8, MIXTRAL, QWEN05])
def test_qlora_below_lora_below_full(spec):
    peaks = [estimate_memory(spec, job(k)).peak_bytes for k in ("qlora", "lora", "full")]
    assert peaks[0] < peaks[1] < peaks[2]


def test_components_sum_to_peak():
    for kind in ("full", "lora", "qlora", "dora", "freeze"):
        est = estimate_memory(LLAMA8, job(kind, checkpointing="none"))
        assert sum(c.bytes for c in est.components) == est.peak_bytes


def test_eager_attention_is_quadratic():
    def acts(s, attn):
        return layer_activations(LLAMA8, job("full", seq_len=s, attention=attn), 0).saved
    assert acts(8192, "eager") - acts(4096, "eager") > 1000  # per token grows with s
    assert acts(8192, "sdpa") == acts(4096, "sdpa")  # per token constant


def test_sharding_and_offload():
    one = estimate_memory(LLAMA8, job("full"))
    z3 = estimate_memory(LLAMA8, job("full", num_gpus=8, sharding="zero3"))
    z1 = estimate_memory(LLAMA8, job("full", num_gpus=8, sharding="zero1"))
    assert z3.peak_bytes < z1.peak_bytes < one.peak_bytes
    off = estimate_memory(LLAMA8, job("full", num_gpus=8, sharding="zero3", offload_optimizer=True))
    assert off.component("optimizer") == 0 and off.cpu_bytes > 0


def test_fused_ce_shrinks_logits():
    plain = estimate_memory(LLAMA8, job("qlora", seq_len=8192))
    fused = estimate_memory(LLAMA8, job("qlora", seq_len=8192, fused_ce=True))
    assert fused.peak_bytes < plain.peak_bytes


def test_freeze_trains_last_layers_only():
    tr = trainable(LLAMA8, Method("freeze", trainable_layers=2))
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert tr.total == 2 * per_layer


# ---- errors and API --------------------------------------------------------------

def test_bad_method_settings():
    with pytest.raises(TuneplanError, match="larger than the hidden size"):
        estimate_memory(QWEN05, job("lora", rank=2048))
    with pytest.raises(TuneplanError, match="match no module"):
        estimate_memory(QWEN05, job("lora", targets=("nope_proj",)))
    with pytest.raises(TuneplanError, match="exceeds"):
        estimate_memory(QWEN05, job("freeze", trainable_layers=99))


def test_python_api():
    est = tuneplan.estimate("llama-3.1-8b", method="qlora", seq_len=4096, micro_batch=2, targets="attn")
    assert est.job.method.kind == "qlora" and est.job.training.seq_len == 4096
    assert est.peak_bytes == sum(c.bytes for c in est.components)
    with pytest.raises(TuneplanError, match="unknown setting"):
        tuneplan.estimate("llama-3.1-8b", sequence=4)


@pytest.mark.parametrize("spec", [LLAMA8, MIXTRAL, QWEN05])
@pytest.mark.parametrize("kind", ["full", "lora", "qlora", "dora", "freeze"])
def test_fast_peak_matches_full_estimate(spec, kind):
    from tuneplan.memory import peak_bytes
    for kw in ({}, {"checkpointing": "none"}, {"num_gpus": 4, "sharding": "zero3"}, {"grad_accum": 4}):
        j = job(kind, **kw)
        assert peak_bytes(spec, j) == estimate_memory(spec, j).peak_bytes


def test_mixtral_full_activation_per_token_per_layer():
    # norms 2*(4h+2h); shared attn input 2h; q,k,v,out 2*(4096+1024+1024+4096) + lse 4*32
    # (o_proj's input is that out); router fp32 probs 4*8; top-2 gathered inputs 2*h*2;
    # per routed copy gate/act/up 3*2*14336, expert output 2*h, down input 2*14336
    h, im, k = 4096, 14336, 2
    expected = (12 * h + 2 * h + 2 * (4096 + 1024 + 1024 + 4096) + 4 * 32
                + 4 * 8 + 2 * h * k + k * (3 * 2 * im + 2 * h) + k * 2 * im)
    assert layer_activations(MIXTRAL, job("full", checkpointing="none"), 0).saved == expected == 340_128


def test_tied_qwen_full_activation_and_logits():
    h, q, kv, inter = 896, 14 * 64, 2 * 64, 4864
    # trace measures 57,408 per token per layer (+8: fp32 rsqrt); o_proj's input is the SDPA output
    expected = 12 * h + 2 * h + 2 * (q + kv + kv + q) + 4 * 14 + 2 * h + 8 * inter
    assert layer_activations(QWEN05, job("full", checkpointing="none"), 0).saved == expected == 57_400
    fwd, kept, bwd = logits_bytes(QWEN05, Training(micro_batch=2, seq_len=512))
    assert (fwd, kept, bwd) == (1024 * 151936 * 10, 1024 * 151936 * 4, 1024 * 151936 * 12)


def test_lora_saves_less_than_full_per_layer():
    full = layer_activations(LLAMA8, job("full", checkpointing="none"), 0).saved
    attn_only = layer_activations(LLAMA8, job("lora", targets=("q_proj", "v_proj"), checkpointing="none"), 0).saved
    assert attn_only < full  # frozen o/gate/up/down keep no inputs; frozen norms keep no normalised copy


def test_gemma2_has_no_sdpa_and_softcaps():
    gemma = resolve_model("gemma-2-2b")
    assert gemma.attn_softcap == 50.0 and gemma.final_softcap == 30.0
    sdpa = layer_activations(gemma, job("lora", checkpointing="none", attention="sdpa"), 0).saved
    eager = layer_activations(gemma, job("lora", checkpointing="none", attention="eager"), 0).saved
    assert sdpa == eager  # transformers 5 runs Gemma 2 with eager attention
    flash = layer_activations(gemma, job("lora", checkpointing="none", attention="flash"), 0).saved
    assert flash < eager
    # eager keeps fp32 softmax + bf16 probs + bf16 tanh(scores/cap) per head: (4 + 2 + 2) * heads * s
    eager_4k = layer_activations(gemma, job("lora", checkpointing="none", attention="eager", seq_len=4096), 0).saved
    assert eager_4k - eager == (4 + 2 + 2) * 8 * 2048
    est = estimate_memory(gemma, job("lora"))
    assert any("no SDPA" in a for a in est.assumptions)


def test_three_counters_named_as_torch_and_nvidia_smi_name_them(capsys):
    from tuneplan.cli import main
    from tuneplan.memory.components import ALLOCATOR, CUDA_CONTEXT

    est = estimate_memory(LLAMA8, job("qlora", seq_len=4096))
    alloc, reserved, device = est.peak_allocated_bytes, est.peak_reserved_bytes, est.device_bytes
    assert alloc < reserved < device == est.peak_bytes
    assert reserved - alloc == est.component(ALLOCATOR) and device - reserved == est.component(CUDA_CONTEXT)
    assert alloc == sum(c.bytes for c in est.components if c.key not in (ALLOCATOR, CUDA_CONTEXT))
    assert main(["estimate", "llama-3.1-8b", "--method", "qlora", "--seq-len", "4096", "--json"]) == 0
    import json
    counters = json.loads(capsys.readouterr().out)["counters"]
    assert counters == {"max_memory_allocated": alloc, "max_memory_reserved": reserved, "device_used": device}


# ---- mechanisms behind measured runs (tuneplan.choices.versions, profiles, optimizer records)

def test_paged_optimizer_states_are_invisible_to_torch_counters_but_not_to_the_device():
    plain = estimate_memory(LLAMA8, job("full", optimizer="adamw-8bit"))
    paged = estimate_memory(LLAMA8, job("full", optimizer="paged-adamw-8bit"))
    assert paged.peak_bytes == plain.peak_bytes and paged.device_bytes == paged.peak_bytes
    assert paged.managed_bytes == paged.component("optimizer") > 0
    assert paged.peak_allocated_bytes == plain.peak_allocated_bytes - paged.managed_bytes


def test_optimizer_in_backward_never_holds_every_gradient():
    base = estimate_memory(LLAMA8, job("full", framework="torchtune"))
    inbwd = estimate_memory(LLAMA8, job("full", framework="torchtune", optimizer_in_backward=True))
    full_grads = 2 * base.trainable_params
    assert inbwd.component("gradients") < full_grads / 10
    # in-backward peak: the untied head's gradient summed over the 8 output chunks (3 x [v, h]
    # at once, tuneplan.memory.activations.chunked_head_bytes; the torchtune replay measures it)
    assert base.peak_bytes - inbwd.peak_bytes > 0.7 * full_grads
    with pytest.raises(TuneplanError, match="grad-accum"):
        job("full", optimizer_in_backward=True, grad_accum=2)


def test_old_bitsandbytes_keeps_every_4bit_linear_input():
    now = estimate_memory(LLAMA8, job("qlora", targets="qv", checkpointing="none"))
    old = estimate_memory(LLAMA8, job("qlora", targets="qv", checkpointing="none", stack="bnb-pre-0.43.2"))
    # per layer and token: o_proj input copy is not needed with SDPA; the MLP input (h) and
    # down_proj input (intermediate) are new, both bf16
    extra = 2 * (4096 + 14336) * 32 * 2048
    assert old.component("activations") - now.component("activations") == extra
    lora_old = estimate_memory(LLAMA8, job("lora", stack="bnb-pre-0.43.2"))
    assert lora_old.peak_bytes == estimate_memory(LLAMA8, job("lora")).peak_bytes


def test_accelerate_fsdp_holds_fp32_shards_of_trained_parameters():
    n = 4
    hf = static_memory(LLAMA8, job("full", num_gpus=n, sharding="fsdp"))
    tt = static_memory(LLAMA8, job("full", num_gpus=n, sharding="fsdp", framework="torchtune"))
    p = trainable(LLAMA8, Method("full")).base
    assert hf.weights == 4 * p and hf.gradients == 4 * p and hf.master == 0
    assert tt.weights == 2 * p and tt.gradients == 2 * p
    assert hf.optimizer == 2 * tt.optimizer  # fp32 instead of bf16 AdamW states
    lora = static_memory(LLAMA8, job("lora", num_gpus=n, sharding="fsdp"))
    assert lora.weights == 2 * p  # frozen base stays 16-bit


def test_accelerate_fsdp_keeps_the_root_unit_gathered_through_forward_and_backward(monkeypatch):
    """HF/accelerate FSDP wraps only the decoder layers: embeddings + final norm + lm_head are
    the root unit, never resharded after forward (FSDP _post_forward_reshard), so their bf16
    copy adds to the forward and backward moments but not to the optimizer step. torchtune
    shards tok_embeddings and output on their own, and ZeRO-3 and DDP have no root unit."""
    from dataclasses import replace

    from tuneplan.choices import frameworks
    from tuneplan.memory.step import _fsdp_root_bytes

    n = 4
    root = 2 * (2 * 128256 * 4096 + 4096)  # Llama-3.1-8B untied embeddings + lm_head + norm, bf16
    assert _fsdp_root_bytes(LLAMA8, job("full", num_gpus=n, sharding="fsdp"), n) == root
    for other in (dict(framework="torchtune"), dict(sharding="zero3"), dict(sharding="ddp")):
        assert _fsdp_root_bytes(LLAMA8, job("full", num_gpus=n, **({"sharding": "fsdp"} | other)), n) == 0
    with_root = {m: dict(estimate_memory(LLAMA8, job(m, num_gpus=n, sharding="fsdp")).phase_bytes)
                 for m in ("full", "lora")}
    monkeypatch.setitem(frameworks.FRAMEWORKS, "hf", replace(frameworks.FRAMEWORKS["hf"], fsdp_root_unit=False))
    for m, phases in with_root.items():
        without = dict(estimate_memory(LLAMA8, job(m, num_gpus=n, sharding="fsdp")).phase_bytes)
        extra = {k: phases[k] - without[k] for k in phases}
        assert extra == {"forward": root, "backward": root, "optimizer": 0}, (m, extra)


def test_litgpt_profile_keeps_bf16_adapters_and_chunked_logits():
    est = estimate_memory(LLAMA8, job("lora", framework="litgpt", seq_len=1024, checkpointing="none"))
    hf = estimate_memory(LLAMA8, job("lora", seq_len=1024, checkpointing="none"))
    assert est.component("adapters") * 2 == hf.component("adapters")
    assert logits_bytes(LLAMA8, Training(seq_len=1024, framework="litgpt"))[1] == 2 * 2 * 1024 * 128256
    assert "128-token" in est.assumptions[-1]


def test_cpu_offload_moves_sharded_gradients_too():
    on_gpu = estimate_memory(LLAMA8, job("full", num_gpus=8, sharding="fsdp"))
    off = estimate_memory(LLAMA8, job("full", num_gpus=8, sharding="fsdp", offload_params=True,
                                      offload_optimizer=True))
    sharded_grads = static_memory(LLAMA8, job("full", num_gpus=8, sharding="fsdp")).gradients // 8
    assert off.cpu_bytes >= sharded_grads and off.component("gradients") == 0 < on_gpu.component("gradients")


def test_old_transformers_loss_holds_a_shifted_fp32_copy_in_forward():
    now = logits_bytes(LLAMA8, Training(seq_len=4096))
    old = logits_bytes(LLAMA8, Training(seq_len=4096, stack="transformers-4.4x"))
    logits = 4096 * 128256
    assert old[0] - now[0] == 2 * logits and old[1:] == now[1:]


def test_single_gpu_parameter_offload_still_holds_the_layer_in_use():
    est = estimate_memory(LLAMA8, job("full", sharding="zero3", offload_params=True, offload_optimizer=True))
    assert est.component("weights") == 0
    layer = static_memory(LLAMA8, job("full")).layer_params
    assert est.component("param_gather") >= 2 * 2 * layer  # current + prefetched layer in bf16


def test_trl_profile_never_materialises_the_logits():
    trl = estimate_memory(LLAMA8, job("lora", framework="trl", seq_len=8192))
    hf = estimate_memory(LLAMA8, job("lora", seq_len=8192))
    assert trl.job.training.loss.fused and trl.component("logits") < hf.component("logits") / 10
    assert trl.component("adapters") == hf.component("adapters")


def test_allocator_overhead_is_at_least_one_fp32_logits_block():
    """Plain cross-entropy upcasts the whole logits to fp32 in one block; the caching allocator's
    overhead is at least that block (its segment is split by later allocations). A fused loss
    never makes it: the flat 5% share."""
    import tuneplan
    from tuneplan import calibration as cal
    from tuneplan.models import resolve_model

    spec = resolve_model("llama-3.1-8b")
    plain = tuneplan.estimate(spec, method="lora", seq_len=8192, cross_entropy="plain")
    block = 8192 * spec.vocab_size * 4
    over = plain.component("allocator")
    assert over == max(block, int(plain.peak_allocated_bytes * cal.ALLOCATOR_OVERHEAD))
    assert over == block and "logits block" in next(c.note for c in plain.components if c.key == "allocator")
    fused = tuneplan.estimate(spec, method="lora", seq_len=8192, cross_entropy="fused")
    assert fused.component("allocator") == int(fused.peak_allocated_bytes * cal.ALLOCATOR_OVERHEAD)
