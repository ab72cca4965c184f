"""The public API re-derives nothing a call already derived (issue 26, item 15): a catalog
model is resolved once, a local config.json is read again only when it changed (path +
identity + size + mtime/ctime), and the same settings are validated once (Job.from_request),
while refusals and warnings still come every call. Timing is asserted as a ratio with a
wide margin (a loaded 2-core CI); the call counts are the real check."""

import os
import time
import warnings

import pytest

from tuneplan import api, models
from tuneplan.errors import TuneplanError, TuneplanWarning
from tuneplan.job import Job
from tuneplan.memory import estimate_memory
from tuneplan.models import resolve_model

CONFIG = ('{"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": %d, '
          '"num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000, '
          '"max_position_embeddings": 4096}')


@pytest.fixture
def counted(monkeypatch):
    """Counts of Job.from_request, models.resolve_config and models.load_config_file calls."""
    calls = {"from_request": 0, "resolve_config": 0, "load_config_file": 0}
    real_request = Job.from_request.__func__
    real_resolve, real_load = models.resolve_config, models.load_config_file

    def from_request(cls, **settings):
        calls["from_request"] += 1
        return real_request(cls, **settings)

    def resolve_config(*a, **k):
        calls["resolve_config"] += 1
        return real_resolve(*a, **k)

    def load_config_file(*a, **k):
        calls["load_config_file"] += 1
        return real_load(*a, **k)

    monkeypatch.setattr(Job, "from_request", classmethod(from_request))
    monkeypatch.setattr(models, "resolve_config", resolve_config)
    monkeypatch.setattr(models, "load_config_file", load_config_file)
    api._JOB_CACHE.clear()
    return calls


def test_same_settings_are_validated_once(counted):
    a = api.estimate("llama-3.1-8b", method="qlora", seq_len=4096, batch=2)
    assert counted["from_request"] == 1
    b = api.estimate("llama-3.1-8b", method="qlora", seq_len=4096, batch=2)
    assert counted["from_request"] == 1  # cached: not re-validated
    assert a.peak_bytes == b.peak_bytes and a.job == b.job
    api.estimate("llama-3.1-8b", method="qlora", seq_len=4096, batch=4)
    assert counted["from_request"] == 2  # other settings: validated
    api.fit("llama-3.1-8b", "rtx-4090", method="qlora", seq_len=4096, batch=2)
    assert counted["from_request"] == 2  # fit shares the cache
    # a catalog name is looked up, never re-resolved through resolve_config (no config copy)
    assert counted["resolve_config"] == 0
    # figures equal the core's on the same job
    spec = resolve_model("llama-3.1-8b")
    assert a.peak_bytes == estimate_memory(spec, Job.from_request(method="qlora", seq_len=4096, batch=2)).peak_bytes


def test_cache_keeps_types_and_refusals(counted):
    api.estimate("llama-3.1-8b", method="lora", micro_batch=1)
    # True == 1 in Python, but micro_batch=True is refused, every time
    for _ in range(2):
        with pytest.raises(TuneplanError):
            api.estimate("llama-3.1-8b", method="lora", micro_batch=True)
    # a setting the method ignores is refused every time, not cached
    for _ in range(2):
        with pytest.raises(TuneplanError, match="rank"):
            api.estimate("llama-3.1-8b", method="full", rank=64)
    # a list setting is not cached, and still works
    a = api.estimate("llama-3.1-8b", method="lora", targets=["q_proj", "v_proj"])
    b = api.estimate("llama-3.1-8b", method="lora", targets="q_proj,v_proj")
    assert a.peak_bytes == b.peak_bytes


def test_long_context_warning_every_call():
    api._JOB_CACHE.clear()
    for _ in range(2):
        with pytest.warns(TuneplanWarning):
            api.estimate("llama-3.2-1b", method="lora", seq_len=300_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.estimate("llama-3.2-1b", method="lora", seq_len=300_000, allow_long_context=True)


def test_local_config_read_again_only_when_changed(tmp_path, counted):
    p = tmp_path / "config.json"
    p.write_text(CONFIG % 4)
    a = api.estimate(str(p), method="lora")
    assert counted["load_config_file"] == 1
    assert api.estimate(str(p), method="lora").peak_bytes == a.peak_bytes
    assert api.estimate(p, method="lora").peak_bytes == a.peak_bytes  # os.PathLike: same file, same name
    assert counted["load_config_file"] == 1
    # edited: more layers, a larger file
    p.write_text(CONFIG % 8)
    b = api.estimate(str(p), method="lora")
    assert counted["load_config_file"] == 2 and b.peak_bytes > a.peak_bytes
    # same size, another content: the mtime (and ctime) say it changed
    st = p.stat()
    p.write_text(CONFIG % 6)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    c = api.estimate(str(p), method="lora")
    assert counted["load_config_file"] == 3 and a.peak_bytes < c.peak_bytes < b.peak_bytes
    # a folder holding config.json is the same file
    assert api.estimate(str(tmp_path), method="lora").peak_bytes == c.peak_bytes
    # broken: refused every time, never served from the cache
    p.write_text("{not json")
    for _ in range(2):
        with pytest.raises(TuneplanError, match="not valid JSON"):
            api.estimate(str(p), method="lora")
    p.unlink()
    with pytest.raises(TuneplanError):
        api.estimate(str(p), method="lora")


def test_api_within_a_wide_margin_of_the_core():
    """Aim (benchmarks/speed.py): the API at most 1.5x the core; asserted at 3x so a loaded
    CI machine does not fail it. The fastest of many single calls of each, interleaved (a
    minimum is what load disturbs least), with up to three tries."""
    settings = {"method": "qlora", "seq_len": 4096, "batch": 2}
    spec, job = resolve_model("llama-3.1-8b"), Job.from_request(**settings)
    api.estimate("llama-3.1-8b", **settings)
    clock = time.perf_counter
    for _ in range(3):
        best_api = best_core = float("inf")
        for _ in range(200):
            t0 = clock()
            api.estimate("llama-3.1-8b", **settings)
            t1 = clock()
            estimate_memory(spec, job)
            t2 = clock()
            best_api, best_core = min(best_api, t1 - t0), min(best_core, t2 - t1)
        if best_api < 3 * best_core:
            break
    assert best_api < 3 * best_core, (best_api, best_core)
