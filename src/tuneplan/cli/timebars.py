"""`plan --png`: each ranked setup's time as one horizontal stacked bar (matplotlib, extra `plot`).

The bars come from `time_bars`, a pure function of the plan (no matplotlib): one bar per ranked
setup, split into the terms of its StepTime.breakdown (tuneplan.timing), whose sum is the step
time. Each term falls in one of four groups: compute (the micro-batches), communication (every
kind of exposed communication, each kind in its own warm shade), pipeline bubble, optimizer.
Without a dataset size the bar is one optimizer step in seconds; with one, the run: the step's
split scaled by steps per epoch x epochs, so the segments sum to the run time. The web page's
plan table draws the same split (tuneplan/web/static/app.js, timeBar) with the same colours.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

from tuneplan.cli.heatmap import INSTALL_HINT
from tuneplan.errors import TuneplanError
from tuneplan.plan import PlanReport, Setup
from tuneplan.search import describe_layout

COMPUTE, COMMUNICATION, BUBBLE, OPTIMIZER = "compute", "communication", "pipeline bubble", "optimizer"
GROUPS = (COMPUTE, COMMUNICATION, BUBBLE, OPTIMIZER)
# colours of the breakdown's terms (the web page's TIME_COLOURS in app.js are the same)
COLOURS = {
    COMPUTE: "#4e79a7", BUBBLE: "#bab0ac", OPTIMIZER: "#59a14f",
    # communication, by kind (tuneplan.timing_comm.layout_terms): warm shades
    "tensor parallel": "#e15759", "ZeRO-3/FSDP gathers": "#f28e2b", "data-parallel sync": "#ffbe7d",
    "pipeline send/recv": "#d37295", "context parallel": "#b07aa1", "expert all-to-all": "#9c755f",
}
OTHER_COMMUNICATION = "#ff9d9a"  # a kind of communication not named above
# display units of a run's time axis: (name, seconds), the first whose range holds the longest bar
_RUN_UNITS = (("seconds", 1.0, 120.0), ("minutes", 60.0, 2 * 3600.0), ("hours", 3600.0, 72 * 3600.0),
              ("days", 86400.0, float("inf")))


def group_of(term: str) -> str:
    """The group of one breakdown term: compute, pipeline bubble, optimizer, or communication
    (every other term is a kind of exposed communication)."""
    return term if term in (COMPUTE, BUBBLE, OPTIMIZER) else COMMUNICATION


def colour_of(term: str) -> str:
    return COLOURS.get(term, OTHER_COMMUNICATION)


@dataclass(frozen=True)
class Segment:
    """One term of a bar: the breakdown's name, its group, and its seconds (per step or over the run)."""

    term: str
    group: str
    seconds: float


@dataclass(frozen=True)
class TimeBar:
    """One ranked setup: its rank, label ('8 x h100-sxm TP 8'), segments and their total."""

    rank: int
    label: str
    verdict: str
    segments: tuple[Segment, ...]
    total_s: float  # the setup's step_s, or its run_s with a dataset
    tokens_per_step: int  # steps differ in size between setups (the global batch is tuned)

    def by_group(self) -> dict[str, float]:
        """Seconds per group (compute, communication, pipeline bubble, optimizer), each present."""
        out = dict.fromkeys(GROUPS, 0.0)
        for s in self.segments:
            out[s.group] += s.seconds
        return out


@dataclass(frozen=True)
class TimeBars:
    """The figure's data: bars in rank order, what they measure, and the axis unit.

    Args:
        basis: "step" (seconds per optimizer step) or "run" (the whole run, from the dataset size).
        unit / unit_s: the axis unit and its length in seconds (a step is always in seconds).
    """

    title: str
    basis: str
    bars: tuple[TimeBar, ...]
    unit: str
    unit_s: float

    @property
    def axis_label(self) -> str:
        if self.basis == "step":
            return "seconds per optimizer step (all GPUs of the setup step together)"
        return f"run time, {self.unit} (each setup's step split x its steps in the run)"

    @property
    def terms(self) -> tuple[str, ...]:
        """Every term in the bars, once, in legend order: compute, communication kinds, bubble, optimizer."""
        seen = dict.fromkeys(s.term for b in self.bars for s in b.segments)
        return tuple(sorted(seen, key=lambda t: GROUPS.index(group_of(t))))


