"""`plan --png`: one stacked time bar per ranked setup (tuneplan.cli.timebars), written through
the safe writer (no overwrite without --force), and the bars' data from a pure function whose
segments sum to each setup's step (or run) time."""

import math
import struct

import pytest
from cli_run import cli

from tuneplan.cli.timebars import COMMUNICATION, GROUPS, group_of, time_bars
from tuneplan.hardware import resolve_devices
from tuneplan.job import Job
from tuneplan.models import resolve_model
from tuneplan.plan import make_dataset, plan_report

ARGV = ["plan", "llama-3.1-70b", "--method", "full", "--devices", "h100", "--dataset-tokens", "100M"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def report_of(dataset_tokens=None, devices="h100", top=15):
    spec = resolve_model("llama-3.1-70b")
    job = Job.from_settings(method="full")
    return plan_report(spec, job, make_dataset(dataset_tokens), resolve_devices(devices), top=top)


@pytest.fixture(scope="module")
def run_report():
    return report_of("100M")


def test_segments_sum_to_the_run_time(run_report):
    data = time_bars(run_report)
    setups = run_report.result.setups
    assert data.basis == "run" and len(data.bars) == len(setups) >= 2
    for bar, s in zip(data.bars, setups, strict=True):
        assert math.isclose(sum(g.seconds for g in bar.segments), s.run.run_s, rel_tol=1e-9)
        assert math.isclose(bar.total_s, s.run.run_s, rel_tol=1e-12)
        assert math.isclose(sum(bar.by_group().values()), s.run.run_s, rel_tol=1e-9)
        # the step's own split, scaled by its steps in the run
        scale = s.run.steps_per_epoch * s.run.dataset.epochs
        assert math.isclose(sum(g.seconds for g in bar.segments) / scale, s.run.step.step_s, rel_tol=1e-9)
        assert bar.by_group()["compute"] > 0 and all(g.group in GROUPS for g in bar.segments)
    # labelled as the plan table labels them, in rank order
    assert [b.rank for b in data.bars] == list(range(1, len(setups) + 1))
    assert any("over" in b.label and "machines" in b.label for b in data.bars)  # whole machines, with the layout
    assert any(b.by_group()[COMMUNICATION] > 0 for b in data.bars)  # FSDP gathers across machines are exposed
    assert "hours" in data.axis_label or "minutes" in data.axis_label


def test_segments_sum_to_the_step_time_without_a_dataset():
    report = report_of(None, devices="h100,a100-80gb-sxm,b200", top=5)
    data = time_bars(report, top=5)
    assert data.basis == "step" and "seconds per optimizer step" in data.axis_label
    assert len(data.bars) == min(5, len(report.result.setups))
    for bar, s in zip(data.bars, report.result.setups[:5], strict=True):
        step = s.step or s.run.step
        assert math.isclose(sum(g.seconds for g in bar.segments), step.step_s, rel_tol=1e-9)
        assert {g.term for g in bar.segments} <= {k for k, _ in step.breakdown}


def test_groups_of_the_breakdown_terms():
    assert group_of("compute") == "compute" and group_of("optimizer") == "optimizer"
    assert group_of("pipeline bubble") == "pipeline bubble"
    for kind in ("tensor parallel", "ZeRO-3/FSDP gathers", "data-parallel sync", "expert all-to-all"):
        assert group_of(kind) == COMMUNICATION


def test_figure_has_one_bar_per_setup(run_report):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from tuneplan.cli.timebars import figure

    data = time_bars(run_report)
    fig = figure(data)
    try:
        ax = fig.axes[0]
        n = len(data.bars)
        assert [t.get_text() for t in ax.get_yticklabels()][0].startswith("#1  ")
        assert len(ax.get_yticklabels()) == n
        assert ax.containers and all(len(c) == n for c in ax.containers)  # one barh per term
        assert len(ax.containers) == len(data.terms)
        assert "run time" in ax.get_xlabel()
    finally:
        plt.close(fig)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plan_png_writes_and_refuses_to_overwrite(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "times"
    code, out, err = cli(capsys, *ARGV, "--png", target)
    png = tmp_path / "times.png"  # .png added
    assert code == 0, err
    assert f"PNG written to {png}" in " ".join(out.split())
    data = png.read_bytes()
    w, h = _png_size(data)
    assert w > 400 and h > 150
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # no overwrite without --force: one line, exit 2, the file as it was
    code, out, err = cli(capsys, *ARGV, "--png", png)
    assert code == 2 and err.count("\n") == 1 and "--force" in err and "Traceback" not in err
    assert out == ""  # refused before anything was computed or printed
    assert png.read_bytes() == data
    code, out, err = cli(capsys, *ARGV, "--png", png, "--force")
    assert code == 0 and png.read_bytes()[:8] == PNG_MAGIC

    # a wrong suffix is refused; with --json the path goes to stderr, stdout stays JSON
    code, _, err = cli(capsys, *ARGV, "--png", tmp_path / "t.jpg")
    assert code == 2 and "must end in .png" in err
    code, out, err = cli(capsys, *ARGV, "--json", "--png", tmp_path / "j.png")
    assert code == 0 and out.lstrip().startswith("{") and "PNG written to" in err
    assert (tmp_path / "j.png").read_bytes()[:8] == PNG_MAGIC


def test_plan_png_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    code, out, err = cli(capsys, *ARGV, "--png", tmp_path / "t.png")
    assert code == 2 and err.count("\n") == 1 and "matplotlib" in err and "pip install -e '.[plot]'" in err
    assert out == "" and not list(tmp_path.iterdir())


def test_plan_json_has_the_breakdown_the_page_draws(capsys):
    import json

    code, out, _ = cli(capsys, *ARGV, "--json")
    assert code == 0
    for s in json.loads(out)["setups"]:
        step = s["time"]["step"]
        assert math.isclose(sum(step["breakdown"].values()), step["step_s"], rel_tol=1e-9)
        assert s["time"]["run_s"] > 0
