"""The fit matrix as a PNG heat map (matplotlib, extra `plot`); the layout comes from
tuneplan.matrix.heatmap_grid so a web page can draw the same grid."""

from __future__ import annotations

import io
import textwrap

from tuneplan.errors import TuneplanError
from tuneplan.matrix import ANNOTATE_MAX, NA, Cell, heatmap_grid

_CODE = {"no": 0, "tight": 1, "uncertain": 1, "fits": 2, NA: -1}
# tuneplan is installed from its repository (there is no PyPI package of that name to trust)
INSTALL_HINT = "pip install -e '.[plot]' in the tuneplan repository"


def check_matplotlib() -> None:
    """Refuse --png before anything is computed or written when matplotlib is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise TuneplanError(f"--png needs matplotlib: {INSTALL_HINT}")


def render_png(cells: list[Cell], title: str) -> bytes:
    """Heatmap as PNG bytes: rows model/method, columns devices; colour = verdict, number =
    largest micro-batch (numbers only up to ANNOTATE_MAX cells). Nothing is written here.

    Raises:
        TuneplanError: matplotlib is not installed, or it cannot draw the figure.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        raise TuneplanError(f"--png needs matplotlib: {INSTALL_HINT}") from None
    g = heatmap_grid(cells)
    rows, cols = g.rows, g.cols
    fig_w = max(6.0, 1.0 + 0.55 * len(cols))
    fig_h = max(3.0, 1.6 + 0.28 * len(rows))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    cmap = ListedColormap(["#d9d9d9", "#e06666", "#f6c26b", "#93c47d"])  # n/a, no, tight, fits
    ax.imshow([[_CODE[v] + 1 for v in r] for r in g.verdicts], cmap=cmap, vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{m.split('/')[-1]} · {k}" for m, k in rows], fontsize=7)
    annotate = len(rows) * len(cols) <= ANNOTATE_MAX
    if not annotate:
        title += " (numbers omitted: too many cells; see the CSV)"
    for i in range(len(rows) if annotate else 0):
        for k in range(len(cols)):
            if g.labels[i][k]:
                ax.text(k, i, g.labels[i][k], ha="center", va="center", fontsize=6)
    ax.set_title("\n".join(textwrap.wrap(title, width=max(40, int(fig_w * 11)))), fontsize=9, loc="left")
    ax.legend(handles=[Patch(color="#93c47d", label="fits (≥10% headroom)"), Patch(color="#f6c26b", label="tight or uncertain"),
                       Patch(color="#e06666", label="does not fit")],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title="number = largest micro-batch",
              title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight")
    except (OSError, ValueError) as e:
        raise TuneplanError(f"cannot draw the heat map: {e}") from None
    finally:
        plt.close(fig)
    return buf.getvalue()
