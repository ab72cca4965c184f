"""The uncertainty band of a memory estimate: how far measured peaks of this kind of job fell
from tuneplan's estimate, as a 90% band around the estimate (bytes per GPU).

Fitted, not stated: from the residuals of benchmarks/measured_runs.py on the calibration rows
(benchmarks/data/calibration/memory.csv, point measurements, the rows judged wrong in the data
left out), written to tuneplan/data/uncertainty.json by `python benchmarks/measured_runs.py`
with the rows it holds, the date and the commit (tests/test_measured_runs.py fails when the
committed table differs from the benchmark's).

Per row the ratio measured / estimated (on the counter the row measured: allocated, reserved
or device) is taken; the band of an estimate of P bytes is [P x low, P x high] where low and
high are split-conformal quantiles of those ratios, one per side at (1 + level) / 2: with n
ratios sorted, high is the k-th smallest and low the k-th largest, k = ceil((n + 1) x 0.95)
for a 90% band (Vovk et al. 2005; Lei et al. 2018, "Distribution-free predictive inference
for regression", JASA, sec. 2.2). Under exchangeable rows a new run lands inside with
probability >= 90%; k <= n needs n >= 19 rows, so a kind of job with fewer rows takes the
band of the next coarser kind:

    method x quantisation x sharding x framework  ->  method x quantisation x sharding
    ->  method x quantisation  ->  quantisation  ->  any job.

Sources are not exchangeable (a new stack version can differ from all of them), so the
benchmark also reports leave-one-source-out coverage: each source's rows judged by a band
fitted without them. The ratios apply to the device peak as they were measured on their own
counter (an approximation: the context and allocator share of the peak differ by counter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from tuneplan.job import Job
from tuneplan.units import GiB

LEVEL = 0.9
# the kind's fields, finest first; a level's key is the values of its fields
FIELDS = ("method", "quant", "sharding", "framework")
LEVELS: tuple[tuple[str, ...], ...] = (FIELDS, FIELDS[:3], FIELDS[:2], ("quant",), ())
TABLE_FILE = "data/uncertainty.json"


def min_rows(level: float = LEVEL) -> int:
    """Fewest rows whose conformal quantile at (1 + level) / 2 is finite: ceil((n + 1) q) <= n."""
    q = (1 + level) / 2
    n = 1
    while math.ceil((n + 1) * q) > n:
        n += 1
    return n


def kind_of(job: Job) -> dict[str, str]:
    """The kind of a job, as the band's table keys it: method, base quantisation (16-bit when
    not quantised), sharding (single GPU, or the layout's sharding, +offload) and framework."""
    m, p = job.method, job.parallel
    quant = m.quant if m.weight_bits else "16-bit"
    if p.num_gpus == 1:
        sharding = "single GPU"
    else:
        sharding = p.sharding + ("+offload" if p.offload_params or p.offload_optimizer else "")
    return {"method": m.kind, "quant": quant, "sharding": sharding, "framework": job.training.framework}


def key_of(kind: dict[str, str], fields: Sequence[str]) -> str:
    """A table key: 'method=lora, quant=16-bit' ('any job' for no fields)."""
    return ", ".join(f"{f}={kind[f]}" for f in fields) or "any job"


def conformal(ratios: Iterable[float], level: float = LEVEL) -> tuple[float, float] | None:
    """(low, high) split-conformal quantiles of measured/estimated ratios, None when too few."""
    v = sorted(ratios)
    n = len(v)
    k = math.ceil((n + 1) * (1 + level) / 2)
    if k > n:
        return None
    return v[n - k], v[k - 1]


def fit_table(rows: Iterable[tuple[str, dict[str, str], float]], level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """The band table from (row id, kind, measured/estimated ratio): every key of every level
    with enough rows -> {low, high, rows, ids}. Pure; the benchmark writes it out."""
    rows = list(rows)
    out: dict[str, dict[str, Any]] = {}
    for fields in LEVELS:
        groups: dict[str, list[tuple[str, float]]] = {}
        for rid, kind, ratio in rows:
            groups.setdefault(key_of(kind, fields), []).append((rid, ratio))
        for key in sorted(groups):
            band = conformal([r for _, r in groups[key]], level)
            if band is not None:
                # rounded outwards (4 decimals), so the stored band still holds the rows it was fitted on
                out[key] = {"low": math.floor(band[0] * 1e4) / 1e4, "high": math.ceil(band[1] * 1e4) / 1e4,
                            "rows": len(groups[key]),
                            "ids": sorted(rid for rid, _ in groups[key])}
    return out


def lookup(table: dict[str, dict[str, Any]], kind: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The finest key of the table that holds this kind, and its entry."""
    for fields in LEVELS:
        key = key_of(kind, fields)
        if key in table:
            return key, table[key]
    return None


@dataclass(frozen=True)
class Band:
    """The band around a peak estimate (bytes per GPU; GiB = 2**30 bytes when shown).

    Args:
        low_bytes / high_bytes: the peak x the low / high ratio of the kind's measured runs.
        level: the share of measured runs of this kind the band would hold (0.9).
        kind: the table key the band comes from (the job's own kind or a coarser one).
        rows: how many measured runs that key holds.
        own_kind: whether the key is the job's full kind (method x quantisation x sharding x framework).
    """

    low_bytes: int
    high_bytes: int
    level: float
    kind: str
    rows: int
    own_kind: bool

    def text(self) -> str:
        """'90% band 19.8-24.1 GiB, from 23 measured runs of method=lora, ...'."""
        of = "this kind" if self.own_kind else self.kind
        return (f"{self.level:.0%} band {self.low_bytes / GiB:.1f}-{self.high_bytes / GiB:.1f} GiB, "
                f"from {self.rows} measured runs of {of}")

    def to_dict(self) -> dict[str, Any]:
        return {"low_bytes": self.low_bytes, "high_bytes": self.high_bytes, "level": self.level,
                "kind": self.kind, "rows": self.rows, "unit": "bytes"}


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The committed band table (tuneplan/data/uncertainty.json), loaded once."""
    return json.loads(resources.files("tuneplan").joinpath(TABLE_FILE).read_text())


@lru_cache(maxsize=4096)
def _ratios(method: str, quant: str, sharding: str, framework: str) -> tuple[float, float, str, int, bool] | None:
    t = table()
    kind = {"method": method, "quant": quant, "sharding": sharding, "framework": framework}
    found = lookup(t["kinds"], kind)
    if found is None:
        return None
    key, entry = found
    return entry["low"], entry["high"], key, entry["rows"], key == key_of(kind, FIELDS)


def band(job: Job, peak_bytes: int) -> Band | None:
    """The band of `peak_bytes` for this job's kind (None only if the table is empty)."""
    k = kind_of(job)
    r = _ratios(k["method"], k["quant"], k["sharding"], k["framework"])
    if r is None:
        return None
    low, high, key, rows, own = r
    return Band(int(peak_bytes * low), int(peak_bytes * high), table()["level"], key, rows, own)


def high_bytes(job: Job, peak_bytes: int) -> int | None:
    """The band's upper end for this job's peak (None without a table entry)."""
    b = band(job, peak_bytes)
    return None if b is None else b.high_bytes
