"""The fit matrix: models x methods x devices, each cell a verdict and the largest micro-batch.

Like the tables in hardware guides, but every cell comes from the memory estimate at the
same settings (sequence length, precision, optimizer, checkpointing, ...). Per model and
method the peak for each micro-batch is computed once and shared by all devices.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace

from tuneplan.errors import TuneplanError
from tuneplan.fit import verdict_of
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.memory import peak_bytes
from tuneplan.models import ModelSpec
from tuneplan.search import MAX_BATCH, max_micro_batch
from tuneplan.units import GiB

NA = "n/a"
ANNOTATE_MAX = 4000  # cells; past this the PNG shows colours only (text rendering dominates the time)


@dataclass(frozen=True)
class Cell:
    """One model x method x device: verdict at the job's micro-batch and the largest that fits."""

    model: str
    method: str
    device: str
    verdict: str
    peak_bytes: int | None
    usable_bytes: int
    max_micro_batch: int

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

    A method that does not apply to a model (e.g. rank above hidden size) gives n/a cells.
    """
    cells: list[Cell] = []
    b0 = job.training.micro_batch
    for spec in specs:
        for kind in methods:
            j = replace(job, method=replace(job.method, kind=kind))
            memo: dict[int, int] = {}
            try:
                memo[b0] = peak_bytes(spec, j)
            except TuneplanError:
                cells.extend(Cell(spec.name, kind, d.id, NA, None, d.usable_bytes, 0) for d in devices)
                continue
            for d in devices:
                usable = d.usable_bytes
                mb = max_micro_batch(spec, j, usable, cap=batch_cap, memo=memo) if search_batch else 0
                cells.append(Cell(spec.name, kind, d.id, verdict_of(memo[b0], usable), memo[b0], usable, mb))
    return cells


def to_csv(cells: list[Cell]) -> str:
    """CSV text, one row per cell; sizes in GiB (2**30 bytes)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "method", "device", "verdict", "peak_gib", "usable_gib", "headroom", "max_micro_batch"])
    for c in cells:
        w.writerow([c.model, c.method, c.device, c.verdict,
                    "" if c.peak_bytes is None else f"{c.peak_bytes / GiB:.2f}", f"{c.usable_bytes / GiB:.2f}",
                    "" if c.headroom is None else f"{c.headroom:.3f}", c.max_micro_batch])
    return buf.getvalue()


def write_png(cells: list[Cell], path: str, title: str) -> None:
    """Heatmap: rows model/method, columns devices; colour = verdict, number = largest micro-batch
    (numbers only up to ANNOTATE_MAX cells).

    Raises:
        TuneplanError: matplotlib is not installed (pip install 'tuneplan[plot]').
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        raise TuneplanError("--png needs matplotlib: pip install 'tuneplan[plot]'") from None
    rows = list(dict.fromkeys((c.model, c.method) for c in cells))
    cols = list(dict.fromkeys(c.device for c in cells))
    code = {"no": 0, "tight": 1, "fits": 2, NA: -1}
    grid = [[-1] * len(cols) for _ in rows]
    text = [[""] * len(cols) for _ in rows]
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    for c in cells:
        i, k = ri[(c.model, c.method)], ci[c.device]
        grid[i][k] = code[c.verdict]
        text[i][k] = str(c.max_micro_batch) if c.max_micro_batch else ("–" if c.verdict != NA else "")
    fig_w = max(6.0, 1.0 + 0.55 * len(cols))
    fig_h = max(3.0, 1.6 + 0.28 * len(rows))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    cmap = ListedColormap(["#d9d9d9", "#e06666", "#f6c26b", "#93c47d"])  # n/a, no, tight, fits
    ax.imshow([[v + 1 for v in r] for r in grid], cmap=cmap, vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{m.split('/')[-1]} · {k}" for m, k in rows], fontsize=7)
    annotate = len(rows) * len(cols) <= ANNOTATE_MAX
    if not annotate:
        title += " (numbers omitted: too many cells; see the CSV)"
    for i in range(len(rows) if annotate else 0):
        for k in range(len(cols)):
            if text[i][k]:
                ax.text(k, i, text[i][k], ha="center", va="center", fontsize=6)
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, width=max(40, int(fig_w * 11)))), fontsize=9, loc="left")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="#93c47d", label="fits (≥10% headroom)"), Patch(color="#f6c26b", label="tight"),
                       Patch(color="#e06666", label="does not fit")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title="number = largest micro-batch",
              title_fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, bbox_inches="tight")
    except OSError as e:
        raise TuneplanError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
