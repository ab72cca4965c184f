"""The device catalog: accelerators and unified-memory machines, and what a job can use of them.

Facts come from src/tuneplan/data/devices.json (built by scripts/build_device_catalog.py
from shared/catalog/hardware.csv and the project's data/devices_extra.csv, with per-device
sources and an `unconfirmed` flag). Usable memory is derived here from those facts with the
rules in tuneplan.calibration.

Unified-memory machines (Apple silicon, GB10/DGX Spark, Strix Halo) share one pool with the
OS: usable memory is what the GPU may take of it by default (macOS working set, DGX OS free
memory, AMD Variable Graphics Memory), and what offload moves to "CPU RAM" stays in that
same pool (tuneplan.search.pool_bytes), so offload saves nothing there.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.units import GiB


@dataclass(frozen=True)
class CloudQuote:
    """One on-demand price per device-hour, with who charged it and when."""

    usd_per_hour: float
    provider: str
    date: str
    unconfirmed: bool = False


@dataclass(frozen=True)
class Device:
    """One accelerator (per GPU / per GCD / per chip) or one unified-memory machine.

    Args:
        memory_gib: physical memory per device (GiB; marketing GB of GDDR/HBM is binary).
        memory_kind: gddr | hbm | unified.
        reported_gib: total memory a framework reports, where published (else None).
        bandwidth_gbps: memory bandwidth, GB/s (10**9 bytes/s).
        bf16_tflops: dense (no sparsity) bf16 tensor TFLOPS; Apple: the FP32 rate; None if unknown.
        link_kind / link_gbps / link_group: GPU-to-GPU link as listed (NVLink figures are
            bidirectional totals) and how many devices it joins.
        max_count: largest count the planner will consider in one machine/node.
        price_usd: purchase price per device (street if known, else launch), None if unknown.
        cloud: on-demand quotes (cloud_quote picks the one the planner uses).
        fp8_tflops / fp4_tflops: dense fp8 and fp4 tensor TFLOPS (hardware.csv fp8_dense_tflops;
            scripts/build_device_catalog.py FP4_DENSE_TFLOPS with its sources); None where the
            format is not run (tuneplan.lowprec refuses --precision fp8/mxfp8/nvfp4 there).
        bf16_tensor: its tensor cores take bf16 (False for Turing, whose bf16_tflops is then the
            fp16 tensor rate: hardware.csv bf16 column "n/a (no BF16)").
    """

    id: str
    csv_id: str
    aliases: tuple[str, ...]
    vendor: str
    name: str
    category: str
    memory_gib: float
    memory_kind: str
    memory_note: str
    reported_gib: float | None
    reported_source: str
    bandwidth_gbps: float
    bf16_tflops: float | None
    tflops_basis: str
    tdp_w: float | None
    pcie_gen: int | None
    pcie_lanes: int
    link_kind: str
    link_gbps: float
    link_group: int
    interconnect: str
    max_count: int
    launch_year: int | None
    price_usd: float | None
    price_basis: str
    price_note: str
    cloud: tuple[CloudQuote, ...]
    sources: str
    unconfirmed: str
    # dense fp8 / fp4 tensor TFLOPS (None: not run there); read by tuneplan.lowprec
    fp8_tflops: float | None = None
    fp4_tflops: float | None = None
    bf16_tensor: bool = True

    @property
    def unified(self) -> bool:
        return self.memory_kind == "unified"

    @property
    def usable_bytes(self) -> int:
        """Bytes a training process can allocate (before its CUDA context), see usable_rule."""
        return _usable(self)[0]

    @property
    def usable_rule(self) -> str:
        """One sentence: how usable memory was derived."""
        return _usable(self)[1]

    @property
    def cloud_quote(self) -> CloudQuote | None:
        """The quote the planner uses: the first confirmed one, else the first."""
        confirmed = [q for q in self.cloud if not q.unconfirmed]
        return (confirmed or list(self.cloud) or [None])[0]

    @property
    def cloud_usd_per_hour(self) -> float | None:
        q = self.cloud_quote
        return q.usd_per_hour if q else None

    @property
    def host_link_gbps(self) -> float:
        """Achievable host<->device bandwidth per direction, GB/s (offload traffic).

        Unified-memory machines have no host link: "offloaded" data stays in the same memory,
        so the memory bandwidth applies (and offload saves no device memory there).
        """
        if self.unified:
            return self.bandwidth_gbps * cal.BANDWIDTH_EFFICIENCY
        gen = self.pcie_gen or 4
        return cal.PCIE_X16_GBPS.get(gen, 31.5) * self.pcie_lanes / 16 * cal.PCIE_EFFICIENCY

    def peer_gbps(self, count: int) -> float:
        """Achievable per-direction GPU-to-GPU bandwidth for `count` devices, GB/s."""
        if count <= 1:
            return float("inf")
        if self.link_kind in ("nvlink", "xgmi", "ici") or (self.link_kind == "nvlink-bridge" and count <= 2):
            return self.link_gbps / 2 * cal.LINK_EFFICIENCY
        if self.link_kind == "ethernet":
            return self.link_gbps * cal.LINK_EFFICIENCY
        return self.host_link_gbps  # through PCIe (and host memory without P2P)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["aliases"] = list(self.aliases)
        d["cloud"] = [q.__dict__ for q in self.cloud]
        d["usable_bytes"] = self.usable_bytes
        d["usable_rule"] = self.usable_rule
        return d


def _usable(d: Device) -> tuple[int, str]:
    """(usable bytes, the rule used) from the device facts and calibration rules."""
    phys = d.memory_gib * GiB
    if d.unified and d.vendor == "NVIDIA":  # GB10: DGX Spark and its OEM twins
        return int(cal.DGX_SPARK_USABLE_GIB * GiB), (
            f"GB10 (DGX Spark): {cal.DGX_SPARK_USABLE_GIB} GiB free to CUDA at boot of a {d.memory_gib:.0f} GiB "
            "unified pool shared with DGX OS")
    if d.vendor == "Apple":
        measured = cal.MACOS_26_WORKING_SET_GIB.get(round(d.memory_gib))
        if measured is not None:
            return int(measured * GiB), (
                f"macOS 26 default GPU working set (recommendedMaxWorkingSetSize) measured at {measured} GiB "
                f"({measured / d.memory_gib:.0%}) of {d.memory_gib:.0f} GiB; raise with sudo sysctl iogpu.wired_limit_mb")
        frac = cal.MACOS_GPU_FRACTION_SMALL if d.memory_gib <= cal.MACOS_SMALL_RAM_GIB else cal.MACOS_GPU_FRACTION_LARGE
        return int(phys * frac), (f"macOS default GPU wired limit (recommendedMaxWorkingSetSize) = {frac:.0%} "
                                  f"of {d.memory_gib:.0f} GiB (macOS 26 may give more; not measured at this size); "
                                  "raise with sudo sysctl iogpu.wired_limit_mb")
    if d.unified:  # AMD Strix Halo
        return int(phys * cal.STRIX_HALO_GPU_FRACTION), (
            f"Strix Halo: at most {cal.STRIX_HALO_GPU_FRACTION:.0%} of {d.memory_gib:.0f} GiB assignable to the GPU "
            "(Variable Graphics Memory); Linux GTT tuning can give more")
    if d.category == "cloud-tpu":
        frac = cal.GPU_RESERVED_FRACTION["hbm"]
        return int(phys * (1 - frac)), (f"{d.memory_gib:g} GiB HBM less {frac:.2%} (HBM rule); JAX/XLA, not PyTorch: "
                                        "the memory estimate assumes a PyTorch/CUDA step, treat it as a rough guide")
    if d.reported_gib:
        return int(d.reported_gib * GiB), f"reported total {d.reported_gib:.1f} GiB ({d.reported_source})"
    frac = cal.GPU_RESERVED_FRACTION["hbm" if d.memory_kind == "hbm" else "gddr"]
    return int(phys * (1 - frac)), (f"{d.memory_gib:g} GiB physical less {frac:.2%} driver/ECC reservation "
                                    f"({d.memory_kind.upper()})")


@lru_cache(maxsize=1)
def devices() -> dict[str, Device]:
    """All catalog devices by id, loaded once from data/devices.json."""
    raw = json.loads(resources.files("tuneplan").joinpath("data/devices.json").read_text())
    out = {}
    for r in raw["devices"]:
        lk = r["link"]
        out[r["id"]] = Device(
            id=r["id"], csv_id=r["csv_id"], aliases=tuple(r["aliases"]), vendor=r["vendor"], name=r["name"],
            category=r["category"], memory_gib=r["memory_gib"], memory_kind=r["memory_kind"],
            memory_note=r["memory_note"], reported_gib=r["reported_gib"], reported_source=r["reported_source"],
            bandwidth_gbps=r["bandwidth_gbps"], bf16_tflops=r["bf16_tflops"], tflops_basis=r["tflops_basis"],
            tdp_w=r["tdp_w"], pcie_gen=r["pcie_gen"], pcie_lanes=r["pcie_lanes"], link_kind=lk["kind"],
            link_gbps=lk["gbps"], link_group=lk["group"], interconnect=r["interconnect"], max_count=r["max_count"],
            launch_year=r["launch_year"], price_usd=r["price_usd"], price_basis=r["price_basis"],
            price_note=r["price_note"], cloud=tuple(CloudQuote(**q) for q in r["cloud"]),
            sources=r["sources"], unconfirmed=r["unconfirmed"],
            fp8_tflops=r.get("fp8_tflops"), fp4_tflops=r.get("fp4_tflops"),
            bf16_tensor=r.get("bf16_tensor", True),
        )
    return out


@lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    idx = {}
    for d in devices().values():
        for name in (d.id, d.csv_id, *d.aliases):
            idx[_norm(name)] = d.id
    return idx


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def resolve_device(name: str) -> Device:
    """Device by id, CSV id or alias (case-insensitive; spaces/underscores read as '-').

    Raises:
        TuneplanError: unknown name, with close matches.
    """
    key = _norm(name)
    idx = _index()
    if key in idx:
        return devices()[idx[key]]
    squashed = {k.replace("-", ""): v for k, v in idx.items()}
    if key.replace("-", "") in squashed:
        return devices()[squashed[key.replace("-", "")]]
    close = difflib.get_close_matches(key, list(idx), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `tuneplan devices` for the list"
    raise TuneplanError(f"unknown device {name!r}{hint}")


def resolve_devices(text: str) -> list[Device]:
    """A comma list of device names, or 'all', or a category (consumer, workstation,
    datacenter, unified, cloud-tpu)."""
    text = text.strip()
    if text.lower() == "all":
        return list(devices().values())
    out: list[Device] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        cats = [d for d in devices().values() if d.category == part.lower()]
        out.extend(cats if cats else [resolve_device(part)])
    if not out:
        raise TuneplanError("--devices is empty; give device names, a category or 'all'")
    seen: dict[str, Device] = {}
    for d in out:
        seen.setdefault(d.id, d)
    return list(seen.values())


def devices_in(category: str | None = None) -> list[Device]:
    """Catalog devices, optionally of one category (consumer, workstation, datacenter, unified, cloud-tpu).

    Raises:
        TuneplanError: no device in that category.
    """
    devs = list(devices().values())
    if category:
        devs = [d for d in devs if d.category == category]
        if not devs:
            raise TuneplanError(f"no devices in category {category!r}; "
                                "use consumer, workstation, datacenter, unified or cloud-tpu")
    return devs
