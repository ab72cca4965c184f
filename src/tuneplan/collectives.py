"""Time of NCCL-style collectives over a group of ranks placed on a system's machines.

Ring algorithms, timed as NCCL's own tuning model times them (NVIDIA/nccl
src/graph/tuning.cc, ncclTopoTuneModel): latency = base + one hop latency per ring step
(NVLink, PCI or network hop), plus bytes / bandwidth, where the bus-bandwidth factors are
nccl-tests doc/PERFORMANCE.md's:

- all-reduce of S bytes: 2(g-1)/g x S over the bus bandwidth, 2(g-1) steps;
- all-gather (S = the gathered output) and reduce-scatter (S = the input): (g-1)/g x S, g-1 steps;
- all-to-all (S = what one rank holds): (g-1)/g x S leaves the rank;
- send/recv: S over one hop.

Placement: ranks of a group are `stride` apart in the global rank order (Megatron-Core's and
torchtitan's mesh order, tensor innermost: tensor 1, context tp, data tp x cp, pipeline
tp x cp x dp). A group inside one NVLink domain runs at the intra-machine bus bandwidth. A ring
that spans machines runs one channel through each of its GPUs' NICs, so its bus bandwidth is
min(intra, k x per-GPU network share) for k of its ranks per machine (nccl-tests issue #119:
8x A100 with 4x HDR reached ~85-96 of 100 GB/s busbw, the machine's NICs together). A machine's
NICs are shared by all its GPUs (systems.System.inter_gbps), so concurrent groups (the data-
parallel groups of each tensor rank) each get their own GPUs' share. All-to-all sends the
part bound for other machines through the rank's own network share and the rest over the
intra link, concurrently. PCIe without peer-to-peer goes through host memory at the PCIe
link's rate (systems.System.intra_gbps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan.systems import System


@dataclass(frozen=True)
class Group:
    """A communicator: `size` ranks, `per_machine` of them in each of `machines` NVLink domains.

    Args:
        ring_gbps: achievable ring bus bandwidth, GB/s.
        intra_gbps / inter_gbps: achievable per-GPU bandwidth inside a domain / across domains.
        intra_lat / inter_lat: seconds per ring step over an intra / inter hop.
    """

    size: int
    per_machine: int
    machines: int
    ring_gbps: float
    intra_gbps: float
    inter_gbps: float
    intra_lat: float
    inter_lat: float


@lru_cache(maxsize=4096)
def group(system: System, size: int, stride: int = 1, domain: int = 0) -> Group:
    """Place a group of `size` ranks, `stride` apart in rank order, on `system`.

    Args:
        domain: GPUs that share the fast link (default: the system's NVLink domain, or its GPUs
            per machine); a job on fewer machines than the domain holds passes its own.
    """
    dom = max(1, domain or system.nvlink_domain or system.gpus_per_machine)
    if system.intra_gbps <= 0:  # no GPU-to-GPU link inside a machine (one GPU each: DGX Spark, Mac)
        dom = 1
    if size <= 1:
        return Group(1, 1, 1, math.inf, math.inf, math.inf, 0.0, 0.0)
    per = max(1, min(size, dom // stride)) if stride < dom else 1
    machines = math.ceil(size / per)
    intra, inter = system.intra_gbps, system.inter_gbps
    ring = intra if machines == 1 else (min(intra, per * inter) if per > 1 else inter)
    return Group(size, per, machines, ring, intra, inter, system.intra_latency, cal.NCCL_STEP_LATENCY_S["net"])


def _gb(nbytes: float, gbps: float) -> float:
    return nbytes / (gbps * 1e9) if gbps > 0 else math.inf


def _latency(g: Group, steps: int, inter_steps: int) -> float:
    return cal.NCCL_BASE_LATENCY_S + (steps - inter_steps) * g.intra_lat + inter_steps * g.inter_lat


def all_reduce(nbytes: float, g: Group) -> float:
    """Seconds to all-reduce `nbytes` (each rank's buffer) over the group (ring)."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    n = g.size
    return _latency(g, 2 * (n - 1), 2 * (g.machines - 1)) + _gb(2 * (n - 1) / n * nbytes, g.ring_gbps)


def all_gather(nbytes: float, g: Group) -> float:
    """Seconds to all-gather an output of `nbytes` (each rank contributes nbytes / size)."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    n = g.size
    return _latency(g, n - 1, g.machines - 1) + _gb((n - 1) / n * nbytes, g.ring_gbps)


def reduce_scatter(nbytes: float, g: Group) -> float:
    """Seconds to reduce-scatter an input of `nbytes` per rank (each keeps nbytes / size)."""
    return all_gather(nbytes, g)


def all_to_all(nbytes: float, g: Group) -> float:
    """Seconds for an all-to-all where each rank holds `nbytes` and sends (size-1)/size of it:
    to ranks in its machine over the intra link, to the others over its network share."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    n, k = g.size, g.per_machine
    local = _gb(nbytes * (k - 1) / n, g.intra_gbps) if k > 1 else 0.0
    remote = _gb(nbytes * (n - k) / n, g.inter_gbps) if n > k else 0.0
    lat = g.inter_lat if n > k else g.intra_lat
    return cal.NCCL_BASE_LATENCY_S + lat + max(local, remote)


def send_recv(nbytes: float, g: Group) -> float:
    """Seconds to send `nbytes` to the next rank of the group (a pipeline or ring neighbour):
    across machines when the group spans several, else over the intra link."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    if g.machines > 1:
        return cal.NCCL_BASE_LATENCY_S + g.inter_lat + _gb(nbytes, g.inter_gbps)
    return cal.NCCL_BASE_LATENCY_S + g.intra_lat + _gb(nbytes, g.intra_gbps)
