"""Build src/tuneplan/data/devices.json from ../shared/catalog/hardware.csv and the project's own rows.

Two sources, merged in this order (ids of the first keep their place, so ids stay stable):
- ../shared/catalog/hardware.csv: the shared catalog facts (read-only for this project);
- src/tuneplan/data/devices_extra.csv: rows this project adds, with the same columns plus
  `aliases` (';'-separated): one row per memory configuration a user can buy (e.g.
  mac-studio-m4-max-64gb), the M5 machines the 2026 guides name (unannounced ones marked so
  in `unconfirmed`), GB10 and Strix Halo boxes. Each row carries its sources and its
  `unconfirmed` flag like the shared rows. The CSV is build input, not shipped.

Each CSV row becomes one device entry with the facts the planner needs (memory, memory
kind, bandwidth, dense bf16 TFLOPS, host link, interconnect, TDP, prices with dates) and
keeps the row's sources and `unconfirmed` flag. Usable memory is *not* baked in: it is
derived at load time (tuneplan.hardware) from these facts and the rules in
tuneplan.calibration, so a changed rule needs no rebuild.

Run: python scripts/build_device_catalog.py [path/to/hardware.csv [path/to/devices_extra.csv]]
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "catalog" / "hardware.csv"
EXTRA_CSV = ROOT / "src" / "tuneplan" / "data" / "devices_extra.csv"
OUT = ROOT / "src" / "tuneplan" / "data" / "devices.json"

# Totals a framework sees, as reported in hardware.csv `memory_gib_usable_note` (GiB).
# Only figures that name a reported/usable amount; "physical" notes are not reports.
REPORTED_GIB = {
    "rtx4090": (24564 / 1024, "hardware.csv: ~24564 MiB reported (from memory, unconfirmed)"),
    "a100-40gb-pcie": (40339 / 1024, "hardware.csv: torch reports 40339 MiB on A100-PCIE-40GB"),
    "h100-sxm": (81559 / 1024, "nvidia-smi total 81559 MiB (modal-labs/modal-client PR #2797, 2025-01-23; "
                 "hardware.csv: 81559 MiB)"),
    "h200-sxm": (139.0, "hardware.csv: ~139-140 GiB usable (approximate; low end taken)"),
    "b200": (179.0, "hardware.csv: ~179 GiB reported (from memory, unconfirmed)"),
    "t4": (15360 / 1024, "nvidia-smi total 15360 MiB (modal-labs/modal-client PR #2797, 2025-01-23; hardware.csv: "
                         "~15 GiB usable on Kaggle)"),
    # ECC on by default on these data-centre GDDR cards: the driver keeps ~6% of 24576 MiB
    "a10g": (23028 / 1024, "nvidia-smi total 23028 MiB on an AWS g5 A10G, ECC on (NVIDIA/DCGM issue #232, "
                           "2025-05-22, driver 535.247.01); the A10 reports the same (modal-labs/modal-client PR #2797)"),
    "l4": (23034 / 1024, "nvidia-smi total 23034 MiB, ECC on (modal-labs/modal-client PR #2797, 2025-01-23)"),
    "l40s": (46068 / 1024, "nvidia-smi total 46068 MiB, ECC on (modal-labs/modal-client PR #2797, 2025-01-23)"),
    "mi300x": (192.0, "hardware.csv: ROCm gpu-specs lists 192 GiB VRAM"),
}

# Largest configuration of machines sold in several memory sizes (the CSV's numeric column).
# Per-device adjustments: MI250X is two GCDs, each its own device with half the card.
PER_GCD = {"mi250x": 2}

# Extra short names people type. Ambiguous family names point at the common variant.
EXTRA_ALIASES = {
    "rtx4090": ["4090"], "rtx5090": ["5090"], "rtx3090": ["3090"], "rtx4080": ["4080"],
    "rtx5080": ["5080"], "rtx3060-12gb": ["3060"], "rtx-a6000": ["a6000"], "rtx-a5000": ["a5000"],
    "rtx6000-ada": ["6000-ada", "rtx-6000-ada"], "rtx-pro-6000-blackwell": ["rtx-pro-6000", "pro-6000"],
    "a100-80gb-sxm": ["a100", "a100-80gb"], "a100-40gb-sxm": ["a100-40gb"], "h100-sxm": ["h100"],
    "h200-sxm": ["h200"], "dgx-spark-gb10": ["dgx-spark", "spark", "gb10", "dgx-spark-128gb"],
    "ryzen-ai-max-395-128gb": ["strix-halo", "ryzen-ai-max-395", "framework-desktop", "framework-desktop-128gb",
                               "strix-halo-128gb"],
    # machines sold in several memory sizes: the shared row is the largest size; the
    # size-named alias lets a user pick it like the sizes in devices_extra.csv
    "mac-studio-m2-ultra": ["m2-ultra", "mac-studio-m2-ultra-192gb"],
    "mac-studio-m3-ultra": ["m3-ultra", "mac-studio-m3-ultra-512gb", "m3-ultra-512gb"],
    "mac-studio-m4-max": ["m4-max", "mac-studio-m4-max-128gb", "m4-max-128gb"],
    "macbook-pro-m4-max": ["macbook-pro-m4-max-128gb"],
    "macbook-pro-m5-max": ["m5-max", "macbook-pro-m5-max-128gb", "m5-max-128gb"],
    "macbook-pro-m5": ["m5", "macbook-pro-m5-32gb"],
    "rx7900xtx": ["7900xtx", "rx-7900-xtx"], "mi300x": ["mi300"],
}


# Block-scaled (MXFP8 / NVFP4) training rates, dense TFLOPS per GPU, for the GPUs whose tensor
# cores TransformerEngine runs them on (compute capability 10.x: TE 2.20 pytorch/quantization.py
# check_mxfp8_support / check_nvfp4_support; MXFP8 runs at the FP8/FP6 rate, so only FP4 is listed).
# B200: HGX B200 72 PFLOPS FP4 dense / 8 GPUs (NVIDIA HGX spec table, as quoted by fibermall.com
# /blog/?p=17161); B300: HGX B300 108 PFLOPS FP4 dense / 8 (NVIDIA HGX B300 spec; verda.com/blog/
# gb300-nvl72-architecture lists 14, glennklockwood.com/garden/processors/B300 13.1); GB300:
# GB300 NVL72 1,080 PFLOPS FP4 dense / 72 GPUs (NVIDIA GB300 NVL72 spec, verda.com per-GPU table 15);
# GB200: GB200 NVL72 1,440 PFLOPS FP4 with sparsity / 72 / 2 (NVIDIA GB200 NVL72 spec table;
# glennklockwood.com/garden/processors/B200: 10,000 dense for the GB200 variant at 1,200 W).
# (tuneplan.lowprec reads fp8_tflops / fp4_tflops; fp8_tflops is hardware.csv's fp8_dense_tflops.)
FP4_DENSE_TFLOPS = {"b200": 9000.0, "b300": 13500.0, "gb300": 15000.0, "gb200": 10000.0}


# Facts added to shared rows where the shared catalog has none, each with its basis and
# source (column -> value; `sources`/`unconfirmed` are appended to the row's own).
M5_MAX_FP32 = ("Apple publishes no TFLOPS; figure is the FP32 ALU rate of 40 cores as on the M4 Max (derived). The "
               "per-core Neural Accelerators (Apple: over 4x peak GPU AI compute vs M4) are not counted: no measured "
               "matmul rate yet")
OVERRIDES = {
    "macbook-pro-m5-max": {
        "fp32_tflops": "~18.4 (derived, unconfirmed)", "tflops_note": M5_MAX_FP32,
        "sources": "issues: github.com/huggingface/huggingface.js/issues/1020 (M4 Max 40-core ~18.4 FP32 TFLOPS)",
        "unconfirmed": "FP32 TFLOPS (derived from the M4 Max's 40 cores)",
    },
}


def num(text: str) -> float | None:
    """First number in a cell ('~29.7 (unconfirmed)' -> 29.7), None for blanks/n/a."""
    m = re.search(r"(\d+(?:\.\d+)?)", (text or "").replace(",", ""))
    return float(m.group(1)) if m else None


def short_id(csv_id: str) -> str:
    """rtx4090 -> rtx-4090, rtx3060-12gb -> rtx-3060-12gb; other ids unchanged."""
    m = re.match(r"^(rtx|rx)(\d{4}.*)$", csv_id)
    return f"{m.group(1)}-{m.group(2)}" if m else csv_id


def usd(text: str) -> float | None:
    """'$1,599 MSRP' -> 1599; '~$30k' -> 30000; '$8-15K' -> 8000; None if no dollar figure."""
    m = re.search(r"\$\s?(\d[\d,]*(?:\.\d+)?)\s*(?:-\s*\d[\d,]*(?:\.\d+)?)?\s*([kK])?", text or "")
    if not m:
        return None
    val = float(m.group(1).replace(",", ""))
    return val * 1000 if m.group(2) else val


def cloud_quotes(text: str) -> list[dict]:
    """'$2.69 RunPod (2026-01); $2.00 GMI (2026-04)' -> [{usd_per_hour, provider, date}, ...].

    A date in parentheses applies to every quote of its ';'-separated segment.
    Quotes marked unconfirmed or 'from memory' are kept with unconfirmed=True.
    """
    out = []
    all_dates = re.findall(r"\((\d{4}-\d{2}(?:-\d{2})?)", text or "")
    for seg in (text or "").split(";"):
        dates = re.findall(r"\((\d{4}-\d{2}(?:-\d{2})?)", seg)
        date = dates[-1] if dates else ("undated" if "undated" in seg or not all_dates else all_dates[-1])
        shaky = "unconfirmed" in seg or "from memory" in seg
        for m in re.finditer(r"\$(\d+(?:\.\d+)?)(?:/(?:GPU|chip)-?h?r?)?\s*([A-Za-z][A-Za-z0-9 .\-]*?)?(?=\s*(?:\(|/|$|,|\$))", seg):
            provider = (m.group(2) or "").strip()
            provider = re.sub(r"^(per GPU|/GPU)\s*", "", provider)
            if not provider:  # 'Lambda $1.10, Vast $1.20': the name comes first
                before = re.findall(r"([A-Z][\w.]*)\s*$", seg[: m.start()])
                provider = before[-1] if before else ""
            out.append({"usd_per_hour": float(m.group(1)), "provider": provider or "unnamed",
                        "date": date, "unconfirmed": shaky})
    return out


def pcie(inter: str) -> tuple[int | None, int]:
    """('PCIe 4.0 x16; ...') -> (4, 16). Lanes default to 16."""
    m = re.search(r"PCIe\s*(\d)(?:\.\d)?(?:\s*x(\d+))?", inter or "")
    if not m:
        return None, 16
    return int(m.group(1)), int(m.group(2) or 16)


def link(inter: str, category: str) -> dict:
    """GPU-to-GPU link: kind, GB/s (as listed: NVLink figures are bidirectional totals), max group."""
    text = inter or ""
    tb = re.search(r"NVLink\s*\d?\s*(\d+(?:\.\d+)?)\s*TB/s", text)
    gb = re.search(r"NVLink[^;]*?(\d+(?:\.\d+)?)\s*GB/s", text)
    if tb or gb:
        gbps = float(tb.group(1)) * 1000 if tb else float(gb.group(1))
        bridge = "bridge" in text.lower() and not re.search(r"NVLink\s*\d\s", text)
        return {"kind": "nvlink-bridge" if bridge else "nvlink", "gbps": gbps, "group": 2 if bridge else 8}
    if "XGMI" in text or "Infinity Fabric" in text:
        m = re.search(r"~?(\d+)\s*GB/s", text)
        return {"kind": "xgmi", "gbps": float(m.group(1)) if m else 896.0, "group": 8}
    if "ICI" in text:
        m = re.search(r"ICI\s*(\d+)\s*GB/s", text)
        return {"kind": "ici", "gbps": float(m.group(1)) if m else 400.0, "group": 8}
    if "200GbE" in text:
        return {"kind": "ethernet", "gbps": 25.0, "group": 2}
    return {"kind": "pcie", "gbps": 0.0, "group": 8 if category != "unified" else 1}


def memory_kind(row: dict) -> str:
    t = row["memory_type"].upper()
    if row["category"] == "unified":
        return "unified"
    if "HBM" in t:
        return "hbm"
    return "gddr"


def max_count(row: dict, lk: dict) -> int:
    cid, cat = row["id"], row["category"]
    if cat == "unified":
        # GB10 machines (DGX Spark and its OEM twins) pair over their ConnectX-7 ports:
        # two units, data parallel over 200 Gb/s RoCE; other unified machines count one
        return 2 if "ConnectX-7" in row["interconnect"] else 1
    if cat == "consumer":
        return 4  # a workstation board holds up to four double-width cards
    if cid in PER_GCD:
        return 8 * PER_GCD[cid]
    return 8  # one node / one host


def build(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        cid = r["id"]
        if cid in OVERRIDES:
            extra = OVERRIDES[cid]
            r = {**r, **{k: v for k, v in extra.items() if k not in ("sources", "unconfirmed")},
                 "sources": f"{r['sources']}; {extra['sources']}",
                 "unconfirmed": "; ".join(x for x in (r["unconfirmed"], extra["unconfirmed"]) if x)}
        split = PER_GCD.get(cid, 1)
        mem = num(r["memory_gb_num"])
        bw = num(r["memory_bandwidth_GBps_num"])
        tf = num(r["bf16_dense_tflops_num"])
        basis = "bf16 dense tensor"
        # a card without bf16 tensor cores (Turing: the CSV's bf16 column says "no BF16") lists its
        # fp16 tensor rate; bf16 matmuls do not get it
        bf16_tensor = "no bf16" not in (r.get("bf16_dense_tflops") or "").lower()
        if not bf16_tensor:
            basis = "fp16 dense tensor (no bf16 tensor cores)"
        if tf is None and r["vendor"] == "Apple" and num(r["fp32_tflops"]):
            tf = num(r["fp32_tflops"])
            basis = "fp32 (Apple publishes no tensor figure; MPS/MLX half precision runs at about the FP32 rate)"
            if "Neural Accelerator" in r["tflops_note"]:
                basis = ("fp32 ALU rate (Apple publishes no tensor figure; the M5 GPU's Neural Accelerators, "
                         "claimed >4x peak AI compute vs M4, are not counted)")
        gen, lanes = pcie(r["interconnect"])
        lk = link(r["interconnect"], r["category"])
        street, launch = usd(r["street_price_usd"]), usd(r["launch_price_usd"])
        price, basis_p = (street, "street") if street else ((launch, "launch") if launch else (None, ""))
        if "-" in r["memory_gb"] or "up to" in r["memory_gb"]:
            # sold in several sizes; the CSV price is the base size, the memory the largest
            price, basis_p = None, "base-configuration price only (less memory than listed)"
        reported = REPORTED_GIB.get(cid)
        sid = short_id(cid)
        own = [a.strip() for a in (r.get("aliases") or "").split(";") if a.strip()]
        aliases = sorted({a for a in [cid, *EXTRA_ALIASES.get(cid, []), *own] if a != sid})
        out.append({
            "id": sid,
            "csv_id": cid,
            "aliases": aliases,
            "vendor": r["vendor"],
            "name": r["name"] + (" (one GCD)" if split > 1 else ""),
            "category": r["category"],
            "architecture": r["architecture"],
            "memory_gib": mem / split if mem else None,
            "memory_kind": memory_kind(r),
            "memory_note": r["memory_gb"] + (f"; {r['memory_gib_usable_note']}" if r["memory_gib_usable_note"] else ""),
            "reported_gib": reported[0] / split if reported else None,
            "reported_source": reported[1] if reported else "",
            "bandwidth_gbps": bw / split if bw else None,
            "bf16_tflops": tf / split if tf else None,
            "fp8_tflops": num(r["fp8_dense_tflops"]) / split if num(r["fp8_dense_tflops"]) else None,
            "fp4_tflops": FP4_DENSE_TFLOPS.get(cid),
            "tflops_basis": basis,
            "bf16_tensor": bf16_tensor,
            "tflops_note": r["tflops_note"],
            "tdp_w": num(r["tdp_w_num"]),
            "pcie_gen": gen,
            "pcie_lanes": lanes,
            "link": lk,
            "interconnect": r["interconnect"],
            "max_count": max_count(r, lk),
            "launch_year": int(num(r["launch_year"])) if num(r["launch_year"]) else None,
            "price_usd": price / split if price else None,
            "price_basis": basis_p,
            "price_note": f"launch: {r['launch_price_usd']}; street: {r['street_price_usd']}",
            "cloud": [dict(q, usd_per_hour=q["usd_per_hour"]) for q in cloud_quotes(r["cloud_usd_per_gpu_hr"])],
            "cloud_note": r["cloud_usd_per_gpu_hr"],
            "sources": r["sources"],
            "unconfirmed": r["unconfirmed"],
        })
    return out


def read_rows(shared: Path, extra: Path) -> list[dict]:
    """The shared rows, then the project's rows (an id in both is an error: ids stay stable)."""
    with shared.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with extra.open(newline="") as f:
        more = list(csv.DictReader(f))
    clash = {r["id"] for r in rows} & {r["id"] for r in more}
    if clash:
        raise SystemExit(f"{extra.name} repeats shared ids: {sorted(clash)}")
    return rows + more


