"""Print the README accuracy table (tuneplan vs published measured runs) from measured_runs.json.

    python benchmarks/measured_runs.py            # refresh benchmarks/results/measured_runs.json
    python scripts/readme_accuracy_table.py       # print the block to paste between the markers
    python scripts/readme_accuracy_table.py --check README.md   # exit 1 if the README block differs or is missing

The block sits between `<!-- accuracy-table -->` and `<!-- /accuracy-table -->`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "measured_runs.json"
BEGIN, END = "<!-- accuracy-table -->", "<!-- /accuracy-table -->"


def _cell(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{100 * s['median_abs']:.0f}% ({100 * s['mean_signed']:+.0f}%, n={s['n']})"


def table(result: dict) -> str:
    mem, tim = result["summary"]["memory"], result["summary"]["time"]
    out = ["| rows | memory: median abs error (mean signed, n) | time: median abs error (mean signed, n) |",
           "|---|---|---|",
           f"| all scored rows | {_cell(mem['overall'])} | {_cell(tim['overall'])} |"]
    for key, label in (("by_method", "method"), ("by_sharding", "sharding")):
        for k in sorted(set(mem[key]) | set(tim[key])):
            out.append(f"| {label}: {k} | {_cell(mem[key].get(k))} | {_cell(tim[key].get(k))} |")
    out.append(f"| time rows not used in any fit (held out) | - | {_cell(tim.get('not_used_in_fits'))} |")
    out.append(f"| excluding rows judged wrong in the data (listed with reasons in measured_runs.md) | "
               f"{_cell(mem.get('excluding_judged_wrong'))} | {_cell(tim.get('excluding_judged_wrong'))} |")
    oom = mem["oom"]
    out.append("")
    out.append(f"Memory: {mem['scored']} of {mem['rows']} published rows scored on the counter each measured; "
               f"time: {tim['scored']} of {tim['rows']} rows reporting tokens/s. OOM rows: {oom['right']} of {oom['n']} predicted to run "
               f"out of memory, {oom['predicted_fit_wrong']} wrongly predicted to fit. Error = predicted / measured - 1; "
               "time constants fitted on named rows (benchmarks/fit_time_constants.py), so the held-out line is the "
               "fairer time figure; per row: [benchmarks/results/measured_runs.md](benchmarks/results/measured_runs.md).")
    return "\n".join(out)


def block(result: dict) -> str:
    return f"{BEGIN}\n{table(result)}\n{END}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="measured_runs.json")
    ap.add_argument("--check", type=Path, metavar="README", help="exit 1 if README's block differs or is missing")
    args = ap.parse_args(argv)
    result = json.loads(args.results.read_text())
    new = block(result)
    if args.check:
        text = args.check.read_text()
        m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
        if not m:
            print(f"{args.check}: no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        if m.group(0).strip() != new.strip():
            print(f"{args.check}: accuracy table is stale; run python scripts/readme_accuracy_table.py", file=sys.stderr)
            return 1
        print(f"{args.check}: accuracy table up to date")
        return 0
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
