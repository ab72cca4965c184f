"""tuneplan trace on N ranks: the real step under torch's fake process group (tuneplan.trace.dist).

Needs the trace extra (torch, transformers, peft); skipped without it. One tiny Llama (2 layers,
hidden 128) at 32 tokens keeps each trace to a few seconds; traces shared by several tests are
cached per module.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tuneplan.cli import main  # noqa: E402
from tuneplan.errors import TuneplanError  # noqa: E402
from tuneplan.job import Job, Method, Parallel, Training  # noqa: E402
from tuneplan.trace.dist import layout_of, run_dist_trace  # noqa: E402

H, V, LAYERS = 128, 512, 2
TINY = dict(model_type="llama", hidden_size=H, intermediate_size=256, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=V,
            max_position_embeddings=1024, tie_word_embeddings=False)
SEQ = 32


def job(kind: str = "full", gpus: int = 1, sharding: str = "fsdp", precision: str = "bf16-true") -> Job:
    method = Method(kind=kind, rank=8) if kind != "full" else Method(kind=kind)
    return Job(method, Training(seq_len=SEQ, checkpointing="none", precision=precision),
               Parallel(num_gpus=gpus, sharding=sharding))


@cache
def traced(kind: str = "full", gpus: int = 1, sharding: str = "fsdp", precision: str = "bf16-true", tp: int = 1,
           fsdp_version: int = 2, sp: bool = False):
    """Exact bytes (block=1) of rank 0."""
    return run_dist_trace(TINY, job(kind, gpus, sharding, precision), tp=tp, fsdp_version=fsdp_version,
                          sequence_parallel=sp, block=1)


# ---------------------------------------------------------------- FSDP2


@pytest.mark.parametrize("ranks", [2, 4])
def test_fsdp2_shards_parameters_and_optimizer_by_rank_count(ranks):
    one, many = traced(gpus=1), traced(gpus=ranks)
    assert many.layout["wrapper"] == "FSDP2 fully_shard" and many.layout["world"] == ranks
    # every dimension of the tiny model divides by 4: each rank holds exactly 1/N of every parameter
    assert many.resident["trainable"] * ranks == one.resident["trainable"]
    assert many.resident["weights"] == one.resident["weights"]  # replicated buffers (rotary inv_freq)
    # AdamW states are sharded too; only fused AdamW's one-element step counters are per parameter
    steps = 4 * sum(1 for _ in range(len(list(_param_names()))))
    assert abs(many.resident["optimizer"] * ranks - one.resident["optimizer"]) <= ranks * steps
    assert many.at_peak["gathered"] > 0 and one.at_peak["gathered"] == 0


def _param_names():
    per_layer = 9  # q k v o gate up down + 2 norms
    return range(LAYERS * per_layer + 3)  # + embeddings, final norm, lm_head


def test_fsdp2_peak_falls_with_more_ranks():
    assert traced(gpus=4).peak_bytes < traced(gpus=2).peak_bytes < traced(gpus=1).peak_bytes


def test_fsdp2_mixed_precision_keeps_fp32_shards():
    pure, mixed = traced(gpus=4), traced(gpus=4, precision="mixed")
    assert mixed.resident["trainable"] == 2 * pure.resident["trainable"]  # fp32 master shards
    assert any("MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)" in n for n in mixed.notes)


def test_fsdp2_lora_shards_the_frozen_base():
    full_one, four = traced(gpus=1), traced("lora", gpus=4)
    assert four.layout["wrapper"] == "FSDP2 fully_shard"
    # the frozen base is the full model's parameters, sharded 4 ways (the buffers replicated)
    base = full_one.resident["trainable"]
    assert four.resident["weights"] - full_one.resident["weights"] == base // 4
    adapters = LAYERS * 8 * (2 * 2 * H + 2 * (H + 64) + 3 * (H + 256))  # r=8 on q, o; k, v; gate, up, down
    assert four.resident["trainable"] * 4 == adapters * 4  # fp32 adapters (PEFT's autocast), sharded 4 ways


# ---------------------------------------------------------------- tensor parallel


def test_tp2_splits_decoder_layers_and_lm_head():
    one, tp2 = traced(gpus=1), traced(gpus=2, sharding="ddp", tp=2)
    assert tp2.layout["tensor"] == 2 and tp2.layout["data"] == 1
    embed, norms = V * H * 2, (2 * LAYERS + 1) * H * 2  # replicated: embeddings and RMSNorm weights (bf16)
    split = one.resident["trainable"] - embed - norms  # decoder linears and lm_head
    assert tp2.resident["trainable"] == embed + norms + split // 2


def test_tp2_with_and_without_sequence_parallel():
    plain, sp = traced(gpus=2, sharding="ddp", tp=2), traced(gpus=2, sharding="ddp", tp=2, sp=True)
    assert sp.layout["sequence_parallel"] and not plain.layout["sequence_parallel"]
    # the same layers split; SP shards the embedding over the vocabulary (RowwiseParallel, torchtitan's plan)
    assert sp.resident["trainable"] == plain.resident["trainable"] - V * H * 2 // 2
    # what the forward adds on top of the resident states: norms and residual split over the sequence
    assert _forward_growth(sp) < _forward_growth(plain)


def _forward_growth(r) -> int:
    return dict(r.phase_peaks)["forward"] - sum(r.resident.get(c, 0) for c in ("weights", "trainable", "optimizer"))


def test_fsdp2_with_tp2_on_four_ranks():
    r = traced(gpus=4, tp=2)
    assert r.layout["data"] == 2 and r.layout["tensor"] == 2
    assert r.resident["trainable"] * 2 == traced(gpus=2, sharding="ddp", tp=2).resident["trainable"]


# ---------------------------------------------------------------- DDP, FSDP1, refusals


def test_ddp_keeps_full_replicas_and_gradient_buckets():
    one, ddp = traced(gpus=1), traced(gpus=2, sharding="ddp")
    assert ddp.layout["wrapper"] == "DDP"
    assert ddp.resident["trainable"] == one.resident["trainable"]
    assert ddp.resident["gradients"] == one.resident["trainable"]  # the reducer's buckets outlive the step


def test_fsdp1_shards_flat_parameters():
    r = traced(gpus=2, fsdp_version=1)
    assert r.layout["wrapper"].startswith("FSDP1")
    assert r.resident["trainable"] <= traced(gpus=1).resident["trainable"] / 2 + 1024


@pytest.mark.parametrize("kwargs,match", [
    (dict(parallel=Parallel(num_gpus=4, tensor=2, sharding="ddp")), "DDP with tensor parallelism"),
    (dict(parallel=Parallel(num_gpus=2, pipeline=2)), "--pp"),
    (dict(parallel=Parallel(num_gpus=2, sharding="zero1")), "zero1"),
])
def test_layouts_it_cannot_replay_are_refused(kwargs, match):
    with pytest.raises(TuneplanError, match=match):
        layout_of(Job(**kwargs))


def test_qlora_is_refused_before_torch_runs():
    with pytest.raises(TuneplanError, match="QLoRA"):
        run_dist_trace(TINY, job("qlora", gpus=2))


# ---------------------------------------------------------------- command


def test_trace_command_fsdp_json(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["trace", str(cfg), "--method", "full", "--gpus", "2", "--sharding", "fsdp", "--fsdp-version", "2",
                 "--seq-len", str(SEQ), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["layout"]["world"] == 2 and out["trace"]["layout"]["fsdp_version"] == 2
    assert out["trace"]["at_peak"]["gathered"] > 0
    params = next(r for r in out["rows"] if r["key"] == "params")
    assert params["trace"] >= out["trace"]["at_peak"]["gathered"]


def test_trace_command_tensor_parallel_table(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["trace", str(cfg), "--method", "lora", "--gpus", "2", "--tp", "2", "--seq-len", str(SEQ)]) == 0
    out = capsys.readouterr().out
    assert "Allocated peak" in out and "tensor 2" in out and "rank 0" in out
