"""Unified-memory machines (issue #13): the catalog rows, the usable-memory rules, offload
counted as the same memory, and the GB10 pair over ConnectX-7."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts_loader import load_script

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.fit import NO, candidate_changes, cheapest_change, fit_verdict
from tuneplan.hardware import devices, resolve_device, resolve_devices
from tuneplan.job import Job
from tuneplan.matrix import fit_matrix
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_model
from tuneplan.plan import plan
from tuneplan.search import cheapest, max_micro_batch, min_gpus, pool_bytes
from tuneplan.timing import Dataset
from tuneplan.units import GiB

ROOT = Path(__file__).resolve().parents[1]
UNIFIED = ["dgx-spark", "asus-ascent-gx10", "m4-max", "mac-studio-m4-max-64gb", "macbook-pro-m5-max",
           "mac-studio-m5-ultra-192gb", "strix-halo", "framework-desktop-64gb"]


# ---------------------------------------------------------------- catalog


def test_catalog_size_readme_and_sources():
    devs = devices()
    readme = (ROOT / "README.md").read_text()
    assert f"bundled device catalog ({len(devs)} devices" in readme
    for d in devs.values():
        assert d.sources and d.bandwidth_gbps > 0, d.id
    # the shared catalog's 50 rows keep their ids and order; project rows come after
    ids = list(devs)
    assert ids[0] == "rtx-3060-12gb" and ids.index("tpu-v6e") == 49


@pytest.mark.parametrize("name,expect", [
    ("mac-studio-m4-max-64gb", 64), ("m4-max-36gb", 36), ("mac-studio-m4-max-128gb", 128), ("m4-max", 128),
    ("macbook-pro-m4-max-48gb", 48), ("m3-max-96gb", 96), ("macbook-pro-m3-max-128gb", 128),
    ("m3-ultra-96gb", 96), ("mac-studio-m3-ultra-256gb", 256), ("mac-studio-m3-ultra-512gb", 512),
    ("m5-max-128gb", 128), ("macbook-pro-m5-max-64gb", 64), ("mac-studio-m5-max", 128), ("m5-ultra", 192),
    ("dgx-spark", 128), ("gx10", 128), ("framework-desktop-64gb", 64), ("framework-desktop-128gb", 128),
    ("evo-x2", 128), ("gmktec-evo-x2-64gb", 64),
])
def test_memory_configurations_by_name(name, expect):
    d = resolve_device(name)
    assert d.unified and d.memory_gib == expect


def test_unannounced_and_derived_figures_are_flagged():
    for name in ("mac-studio-m5-max-128gb", "mac-studio-m5-ultra-192gb"):
        assert "NOT ANNOUNCED" in resolve_device(name).unconfirmed
    for d in resolve_devices("unified"):
        if d.vendor == "Apple" and d.bf16_tflops:
            assert d.tflops_basis.startswith("fp32"), d.id  # Apple publishes no tensor figure
    m5 = resolve_device("macbook-pro-m5-max")
    assert "Neural Accelerators" in m5.tflops_basis and "derived" in m5.unconfirmed


def test_build_script_reproduces_devices_json():
    shared = ROOT.parent / "shared" / "catalog" / "hardware.csv"
    if not shared.exists():
        pytest.skip("shared catalog not present")
    mod = load_script("scripts/build_device_catalog.py", "bdc")
    built = mod.build(mod.read_rows(shared, mod.EXTRA_CSV))
    committed = json.loads((ROOT / "src" / "tuneplan" / "data" / "devices.json").read_text())["devices"]
    assert built == committed, "devices.json is stale: run python scripts/build_device_catalog.py"


# ---------------------------------------------------------------- usable memory rules


def test_usable_memory_rules_per_machine():
    assert resolve_device("m4-max").usable_bytes == int(107.52 * GiB)  # macOS 26, measured at 128 GiB
    assert resolve_device("m4-max-36gb").usable_bytes == int(28.08 * GiB)  # measured at 36 GiB
    assert resolve_device("m4-max-64gb").usable_bytes == int(64 * GiB * 3 / 4)  # not measured: older 3/4 rule
    assert resolve_device("m3-ultra-96gb").usable_bytes == int(96 * GiB * 3 / 4)
    for gb10 in ("dgx-spark", "gx10"):
        assert resolve_device(gb10).usable_bytes == int(cal.DGX_SPARK_USABLE_GIB * GiB)
    assert resolve_device("framework-desktop-64gb").usable_bytes == int(48 * GiB)  # VGM 3/4
    for d in resolve_devices("unified"):
        assert 0 < d.usable_bytes < d.memory_gib * GiB, d.id
        assert "iogpu.wired_limit_mb" in d.usable_rule or d.vendor != "Apple"


# ---------------------------------------------------------------- offload is the same memory


@pytest.mark.parametrize("dev", UNIFIED)
def test_offload_counts_in_the_pool_and_is_never_a_fix(dev):
    d = resolve_device(dev)
    spec = resolve_model("qwen2.5-14b")
    base = Job.from_settings(method="full")
    off = base.with_settings(offload_optimizer=True)
    est = estimate_memory(spec, off)
    assert est.cpu_bytes > 0
    v = fit_verdict(spec, off, d)
    assert v.offloaded_bytes == est.cpu_bytes
    assert pool_bytes(spec, off, unified=True) == est.peak_bytes + est.cpu_bytes
    # offloading saves nothing on a unified machine: the pool shrinks at most by the caching
    # allocator's overhead on the moved states (host-side buffers do not go through it)
    assert pool_bytes(spec, off, unified=True) >= (1 - 2 * cal.ALLOCATOR_OVERHEAD) * pool_bytes(spec, base, unified=True)
    for ch in candidate_changes(base, d, spec):
        assert ch.steps[0].kind != "offload", ch.description
    big = resolve_model("llama-3.1-405b")
    ch = cheapest_change(big, base, d)
    if ch is not None:
        assert not (ch.job.parallel.offload_optimizer or ch.job.parallel.offload_params), ch.description
    assert fit_verdict(big, base, d).verdict == NO


def test_searches_and_planner_count_offload_on_unified():
    spec, mac = resolve_model("qwen2.5-14b"), resolve_device("m4-max-64gb")
    off = Job.from_settings(method="full", offload_optimizer=True)
    # the offloaded job does not fit the 48 GiB pool, so no search may say it does
    assert max_micro_batch(spec, off, mac.usable_bytes, unified=True) == 0
    assert min_gpus(spec, off, mac) is None
    assert cheapest(spec, off, [mac]) == []
    assert plan(spec, off, Dataset(1_000_000), [mac]).setups == ()
    cell = fit_matrix([spec], ["full"], [mac], off)[0]
    assert cell.verdict == NO and cell.peak_bytes == pool_bytes(spec, off.on_vendor(mac.vendor), unified=True)
    # on a discrete GPU the same offload does move bytes out of device memory
    h100 = resolve_device("h100")
    assert fit_verdict(spec, off, h100).offloaded_bytes == 0
    assert pool_bytes(spec, off) < pool_bytes(spec, Job.from_settings(method="full"))


def test_lora_qlora_on_unified_plan_setups_fit_the_pool():
    spec = resolve_model("llama-3.1-8b")
    res = plan(spec, Job.from_settings(method="qlora"), Dataset(10_000_000), resolve_devices("unified"))
    assert res.setups
    for s in res.setups:
        assert s.peak_bytes + s.offloaded_bytes <= s.device.usable_bytes
        assert not (s.job.parallel.offload_optimizer or s.job.parallel.offload_params)


# ---------------------------------------------------------------- two GB10 boxes over ConnectX-7


@pytest.mark.parametrize("dev", ["dgx-spark", "gx10"])
def test_gb10_pair_over_connectx7(dev):
    d = resolve_device(dev)
    assert d.max_count == 2 and d.link_kind == "ethernet" and d.link_gbps == 25.0  # 200 Gb/s per direction
    assert d.peer_gbps(2) == pytest.approx(25.0 * cal.LINK_EFFICIENCY)
    spec = resolve_model("llama-3.1-70b")
    lora = Job.from_settings(method="lora")
    assert fit_verdict(spec, lora, d).verdict == NO  # 141 GB of bf16 weights: not on one box
    for sharding in ("fsdp", "zero3"):
        pair = lora.with_settings(num_gpus=2, sharding=sharding)
        assert fit_verdict(spec, pair, d).verdict != NO
    ddp = Job.from_settings(method="qlora", num_gpus=2)  # DDP: each box holds the whole model
    assert fit_verdict(resolve_model("llama-3.1-8b"), ddp, d).verdict != NO
    setups = plan(spec, lora, Dataset(10_000_000), [d]).setups
    assert setups and min(s.count for s in setups) == 2  # the fewest: one pair (more pairs run faster)
    with pytest.raises(TuneplanError, match="whole machines"):  # a pair is one machine; clusters are pairs
        fit_verdict(spec, lora.with_settings(num_gpus=3, sharding="fsdp"), d)
    assert fit_verdict(spec, lora.with_settings(num_gpus=4, sharding="fsdp"), d).verdict != NO
    mac = resolve_device("m5-max")
    assert mac.max_count == 1


# ---------------------------------------------------------------- the runtime each device runs

@pytest.mark.parametrize("device_id", ["mac-studio-m4-max-128gb", "h100-sxm"])
def test_estimate_matrix_plan_and_search_agree_on_the_device_runtime(device_id):
    """HF on a Mac runs on MPS (no CUDA context, no caching-allocator overhead): `estimate
    --gpu`, the matrix, the planner and the fewest-GPU search give the same peak."""
    spec, dev = resolve_model("llama-3.1-8b"), resolve_device(device_id)
    job = Job.from_settings(method="lora", seq_len=2048)
    on_device = job.on_vendor(dev.vendor)
    expected = pool_bytes(spec, on_device, dev.unified)
    if dev.vendor == "apple":
        assert on_device.training.rt.name == "mps" and expected < pool_bytes(spec, job, dev.unified)
    cell = fit_matrix([spec], ["lora"], [dev], job, search_batch=False)[0]
    assert cell.peak_bytes == expected
    n, found = min_gpus(spec, job, dev)
    assert n == 1 and found.training.runtime == on_device.training.runtime
    setups = plan(spec, job, None, [dev], tune=False).setups
    assert setups and all(s.job.training.runtime == on_device.training.runtime for s in setups)
    assert setups[0].peak_bytes == pool_bytes(spec, setups[0].job.on_vendor(dev.vendor), dev.unified)
