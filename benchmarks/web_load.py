"""Load on `tuneplan serve`: requests per second and latency of /api/estimate with 16
concurrent clients, and the time of a full fit matrix (45 models x 5 methods x 50 devices).

A real server (`tuneplan serve`, uvicorn, access log on, as a user runs it) on a free
loopback port in its own process; each client is its own process with one keep-alive httpx
connection, sending one request at a time, like a browser tab. (One process of 16 asyncio
httpx clients measures itself instead: on a 2-CPU machine it spends 3x the server's CPU per
request and its own event-loop queueing makes the p99.) Each request is a different job
(model, method, sequence length, micro-batch), so nothing is answered from a cache. Latency
is measured per request on the client, from send to the parsed JSON.

    python benchmarks/web_load.py            # writes benchmarks/results/web_load.md
    python benchmarks/web_load.py --requests 200 --clients 16

Targets: estimate p99 < 50 ms at 16 concurrent clients; the full matrix < 2 s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "web_load.md"
P99_TARGET_S = 0.050
MATRIX_TARGET_S = 2.0
WARMUP = 10  # requests per client before the clock starts
MATRIX_DEVICES = 50  # the first 50 catalog devices (the catalog may hold more)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    """`tuneplan serve` in its own process; returns once /api/models answers."""
    exe = Path(sys.executable).with_name("tuneplan")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tuneplan.cli.main"]
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("tuneplan serve did not start")


def jobs(n: int, gpu: str | None) -> list[dict[str, str]]:
    """n different estimate jobs (catalog models x sequence x batch)."""
    models = ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "llama-3.2-3b", "qwen2.5-14b", "gemma-2-9b"]
    out = []
    for i in range(n):
        q = {"model": models[i % len(models)], "method": ("lora", "qlora", "full")[i % 3],
             "seq-len": str(512 + 128 * (i % 61)), "batch": str(1 + i % 4)}
        if gpu:
            q["gpu"] = gpu
        out.append(q)
    return out


def _client(base: str, path: str, queries: list[dict[str, str]], start, out) -> None:
    """One client: a keep-alive connection, one request at a time (like a browser tab)."""
    lat = []
    with httpx.Client(base_url=base, timeout=30) as c:
        for q in queries[:WARMUP]:  # connection set up, first-call caches: not counted
            c.get(path, params=q).raise_for_status()
        start.wait()
        for q in queries[WARMUP:]:
            t0 = time.perf_counter()
            r = c.get(path, params=q)
            r.json()
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"{path} {q}: {r.status_code} {r.text[:200]}")
    out.put(lat)


def load(base: str, path: str, queries: list[dict[str, str]], clients: int) -> tuple[list[float], float]:
    """Latencies (s) of every request and the wall time, with `clients` client processes
    sending one request at a time each."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(base, path, _share(queries, i, clients),
                                                start, out)) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    latencies = [x for _ in procs for x in out.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return latencies, wall


def _share(queries: list[dict[str, str]], i: int, clients: int) -> list[dict[str, str]]:
    """Client i's requests: WARMUP of its own first, then every clients-th job."""
    mine = queries[i::clients]
    return mine[:WARMUP] + mine


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="estimate requests per run (default 4000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--matrix-runs", type=int, default=5, help="full-matrix requests (default 5)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    port = free_port()
    proc = start_server(port)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for label, path, gpu in (("estimate (breakdown)", "/api/estimate", None),
                                 ("estimate --gpu rtx-4090 (fit, fix, largest batch and sequence)", "/api/fit",
                                  "rtx-4090")):
            lat, wall = load(base, path, jobs(args.requests, gpu), args.clients)
            rows.append((label, len(lat), len(lat) / wall, statistics.median(lat), pct(lat, 99), max(lat)))
            print(f"{label}: {len(lat) / wall:,.0f} req/s, p50 {statistics.median(lat) * 1e3:.1f} ms, "
                  f"p99 {pct(lat, 99) * 1e3:.1f} ms")
        times, size, cells = [], 0, 0
        with httpx.Client(base_url=base, timeout=60) as c:
            devices = ",".join(d["id"] for d in c.get("/api/devices").json()[:MATRIX_DEVICES])
            matrix = {"models": "all", "methods": "full,lora,qlora,dora,freeze", "devices": devices}
            for _ in range(args.matrix_runs):
                t0 = time.perf_counter()
                r = c.get("/api/matrix", params=matrix)
                data = r.json()
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text[:300]
                size, cells = len(r.content), len(data["cells"])
        print(f"matrix {cells:,} cells: first {times[0]:.2f} s, median {statistics.median(times):.2f} s, "
              f"{size / 2**20:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(10)

    est = rows[0]
    lines = [
        "# Web API load (`tuneplan serve`)",
        "",
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"`tuneplan serve` (uvicorn, one worker process, access log on) on loopback; "
        f"{args.clients} concurrent clients, each its own process with one keep-alive httpx connection and one "
        "request at a time; every request a different job. Latency from send to parsed JSON, on the client "
        "(server and clients share the CPUs).",
        "",
        "| request | requests | req/s | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        *(f"| {label} | {n:,} | {rps:,.0f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {mx * 1e3:.1f} |"
          for label, n, rps, p50, p99, mx in rows),
        f"| matrix {cells:,} cells (45 models x 5 methods x 50 devices, max-batch search) | {len(times)} | - | "
        f"{statistics.median(times) * 1e3:.0f} | - | {max(times) * 1e3:.0f} |",
        "",
        f"Full matrix: first request {times[0]:.2f} s (cold caches), median {statistics.median(times):.2f} s, "
        f"{size / 2**20:.1f} MiB of JSON.",
        "",
        f"Targets: estimate p99 < {P99_TARGET_S * 1e3:.0f} ms -> "
        f"{'met' if est[4] < P99_TARGET_S else 'NOT met'} ({est[4] * 1e3:.1f} ms); "
        f"full matrix < {MATRIX_TARGET_S:.0f} s -> {'met' if max(times) < MATRIX_TARGET_S else 'NOT met'} "
        f"({max(times):.2f} s at worst).",
        "",
        "Reproduce: `python benchmarks/web_load.py` (after `pip install -e '.[web,browser]'`).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
