"""The connection layer of `tuneplan serve`: uvicorn's HTTP/1.1 protocol (h11) with the limits
uvicorn lacks, each refusal a JSON body like the app's.

- at most `max_connections` open connections: past it a new connection takes the place of the
  one that has waited longest for its request's headers (or idled longest between requests);
  when none waits (all are being served) it is answered 503 and closed;
- a request's line and headers must arrive within `header_timeout` of the connection (or of
  the request's first byte on a kept-alive one): else 408 (a connection that sent nothing is
  closed without an answer), so half-open connections are not held;
- a body must arrive within `body_timeout`: the app answers 408 when it reads the body; a
  body no handler reads is cut off a second later;
- headers past `max_header_bytes` are 431, a request that is not HTTP/1.1 is 400.

The app enforces the rest (body size and upload slots, worker pool: tuneplan.web.limits).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tuneplan.web.limits import Limits, raw_json_response

log = logging.getLogger("tuneplan.web")

SHUTDOWN_S = 5  # on Ctrl-C, requests still running after this are cancelled
LINGER_S = 1.0  # how long a refused connection is drained before it is closed (so the answer is read)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, request deadlines and JSON refusals."""

    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._refused = False
        self._phase: str | None = None  # what the deadline is waiting for: "headers", "body" or None
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when the connection began to wait for a request (monotonic)

    # -- connection cap

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._evict_one()
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            transport.write(raw_json_response(
                503, "Service Unavailable",
                f"the server has {len(self.connections)} connections open, its most; try again in a second",
                {"Retry-After": "1"}))
            # half-close and drain what the client sends, so it reads the answer rather than a reset
            if transport.can_write_eof():
                transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.conn.their_state is h11.IDLE and self._headers_too_long(data):
            self.transport.write(raw_json_response(
                431, "Request Header Fields Too Large",
                f"the request's line and headers are longer than {self.limits.max_header_bytes:,} bytes"))
            self.transport.close()
            return
        super().data_received(data)
        self._rearm()

    def _headers_too_long(self, data: bytes) -> bool:
        """Whether the request line and headers, so far, pass max_header_bytes (h11 checks only
        a request still incomplete when it is handed more data)."""
        limit = self.limits.max_header_bytes
        buffered = self.conn.trailing_data[0]
        end = (buffered + data[:limit + 4]).find(b"\r\n\r\n")
        return (end if end >= 0 else len(buffered) + len(data)) > limit

    def eof_received(self) -> bool | None:
        if self._refused:
            return False  # close now
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._refused:
            return
        super().connection_lost(exc)

    def _evict_one(self) -> None:
        """Close the connection that has waited longest for a request (half-open headers or an
        idle keep-alive), so that slow or idle clients cannot keep new ones out."""
        waiting = [c for c in self.connections if isinstance(c, LimitedH11Protocol) and c._waiting()]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            self.connections.discard(oldest)
            oldest._close_waiting("the server needed the connection for another client")

    def _waiting(self) -> bool:
        """No request in progress: waiting for one's headers, or idle between requests."""
        return (not self.transport.is_closing() and self.conn.their_state is h11.IDLE
                and (self.cycle is None or self.cycle.response_complete))

    def _close_waiting(self, why: str) -> None:
        """Close a connection that waits for a request: 408 in JSON if part of one came."""
        if self.conn.trailing_data[0]:
            self.transport.write(raw_json_response(408, "Request Timeout", why))
        self.transport.close()

    # -- deadlines for the client's part of a request

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._rearm()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _rearm(self) -> None:
        """Start, keep or stop the deadline of what the connection waits for from the client:
        headers (on a new connection, or once a kept-alive one receives a byte), then a body."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE and self._phase is None:
            self._waiting_since = time.monotonic()  # a new connection, or a request done
        if state is h11.IDLE and (self.cycle is None or self.conn.trailing_data[0]):
            phase = "headers"
        elif state is h11.SEND_BODY:
            phase = "body"
        else:  # the request is in, or the connection idles between requests (uvicorn's keep-alive timer)
            phase = None
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase == "headers":
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._expired, phase)
        elif phase == "body":  # the app answers 408 first when it is reading the body
            self._deadline = self.loop.call_later(self.limits.body_timeout + 1.0, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if phase == "headers":
            if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
                self.logger.info("%s: closed a connection whose request headers did not arrive within %g s",
                                 _peer(self.client), self.limits.header_timeout)
            # a connection that sent nothing (a browser's spare one) is closed without a word
            self._close_waiting(f"the request's headers did not arrive within {self.limits.header_timeout:g} s")
            return
        self.logger.info("%s: closed a connection whose request body did not arrive within %g s",
                         _peer(self.client), self.limits.body_timeout)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # whatever the app still sends goes nowhere
            self.cycle.message_event.set()
        self.transport.close()

    # -- protocol errors: JSON, not uvicorn's plain text

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
            data = raw_json_response(431, "Request Header Fields Too Large",
                                     f"the request's line and headers are longer than "
                                     f"{self.limits.max_header_bytes:,} bytes")
        else:
            data = raw_json_response(400, "Bad Request", "the request is not valid HTTP/1.1")
        self.transport.write(data)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def protocol_class(limits: Limits) -> type[LimitedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


def config(app: Any, limits: Limits, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's Config for `app` under `limits` (keyword arguments pass through)."""
    return uvicorn.Config(app, host=host, port=port, http=protocol_class(limits), timeout_keep_alive=limits.keep_alive,
                          h11_max_incomplete_event_size=limits.max_header_bytes, server_header=False,
                          timeout_graceful_shutdown=SHUTDOWN_S,
                          **kwargs)


def serve(app: Any, limits: Limits, sock: socket.socket, **kwargs: Any) -> None:
    """Serve on a listening socket (see `bind`) until stopped (Ctrl-C)."""
    host, port = sock.getsockname()[:2]
    uvicorn.Server(config(app, limits, host, port, **kwargs)).run(sockets=[sock])


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket (port 0: a free one), for `uvicorn.Server(...).run(sockets=[sock])`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
