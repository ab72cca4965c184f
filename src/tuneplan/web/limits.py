"""What one `tuneplan serve` may spend on its clients: time, connections, memory, CPU.

The limits (`Limits`) are enforced in two places. The ASGI app (tuneplan.web.app) reads a
request body through `Uploads`: a few bodies at a time, each into one buffer of at most
`max_body_bytes` (refused as it streams), within `body_timeout`; it computes plans, matrices
and exports in `HeavyPool` (worker processes, a bounded queue; past it 503 with Retry-After),
so the quick endpoints keep the event loop to themselves. The connection layer
(tuneplan.web.server, over uvicorn) caps open connections and times out request headers.
Every refusal is a JSON body `{"error": "<one line>"}`, from either layer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import anyio

from tuneplan.model_config import MAX_CONFIG_BYTES

log = logging.getLogger("tuneplan.web")


def _default_heavy_workers() -> int:
    """Worker processes for plan/matrix/export: one CPU is left to the event loop."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Limits:
    """The server's limits; the defaults are `tuneplan serve`'s."""

    header_timeout: float = 10.0  # seconds from a connection (or a request's first byte) to the end of its headers
    body_timeout: float = 20.0  # seconds to receive a whole request body (1 MiB at 50 KB/s)
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    max_connections: int = 200  # open connections; past it a new one is answered 503 and closed
    max_uploads: int = 16  # request bodies being read at once (each at most max_body_bytes); past it 503
    max_body_bytes: int = MAX_CONFIG_BYTES  # 1 MiB: an uploaded config.json, the same gate as a file's
    max_header_bytes: int = 16 * 1024  # request line and headers; past it 431
    heavy_workers: int = field(default_factory=_default_heavy_workers)  # plan/matrix/export computed at once
    heavy_queue: int = 8  # such requests waiting for a worker; past it 503 with Retry-After
    heavy_processes: bool = True  # heavy work in worker processes (False: threads, for tests that patch it)
    trim_after_bytes: int = 4 << 20  # give freed memory back to the OS once this much body was read and none is


class ApiError(Exception):
    """A request the API refuses: HTTP status, a one-line message and any extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})

    def __reduce__(self):  # raised in a worker process, re-raised here
        return ApiError, (self.status, str(self), self.headers)


class ClientGone(Exception):
    """The client closed the connection before its request was read: nothing to answer."""


def one_line(text: str, limit: int = 600) -> str:
    """An error message as one line of at most `limit` characters (control characters dropped)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raw_json_response(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response `{"error": message}` that closes the connection, for the
    connection layer to write where no ASGI app runs (header timeout, connection cap, bad HTTP)."""
    body = json.dumps({"error": one_line(message)}, ensure_ascii=False).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", "x-content-type-options: nosniff",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------- memory


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing):
    request bodies are freed into malloc's heap, which keeps them unless trimmed. True when done."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


# ---------------------------------------------------------------- request bodies


class Uploads:
    """Request bodies read a few at a time, each into one bounded buffer, within a deadline."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.active = 0  # bodies being read now
        self.unreleased = 0  # body bytes read since memory was last given back
        self.trims = 0

    async def read(self, scope: dict, receive: Callable) -> bytes | None:
        """The request body (None when there is none). Refused: 413 past max_body_bytes (declared
        or as it streams), 503 when max_uploads bodies are being read, 408 past body_timeout; a
        client that leaves mid-body raises ClientGone."""
        lim = self.limits
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        declared = None
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
            if declared > lim.max_body_bytes:
                raise ApiError(413, f"the request body is {declared:,} bytes; at most {lim.max_body_bytes:,} "
                                    "(a config.json is a few KiB)", CLOSE)
            if declared == 0:
                return None
        elif b"transfer-encoding" not in headers:
            return None
        if self.active >= lim.max_uploads:
            raise ApiError(503, f"the server is reading {self.active} uploads already; try again in a second",
                           {"Retry-After": "1", **CLOSE})
        self.active += 1
        buf = bytearray()
        try:
            with anyio.fail_after(lim.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone()
                    chunk = message.get("body", b"")
                    if len(buf) + len(chunk) > lim.max_body_bytes:
                        raise ApiError(413, f"the request body is larger than {lim.max_body_bytes:,} bytes "
                                            "(a config.json is a few KiB)", CLOSE)
                    buf += chunk
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {lim.body_timeout:g} s "
                                f"({len(buf):,} of {declared or 'chunked'} bytes)", CLOSE) from None
        finally:
            self.active -= 1
            self.unreleased += len(buf)
            self._maybe_release()
        return bytes(buf) or None

    def _maybe_release(self) -> None:
        """After a burst of uploads, once none is being read: their memory back to the OS."""
        if self.active == 0 and self.unreleased >= self.limits.trim_after_bytes:
            self.unreleased = 0
            if release_memory():
                self.trims += 1


CLOSE = {"Connection": "close"}  # the rest of the request is not read: the connection cannot be reused


# ---------------------------------------------------------------- heavy work


def _warm() -> int:
    """Run once in each worker process: import what plans, matrices and exports need."""
    import tuneplan.web.app  # noqa: F401

    return os.getpid()


class HeavyPool:
    """Plan, matrix and export work, apart from the event loop: in `heavy_workers` worker
    processes (threads would take turns with the event loop at the GIL and stall the quick
    endpoints for seconds), with at most `heavy_queue` requests waiting; past that a request
    is refused at once, 503 with Retry-After."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pending = 0  # running or waiting
        self._executor: concurrent.futures.Executor | None = None
        self._seconds = 1.0  # a running mean of one request's time, for Retry-After
        self._turns: asyncio.Semaphore | None = None  # a worker's turn (made on the event loop)

    @property
    def capacity(self) -> int:
        return self.limits.heavy_workers + self.limits.heavy_queue

    def executor(self) -> concurrent.futures.Executor:
        if self._executor is None:
            n = self.limits.heavy_workers
            if self.limits.heavy_processes:
                ctx = multiprocessing.get_context("spawn")  # no fork of a threaded server
                self._executor = concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx)
            else:
                self._executor = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="tuneplan-heavy")
        return self._executor

    def start(self) -> None:
        """Start the workers now (the first request need not wait for them)."""
        ex = self.executor()
        for _ in range(self.limits.heavy_workers):
            ex.submit(_warm)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def run(self, fn: Callable[..., Any], *args: Any, gone: Callable[[], Any] | None = None) -> Any:
        """fn(*args) in a worker; `gone()` (awaitable) says, once a worker is free, whether the
        client has left meanwhile: then the work is skipped (ClientGone)."""
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.limits.heavy_workers)
        if self.pending >= self.capacity:
            wait = max(1, math.ceil(self._seconds * self.pending / self.limits.heavy_workers))
            raise ApiError(503, f"the server is busy with {self.pending} plan/matrix/export requests; "
                                f"try again in {wait} s", {"Retry-After": str(wait)})
        self.pending += 1
        t0 = time.monotonic()
        try:
            async with self._turns:
                if gone is not None and await gone():
                    raise ClientGone()
                return await asyncio.wrap_future(self.executor().submit(fn, *args))
        except BrokenProcessPool:  # a worker died (killed, out of memory): a fresh pool for the next request
            log.warning("a worker process died; starting new ones")
            self.close()
            raise ApiError(503, "a worker process of the server died; try again", {"Retry-After": "1"}) from None
        finally:
            self.pending -= 1
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - t0)
