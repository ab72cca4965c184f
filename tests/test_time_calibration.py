"""The time model's fitted constants equal what benchmarks/fit_time_constants.py fits from
their named measured rows, so no one can edit a constant away from its data."""

from pathlib import Path

import pytest
from scripts_loader import load_script

from tuneplan import calibration as cal

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT.parent / "shared" / "calibration"
pytestmark = pytest.mark.skipif(not (CALIBRATION / "throughput.csv").exists(), reason=f"{CALIBRATION} absent")


@pytest.fixture(scope="module")
def fit():
    return load_script("benchmarks/fit_time_constants.py")


def test_hf_efficiency_and_kernel_cost_are_the_fit(fit):
    eff, seconds, residuals = fit.fit_hf_and_kernel(fit._rows())
    assert cal.FRAMEWORK_EFFICIENCY["hf"] == pytest.approx(eff, abs=0.0005)
    assert cal.SECONDS_PER_KERNEL == pytest.approx(seconds, rel=0.001)
    # the 256-token row QW-01 is the least certain (-6.8%): its fixed per-step cost dominates
    assert all(abs(r) < 0.08 for _, r in residuals)


def test_bitsandbytes_dequant_share_is_the_fit(fit):
    share, _ = fit.fit_dequant_share(fit._rows())
    assert cal.BNB_DEQUANT_BANDWIDTH_SHARE == pytest.approx(share, abs=0.0005)


def test_torchtune_efficiency_is_the_fit(fit):
    eff, implied = fit.fit_torchtune()
    assert len(implied) == len(fit.TORCHTUNE_ROWS)
    assert cal.FRAMEWORK_EFFICIENCY["torchtune"] == pytest.approx(eff, abs=0.0005)


def test_mlx_efficiency_is_the_fit(fit):
    eff, implied = fit.fit_mlx()
    assert len(implied) == len(fit.MLX_FIT_ROWS)
    assert cal.FRAMEWORK_EFFICIENCY["mlx"] == pytest.approx(eff, abs=0.0005)
