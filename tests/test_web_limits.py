"""What `tuneplan serve` spends on a client is bounded (issue 26, web items 19-23): header and
body deadlines, a cap on connections and on bodies being read, memory given back after a burst,
a client leaving mid-body logged in one line, Host checking kept on for --host 0.0.0.0, heavy
work apart from the quick endpoints (503 with Retry-After when full), and JSON answers from the
connection layer. A real uvicorn server on 127.0.0.1 port 0 in a thread, with short limits."""

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tuneplan.cli import main  # noqa: E402
from tuneplan.web import app as web  # noqa: E402
from tuneplan.web import limits as limits_mod  # noqa: E402
from tuneplan.web import server as web_server  # noqa: E402
from tuneplan.web.limits import ApiError, HeavyPool, Limits  # noqa: E402

# short deadlines, small caps; heavy work in threads (the tests below that patch it need that)
FAST = dict(header_timeout=0.4, body_timeout=0.4, keep_alive=5.0, heavy_processes=False)


def until(predicate, timeout=5.0, what="the condition"):
    """Poll `predicate` (no fixed sleeps); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextlib.contextmanager
def running(**limit_kwargs):
    """A real server (uvicorn with tuneplan's protocol) on a free loopback port, in a thread."""
    limits = Limits(**{**FAST, **limit_kwargs})
    app = web.create_app(limits=limits)
    sock = web_server.bind("127.0.0.1", 0)
    srv = uvicorn.Server(web_server.config(app, limits, log_config=None, log_level="info"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: srv.started, 10, "the server to start")
    try:
        yield srv, app, sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def json_answer(raw: bytes, status: int) -> tuple[dict[str, str], dict]:
    """Status checked; the headers (lower-case) and the JSON body of one HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == str(status), raw[:300]
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert headers["content-type"].startswith("application/json"), headers
    n = int(headers.get("content-length", len(body)))
    doc = json.loads(body[:n])
    assert list(doc) == ["error"] and "\n" not in doc["error"], doc
    return headers, doc


def request(path: str, port: int, body: bytes = b"", method: str = "GET", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


# ---------------------------------------------------------------- 19: deadlines, caps, memory

def test_half_open_headers_are_answered_408_and_closed():
    with running() as (_, _, port):
        t0 = time.monotonic()
        with connect(port) as s:  # part of a request line and headers, then nothing
            s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            raw = read_all(s)
        held = time.monotonic() - t0
        _, doc = json_answer(raw, 408)
        assert "headers did not arrive within 0.4 s" in doc["error"]
        assert 0.3 < held < 4, held
        with connect(port) as s:  # a connection that sends nothing is closed, without an answer
            assert read_all(s) == b""
        with connect(port) as s:  # a kept-alive connection: the deadline starts at the next request's first byte
            s.sendall(request("/api/models", port))
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            while b"\r\n\r\n" not in first or len(first.partition(b"\r\n\r\n")[2]) < int(
                    first.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0]):
                first += s.recv(65536)
            s.sendall(b"GET /api/models HTT")
            json_answer(read_all(s), 408)


def test_a_stalled_body_is_answered_408_and_closed():
    with running() as (_, app, port):
        t0 = time.monotonic()
        with connect(port) as s:  # declares 1,000 bytes, sends 10, stalls
            s.sendall(request("/api/estimate", port, method="POST", extra="Content-Length: 1000\r\n")
                      .replace(b"Content-Length: 0\r\n", b"") + b"x" * 10)
            raw = read_all(s)
        headers, doc = json_answer(raw, 408)
        assert "body did not arrive within 0.4 s" in doc["error"] and "10 of 1000 bytes" in doc["error"]
        assert headers["connection"] == "close" and time.monotonic() - t0 < 4
        assert app.uploads.active == 0


def test_connections_past_the_cap_replace_waiting_ones_or_are_answered_503_json():
    with running(max_connections=3, header_timeout=30, body_timeout=30) as (srv, app, port):
        base = f"http://127.0.0.1:{port}"
        waiting = [connect(port) for _ in range(3)]  # half-open: one sent part of its headers, two nothing
        waiting[0].sendall(b"GET /api/models HTTP/1.1\r\nHost: 1")
        until(lambda: len(srv.server_state.connections) == 3, what="3 connections")
        # a new client takes the place of the one that has waited longest: the page stays reachable
        assert httpx.get(base + "/api/models").status_code == 200
        _, doc = json_answer(read_all(waiting[0]), 408)
        assert "another client" in doc["error"]
        until(lambda: len(srv.server_state.connections) == 2, what="the new client's connection to close")
        for s in waiting:
            s.close()
        until(lambda: not srv.server_state.connections, what="the connections to close")
        # three connections being served (bodies being read): none can make room, so a fourth is refused
        busy = [connect(port) for _ in range(3)]
        for s in busy:
            s.sendall(request("/api/estimate", port, b"{", "POST").replace(b"Length: 1", b"Length: 900"))
        until(lambda: app.uploads.active == 3, what="3 bodies being read")
        with connect(port) as s:
            s.sendall(request("/api/models", port))
            headers, doc = json_answer(read_all(s), 503)
        assert headers["retry-after"] == "1" and "connections open" in doc["error"]
        for s in busy:
            s.close()


def test_bodies_past_the_upload_cap_are_answered_503_and_read_within_bounds():
    with running(max_uploads=2, body_timeout=30, max_body_bytes=4096) as (_, app, port):
        stalled = []
        for _ in range(2):
            s = connect(port)
            s.sendall(request("/api/estimate", port, b"{" * 100, "POST").replace(b"Length: 100", b"Length: 4000"))
            stalled.append(s)
        until(lambda: app.uploads.active == 2, what="2 bodies being read")
        cfg = json.dumps({"model_type": "llama"}).encode()
        r = httpx.post(f"http://127.0.0.1:{port}/api/estimate", content=cfg)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "uploads" in r.json()["error"]
        # a body past max_body_bytes is refused as it streams (chunked: no length to refuse up front)
        r = httpx.post(f"http://127.0.0.1:{port}/api/estimate", content=iter([b"x" * 1024] * 8))
        assert r.status_code == 503  # no slot yet
        for s in stalled:
            s.close()
        until(lambda: app.uploads.active == 0, what="the stalled uploads to end")
        r = httpx.post(f"http://127.0.0.1:{port}/api/estimate", content=iter([b"x" * 1024] * 8))
        assert r.status_code == 413 and "larger than 4,096 bytes" in r.json()["error"]
        r = httpx.post(f"http://127.0.0.1:{port}/api/estimate", content=cfg)
        assert r.status_code == 400 and "config.json" in r.json()["error"]  # read, and judged


def test_memory_is_given_back_after_a_burst_of_uploads(monkeypatch):
    calls = []
    monkeypatch.setattr(limits_mod, "release_memory", lambda: calls.append(1) or True)
    app = web.create_app(limits=Limits(trim_after_bytes=3000, heavy_processes=False))
    client = TestClient(app, base_url="http://127.0.0.1")
    for _ in range(2):
        assert client.post("/api/estimate", content=b"{" * 1000).status_code == 400
    assert calls == []  # 2,000 bytes read: under the threshold
    assert client.post("/api/estimate", content=b"{" * 1000).status_code == 400
    assert calls == [1] and app.uploads.unreleased == 0 and app.uploads.trims == 1


@pytest.mark.skipif(not limits_mod.sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_trims_the_heap_on_linux():
    blocks = [bytearray(64 * 1024) for _ in range(200)]  # 12.5 MiB on malloc's heap, then freed
    del blocks
    assert limits_mod.release_memory() is True


# ---------------------------------------------------------------- 20: a client leaving mid-body

def test_a_client_leaving_mid_body_is_one_line_not_an_error(caplog):
    with caplog.at_level(logging.INFO), running(body_timeout=30) as (_, app, port):
        with connect(port) as s:
            s.sendall(request("/api/estimate", port, b"{" * 100, "POST").replace(b"Length: 100", b"Length: 5000"))
            until(lambda: app.uploads.active == 1, what="the body to be read")
        until(lambda: "left before sending the whole body" in caplog.text, what="the log line")
        until(lambda: app.uploads.active == 0, what="the upload slot to free")
    lines = [r for r in caplog.records if "left before" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- 21: --host 0.0.0.0 keeps the Host check

def test_any_address_keeps_the_host_check_with_an_allow_list(monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(web_server, "serve", lambda app, limits, sock, **kw: served.update(app=app))
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--allow-host", "MyServer.lan"]) == 0
    err = capsys.readouterr().err
    assert "--allow-host" in err and "myserver.lan" in err and "IP address" in err
    client = TestClient(served["app"], base_url="http://127.0.0.1")
    for host, status in (("evil.example:8000", 400), ("evil.example", 400), ("myserver.lan:8000", 200),
                         ("192.168.1.5:8000", 200), ("[fe80::1]:8000", 200), ("localhost:8000", 200),
                         ("127.0.0.1.evil.example", 400), ("myserver.lan:x", 400), ("", 400)):
        r = client.get("/api/models", headers={"host": host})
        assert r.status_code == status, (host, r.text[:200])
    assert "--allow-host" in client.get("/api/models", headers={"host": "evil.example"}).json()["error"]
    assert main(["serve", "--allow-host", "http://x.lan:80"]) == 2
    assert "--allow-host" in capsys.readouterr().err


@pytest.mark.parametrize("host,ok", [
    ("localhost", True), ("LOCALHOST:8000", True), ("localhost.:8000", True), ("127.0.0.1:1", True),
    ("[::1]:8000", True), ("10.0.0.7", True), ("::1", False), ("[::1", False), ("[::1]x", False),
    ("attacker.example", False), ("localhost.attacker.example", False), ("a:b:c", False), (":8000", False),
])
def test_host_allowed(host, ok):
    assert web.host_allowed(host, frozenset(web.LOCAL_HOSTS)) is ok


# ---------------------------------------------------------------- 22: heavy work apart, 503 when full

def test_heavy_work_full_is_503_with_retry_after_and_estimates_stay_quick(monkeypatch):
    release = threading.Event()
    real = web.fit_matrix
    monkeypatch.setattr(web, "fit_matrix", lambda *a, **k: release.wait(10) and real(*a, **k))
    with running(heavy_workers=1, heavy_queue=1) as (_, app, port):
        base = f"http://127.0.0.1:{port}"
        q = {"models": "llama-3.2-1b", "methods": "lora", "devices": "rtx-4090"}
        results = []
        threads = [threading.Thread(target=lambda: results.append(httpx.get(base + "/api/matrix", params=q,
                                                                            timeout=20)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        until(lambda: app.heavy.pending == 2, what="one matrix running and one waiting")
        r = httpx.get(base + "/api/heatmap", params=q)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "busy" in r.json()["error"]
        t0 = time.perf_counter()
        assert httpx.get(base + "/api/estimate", params={"model": "llama-3.1-8b"}).status_code == 200
        assert time.perf_counter() - t0 < 2  # answered while the worker is taken
        release.set()
        for t in threads:
            t.join(20)
        assert [r.status_code for r in results] == [200, 200]


def test_heavy_work_runs_in_worker_processes():
    async def go():
        pool = HeavyPool(Limits(heavy_workers=1, heavy_queue=0))
        try:
            pid = await pool.run(os.getpid)
            with pytest.raises(ApiError) as e:  # an API error raised there keeps its status and headers
                await pool.run(_raise_busy)
            return pid, e.value
        finally:
            pool.close()

    pid, err = asyncio.run(go())
    assert pid != os.getpid()
    assert err.status == 503 and err.headers == {"Retry-After": "3"}


def _raise_busy():
    raise ApiError(503, "busy", {"Retry-After": "3"})


# ---------------------------------------------------------------- 23: protocol errors are JSON

def test_protocol_errors_are_json():
    with running(max_header_bytes=2048) as (_, _, port):
        with connect(port) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            _, doc = json_answer(read_all(s), 400)
        assert "not valid HTTP" in doc["error"]
        with connect(port) as s:
            s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
            _, doc = json_answer(read_all(s), 431)
        assert "2,048 bytes" in doc["error"]
        with connect(port) as s:  # a declared body past the limit: 413 before it is read
            s.sendall(request("/api/estimate", port, method="POST").replace(b"Length: 0", b"Length: 99999999"))
            headers, doc = json_answer(read_all(s), 413)
        assert "at most 1,048,576" in doc["error"] and headers["connection"] == "close"
