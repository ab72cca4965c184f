"""Money: cloud cost of a run, and when buying beats renting.

Cloud cost = run hours x devices x the device's on-demand $/hour (first confirmed quote
in the catalog, shown with provider and date). Break-even = purchase price / weekly saving, where
the weekly saving is what the same training hours would cost in the cloud minus the
electricity of running the owned devices at their TDP, at a stated utilisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device

HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class CostEstimate:
    """Cost figures in USD; None where the catalog has no price for the device.

    Args:
        cloud_usd: the run on `count` rented devices.
        purchase_usd: buying `count` devices.
        power_usd: electricity for the run on owned devices (TDP x hours x price).
        breakeven_weeks: weeks of training at `utilisation` after which owning is cheaper.
    """

    device: str
    count: int
    run_hours: float
    cloud_usd_per_hour: float | None
    cloud_quote: str
    cloud_usd: float | None
    purchase_usd: float | None
    price_basis: str
    power_usd: float | None
    utilisation: float
    usd_per_kwh: float
    breakeven_weeks: float | None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def estimate_cost(device: Device, count: int, run_seconds: float, utilisation: float = cal.DEFAULT_UTILISATION,
                  usd_per_kwh: float = cal.ELECTRICITY_USD_PER_KWH) -> CostEstimate:
    """Cloud cost of the run and purchase-vs-cloud break-even for `count` x `device`.

    Raises:
        TuneplanError: utilisation outside (0, 1], negative power price or count < 1.
    """
    if not 0 < utilisation <= 1:
        raise TuneplanError(f"utilisation must be in (0, 1], got {utilisation}")
    if not math.isfinite(usd_per_kwh) or usd_per_kwh < 0:
        raise TuneplanError(f"electricity price must be a finite, non-negative number, got {usd_per_kwh}")
    if count < 1:
        raise TuneplanError(f"device count must be at least 1, got {count}")
    hours = run_seconds / 3600
    rate = device.cloud_usd_per_hour
    quote = ""
    q = device.cloud_quote
    if q:
        quote = f"${q.usd_per_hour:.2f}/h {q.provider} ({q.date or 'undated'}{', unconfirmed' if q.unconfirmed else ''})"
    cloud = rate * count * hours if rate else None
    purchase = device.price_usd * count if device.price_usd else None
    power_kw = (device.tdp_w or 0) / 1000 * count
    power = power_kw * hours * usd_per_kwh if device.tdp_w else None
    breakeven = None
    if rate and purchase:
        weekly_hours = HOURS_PER_WEEK * utilisation
        saving = weekly_hours * (rate * count - power_kw * usd_per_kwh)
        breakeven = purchase / saving if saving > 0 else float("inf")
    return CostEstimate(device.id, count, hours, rate, quote, cloud, purchase, device.price_basis, power,
                        utilisation, usd_per_kwh, breakeven)
