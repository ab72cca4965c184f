"""Device catalog, fit verdicts, searches, time/disk/cost arithmetic, plan and matrix commands."""

import json
from dataclasses import replace

import pytest

from tuneplan import calibration as cal
from tuneplan.cli import main
from tuneplan.cost import estimate_cost
from tuneplan.disk import estimate_disk
from tuneplan.errors import TuneplanError
from tuneplan.fit import FITS, NO, TIGHT, UNCERTAIN, cheapest_change, fit_verdict, verdict_of
from tuneplan.hardware import devices, resolve_device, resolve_devices
from tuneplan.job import Job, Method, Parallel, Training
from tuneplan.matrix import fit_matrix, to_csv
from tuneplan.memory import peak_bytes
from tuneplan.models import param_counts, resolve_model, spec_from_config
from tuneplan.plan import plan
from tuneplan.search import max_micro_batch, max_seq_len, min_gpus
from tuneplan.timing import Dataset, run_time, step_time, token_flops
from tuneplan.uncertainty import high_bytes
from tuneplan.units import GiB


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def job(kind="lora", b=1, s=2048, **kw):
    par = kw.pop("parallel", Parallel())
    return replace(Job.from_settings(method=kind, micro_batch=b, seq_len=s, **kw), parallel=par)


# ---------------------------------------------------------------- catalog


def test_catalog_covers_the_kinds_asked_for():
    devs = devices()
    assert len(devs) >= 40
    cats = {d.category for d in devs.values()}
    assert {"consumer", "workstation", "datacenter", "unified"} <= cats
    vendors = {d.vendor for d in devs.values()}
    assert {"NVIDIA", "AMD", "Apple"} <= vendors
    for name in ("dgx-spark", "strix-halo", "m4-max", "mi300x", "rtx-4090", "h100"):
        resolve_device(name)
    for d in devs.values():
        assert d.sources, d.id
        assert 0 < d.usable_bytes <= d.memory_gib * GiB, d.id
        assert d.bandwidth_gbps > 0


def test_usable_memory_rules():
    # macOS 26 working set where measured (32 and 128 GiB), else the older 2/3 - 3/4 rule
    assert resolve_device("macbook-pro-m5").usable_bytes == int(cal.MACOS_26_WORKING_SET_GIB[32] * GiB)
    assert resolve_device("m4-max").usable_bytes == int(cal.MACOS_26_WORKING_SET_GIB[128] * GiB)
    assert resolve_device("m2-ultra").usable_bytes == int(192 * GiB * 3 / 4)  # large Mac, not measured: 3/4
    assert resolve_device("dgx-spark").usable_bytes == int(cal.DGX_SPARK_USABLE_GIB * GiB)
    assert resolve_device("strix-halo").usable_bytes == int(96 * GiB)
    assert resolve_device("a100-40gb-pcie").usable_bytes == 40339 * 2**20  # reported total
    assert resolve_device("rtx-5090").usable_bytes < 32 * GiB


def test_resolve_device_spellings_and_errors():
    assert resolve_device("RTX 4090").id == resolve_device("rtx4090").id == "rtx-4090"
    with pytest.raises(TuneplanError, match="did you mean"):
        resolve_device("rtx-4099")
    assert [d.id for d in resolve_devices("rtx-4090,h100")] == ["rtx-4090", "h100-sxm"]
    assert all(d.category == "unified" for d in resolve_devices("unified"))


# ---------------------------------------------------------------- search

SEARCH_CASES = [
    ("llama-3.1-8b", "lora", "rtx-4090"),
    ("llama-3.1-8b", "qlora", "rtx-3060-12gb"),
    ("qwen2.5-7b", "full", "h100"),
    ("qwen3-30b-a3b", "qlora", "h100"),  # experts stay bf16 under HF + bitsandbytes: 57 GiB
    ("llama-3.2-1b", "dora", "m4-max"),
    ("gemma-2-9b", "freeze", "l40s"),
]


@pytest.mark.parametrize("model,kind,dev", SEARCH_CASES)
def test_max_batch_fits_and_next_does_not(model, kind, dev):
    spec, d = resolve_model(model), resolve_device(dev)
    j = job(kind)
    b = max_micro_batch(spec, j, d.usable_bytes)
    assert b >= 1
    assert peak_bytes(spec, job(kind, b=b)) <= d.usable_bytes
    assert peak_bytes(spec, job(kind, b=b + 1)) > d.usable_bytes


