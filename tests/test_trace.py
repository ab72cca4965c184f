"""tuneplan trace: the tracker, fake-vs-real agreement and the ordering of methods.

Needs the trace extra (torch, transformers, peft); skipped without it. Tiny models keep
every test here under a few seconds; the 0.5B real-vs-fake and 8B runs are marked slow.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tuneplan.cli import main  # noqa: E402
from tuneplan.job import Job, Method, Training  # noqa: E402
from tuneplan.trace.run import run_trace  # noqa: E402
from tuneplan.trace.tracker import MemoryTracker, rounded  # noqa: E402

TINY = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=512,
            max_position_embeddings=1024, tie_word_embeddings=False)


def trace(kind: str = "lora", ckpt: str = "full", fake: bool = True, seq: int = 64, **training) -> object:
    job = Job(Method(kind=kind, rank=8), Training(seq_len=seq, checkpointing=ckpt, **training))
    return run_trace(TINY, job, name="tiny", fake=fake)


# ---------------------------------------------------------------- tracker


def test_rounded_to_cuda_blocks():
    assert rounded(0) == 0
    assert rounded(1) == 512
    assert rounded(512) == 512
    assert rounded(513) == 1024
    assert rounded(513, block=1) == 513


def test_tracker_counts_storages_once_and_frees_them():
    tr = MemoryTracker(block=1)
    with tr:
        a = torch.empty(1000, dtype=torch.float32)
        v = a.view(10, 100)  # a view shares the storage: not counted again
        assert tr.total == 4000
        b = a * 2
        assert tr.total == 8000
        del a, v
        assert tr.total == 4000  # a's storage died with its last reference
        del b
    assert tr.total == 0
    assert tr.peak.total == 8000


def test_tracker_retags_categories():
    tr = MemoryTracker(block=1)
    with tr:
        g = torch.zeros(10)
        assert tr.current["activations"] == 40
        tr.track(g, "gradients")
        assert tr.current["activations"] == 0 and tr.current["gradients"] == 40


def test_tracker_matches_torch_memtracker_on_a_real_step():
    """torch's own MemTracker (torch/distributed/_tools/mem_tracker.py) sees the same peak.

    MemTracker hooks every parameter's gradient, so it needs all of them trainable: full FT.
    """
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    from tuneplan.trace.build import build_model
    from tuneplan.trace.run import _single_sequence_batches, make_optimizer

    job = Job(Method(kind="full"), Training(seq_len=64, checkpointing="none"))
    torch.manual_seed(0)
    with _single_sequence_batches():
        model = build_model(TINY, job.method, job.training)
        opt = make_optimizer(list(model.parameters()), job.training)
        mt = mem_tracker.MemTracker()
        mt.track_external(model, opt)
        with mt:
            for step in range(2):
                if step:
                    mt.reset_mod_stats()
                ids = torch.randint(0, 512, (1, 64))
                labels = ids.clone()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                del loss, ids, labels
                opt.step()
                opt.zero_grad(set_to_none=True)
        theirs = mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    ours = run_trace(TINY, job, fake=False, block=1)
    assert ours.peak_bytes == theirs


# ---------------------------------------------------------------- fake vs real


@pytest.mark.parametrize("kind,ckpt", [("full", "none"), ("lora", "full"), ("qlora", "none"), ("dora", "full")])
def test_fake_matches_real_cpu_run(kind, ckpt):
    fake = trace(kind, ckpt, fake=True)
    real = trace(kind, ckpt, fake=False)
    assert fake.fake and not real.fake
    assert abs(fake.peak_bytes - real.peak_bytes) <= 0.02 * real.peak_bytes
    assert fake.peak_phase == real.peak_phase


# ---------------------------------------------------------------- ordering


def test_full_uses_more_than_lora_and_qlora_less_than_lora():
    full, lora, qlora = trace("full", "none"), trace("lora", "none"), trace("qlora", "none")
    assert full.peak_bytes > lora.peak_bytes > qlora.peak_bytes
    assert full.resident["optimizer"] > 4 * lora.resident["optimizer"]
    assert qlora.resident["weights"] < lora.resident["weights"]


def test_checkpointing_lowers_the_peak_and_keeps_params():
    seq = 256
    for kind in ("full", "lora"):
        none, full = trace(kind, "none", seq=seq), trace(kind, "full", seq=seq)
        assert full.peak_bytes < none.peak_bytes
        assert full.resident == none.resident  # same params, optimizer states after the step


def test_activations_grow_with_sequence_length():
    short, long = trace("lora", "none", seq=64), trace("lora", "none", seq=256)
    assert long.at_peak["activations"] + long.at_peak["logits"] > 3 * (
        short.at_peak["activations"] + short.at_peak["logits"])


def test_steady_state_step_holds_optimizer_states():
    r = trace("full", "none")
    # AdamW exp_avg + exp_avg_sq, plus a one-element step tensor per parameter (fused AdamW)
    assert 2 * r.resident["trainable"] <= r.resident["optimizer"] <= 2.02 * r.resident["trainable"]
    assert r.at_peak["optimizer"] == r.resident["optimizer"]
    assert r.peak_bytes >= r.first_step_peak


def test_foreach_adamw_has_a_larger_optimizer_phase_than_fused():
    fused = trace("full", "none", optimizer="adamw")
    foreach = trace("full", "none", optimizer="adamw-foreach")
    assert dict(foreach.phase_peaks)["optimizer"] > dict(fused.phase_peaks)["optimizer"]


def test_unsupported_settings_fail_in_one_line():
    from tuneplan.errors import TuneplanError

    with pytest.raises(TuneplanError, match="optimizer"):
        trace("lora", optimizer="adamw-8bit")
    with pytest.raises(TuneplanError, match="mixed"):
        trace("lora", precision="mixed")


# ---------------------------------------------------------------- command


def test_trace_command_json(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["trace", str(cfg), "--method", "qlora", "--seq-len", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["peak_bytes"] > 0
    assert out["trace"]["peak_phase"] in ("forward", "backward", "optimizer")
    assert out["estimate"]["allocated_bytes"] > 0
    assert {r["key"] for r in out["rows"]} >= {"params", "activations", "logits"}


def test_trace_command_table(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["trace", str(cfg), "--method", "lora", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "Allocated peak" in out and "took" in out


def test_trace_command_without_extra(monkeypatch, capsys):
    import tuneplan.trace

    monkeypatch.setattr(tuneplan.trace, "available", lambda: False)
    assert main(["trace", "qwen2.5-0.5b"]) == 2
    # issue 10: hint the local install, never a PyPI name tuneplan does not own
    err = capsys.readouterr().err
    assert "pip install -e '.[trace]'" in err and "'tuneplan[trace]'" not in err


# ---------------------------------------------------------------- slow: real sizes


@pytest.mark.slow
def test_half_billion_model_fake_matches_real():
    from tuneplan.models import resolve_config

    _, cfg = resolve_config("qwen2.5-0.5b")
    job = Job(Method(kind="lora"), Training(seq_len=512, checkpointing="full"))
    fake = run_trace(cfg, job, fake=True)
    real = run_trace(cfg, job, fake=False)
    assert abs(fake.peak_bytes - real.peak_bytes) <= 0.02 * real.peak_bytes


@pytest.mark.slow
def test_8b_at_4096_tokens_traces_quickly():
    from tuneplan.models import resolve_config

    _, cfg = resolve_config("llama-3.1-8b")
    r = run_trace(cfg, Job(Method(kind="qlora"), Training(seq_len=4096)), fake=True)
    assert r.elapsed_s < 120
    assert 5 * 2**30 < r.peak_bytes < 16 * 2**30