def readable(path: Path, what: str) -> Path:
    """`path` if it can be read; else one line on stderr and exit code 2 (no traceback): the
    shared catalog lives next to this repository (../shared), which a clone alone lacks."""
    try:
        with path.open("rb"):
            return path
    except OSError as e:
        where = " (the shared catalog, next to this repository)" if path == DEFAULT_CSV else ""
        sys.stderr.write(f"{Path(__file__).name}: error: cannot read {what} {path}{where}: "
                         f"{e.strerror or type(e).__name__}; give its path: python scripts/{Path(__file__).name} "
                         "PATH/hardware.csv [PATH/devices_extra.csv]\n")
        raise SystemExit(2) from None


def main(argv: list[str]) -> int:
    src = readable(Path(argv[1]) if len(argv) > 1 else DEFAULT_CSV, "hardware.csv")
    extra = readable(Path(argv[2]) if len(argv) > 2 else EXTRA_CSV, "devices_extra.csv")
    devices = build(read_rows(src, extra))
    ids = [d["id"] for d in devices] + [a for d in devices for a in d["aliases"]]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise SystemExit(f"duplicate device names: {sorted(dupes)}")
    OUT.write_text(json.dumps({"source": "shared/catalog/hardware.csv + src/tuneplan/data/devices_extra.csv",
                               "devices": devices}, indent=1) + "\n")
    print(f"wrote {len(devices)} devices to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