@pytest.mark.parametrize("model,kind,dev", SEARCH_CASES[:4])
def test_max_seq_len_fits_and_next_does_not(model, kind, dev):
    spec, d = resolve_model(model), resolve_device(dev)
    s = max_seq_len(spec, job(kind), d.usable_bytes, multiple=128)
    assert s >= 128 and s % 128 == 0
    assert peak_bytes(spec, job(kind, s=s)) <= d.usable_bytes
    assert peak_bytes(spec, job(kind, s=s + 128)) > d.usable_bytes


def test_search_returns_zero_when_nothing_fits():
    spec = resolve_model("llama-3.1-70b")
    assert max_micro_batch(spec, job("full"), resolve_device("rtx-4090").usable_bytes) == 0
    assert max_seq_len(spec, job("full"), resolve_device("rtx-4090").usable_bytes) == 0


@pytest.mark.parametrize("model,kind,dev", [("llama-3.1-70b", "lora", "h100"), ("qwen2.5-14b", "full", "a100"),
                                            ("llama-3.1-70b", "qlora", "rtx-4090")])
def test_min_gpus_is_minimal(model, kind, dev):
    """The count found fits; the next smaller count clusters come in (1, 2, 4, 8, then whole
    machines: search.gpu_counts) fits with no sharding and no tensor-parallel degree the stack runs."""
    from tuneplan.search import TP_DEGREES, gpu_counts

    spec, d = resolve_model(model), resolve_device(dev)
    n, j = min_gpus(spec, job(kind), d)
    assert n > 1 and peak_bytes(spec, j) <= d.usable_bytes
    counts = gpu_counts(d)
    smaller_n = counts[counts.index(n) - 1]
    for s in ("ddp", "zero1", "zero2", "zero3", "fsdp"):
        for tp in (1,) + TP_DEGREES:
            if smaller_n % tp or tp > smaller_n:
                continue
            smaller = replace(j, parallel=Parallel(num_gpus=smaller_n, tensor=tp,
                                                   sharding=s if smaller_n // tp > 1 else "ddp"))
            assert peak_bytes(spec, smaller) > d.usable_bytes, (s, tp)


def test_min_gpus_counts_whole_machines_and_spans_them():
    """Counts are the sizes clusters come in: never 3 or 6 GPUs; beyond one machine, whole
    machines (a 70B full fine-tune under HF's fp32-upcast FSDP needs more than one 8 x H100)."""
    from tuneplan.search import gpu_counts

    d = resolve_device("h100")
    assert gpu_counts(d)[:5] == [1, 2, 4, 8, 16]
    assert all(c % 8 == 0 for c in gpu_counts(d) if c > 8)
    # LLaMA-Factory runs data parallelism only (no TP): the 70B full fine-tune spans machines
    n, j = min_gpus(resolve_model("llama-3.1-70b"), Job.from_settings(method="full", framework="llamafactory"), d)
    assert n > 8 and n % 8 == 0 and j.parallel.nodes == n // 8
    # torchtune's pure-bf16 FSDP2 fits it on one 8 x H100; HF's tp_plan keeps embed_tokens
    # replicated, so HF needs whole machines
    n, j = min_gpus(resolve_model("llama-3.1-70b"), Job.from_settings(method="full", framework="torchtune"), d)
    assert n == 8 and j.parallel.sharding == "fsdp"
    n, j = min_gpus(resolve_model("llama-3.1-70b"), job("full"), d)
    assert n > 8 and n % 8 == 0


def test_min_gpus_none_when_out_of_reach():
    assert min_gpus(resolve_model("deepseek-v3"), job("full"), resolve_device("rtx-3060-12gb")) is None


# ---------------------------------------------------------------- monotonicity


def test_peak_and_time_grow_with_batch_and_sequence():
    spec, d = resolve_model("llama-3.1-8b"), resolve_device("h100")
    peaks = [peak_bytes(spec, job("lora", b=b)) for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    peaks = [peak_bytes(spec, job("lora", s=s)) for s in (512, 1024, 4096, 8192)]
    assert peaks == sorted(peaks)
    times = [step_time(spec, job("lora", b=b), d).step_s for b in (1, 2, 4, 8)]
    assert times == sorted(times)
    per_token = [step_time(spec, job("lora", s=s), d).executed_flops_per_token for s in (512, 2048, 8192)]
    assert per_token == sorted(per_token)  # attention grows with the span


def test_time_grows_with_model_size_and_method_cost():
    d = resolve_device("a100")
    sizes = [step_time(resolve_model(m), job("lora"), d).step_s for m in ("qwen2.5-0.5b", "qwen2.5-3b", "qwen2.5-14b")]
    assert sizes == sorted(sizes)
    spec = resolve_model("llama-3.1-8b")
    t = {k: step_time(spec, job(k), d).step_s for k in ("freeze", "lora", "full")}
    assert t["freeze"] < t["lora"] < t["full"]
    assert step_time(spec, job("lora", checkpointing="none"), d).step_s < t["lora"]


def test_more_gpus_more_throughput_less_epoch_time():
    spec, d = resolve_model("llama-3.1-8b"), resolve_device("h100")
    ds = Dataset(100_000_000)
    epochs = [run_time(spec, job("lora", parallel=Parallel(num_gpus=n)), d, ds).epoch_s for n in (1, 2, 4, 8)]
    assert epochs == sorted(epochs, reverse=True)
    assert run_time(spec, job("lora"), d, Dataset(2 * ds.tokens)).epoch_s > run_time(spec, job("lora"), d, ds).epoch_s


def test_flops_ratios_full_lora_recompute():
    spec = resolve_model("llama-3.1-8b")
    full = token_flops(spec, Method(kind="full"), "none", 1)
    lora = token_flops(spec, Method(kind="lora"), "none", 1)
    ck = token_flops(spec, Method(kind="full"), "full", 1)
    n_mm = full.forward / 2  # matmul params touched per token (attention ~0 at span 1)
    assert full.executed / n_mm == pytest.approx(6, rel=0.01)
    assert lora.executed / n_mm == pytest.approx(4, rel=0.05)  # + adapters, lm_head dX only
    assert (ck.executed - full.executed) / n_mm == pytest.approx(2, rel=0.1)  # recompute: decoder layers


def test_moe_uses_active_params():
    spec = resolve_model("qwen3-30b-a3b")
    f = token_flops(spec, Method(kind="full"), "none", 1)
    from tuneplan.models import param_counts

    pc = param_counts(spec)
    assert f.forward / 2 < 0.2 * pc.total
    assert f.forward / 2 == pytest.approx(pc.active, rel=0.1)


# ---------------------------------------------------------------- time arithmetic by hand

TINY = {"model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8,
        "num_key_value_heads": 8, "intermediate_size": 4096, "vocab_size": 32000, "tie_word_embeddings": False}


def test_step_and_epoch_time_against_hand_computation():
    spec = spec_from_config(TINY, "tiny")
    # per layer: q,k,v,o 4*1024*1024 = 4,194,304; gate/up/down 3*1024*4096 = 12,582,912
    # -> 16,777,216 matrix params, forward 2x = 33,554,432 FLOPs per token
    # attention at s=2048, causal: 2 * (2049/2) * (1024 + 1024) = 4,196,352 per layer
    # lm_head 2 * 32000 * 1024 = 65,536,000
    layer_fwd = 33_554_432 + 4_196_352
    fwd = 2 * layer_fwd + 65_536_000  # 141,037,568
    bwd = 2 * (2 * 33_554_432 + 2 * 4_196_352) + 2 * 65_536_000  # full: dX + dW everywhere
    rec = 2 * layer_fwd  # checkpointing: one more forward of both layers
    tf = token_flops(spec, Method(kind="full"), "full", 2048)
    assert (tf.forward, tf.backward, tf.recompute) == (fwd, bwd, rec)
    assert fwd + bwd + rec == 498_614_272
    # 100 TFLOPS at 50%, effectively infinite bandwidth: compute-bound
    dev = replace(resolve_device("h100"), bf16_tflops=100.0, bandwidth_gbps=1e12)
    j = Job(Method(kind="full"), Training(micro_batch=4, seq_len=2048, grad_accum=2))
    st = step_time(spec, j, dev, efficiency=0.5)
    # plus the fixed cost per launched kernel: per layer 39 forward + 78 backward + 39 recomputed
    kernels = 2 * (39 + 2 * 39 + 39)
    # an H100 SXM's GEMMs run at its measured matmul share, 0.803 against the A100's 0.869
    micro = 498_614_272 * 8192 / (100e12 * 0.5 * 0.803 / 0.869) + kernels * cal.SECONDS_PER_KERNEL
    assert st.micro_s == pytest.approx(micro, rel=1e-6)
    # plus the update: with unlimited bandwidth, the fused AdamW kernels' measured time per parameter
    update = param_counts(spec).total * cal.OPTIMIZER_UPDATE_S_PER_PARAM["adamw"]
    assert st.step_s == pytest.approx(2 * micro + update, rel=1e-4)
    assert st.tokens_per_step == 16384
    rt = run_time(spec, j, dev, Dataset(1_000_000, epochs=3))
    assert rt.steps_per_epoch == 62  # ceil(1e6 / 16384) = ceil(61.04)
    assert rt.epoch_s == pytest.approx(62 * rt.step.step_s)
    assert rt.run_s == pytest.approx(3 * rt.epoch_s)


def test_bandwidth_terms_dominate_when_they_should():
    spec = resolve_model("llama-3.1-8b")
    slow = replace(resolve_device("h100"), bandwidth_gbps=10.0)  # 10 GB/s memory
    st = step_time(spec, job("lora", b=1, s=128), slow)
    assert st.bound == "weight reads"
    q = step_time(spec, job("qlora"), resolve_device("rtx-5090"))
    assert dict(q.terms)["QLoRA dequantisation"] > 0
    off = step_time(spec, Job(Method(kind="full"), Training(), Parallel(num_gpus=2, sharding="zero3",
                                                                         offload_params=True,
                                                                         offload_optimizer=True)),
                    resolve_device("rtx-4090"))
    assert dict(off.terms)["param offload"] > dict(off.terms)["compute"] * 0.1


def test_device_without_flops_cannot_be_timed():
    with pytest.raises(TuneplanError, match="no published TFLOPS"):
        step_time(resolve_model("llama-3.2-1b"), job(), resolve_device("macbook-pro-m5"))


# ---------------------------------------------------------------- fit


def test_verdict_thresholds():
    assert verdict_of(80, 100) == FITS
    assert verdict_of(91, 100) == TIGHT
    assert verdict_of(100, 100) == TIGHT
    assert verdict_of(101, 100) == NO
    # with the uncertainty band's upper end: uncertain where the peak fits and the band does not
    assert verdict_of(80, 100, 99) == FITS and verdict_of(80, 100, 101) == UNCERTAIN
    assert verdict_of(95, 100, 100) == TIGHT and verdict_of(101, 100, 120) == NO


def test_fit_verdicts_and_cheapest_change():
    spec = resolve_model("llama-3.1-8b")
    ok = fit_verdict(spec, job("lora"), resolve_device("rtx-4090"))
    assert ok.verdict == FITS and ok.change is None and ok.headroom >= 0.1
    bad = fit_verdict(spec, job("full"), resolve_device("rtx-4090"))
    assert bad.verdict == NO and bad.breaker[0] in ("Optimizer states", "Weights", "Gradients")
    assert bad.change and bad.change.peak_bytes <= resolve_device("rtx-4090").usable_bytes
    # batch too large: the cheapest fix takes a smaller micro-batch (with the fused loss, so the
    # uncertainty band clears the card too), global batch kept
    big = fit_verdict(spec, job("lora", b=16), resolve_device("rtx-4090"))
    assert big.verdict == NO and "micro-batch" in big.change.description
    assert high_bytes(big.change.job, big.change.peak_bytes) <= resolve_device("rtx-4090").usable_bytes
    t = big.change.job.training
    assert t.micro_batch * t.grad_accum >= 16


def test_cheapest_change_offers_more_gpus_when_only_that_works():
    spec, d = resolve_model("llama-3.1-70b"), resolve_device("rtx-4090")
    ch = cheapest_change(spec, job("qlora"), d)
    assert "x rtx-4090" in ch.description and ch.job.parallel.num_gpus > 1 and ch.peak_bytes <= d.usable_bytes


def test_no_offload_suggestion_on_unified_memory():
    spec, d = resolve_model("llama-3.1-405b"), resolve_device("m4-max")
    v = fit_verdict(spec, job("full"), d)
    assert v.verdict == NO
    assert v.change is None or "CPU RAM" not in v.change.description


# ---------------------------------------------------------------- disk and cost


def test_disk_adapter_vs_full_checkpoints():
    spec = resolve_model("llama-3.1-8b")
    a = estimate_disk(spec, job("lora"), 1_000_000, saves=3)
    f = estimate_disk(spec, job("full"), 1_000_000, saves=3)
    assert a.adapter_only and not f.adapter_only
    assert a.checkpoints == 3 * a.checkpoint_each
    assert f.checkpoint_each > 20 * a.checkpoint_each
    assert a.dataset_raw + a.dataset_tokenized == 28 * 1_000_000
    assert a.base_model == 2 * 8_030_261_248  # bf16 safetensors


def test_cost_against_hand_computation():
    d = replace(resolve_device("rtx-4090"), price_usd=2000.0, tdp_w=500.0)
    c = estimate_cost(d, 2, 10 * 3600, utilisation=0.5, usd_per_kwh=0.2)
    rate = d.cloud_usd_per_hour
    assert c.cloud_usd == pytest.approx(rate * 2 * 10)
    assert c.power_usd == pytest.approx(1.0 * 10 * 0.2)  # 2 x 500 W for 10 h
    weekly = 168 * 0.5 * (rate * 2 - 1.0 * 0.2)
    assert c.breakeven_weeks == pytest.approx(4000 / weekly)
    with pytest.raises(TuneplanError):
        estimate_cost(d, 1, 3600, utilisation=0)


# ---------------------------------------------------------------- plan and matrix


def test_plan_ranks_fitting_setups():
    spec = resolve_model("llama-3.1-8b")
    devs = resolve_devices("rtx-4090,rtx-3060-12gb,h100,a100")
    res = plan(spec, job("qlora"), Dataset(10_000_000), devs, rank_by="time")
    # setups with 10% headroom rank first (issue 10: the top setup must not be tight), each group by time
    tight = [s.verdict != FITS for s in res.setups]
    assert tight == sorted(tight) and res.setups
    for group in (False, True):
        times = [s.run.run_s for s in res.setups if (s.verdict != FITS) == group]
        assert times == sorted(times)
    for s in res.setups:
        assert s.peak_bytes <= s.device.usable_bytes
    by_cost = plan(spec, job("qlora"), Dataset(10_000_000), devs, rank_by="cost")
    for group in (False, True):
        costs = [s.cost.cloud_usd for s in by_cost.setups
                 if s.cost.cloud_usd is not None and (s.verdict != FITS) == group]
        assert costs == sorted(costs)


def test_matrix_cells_agree_with_direct_search():
    specs = [resolve_model("llama-3.1-8b"), resolve_model("qwen2.5-0.5b")]
    devs = resolve_devices("rtx-4090,h100,m4-max")
    cells = fit_matrix(specs, ["full", "lora", "qlora"], devs, job())
    assert len(cells) == 2 * 3 * 3
    for c in cells:
        d = resolve_device(c.device)
        # the direct search on the runtime the framework runs on that device (HF on a Mac: MPS)
        on_device = job(c.method).on_vendor(d.vendor)
        assert c.max_micro_batch == max_micro_batch(resolve_model(c.model), on_device, d.usable_bytes)
        assert (c.max_micro_batch >= 1) == (c.verdict != NO)
    assert to_csv(cells).count("\n") == len(cells) + 1


# ---------------------------------------------------------------- CLI


def test_devices_command(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    data = json.loads(out)
    assert code == 0 and len(data) >= 40 and all("usable_bytes" in d and "sources" in d for d in data)
    code, out, _ = run(capsys, "devices", "--category", "unified")
    assert code == 0 and "GiB" in out


def test_plan_command_json(capsys):
    code, out, _ = run(capsys, "plan", "llama-3.2-1b", "--method", "qlora", "--samples", "10k", "--mean-tokens", "512",
                       "--devices", "rtx-4090,h100", "--json")
    data = json.loads(out)
    assert code == 0 and data["dataset_tokens"] == 5_120_000 and data["setups"]
    assert {"time", "cost", "verdict"} <= set(data["setups"][0])
    code, out, _ = run(capsys, "plan", "llama-3.2-1b", "--dataset-tokens", "1M", "--devices", "rtx-4090")
    assert code == 0 and "Disk (GiB)" in out and "Assumes" in out


def test_matrix_command_csv_png(capsys, tmp_path):
    csv_p, png_p = tmp_path / "m.csv", tmp_path / "m.png"
    argv = ["matrix", "--models", "llama-3.2-1b,llama-3.1-8b", "--devices", "rtx-4090,h100"]
    code, out, _ = run(capsys, *argv, "--csv", str(csv_p))
    assert code == 0 and csv_p.read_text().startswith("model,method,device")
    code, out, err = run(capsys, *argv, "--png", str(png_p))
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot extra is optional: a one-line error, exit 2
        assert code == 2 and "tuneplan[plot]" in err
        return
    assert code == 0 and png_p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,msg", [
    (["plan", "llama-3.1-8b", "--devices", "rtx-4099", "--dataset-tokens", "1M"], "unknown device"),
    (["plan", "llama-3.1-8b", "--epochs", "2"], "dataset size"),  # issue 10: plan runs without a size
    (["plan", "llama-3.1-8b", "--samples", "10k"], "go together"),
    (["plan", "llama-3.1-8b", "--dataset-tokens", "1M", "--utilisation", "2", "--devices", "h100"], "utilisation"),
    (["matrix", "--methods", "fulll"], "unknown method"),
    (["matrix", "--models", "llama-3.1-8x"], "did you mean"),
    (["devices", "--category", "gaming"], "no devices"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
    code, _, err = run(capsys, *argv)
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_count_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "llama-3.1-8b", "--dataset-tokens", "lots"])
    assert e.value.code == 2


def test_estimate_gpu_verdict_line(capsys):
    code, out, _ = run(capsys, "estimate", "llama-3.1-8b", "--method", "full", "--gpu", "rtx-4090")
    assert code == 0 and "Fit: rtx-4090: does not fit" in out and "cheapest fix" in out
    assert "largest micro-batch at 2048 tokens: 0" in " ".join(out.split())
    code, out, _ = run(capsys, "estimate", "llama-3.1-8b", "--method", "lora", "--gpu", "h100", "--json")
    data = json.loads(out)
    assert data["fit"]["verdict"] == "fits" and data["fit"]["usable_bytes"] > data["peak_bytes"]
    assert data["fit"]["max_micro_batch"] >= 1 and data["fit"]["max_seq_len"] >= 2048
    code, _, err = run(capsys, "estimate", "llama-3.1-8b", "--gpu", "rtx-4099")
    assert code == 2 and "unknown device" in err


def test_support_notes_for_apple_and_tpu():
    from tuneplan.fit import support_notes

    assert any("MPS" in n and "bitsandbytes" in n for n in support_notes(resolve_device("m4-max"), job("qlora")))
    assert any("JAX" in n for n in support_notes(resolve_device("tpu-v5e"), job("lora")))
    assert support_notes(resolve_device("h100"), job("qlora")) == ()


def test_cheapest_device_or_cluster():
    from tuneplan.search import cheapest

    spec = resolve_model("llama-3.1-70b")
    devs = resolve_devices("rtx-4090,rtx-a6000,h100,a100")
    opts = cheapest(spec, job("qlora"), devs, by="purchase")
    prices = [o.purchase_usd for o in opts if o.purchase_usd is not None]
    assert prices == sorted(prices) and opts
    for o in opts:
        assert o.peak_bytes <= o.device.usable_bytes
    res = plan(spec, job("qlora"), Dataset(1_000_000), devs, rank_by="purchase")
    for group in (False, True):  # 10% headroom first (issue 10), each group by price
        buy = [s.cost.purchase_usd for s in res.setups
               if s.cost.purchase_usd is not None and (s.verdict != FITS) == group]
        assert buy == sorted(buy)


def test_fix_that_keeps_the_method():
    v = fit_verdict(resolve_model("llama-3.1-70b"), job("lora"), resolve_device("h100"))
    assert v.verdict == NO and "qlora" in v.change.description.lower()
    assert v.keep_method_change and "x h100-sxm" in v.keep_method_change.description


def test_largest_fitting_from_any_start():
    """The planner's search (start 1) and probe's (start at the estimate) find the same answer."""
    from tuneplan.search import largest_fitting

    for threshold in range(0, 40):
        for start in (1, 3, 16, 39, 100):
            calls = []

            def fits(x, t=threshold, calls=calls):
                calls.append(x)
                return x <= t

            assert largest_fitting(fits, 32, start) == min(threshold, 32)
            assert all(1 <= x <= 32 for x in calls)


def test_bitsandbytes_dequantisation_streams_at_the_bandwidth():
    """bitsandbytes dequantises each 4-bit weight in one kernel (read 0.5 B + write 2 B) at the
    streaming share of the bandwidth, three passes with checkpointing (forward, recomputation,
    backward): no fitted share (the old one came from GPTQ rows; tuneplan.calibration)."""
    from tuneplan.memory import quantised_params

    spec = resolve_model("llama-3.1-8b")
    dev = resolve_device("h100")
    j = job("qlora", b=1, s=2048)
    got = dict(step_time(spec, j, dev).terms)["QLoRA dequantisation"]
    quantised = quantised_params(spec, j.training)
    assert quantised == param_counts(spec).linear_in_layers  # a dense model: every decoder linear
    want = quantised * (cal.DEQUANT_BYTES_PER_PARAM["nf4"] - 2) * 3 / (dev.bandwidth_gbps * 1e9 * cal.BANDWIDTH_EFFICIENCY)
    assert got == pytest.approx(want, rel=1e-9)
    assert got < 0.03  # ~20 ms for 8B on an H100 (the profiler read ~26 ms a step, stop 11)


def test_fused_experts_left_16bit_are_not_dequantised():
    """transformers 5 keeps MoE experts as fused 3-D parameters that bitsandbytes does not
    quantise (hf profile), so their weights are neither stored 4-bit nor dequantised; a stack
    that quantises them (Unsloth) dequantises them too, and the memory model agrees."""
    from tuneplan.memory import quantised_params, static_memory

    spec = resolve_model("qwen3-30b-a3b")
    dev = resolve_device("h100")
    pc = param_counts(spec)
    hf, uns = job("qlora"), job("qlora", framework="unsloth")
    assert quantised_params(spec, hf.training) == pc.linear_in_layers - pc.experts
    assert quantised_params(spec, uns.training) == pc.linear_in_layers
    d_hf = dict(step_time(spec, hf, dev).terms)["QLoRA dequantisation"]
    d_uns = dict(step_time(spec, uns, dev).terms)["QLoRA dequantisation"]
    assert d_hf / d_uns == pytest.approx((pc.linear_in_layers - pc.experts) / pc.linear_in_layers, rel=1e-6)
    assert static_memory(spec, hf).weights > static_memory(spec, uns).weights + pc.experts  # experts 16-bit


# ---------------------------------------------------------------- fit and plan: one search (issue 26, item 9)

AGREE = [("llama-3.1-405b", "full", "rtx-4090"), ("llama-3.1-405b", "qlora", "rtx-4090"),
         ("llama-3.1-405b", "full", "rtx-a6000"), ("llama-3.1-405b", "qlora", "rtx-a6000"),
         ("llama-3.1-70b", "full", "rtx-4090"), ("llama-3.1-70b", "qlora", "rtx-4090"),
         ("llama-3.1-70b", "lora", "h100"), ("llama-3.1-8b", "full", "rtx-4090"), ("qwen2.5-14b", "full", "l4")]


@pytest.mark.parametrize("model,kind,dev", AGREE)
def test_fit_fix_and_plan_agree(model, kind, dev):
    """A fix `estimate --gpu` suggests on D is a job `plan` over [D] runs; and `plan` over
    [D] finds a setup exactly when the fit verdict finds a way that keeps the method (the
    job runs, or a fix or the keep-the-method fix does), both with the host RAM check."""
    from tuneplan.fit import host_fits

    spec, d, j = resolve_model(model), resolve_device(dev), job(kind)
    v = fit_verdict(spec, j, d)
    res = plan(spec, j, None, [d])
    keeps = v.runs or (v.change is not None and v.change.job.method.kind == kind) or v.keep_method_change is not None
    assert bool(res.setups) == keeps, (v.summary(), res.unfit)
    if v.change is not None:
        assert host_fits(spec, v.change.job, d)
        fixed = plan(spec, v.change.job, None, [d])
        assert fixed.setups, (v.change.description, fixed.unfit)
    for s in res.setups:  # every setup plan offers runs by the fit verdict's own measure
        sv = fit_verdict(spec, s.job, d, suggest=False)
        assert sv.runs and s.job.method.kind == kind, sv.summary()


def test_offload_fix_checks_host_ram():
    """The 405B six-part fix (QLoRA + 8-bit Adam + ZeRO-3 offload, 207 GiB of CPU RAM) is not
    offered on a consumer host (128 GiB assumed); a workstation (512 GiB) gets the fix
    without the steps it does not need, and plan agrees on both."""
    from tuneplan.fit import HOST_RAM_GIB_PER_MACHINE, host_ram_bytes

    spec = resolve_model("llama-3.1-405b")
    d = resolve_device("rtx-4090")
    v = fit_verdict(spec, job("full"), d)
    assert v.verdict == NO and v.change is None and "host RAM" in v.summary()
    off = job("qlora", optimizer="adamw-8bit", cross_entropy="fused",
              parallel=Parallel(sharding="zero3", offload_params=True, offload_optimizer=True))
    ov = fit_verdict(spec, off, d)
    assert ov.verdict != NO and not ov.host_ok and not ov.runs  # fits the GPU, not the host
    assert ov.host_bytes > host_ram_bytes(d) == HOST_RAM_GIB_PER_MACHINE["consumer"] * GiB
    assert "host RAM" in ov.summary() and ov.to_dict()["host_ok"] is False
    assert plan(spec, off, None, [d]).setups == ()
    assert plan(spec, job("qlora"), None, [d]).setups == ()
    ws = resolve_device("rtx-a6000")
    wv = fit_verdict(spec, job("full"), ws)
    ch = wv.change
    # QLoRA sharded over the workstation's 8 cards (or offloaded), within its host RAM
    assert ch is not None and ch.job.method.kind == "qlora"
    assert ch.job.parallel.offload_params or ch.job.parallel.num_gpus > 1
    assert ch.host_bytes <= host_ram_bytes(ws, ch.job.parallel.num_gpus)
    assert "LoRA instead of" not in ch.description  # pruned: QLoRA follows
    assert len(ch.steps) <= 3, ch.description
    assert plan(spec, job("qlora"), None, [ws]).setups


def test_plan_uses_the_fit_search_where_no_count_fits():
    """One GPU allowed (max_count 1): the job fits no count as asked, so plan takes the fit
    verdict's keep-the-method fix (offload here) and says so in the setup and the notes."""
    from tuneplan.plan import plan_report

    spec = resolve_model("llama-3.1-70b")
    d = replace(resolve_device("rtx-4090"), max_count=1)
    v = fit_verdict(spec, job("qlora"), d)
    assert v.verdict == NO and v.change is not None and v.change.job.method.kind == "qlora"
    rep = plan_report(spec, job("qlora"), None, [d])
    assert rep.result.setups
    s = rep.result.setups[0]
    assert s.change is not None and s.change.settings == v.change.settings
    assert s.to_dict()["change"]["description"] == v.change.description
    assert any("fits no GPU count" in n for n in rep.notes)
    assert plan(spec, job("qlora"), None, [resolve_device("rtx-4090")], max_gpus=1).setups


def test_plan_says_why_the_winner_won():
    """Issue 23 item 5: one line on the winning layout: the fewest GPUs that run it and why a
    larger count or a multi-machine layout ranks first."""
    from tuneplan.plan import plan_report

    spec, d = resolve_model("llama-3.1-70b"), resolve_device("h100")
    rep = plan_report(spec, Job.from_settings(method="full", framework="torchtune"), Dataset(100_000_000), [d])
    top = rep.result.setups[0]
    assert rep.why.startswith(f"{top.count} x h100-sxm") and "torchtune" in rep.why
    assert "8 GPUs run it" in rep.why or top.count == 8
    assert rep.to_dict()["why"] == rep.why and "\n" not in rep.why
    rep = plan_report(spec, Job.from_settings(method="full", framework="llamafactory"), Dataset(100_000_000), [d],
                      max_gpus=16)
    assert "does not fit one machine" in rep.why


def test_a_device_whose_runtime_refuses_the_job_is_listed_not_fatal():
    """vLLM does not run on Apple's MPS: plan, the online placement and matrix list that device
    (unfit / n/a / HF generate only) and still answer for the others."""
    from tuneplan.matrix import NA
    from tuneplan.timing_generation import placements

    spec = resolve_model("qwen2.5-7b")
    job = Job.from_settings(method="lora", task="grpo", generation_engine="vllm-colocate")
    devs = resolve_devices("rtx-4090,mac-studio-m4-max")
    res = plan(spec, job, None, devs)
    reasons = dict(res.unfit)
    assert "MPS" in reasons["mac-studio-m4-max"] and "vllm" in reasons["mac-studio-m4-max"].lower()
    assert res.setups and all(s.device.id == "rtx-4090" for s in res.setups)
    mac = placements(spec, job, devs[1])
    assert mac and {p.engine for p in mac} == {"hf"}
    cells = fit_matrix([spec], ["lora"], devs, job)
    by_dev = {c.device: c for c in cells}
    assert by_dev["mac-studio-m4-max"].verdict == NA and by_dev["rtx-4090"].verdict != NA


def test_a_card_without_bf16_tensor_cores_says_so_for_bf16_jobs(capsys):
    """The T4 (Turing) lists its fp16 tensor rate: a bf16 job there is told its time is optimistic
    and to use fp16; an fp16 job is not."""
    from tuneplan.fit import support_notes

    t4, h100 = resolve_device("t4"), resolve_device("h100")
    assert not t4.bf16_tensor and h100.bf16_tensor and "fp16" in t4.tflops_basis
    bf16, fp16 = Job.from_settings(method="qlora"), Job.from_settings(method="qlora", precision="fp16")
    assert any("no bf16 tensor cores" in n and "--precision fp16" in n for n in support_notes(t4, bf16))
    assert not any("bf16 tensor" in n for n in support_notes(t4, fp16) + support_notes(h100, bf16))
    assert main(["estimate", "qwen2.5-0.5b", "--method", "qlora", "--gpu", "t4"]) == 0
    assert "t4 has no bf16 tensor cores" in " ".join(capsys.readouterr().out.split())