def setup_label(s: Setup) -> str:
    """'8 x h100-sxm TP 8' as the plan table writes it (+offload where the job offloads)."""
    p = s.job.parallel
    label = f"{s.count} x {s.device.id}" + (f" {describe_layout(s.job)}" if s.count > 1 else "")
    return label + (" +offload" if p.offload_optimizer or p.offload_params else "")


def time_bars(report: PlanReport, top: int = 15) -> TimeBars:
    """One bar per ranked setup (the first `top`), split into its StepTime.breakdown terms.

    Without a dataset size the segments are seconds per optimizer step and sum to step_s; with
    one they are scaled to the run (x steps per epoch x epochs) and sum to run_s.
    """
    ds, job = report.dataset, report.job
    bars = []
    for i, s in enumerate(report.result.setups[:top], 1):
        step = s.step or s.run.step
        scale, total = (s.run.run_s / step.step_s, s.run.run_s) if s.run and step.step_s else (1.0, step.step_s)
        breakdown = step.breakdown or (("compute", step.step_s),)
        segs = tuple(Segment(name, group_of(name), v * scale) for name, v in breakdown if v > 0)
        bars.append(TimeBar(i, setup_label(s), s.verdict, segs, total, step.tokens_per_step))
    basis = "run" if ds else "step"
    unit, unit_s = "seconds", 1.0
    if basis == "run":
        longest = max((b.total_s for b in bars), default=0.0)
        unit, unit_s = next((n, u) for n, u, upto in _RUN_UNITS if longest <= upto)
    m = job.method
    what = (f"the run of {ds.tokens:,} tokens x {ds.epochs:g} epoch(s)" if ds
            else "one optimizer step (no dataset size; steps differ in tokens)")
    title = (f"{report.model}: {m.kind}" + (f" r={m.rank}" if m.is_adapter else "")
             + f", seq {job.training.seq_len}: time of {what} by term, ranked as `plan` ranks by "
             + (report.result.rank_by if ds or report.result.rank_by != "time" else "throughput"))
    return TimeBars(title, basis, tuple(bars), unit, unit_s)


def _fmt(seconds: float, data: TimeBars) -> str:
    v = seconds / data.unit_s
    text = f"{v:.3g}" if v < 100 else f"{v:,.0f}"
    return f"{text} {'s' if data.unit == 'seconds' else data.unit}"


def figure(data: TimeBars):
    """The matplotlib Figure: one horizontal stacked bar per setup, #1 at the top. One barh
    call (container) per term, with a width for every setup (0 where the setup lacks it).

    Raises:
        TuneplanError: matplotlib is not installed, or there is no setup to draw.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TuneplanError(f"--png needs matplotlib: {INSTALL_HINT}") from None
    if not data.bars:
        raise TuneplanError("--png: no setup in the list can run this job, so there is nothing to draw")
    n = len(data.bars)
    fig_w, fig_h = 10.0, 1.9 + 0.42 * n
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    ys = list(range(n))
    left = [0.0] * n
    for term in data.terms:
        widths = [sum(s.seconds for s in b.segments if s.term == term) / data.unit_s for b in data.bars]
        name = term if group_of(term) != COMMUNICATION else f"communication: {term}"
        ax.barh(ys, widths, left=left, height=0.62, color=colour_of(term), label=name,
                edgecolor="white", linewidth=0.5)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    longest = max(left)
    for y, b in zip(ys, data.bars, strict=True):
        note = _fmt(b.total_s, data) + (f" ({b.tokens_per_step:,} tokens)" if data.basis == "step" else "")
        ax.text(b.total_s / data.unit_s + longest * 0.01, y, note, va="center", fontsize=7)
    ax.set_yticks(ys, [f"#{b.rank}  {b.label}" + ("" if b.verdict == "fits" else f" ({b.verdict})")
                       for b in data.bars], fontsize=7)
    ax.invert_yaxis()  # #1 at the top
    ax.set_xlim(0, longest * (1.12 if data.basis == "run" else 1.25) or 1.0)
    ax.set_xlabel(data.axis_label, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("\n".join(textwrap.wrap(data.title, width=95)), fontsize=9, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def render_png(data: TimeBars) -> bytes:
    """The figure as PNG bytes; nothing is written here.

    Raises:
        TuneplanError: matplotlib is not installed, no setup to draw, or it cannot draw the figure.
    """
    fig = figure(data)
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight")
    except (OSError, ValueError) as e:
        raise TuneplanError(f"cannot draw the time bars: {e}") from None
    finally:
        plt.close(fig)
    return buf.getvalue()
