"""Collective times follow nccl-tests' bus-bandwidth factors and NCCL's ring latency model;
the systems catalog maps devices to machine types with sourced links."""

import math

import pytest

from tuneplan import calibration as cal
from tuneplan.collectives import all_gather, all_reduce, all_to_all, group, reduce_scatter, send_recv
from tuneplan.hardware import resolve_device
from tuneplan.systems import system, system_for, systems


def test_every_system_row_has_sources_and_sane_links():
    assert {"dgx-h100", "hgx-h200", "dgx-b200", "dgx-b300", "gb200-nvl72", "dgx-a100", "rtx-pro-6000-server",
            "rtx-4090-workstation", "rtx-5090-workstation", "dgx-spark-pair", "mac-studio-tb5"} <= set(systems())
    for s in systems().values():
        assert s.intra.source and s.inter.source
        assert s.gpus_per_machine >= 1 and s.nvlink_domain >= s.gpus_per_machine
        assert s.inter_gbps > 0


def test_system_for_maps_catalog_devices():
    assert system_for(resolve_device("h100")).id == "dgx-h100"
    assert system_for(resolve_device("b200")).id == "dgx-b200"
    assert system_for(resolve_device("rtx-4090"), 2).id == "rtx-4090-workstation"
    assert system_for(resolve_device("dgx-spark-gb10"), 2).id == "dgx-spark-pair"
    assert system_for(resolve_device("mac-studio-m3-ultra"), 2).id == "mac-studio-tb5"
    derived = system_for(resolve_device("mi300x"), 8)  # no row: from the device's own link fields
    assert derived.intra.kind == "xgmi" and "assumed" in derived.inter.source
    l40s = system_for(resolve_device("l40s"), 4)
    assert l40s.intra.kind == "pcie" and l40s.intra.p2p
    assert not system_for(resolve_device("rtx-3080-10gb"), 4).intra.p2p  # GeForce: through host memory


def test_ring_factors_are_nccl_tests():
    h100 = system("dgx-h100")
    g = group(h100, 8)
    size = 1e9
    lat_ar = cal.NCCL_BASE_LATENCY_S + 14 * cal.NCCL_STEP_LATENCY_S["nvlink"]
    assert all_reduce(size, g) == pytest.approx(lat_ar + 2 * 7 / 8 * size / (450e9 * cal.LINK_EFFICIENCY))
    lat_ag = cal.NCCL_BASE_LATENCY_S + 7 * cal.NCCL_STEP_LATENCY_S["nvlink"]
    assert all_gather(size, g) == pytest.approx(lat_ag + 7 / 8 * size / (450e9 * cal.LINK_EFFICIENCY))
    assert reduce_scatter(size, g) == all_gather(size, g)
    # an all-reduce is a reduce-scatter then an all-gather: same volume
    assert all_reduce(size, g) == pytest.approx(2 * all_gather(size, g) - cal.NCCL_BASE_LATENCY_S)
    assert all_reduce(size, group(h100, 1)) == 0.0


def test_spanning_machines_runs_at_the_nics():
    h100 = system("dgx-h100")
    per_gpu = 400 / 8 * cal.NET_EFFICIENCY
    # 16 ranks, 8 per machine: one ring channel per NIC, the machine's 8 NICs together (~376 GB/s)
    wide = group(h100, 16)
    assert wide.machines == 2 and wide.ring_gbps == pytest.approx(min(360, 8 * per_gpu))
    # a data-parallel group of 8 with tensor parallel 8 inside each machine: one rank per machine
    strided = group(h100, 8, stride=8)
    assert strided.machines == 8 and strided.per_machine == 1 and strided.ring_gbps == pytest.approx(per_gpu)
    assert all_reduce(1e9, strided) > 5 * all_reduce(1e9, group(h100, 8))
    # the NVL72 rack keeps 64 GPUs on NVLink
    assert group(system("gb300-nvl72"), 64).machines == 1


def test_pcie_without_p2p_and_latency_bound_small_messages():
    ws = system("rtx-4090-workstation")
    g = group(ws, 4)
    assert g.ring_gbps == pytest.approx(31.5 * cal.PCIE_EFFICIENCY)
    assert g.intra_lat == cal.NCCL_STEP_LATENCY_S["pci"]
    tiny = all_reduce(8, group(system("dgx-h100"), 8))
    assert tiny == pytest.approx(cal.NCCL_BASE_LATENCY_S + 14 * cal.NCCL_STEP_LATENCY_S["nvlink"], rel=1e-3)


def test_all_to_all_and_send_recv():
    h100 = system("dgx-h100")
    inside = group(h100, 8)
    assert all_to_all(8e8, inside) == pytest.approx(cal.NCCL_BASE_LATENCY_S + inside.intra_lat + 8e8 * 7 / 8 / 360e9)
    across = group(h100, 64)
    # 56 of 64 destinations are on other machines, through this GPU's NIC share
    assert all_to_all(8e8, across) == pytest.approx(
        cal.NCCL_BASE_LATENCY_S + across.inter_lat + 8e8 * 56 / 64 / (across.inter_gbps * 1e9))
    assert send_recv(1e8, group(h100, 2, stride=8)) > send_recv(1e8, group(h100, 2))
    assert math.isinf(group(h100, 1).ring_gbps)
