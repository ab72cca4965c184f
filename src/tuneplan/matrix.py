"""The fit matrix: models x methods x devices, each cell a verdict and the largest micro-batch.

Like the tables in hardware guides, but every cell comes from the memory estimate at the
same settings (sequence length, precision, optimizer, checkpointing, ...). Per model and
method the peak for each micro-batch is computed once and shared by all devices. On
unified-memory devices offloaded bytes count against the device's memory (they stay in
the same pool); a GPU count above what one machine holds gives n/a cells.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace

from tuneplan.errors import TuneplanError
from tuneplan.fit import verdict_of
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec
from tuneplan.search import MAX_BATCH, max_micro_batch, offloads, pool_bytes
from tuneplan.uncertainty import high_bytes
from tuneplan.units import GiB

NA = "n/a"
ANNOTATE_MAX = 4000  # cells; past this the PNG shows colours only (text rendering dominates the time)


@dataclass(frozen=True)
class Cell:
    """One model x method x device: verdict at the job's micro-batch and the largest that fits.

    `peak_bytes` is what counts against usable memory (on unified memory it includes
    offloaded bytes); `note` says why a cell is n/a.
    """

    model: str
    method: str
    device: str
    verdict: str
    peak_bytes: int | None
    usable_bytes: int
    max_micro_batch: int
    note: str = ""

    @property
    def headroom(self) -> float | None:
        if self.peak_bytes is None:
            return None
        return (self.usable_bytes - self.peak_bytes) / self.usable_bytes

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "headroom": self.headroom}


def fit_matrix(specs: list[ModelSpec], methods: list[str], devices: list[Device], job: Job,
               search_batch: bool = True, batch_cap: int = MAX_BATCH) -> list[Cell]:
    """Every model x method x device cell for `job` with the method kind replaced.

    A method that does not apply to a model (e.g. rank above hidden size) gives n/a cells,
    as does a GPU count above what one machine of a device holds.
    """
    cells: list[Cell] = []
    b0 = job.training.micro_batch
    n = job.parallel.num_gpus
    for spec in specs:
        for kind in methods:
            j = replace(job, method=replace(job.method, kind=kind))
            # peak bytes by micro-batch, one memo per (runtime the framework runs on the device's
            # vendor, unified pool): devices that share both share every figure
            memos: dict[tuple[str | None, bool], dict[int, int]] = {}
            try:  # the job as given (the framework's default runtime, no unified pool); a method
                # that does not apply to the model is n/a everywhere
                memos[(j.training.runtime, False)] = {b0: pool_bytes(spec, j)}
            except TuneplanError as e:
                cells.extend(Cell(spec.name, kind, d.id, NA, None, d.usable_bytes, 0, str(e)) for d in devices)
                continue
            for d in devices:
                usable = d.usable_bytes
                if n > d.max_count:
                    cells.append(Cell(spec.name, kind, d.id, NA, None, usable, 0,
                                      f"{n} GPUs: one machine holds {d.max_count} x {d.id}"))
                    continue
                # the stack may refuse this vendor's runtime: the job itself (a generation engine
                # it lacks) or its estimate (a format it cannot run)
                try:
                    jd = j.on_vendor(d.vendor)
                    unified = d.unified and offloads(jd)  # nothing offloaded: the same figures either way
                    memo = memos.setdefault((jd.training.runtime, unified), {})
                    if b0 not in memo:
                        memo[b0] = pool_bytes(spec, jd, unified=unified)
                except TuneplanError as e:
                    cells.append(Cell(spec.name, kind, d.id, NA, None, usable, 0, str(e)))
                    continue
                mb = (max_micro_batch(spec, jd, usable, cap=batch_cap, memo=memo, unified=unified)
                      if search_batch else 0)
                high = high_bytes(jd, memo[b0])  # the uncertainty band's upper end (tuneplan.uncertainty)
                cells.append(Cell(spec.name, kind, d.id, verdict_of(memo[b0], usable, high), memo[b0], usable, mb))
    return cells


def to_csv(cells: list[Cell]) -> str:
    """CSV text, one row per cell; sizes in GiB (2**30 bytes)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "method", "device", "verdict", "peak_gib", "usable_gib", "headroom", "max_micro_batch",
                "note"])
    for c in cells:
        w.writerow([c.model, c.method, c.device, c.verdict,
                    "" if c.peak_bytes is None else f"{c.peak_bytes / GiB:.2f}", f"{c.usable_bytes / GiB:.2f}",
                    "" if c.headroom is None else f"{c.headroom:.3f}", c.max_micro_batch, c.note])
    return buf.getvalue()


@dataclass(frozen=True)
class Grid:
    """The matrix laid out for a heat map: rows (model, method), columns devices.

    Args:
        verdicts: per row, per column: fits | tight | uncertain | no | n/a.
        labels: per row, per column: largest micro-batch, "–" when none fits, "" for n/a.
    """

    rows: tuple[tuple[str, str], ...]
    cols: tuple[str, ...]
    verdicts: tuple[tuple[str, ...], ...]
    labels: tuple[tuple[str, ...], ...]


def heatmap_grid(cells: list[Cell]) -> Grid:
    """Arrange cells into rows and columns (first-seen order) for a heat map."""
    rows = list(dict.fromkeys((c.model, c.method) for c in cells))
    cols = list(dict.fromkeys(c.device for c in cells))
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    verdicts = [[NA] * len(cols) for _ in rows]
    labels = [[""] * len(cols) for _ in rows]
    for c in cells:
        i, k = ri[(c.model, c.method)], ci[c.device]
        verdicts[i][k] = c.verdict
        labels[i][k] = str(c.max_micro_batch) if c.max_micro_batch else ("–" if c.verdict != NA else "")
    return Grid(tuple(rows), tuple(cols), tuple(map(tuple, verdicts)), tuple(map(tuple, labels)))
