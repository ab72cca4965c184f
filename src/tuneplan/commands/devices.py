"""`tuneplan devices`: the hardware catalog with usable memory, bandwidth, TFLOPS and prices."""

from __future__ import annotations

import argparse

from rich.table import Table

from tuneplan.cli.output import make_console, money, print_json
from tuneplan.hardware import devices_in
from tuneplan.units import GiB

DESCRIPTION = "List catalog devices with usable memory (GiB = 2^30 bytes) and prices."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--category", type=lambda text: text.strip().lower(),
                   help="consumer | workstation | datacenter | unified | cloud-tpu")
    p.add_argument("--json", action="store_true", help="print JSON (bytes)")


def run(args: argparse.Namespace) -> int:
    devs = devices_in(args.category)
    if args.json:
        print_json([d.to_dict() for d in devs])
        return 0
    table = Table(title=f"Devices ({len(devs)})",
                  caption="memory per device in GiB (2^30 bytes); usable = what a framework can allocate, before "
                          "its CUDA context; TFLOPS dense bf16 (Apple: FP32); * = some facts unconfirmed")
    for col in ("id", "name", "kind", "GiB", "usable", "GB/s", "TFLOPS", "price", "cloud $/h (date)"):
        table.add_column(col, justify="right" if col in ("GiB", "usable", "GB/s", "TFLOPS", "price") else "left",
                         no_wrap=col == "id", max_width=28 if col == "name" else None,
                         overflow="ellipsis" if col == "name" else "fold")
    for d in devs:
        q = d.cloud_quote
        cloud = f"{q.usd_per_hour:.2f} {q.provider} ({q.date or 'undated'}{'?' if q.unconfirmed else ''})" if q else "-"
        table.add_row(d.id + ("*" if d.unconfirmed else ""), d.name, d.category, f"{d.memory_gib:g}",
                      f"{d.usable_bytes / GiB:.1f}", f"{d.bandwidth_gbps:g}",
                      f"{d.bf16_tflops:g}" if d.bf16_tflops else "-", money(d.price_usd), cloud)
    make_console().print(table)
    return 0
