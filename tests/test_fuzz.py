"""Fuzz (hypothesis): config.json contents and files, CLI lines and API calls.

Every generated case must end in a right answer or one clear line: a TuneplanError (API)
or exit code 2 with one line on stderr (CLI); any other exception fails. Each case must
take under 10 s. Every success is checked:
- the components sum to the peak; every figure is a finite, non-negative number (JSON
  without NaN/Infinity) and the peak is positive;
- a fit verdict agrees with peak (+ offloaded bytes on unified memory) against usable
  memory, and a suggested change fits;
- memory never falls when the micro-batch or the sequence length grows;
- plan setups fit their device, rank 10%-headroom setups first, and have finite times.

Derandomized (a fixed seed per test) so CI is reproducible; the counts of cases, clean
errors and successes are printed at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tuneplan
from tuneplan.cli import main
from tuneplan.errors import TuneplanError, TuneplanWarning
from tuneplan.fit import FITS, NO, TIGHT, UNCERTAIN, job_verdict, verdict_of
from tuneplan.hardware import devices as all_devices
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import KNOWN_TYPES, catalog, spec_from_config
from tuneplan.search import MAX_BATCH, offloads, pool_bytes
from tuneplan.uncertainty import high_bytes

LIMIT_S = 10.0
COUNTS = {"cases": 0, "clean errors": 0, "successes": 0}
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
WORK = Path(tempfile.mkdtemp(prefix="tuneplan-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


def _case(fn):
    """Run one case: count it, time it, and classify success / clean error."""
    COUNTS["cases"] += 1
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TuneplanWarning)
            result = fn()
    except TuneplanError as e:
        assert "\n" not in str(e) and str(e), repr(e)
        COUNTS["clean errors"] += 1
        result = None
    elapsed = time.perf_counter() - start
    assert elapsed < LIMIT_S, f"case took {elapsed:.1f} s"
    if result is not None:
        COUNTS["successes"] += 1
    return result


# ---------------------------------------------------------------- invariants


def _finite_json(obj) -> None:
    json.dumps(obj, allow_nan=False, default=str)  # raises on NaN / Infinity


def check_estimate(est) -> None:
    parts = [c.bytes for c in est.components]
    assert sum(parts) == est.peak_bytes > 0
    assert all(isinstance(b, int) and b >= 0 for b in parts)
    assert est.cpu_bytes >= 0 and est.total_params > 0 and 0 <= est.trainable_params <= est.total_params
    assert all(0 <= b <= est.peak_bytes for _, b in est.phase_bytes)
    assert est.peak_allocated_bytes <= est.peak_reserved_bytes <= est.device_bytes == est.peak_bytes
    _finite_json(est.to_dict())


def check_monotone(spec, job) -> None:
    """Memory never falls when the micro-batch or the sequence grows."""
    base = estimate_memory(spec, job).peak_bytes
    t = job.training
    for more in ({"micro_batch": t.micro_batch + 1}, {"seq_len": t.seq_len * 2}):
        try:
            bigger = job.with_settings(**more)
        except TuneplanError:
            continue
        assert estimate_memory(spec, bigger).peak_bytes >= base, (spec.name, job, more)


def check_fit(v) -> None:
    assert v.verdict == verdict_of(v.peak_bytes + v.offloaded_bytes, v.usable_bytes, v.high_bytes)
    assert math.isfinite(v.headroom)
    if v.change is not None:
        assert v.change.peak_bytes <= v.usable_bytes
        assert v.change.peak_bytes == pool_bytes(_spec_of(v), v.change.job, v.device.unified)
        if v.verdict != NO:  # a tight or uncertain job's change is to 10% headroom and a clear band
            assert job_verdict(v.change.job, v.change.peak_bytes, v.usable_bytes) == FITS
    _finite_json(v.to_dict())


_SPECS: dict[int, object] = {}


def _spec_of(v):
    return _SPECS[id(v)]


def check_plan(report) -> None:
    setups = report.result.setups
    flags = [s.verdict != FITS for s in setups]
    assert flags == sorted(flags)
    for s in setups:
        assert s.peak_bytes + s.offloaded_bytes <= s.device.usable_bytes
        high = high_bytes(s.job, s.peak_bytes)
        assert s.verdict == verdict_of(s.peak_bytes + s.offloaded_bytes, s.device.usable_bytes,
                                       None if high is None else high + s.offloaded_bytes)
        assert s.tokens_per_s > 0 and math.isfinite(s.tokens_per_s)
        assert s.run is None or (math.isfinite(s.run.run_s) and s.run.run_s > 0)
    _finite_json(report.to_dict())


def check_cells(cells, micro_batch: int) -> None:
    for c in cells:
        if c.verdict == "n/a":
            assert c.peak_bytes is None
            continue
        assert c.verdict in (FITS, TIGHT, UNCERTAIN, NO)
        assert (c.verdict == NO) == (c.peak_bytes > c.usable_bytes)
        assert (c.max_micro_batch >= min(micro_batch, MAX_BATCH)) == (c.verdict != NO)


# ---------------------------------------------------------------- strategies

SMALL = {
    "llama": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
              "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096},
    "qwen3_moe": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 32, "intermediate_size": 256, "moe_intermediate_size": 64, "num_experts": 8,
                  "num_experts_per_tok": 2, "vocab_size": 512, "decoder_sparse_step": 1, "mlp_only_layers": [0]},
    "deepseek_v3": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256,
                    "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_shared_experts": 1, "first_k_dense_replace": 1, "q_lora_rank": 64, "kv_lora_rank": 32,
                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "vocab_size": 512,
                    "topk_method": "noaux_tc"},
    "gemma2": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 32, "intermediate_size": 256, "vocab_size": 512, "sliding_window": 64},
    "phi3": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
             "vocab_size": 512},
    "gpt_oss": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 24, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2,
                "vocab_size": 512},
    "llama4_text": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "head_dim": 32, "intermediate_size": 128, "intermediate_size_mlp": 256, "num_local_experts": 4,
                    "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "vocab_size": 512},
}
CATALOG_CONFIGS = [m.config for m in catalog().values()]
FIELDS = sorted({k for c in [*SMALL.values(), *CATALOG_CONFIGS] for k in c if not isinstance(c.get(k), dict)}
                | {"model_type", "tie_word_embeddings", "attention_bias", "torch_dtype", "moe_layers",
                   "attn_logit_softcapping", "final_logit_softcapping", "text_config", "n_embd", "n_layer"})

weird = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70_000), st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 3, 4096, 2**31, 10**9, 64.0, 1e300]),
    st.text(max_size=8), st.sampled_from(["false", "true", "bfloat16", "llama", "gpt2", "bert", ""]),
    st.lists(st.integers(-2, 8), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)


@st.composite
def configs(draw):
    if draw(st.booleans()):
        mtype = draw(st.sampled_from(sorted(SMALL)))
        cfg = {"model_type": mtype, **SMALL[mtype]}
    else:
        cfg = json.loads(json.dumps(draw(st.sampled_from(CATALOG_CONFIGS))))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(FIELDS))
        if draw(st.integers(0, 9)) == 0:
            cfg.pop(key, None)
        else:
            cfg[key] = draw(weird)
    if draw(st.integers(0, 9)) == 0:
        cfg["model_type"] = draw(st.sampled_from(sorted(KNOWN_TYPES) + ["gpt2", "bert", "t5", "falcon", "x"]))
    if draw(st.integers(0, 14)) == 0:
        cfg = {"model_type": "gemma3", "text_config": cfg}
    return cfg


job_settings = st.fixed_dictionaries(
    {"method": st.sampled_from(["full", "lora", "qlora", "dora", "freeze"]),
     "micro_batch": st.integers(1, 8), "seq_len": st.sampled_from([1, 7, 128, 512, 2048, 4096])},
    optional={"checkpointing": st.sampled_from(["none", "full", "offload"]),
              "precision": st.sampled_from(["bf16", "fp32", "amp", "mixed", "fp16"]),
              "optimizer": st.sampled_from(["adamw", "adamw-8bit", "sgd", "adafactor", "lion", "paged-adamw"]),
              "framework": st.sampled_from(["hf", "unsloth", "torchtune", "litgpt", "axolotl"]),
              "attention": st.sampled_from(["sdpa", "eager", "flash"]), "fused_ce": st.booleans(),
              "grad_accum": st.integers(1, 4)},
)


# ---------------------------------------------------------------- config.json contents


@settings(FUZZ, max_examples=2500)
@given(cfg=configs(), s=job_settings)
def test_config_contents(cfg, s):
    def run():
        spec = spec_from_config(cfg, name="fuzz")
        job = Job.from_settings(**s)
        est = estimate_memory(spec, job)
        check_estimate(est)
        check_monotone(spec, job)
        return est

    _case(run)


# ---------------------------------------------------------------- config.json files

SEED_TEXT = json.dumps({"model_type": "llama", **SMALL["llama"]})


@st.composite
def config_bytes(draw):
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:  # the seed, cut or with bytes spliced in
        data = SEED_TEXT.encode()
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + draw(st.binary(max_size=6)) + data[cut:]
    if kind == 2:  # other encodings
        enc = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1"]))
        text = SEED_TEXT.replace('"llama"', draw(st.sampled_from(['"llama"', '"llamá"', '"ллама"'])))
        return text.encode(enc, errors="replace")
    if kind == 3:  # nesting
        depth = draw(st.integers(1, 5000))
        return (b"[" * depth + b"]" * depth) if draw(st.booleans()) else (b'{"a":' * depth + b"1" + b"}" * depth)
    if kind == 4:  # numbers JSON does not have, or too many digits
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "9" * 4400, "9" * 31, "-0", "1.5",
                                      "4096.0", "1e3"]))
        key = draw(st.sampled_from(["hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps"]))
        return SEED_TEXT.replace(f'"{key}": ', f'"{key}": {token}, "_was": ').encode()
    if kind == 5:
        return json.dumps(draw(configs())).encode()
    if kind == 6:
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5),
                                         st.integers(), st.none()))).encode()
    return draw(st.text(max_size=200)).encode("utf-8", errors="surrogatepass")


@settings(FUZZ, max_examples=1200)
@given(data=config_bytes(), folder=st.booleans())
def test_config_files(data, folder):
    d = Path(tempfile.mkdtemp(dir=WORK))
    path = d / "config.json"
    path.write_bytes(data)

    def run():
        est = tuneplan.estimate(str(d if folder else path), method="lora", seq_len=256)
        check_estimate(est)
        return est

    _case(run)


# ---------------------------------------------------------------- CLI lines

GOOD_CFG = WORK / "good.json"
GOOD_CFG.write_text(SEED_TEXT)
BAD_CFG = WORK / "bad.json"
BAD_CFG.write_text('{"model_type": "gpt2"}')
MODELS = ["llama-3.2-1b", "qwen2.5-0.5b", "mixtral-8x7b", "gemma-2-2b", "deepseek-v3", "gpt-oss-20b",
          "LLAMA-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "llama-3.1-8x",
          "no/such-model", "", " ", str(GOOD_CFG), str(BAD_CFG), str(WORK), "/dev/zero", "/nonexistent/config.json"]
DEVICES = ["rtx-4090", "h100", "m4-max", "dgx-spark", "strix-halo", "tpu-v5e", "RTX 4090", "rtx-4099", "unified",
           "h100,m4-max", "", "mi300x"]
COUNT_VALUES = st.one_of(st.sampled_from(["1", "2", "8", "2k", "1e3", "1_000", "0", "-5", "1.5", "1e400", "9" * 400,
                                          "nan", "inf", "two", "", "4096", "100M", str(2**40)]),
                         st.integers(-3, 5000).map(str))
NUMBER_VALUES = st.sampled_from(["0", "0.1", "0.5", "1", "2", "nan", "inf", "-1", "1e-3", "x", "1e400", "0.9"])
NAME_VALUES = {
    "--method": ["full", "lora", "qlora", "qlora-8bit", "qlora-nf4", "qlora-3bit", "dora", "freeze", "LoRA", "x"],
    "--targets": ["all-linear", "attn", "qv", "mlp", "q_proj,v_proj", "q_proj,foo", "experts", "", ",", "Q_PROJ"],
    "--quant": ["nf4", "fp4", "int8", "int4"],
    "--precision": ["bf16", "fp16", "fp32", "amp", "mixed", "fp8", "BF16"],
    "--optimizer": ["adamw", "adamw-8bit", "paged-adamw-8bit", "sgd", "lion", "adam"],
    "--checkpointing": ["none", "full", "offload", "some"],
    "--attention": ["sdpa", "flash", "eager", "xformers"],
    "--framework": ["hf", "unsloth", "torchtune", "litgpt", "megatron"],
    "--cross-entropy": ["plain", "chunked", "fused", "sparse"],
    "--sharding": ["ddp", "zero1", "zero2", "zero3", "fsdp", "zero4"],
    "--task": ["sft", "dpo"],
    "--rank-by": ["time", "cost", "purchase", "speed"],
}
COUNT_FLAGS = ["--rank", "--batch", "--seq-len", "--grad-accum", "--gpus", "--trainable-layers", "--tp", "--pp"]
FLAGS = ["--no-double-quant", "--train-embeddings", "--fused-ce", "--offload-optimizer", "--offload-params",
         "--allow-long-context", "--json"]


@st.composite
def cli_lines(draw):
    cmd = draw(st.sampled_from(["estimate", "estimate", "estimate", "plan", "plan", "matrix", "models", "devices",
                                "estimat"]))
    argv = [cmd]
    if cmd in ("models", "devices"):
        if cmd == "devices" and draw(st.booleans()):
            argv += ["--category", draw(st.sampled_from(["consumer", "unified", "gaming", "CLOUD-TPU"]))]
        return argv + (["--json"] if draw(st.booleans()) else [])
    if cmd != "matrix":
        argv.append(draw(st.sampled_from(MODELS)))
    for _ in range(draw(st.integers(0, 5))):
        pick = draw(st.integers(0, 3))
        if pick == 0:
            flag = draw(st.sampled_from(sorted(NAME_VALUES)))
            argv += [flag, draw(st.sampled_from(NAME_VALUES[flag]))]
        elif pick == 1:
            argv += [draw(st.sampled_from(COUNT_FLAGS)), draw(COUNT_VALUES)]
        elif pick == 2:
            argv.append(draw(st.sampled_from(FLAGS)))
        else:
            argv += ["--lora-dropout", draw(NUMBER_VALUES)]
    if cmd == "estimate" and draw(st.booleans()):
        argv += ["--gpu", draw(st.sampled_from(DEVICES))]
    if cmd == "plan":
        argv += ["--devices", draw(st.sampled_from(DEVICES[:6] + ["h100,rtx-4090", "rtx-4099"]))]
        ds = draw(st.integers(0, 3))
        if ds == 1:
            argv += ["--dataset-tokens", draw(COUNT_VALUES)]
        elif ds == 2:
            argv += ["--samples", draw(COUNT_VALUES), "--mean-tokens", draw(NUMBER_VALUES)]
        for flag in draw(st.lists(st.sampled_from(["--epochs", "--utilisation", "--usd-per-kwh", "--efficiency"]),
                                  max_size=2)):
            argv += [flag, draw(NUMBER_VALUES)]
        for flag in draw(st.lists(st.sampled_from(["--top", "--max-gpus", "--max-batch", "--saves"]), max_size=2)):
            argv += [flag, draw(COUNT_VALUES)]
        if draw(st.booleans()):
            argv += ["--rank-by", draw(st.sampled_from(NAME_VALUES["--rank-by"]))]
    if cmd == "matrix":
        argv += ["--models", draw(st.sampled_from(["llama-3.2-1b", "llama-3.2-1b,qwen2.5-0.5b", "llama-3.1-8x", "",
                                                    str(GOOD_CFG)])),
                 "--devices", draw(st.sampled_from(DEVICES[:6])),
                 "--methods", draw(st.sampled_from(["full,lora,qlora", "lora", "fulll", "dora,freeze", ","]))]
        if draw(st.integers(0, 4)) == 0:
            argv += ["--csv", draw(st.sampled_from(["-", str(WORK / "m.csv"), str(WORK), str(WORK / "no" / "x.csv")]))]
            if draw(st.booleans()):
                argv.append("--force")
    return argv


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


@settings(FUZZ, max_examples=2000)
@given(argv=cli_lines())
def test_cli_lines(argv):
    COUNTS["cases"] += 1
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning on the command line would be a second line
        code, out, err = _run_cli(argv)
    assert time.perf_counter() - start < LIMIT_S, argv
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("tuneplan: error:"), (argv, err)
        COUNTS["clean errors"] += 1
        return
    assert "Traceback" not in err and out, (argv, err)
    if "--json" in argv and argv[0] == "estimate":
        data = json.loads(out)
        assert sum(c["bytes"] for c in data["components"]) == data["peak_bytes"] > 0
        if "fit" in data:
            f = data["fit"]
            band = f["uncertainty"]
            assert f["verdict"] == verdict_of(f["peak_bytes"] + f["offloaded_bytes"], f["usable_bytes"],
                                              band and band["high_bytes"] + f["offloaded_bytes"])
    COUNTS["successes"] += 1


# ---------------------------------------------------------------- API calls

API_KEYS = ["method", "rank", "targets", "quant", "batch", "micro_batch", "seq_len", "grad_accum", "precision",
            "optimizer", "checkpointing", "attention", "framework", "cross_entropy", "fused_ce", "gpus", "num_gpus",
            "sharding", "offload_optimizer", "offload_params", "tp", "pp", "task", "lora_dropout", "double_quant",
            "train_embeddings", "trainable_layers", "optim", "gc", "batch_size", "sequence"]
GOOD_VALUES = {
    "method": ["full", "lora", "qlora", "dora", "freeze", "qlora-8bit", "QLoRA"], "rank": [1, 8, 16, 64, 4096],
    "targets": ["attn", "q_proj,v_proj", ["q_proj"], ("gate_proj", "up_proj")], "quant": ["nf4", "int8"],
    "batch": [1, 2, 4], "micro_batch": [1, 3], "seq_len": [64, 2048, 8192, 200_000], "grad_accum": [1, 4],
    "precision": ["bf16", "mixed", "fp32"], "optimizer": ["adamw", "adamw-8bit", "sgd"], "optim": ["lion"],
    "checkpointing": ["none", "full", "offload"], "gc": ["none"], "attention": ["sdpa", "eager"],
    "framework": ["hf", "unsloth", "torchtune"], "cross_entropy": ["plain", "fused"], "fused_ce": [True, False],
    "gpus": [1, 2, 4, 8], "num_gpus": [1, 16], "sharding": ["ddp", "zero2", "zero3", "fsdp"],
    "offload_optimizer": [True], "offload_params": [True], "tp": [1, 2], "pp": [1], "task": ["sft", "grpo"],
    "lora_dropout": [0.0, 0.1], "double_quant": [False], "train_embeddings": [True], "trainable_layers": [1, 4],
}
api_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.integers(10**15, 10**400),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                       st.lists(st.text(max_size=4), max_size=2))


@st.composite
def api_settings(draw):
    out = {}
    for key in draw(st.lists(st.sampled_from(API_KEYS), max_size=5, unique=True)):
        good = GOOD_VALUES.get(key)
        out[key] = draw(st.sampled_from(good)) if good and draw(st.integers(0, 3)) else draw(api_values)
    return out


@settings(FUZZ, max_examples=2500)
@given(model=st.sampled_from(["llama-3.2-1b", "qwen2.5-0.5b", "mixtral-8x7b", "llama-3.1-8b", "qwen3-30b-a3b",
                              "gemma-2-2b", "deepseek-v3", "phi-3.5-mini", "llama-4-scout"]),
       call=st.sampled_from(["estimate", "estimate", "fit", "fit", "plan", "matrix"]),
       device=st.sampled_from(["rtx-3060-12gb", "rtx-4090", "h100", "m4-max", "dgx-spark", "strix-halo", "tpu-v5e",
                               "mi300x", "b200"]),
       s=api_settings())
def test_api_calls(model, call, device, s):
    def run():
        if call == "estimate":
            est = tuneplan.estimate(model, **s)
            check_estimate(est)
            check_monotone(est.model, est.job)
            return est
        if call == "fit":
            v = tuneplan.check_fit(model, device, limits=True, **s)
            _SPECS[id(v)] = tuneplan.estimate(model, allow_long_context=True, **s).model
            check_fit(v)
            return v
        if call == "plan":
            s.pop("gpus", None), s.pop("num_gpus", None)
            report = tuneplan.plan_job(model, devices=[device, "rtx-4090"], dataset_tokens=s.pop("batch_size", None),
                                       **s)
            check_plan(report)
            return report
        cells = tuneplan.fit_table([model, "llama-3.2-1b"], ["full", "lora", "qlora"], [device, "h100"],
                                   **{k: v for k, v in s.items() if k != "method"})
        check_cells(cells, tuneplan.estimate("llama-3.2-1b", allow_long_context=True,
                                             **{k: v for k, v in s.items() if k != "method"}).job.training.micro_batch)
        return cells

    _case(run)


# ---------------------------------------------------------------- unified memory and headroom over the catalog


@settings(FUZZ, max_examples=800)
@given(model=st.sampled_from(sorted(catalog())), device=st.sampled_from(sorted(all_devices())), s=job_settings,
       offload=st.sampled_from([{}, {"offload_optimizer": True}, {"checkpointing": "offload"},
                                {"sharding": "zero3", "offload_params": True, "offload_optimizer": True}]))
def test_fit_over_the_catalog(model, device, s, offload):
    def run():
        v = tuneplan.check_fit(model, device, **{**s, **offload})
        _SPECS[id(v)] = tuneplan.estimate(model, allow_long_context=True, **{**s, **offload}).model
        check_fit(v)
        if v.device.unified:
            assert v.offloaded_bytes == (estimate_memory(_spec_of(v), v.job).cpu_bytes if offloads(v.job) else 0)
        else:
            assert v.offloaded_bytes == 0
        return v

    _case(run)
