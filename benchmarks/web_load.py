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

`--burst` measures abuse instead (printed; written only with --out): the server's RSS before, at
its peak during and after a burst of stalled clients (each declares a 1 MB body, sends 900 KB and
stalls) plus half-open header connections, and how long the server held them; then estimate
latency while full-catalog matrices run (mixed load). `--src DIR` serves another tree's
`src` (e.g. the last commit's, from `git archive HEAD src | tar -x -C DIR`) for a before/after.

    python benchmarks/web_load.py --burst --stalled 1000 --half-open 300
"""

from __future__ import annotations

import argparse
import asyncio
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


def start_server(port: int, src: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    """`tuneplan serve` in its own process (of the tree at `src` when given); returns once
    /api/models answers."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve() / "src")
    cmd = [sys.executable, "-c", "import sys; from tuneplan.cli import main; raise SystemExit(main(sys.argv[1:]))"]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port)], stdout=out, stderr=out, env=env)
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


# ---------------------------------------------------------------- abuse: stalled bodies, half-open headers


def rss_mib(pid: int) -> float:
    """Resident memory of a process (MiB), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def _held(reader: asyncio.StreamReader, t0: float, hold: float) -> tuple[float | None, bytes]:
    """Seconds from t0 until the server closed the connection (None: still open after `hold`),
    and the first bytes it answered."""
    head = b""
    try:
        async with asyncio.timeout(max(0.0, t0 + hold - time.monotonic())):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                head = head or data[:200]
    except TimeoutError:
        return None, head
    except OSError:
        pass
    return time.monotonic() - t0, head


async def _stalled_body(port: int, declared: int, sent: int, hold: float) -> tuple[float | None, bytes]:
    """Declare `declared` body bytes, send `sent`, stall; how long the server keeps the connection."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0.0, b"(refused)"
    try:
        writer.write(b"POST /api/estimate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (port, declared))
        piece = b'{"pad": "' + b"x" * (65536 - 9)
        left = sent
        try:
            async with asyncio.timeout(hold):
                while left > 0:
                    writer.write(piece[:left])
                    left -= min(left, len(piece))
                    await writer.drain()
        except (TimeoutError, OSError):
            pass
        return await _held(reader, t0, hold)
    finally:
        writer.transport.abort()


async def _half_open(port: int, hold: float) -> tuple[float | None, bytes]:
    """Send part of a request's headers and stall."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0.0, b"(refused)"
    try:
        writer.write(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        return await _held(reader, t0, hold)
    except OSError:
        return time.monotonic() - t0, b""
    finally:
        writer.transport.abort()


def _status(head: bytes) -> str:
    parts = head.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 and head.startswith(b"HTTP/") else (
        head.decode("ascii", "replace") or "no answer read")


async def _burst(port: int, pid: int, stalled: int, half_open: int, declared: int, sent: int,
                 hold: float, settle: float) -> dict:
    peak = {"rss": rss_mib(pid), "fds": open_fds(pid)}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak["rss"], peak["fds"] = max(peak["rss"], rss_mib(pid)), max(peak["fds"], open_fds(pid))
            await asyncio.sleep(0.2)

    async def probe() -> float | None:  # an estimate from a fresh client while the burst is on
        await asyncio.sleep(min(5.0, hold / 3))
        t0 = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=hold) as c:
                r = await c.get(f"http://127.0.0.1:{port}/api/estimate", params={"model": "llama-3.1-8b"})
            return time.perf_counter() - t0 if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    results = await asyncio.gather(probe(), *(_stalled_body(port, declared, sent, hold) for _ in range(stalled)),
                                   *(_half_open(port, hold) for _ in range(half_open)))
    burst_s = time.monotonic() - t0
    done.set()
    await sampler
    await asyncio.sleep(settle)
    return {"peak": peak, "probe": results[0], "stalled": results[1:1 + stalled], "half_open": results[1 + stalled:],
            "burst_s": burst_s}


def _held_line(label: str, rows: list[tuple[float | None, bytes]], hold: float) -> str:
    open_ = [r for r in rows if r[0] is None]
    closed = sorted(r[0] for r in rows if r[0] is not None)
    answers: dict[str, int] = {}
    for _, head in rows:
        answers[_status(head)] = answers.get(_status(head), 0) + 1
    held = (f"closed by the server after median {statistics.median(closed):.1f} s, max {closed[-1]:.1f} s"
            if closed else "none closed by the server")
    return (f"{label}: {len(rows):,} connections; {held}; {len(open_):,} still open when the clients gave up "
            f"after {hold:.0f} s; answers {dict(sorted(answers.items()))}")


def _mixed(base: str, requests: int, clients: int, matrices: int) -> tuple[list[float], dict[str, int]]:
    """Estimate latencies while `matrices` clients each ask for full-catalog matrices non-stop."""
    ctx = mp.get_context("spawn")
    stop, ok, busy = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
    heavy = [ctx.Process(target=_matrix_client, args=(base, stop, ok, busy)) for _ in range(matrices)]
    for p in heavy:
        p.start()
    time.sleep(1.0)  # the matrices are running
    try:
        lat, _ = load(base, "/api/estimate", jobs(requests, None), clients)
    finally:
        stop.set()
        for p in heavy:  # not waiting for the matrices still queued
            p.terminate()
            p.join()
    return lat, {"200": ok.value, "503": busy.value}


def _matrix_client(base: str, stop, ok, busy) -> None:
    with httpx.Client(base_url=base, timeout=120) as c:
        while not stop.is_set():
            r = c.get("/api/matrix", params={"models": "all", "methods": "full,lora,qlora,dora,freeze",
                                             "devices": "all"})
            with (ok if r.status_code == 200 else busy).get_lock():
                (ok if r.status_code == 200 else busy).value += 1
            if r.status_code == 503:
                time.sleep(float(r.headers.get("retry-after", "1")))


def burst_main(args: argparse.Namespace) -> int:
    port = free_port()
    proc = start_server(port, args.src, args.server_log)
    base = f"http://127.0.0.1:{port}"
    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        with httpx.Client(base_url=base, timeout=30) as c:  # warm the caches
            for q in jobs(20, None):
                c.get("/api/estimate", params=q).raise_for_status()
        say(f"server: {'src ' + str(args.src) if args.src else 'this tree'}")
        for label, stalled, half_open in (("stalled bodies", args.stalled, 0), ("half-open headers", 0, args.half_open)):
            if not stalled + half_open:
                continue
            before = rss_mib(proc.pid)
            r = asyncio.run(_burst(port, proc.pid, stalled, half_open, args.declared, args.sent, args.hold,
                                   args.settle))
            what = (f"{stalled:,} clients declaring {args.declared:,} B, sending {args.sent:,} B and stalling"
                    if stalled else f"{half_open:,} clients sending part of a request's headers and stalling")
            say(f"burst of {label}: {what} ({r['burst_s']:.0f} s)")
            say(f"  RSS: before {before:.0f} MiB, peak during {r['peak']['rss']:.0f} MiB, {args.settle:.0f} s after "
                f"the clients left {rss_mib(proc.pid):.0f} MiB; open fds peak {r['peak']['fds']}, after "
                f"{open_fds(proc.pid)}")
            say("  " + _held_line("held", r["stalled"] or r["half_open"], args.hold))
            say("  an estimate from a fresh client during the burst: "
                + (f"{r['probe'] * 1e3:.0f} ms" if r["probe"] is not None else "no answer"))
        if args.matrices:
            lat, answers = _mixed(base, args.mixed_requests, args.clients, args.matrices)
            say(f"mixed: {len(lat)} estimates ({args.clients} clients) while {args.matrices} clients ask for "
                f"full-catalog matrices: p50 {statistics.median(lat) * 1e3:.0f} ms, p99 {pct(lat, 99) * 1e3:.0f} ms, "
                f"max {max(lat) * 1e3:.0f} ms; matrix answers {answers}")
        say(f"RSS at the end {rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.out:
        args.out.write_text("\n".join(["# Web server under abuse (`tuneplan serve`)", "", *[f"- {x}" for x in lines],
                                       ""]))
        print(f"wrote {args.out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="estimate requests per run (default 4000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--matrix-runs", type=int, default=5, help="full-matrix requests (default 5)")
    ap.add_argument("--out", type=Path, default=None, help=f"results file (default {OUT.relative_to(ROOT)}; "
                    "--burst: none)")
    ap.add_argument("--burst", action="store_true", help="the abuse run instead: stalled bodies, half-open headers, "
                    "estimates beside full matrices")
    ap.add_argument("--stalled", type=int, default=1000, help="--burst: stalled-body clients (default 1000)")
    ap.add_argument("--half-open", type=int, default=300, help="--burst: half-open header connections (default 300)")
    ap.add_argument("--declared", type=int, default=1_000_000, help="--burst: declared body bytes (default 1 MB)")
    ap.add_argument("--sent", type=int, default=900_000, help="--burst: body bytes sent before stalling (900 KB)")
    ap.add_argument("--hold", type=float, default=25.0, help="--burst: seconds a client waits before giving up")
    ap.add_argument("--settle", type=float, default=5.0, help="--burst: seconds after the burst before RSS is read")
    ap.add_argument("--matrices", type=int, default=8, help="--burst: clients asking for full-catalog matrices "
                    "during the mixed run (0: none)")
    ap.add_argument("--mixed-requests", type=int, default=200, help="--burst: estimates during the mixed run")
    ap.add_argument("--src", type=Path, default=None, help="serve the tuneplan of DIR/src instead of this tree")
    ap.add_argument("--server-log", type=Path, default=None, help="write the server's output to this file")
    args = ap.parse_args()
    if args.burst:
        return burst_main(args)
    args.out = args.out or OUT

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
