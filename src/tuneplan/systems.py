"""The systems catalog: machine types a multi-GPU job runs on, and how their GPUs talk.

Facts come from src/tuneplan/data/systems.json, one row per machine type, each link with its
source: GPUs per machine (and the NVLink domain, 72 GPUs for an NVL72 rack of 4-GPU trays),
the link between GPUs inside it (NVLink/NVSwitch, PCIe with peer-to-peer, or PCIe through host
memory where the driver refuses peer-to-peer) as per-GPU bus bandwidth per direction, and the
scale-out network (NICs per machine x Gb/s). What a collective achieves of those figures is in
tuneplan.calibration (LINK_EFFICIENCY, NET_EFFICIENCY, NCCL's per-step latencies) and the
collectives' formulas in tuneplan.collectives.

A device no row names gets a system derived from its own catalog fields (Device.link_kind,
link_gbps, PCIe generation), with one 100 Gb/s Ethernet NIC per GPU assumed for scale-out; the
system says so in its `unconfirmed` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from tuneplan import calibration as cal
from tuneplan.errors import TuneplanError
from tuneplan.hardware import Device


@dataclass(frozen=True)
class Link:
    """One link kind of a system.

    Args:
        kind: intra: nvlink | xgmi | ici | pcie | pcie-host | c2c | unified; inter: infiniband |
            roce | ethernet | thunderbolt.
        gbps: intra: per-GPU bus bandwidth per direction, GB/s (spec); inter: unused (0).
        nics / gbit: inter: NICs per machine and line rate of each, Gb/s.
        p2p: intra: GPUs read each other's memory directly (NVLink, or PCIe peer-to-peer).
        source: where the figures come from.
    """

    kind: str
    source: str
    gbps: float = 0.0
    nics: int = 0
    gbit: float = 0.0
    p2p: bool = False


@dataclass(frozen=True)
class System:
    """One machine type: its GPUs, the link inside it and the network between machines."""

    id: str
    name: str
    gpus_per_machine: int
    nvlink_domain: int
    devices: tuple[str, ...]
    intra: Link
    inter: Link
    unconfirmed: str = ""

    @property
    def intra_gbps(self) -> float:
        """Achievable bus bandwidth per GPU inside the fast domain, GB/s (per direction)."""
        if self.intra.kind in ("nvlink", "xgmi", "ici") or (self.intra.kind == "pcie" and self.intra.p2p):
            return self.intra.gbps * cal.LINK_EFFICIENCY
        if self.intra.kind in ("pcie", "pcie-host"):  # through host memory: the GPU's PCIe link
            return self.intra.gbps * cal.PCIE_EFFICIENCY
        return 0.0

    @property
    def inter_gbps(self) -> float:
        """Achievable scale-out bandwidth per GPU, GB/s: the machine's NICs shared by its GPUs."""
        return self.inter.nics * self.inter.gbit / 8 * cal.NET_EFFICIENCY / self.gpus_per_machine

    @property
    def intra_latency(self) -> float:
        """NCCL Ring/Simple step latency of the intra-machine hop (seconds)."""
        return cal.NCCL_STEP_LATENCY_S["nvlink" if self.intra.kind in ("nvlink", "xgmi", "ici") else "pci"]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "gpus_per_machine": self.gpus_per_machine,
                "nvlink_domain": self.nvlink_domain, "intra": self.intra.__dict__, "inter": self.inter.__dict__,
                "intra_gbps_achievable": self.intra_gbps, "inter_gbps_per_gpu_achievable": self.inter_gbps,
                "unconfirmed": self.unconfirmed}


def _link(r: dict) -> Link:
    return Link(kind=r["kind"], source=r["source"], gbps=float(r.get("gbps", 0)), nics=int(r.get("nics", 0)),
                gbit=float(r.get("gbit", 0)), p2p=bool(r.get("p2p", False)))


@lru_cache(maxsize=1)
def systems() -> dict[str, System]:
    """Every catalog system by id, loaded once from data/systems.json."""
    raw = json.loads(resources.files("tuneplan").joinpath("data/systems.json").read_text())
    out = {}
    for r in raw["systems"]:
        out[r["id"]] = System(id=r["id"], name=r["name"], gpus_per_machine=r["gpus_per_machine"],
                              nvlink_domain=r["nvlink_domain"], devices=tuple(r["devices"]),
                              intra=_link(r["intra"]), inter=_link(r["inter"]), unconfirmed=r["unconfirmed"])
    return out


@lru_cache(maxsize=1)
def _by_device() -> dict[str, System]:
    idx: dict[str, System] = {}
    for s in systems().values():
        for d in s.devices:
            idx.setdefault(d, s)
    return idx


def system(name: str) -> System:
    """A catalog system by id."""
    try:
        return systems()[name]
    except KeyError:
        raise TuneplanError(f"unknown system {name!r}; known: {', '.join(systems())}") from None


@lru_cache(maxsize=512)
def system_for(device: Device, n_gpus: int = 1) -> System:
    """The default machine type for `n_gpus` of `device`: the catalog row that names the device,
    else one derived from the device's own link fields (an NVLink/XGMI/ICI group of
    link_group GPUs, a 2-GPU NVLink bridge, or PCIe: peer-to-peer on data-centre and
    workstation parts, through host memory on consumer GeForce/Radeon cards)."""
    row = _by_device().get(device.id)
    if row is not None:
        return row
    per = max(1, device.max_count)
    gen = device.pcie_gen or 4
    pcie = cal.PCIE_X16_GBPS.get(gen, 31.5) * device.pcie_lanes / 16
    if device.link_kind in ("nvlink", "xgmi", "ici"):
        intra = Link(device.link_kind, f"device catalog: {device.interconnect} ({device.link_gbps:g} GB/s "
                     "bidirectional per GPU, half each way)", gbps=device.link_gbps / 2, p2p=True)
        per = max(per, device.link_group)
    elif device.link_kind == "nvlink-bridge" and n_gpus <= 2:
        intra = Link("nvlink", f"device catalog: {device.interconnect} (2-GPU bridge)", gbps=device.link_gbps / 2,
                     p2p=True)
        per = 2
    elif device.link_kind == "ethernet":  # GB10 boxes paired over their NIC (no row matched)
        intra = Link("c2c", "one GPU per machine")
        per = 1
    elif device.unified:
        intra = Link("unified", "one GPU per machine")
        per = 1
    else:
        p2p = device.category != "consumer"
        intra = Link("pcie" if p2p else "pcie-host",
                     f"device catalog: {device.interconnect}; PCIe {gen}.0 x{device.pcie_lanes} "
                     + ("peer-to-peer" if p2p else "through host memory (no P2P on consumer cards)"),
                     gbps=pcie, p2p=p2p)
    if device.link_kind == "ethernet":
        inter = Link("roce", f"device catalog: {device.interconnect}", nics=1, gbit=device.link_gbps * 8)
        unconfirmed = ""
    else:
        inter = Link("ethernet", "assumed: one 100 Gb/s Ethernet NIC per GPU (no catalog row for this machine)",
                     nics=per, gbit=100)
        unconfirmed = "inter (assumed, no catalog row)"
    return System(f"{device.id}-x{per}", f"{per}x {device.name} (derived from the device catalog)", per, per,
                  (device.id,), intra, inter, unconfirmed)
