"""`tuneplan serve`: the local web page and its JSON API over the same core (extra: web)."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from tuneplan.errors import TuneplanError

DESCRIPTION = ("Serve a local web page (and its JSON API under /api/) that estimates, fits, plans and exports as "
               "the commands do. Binds 127.0.0.1; no network use unless --hub. Needs the web extra: "
               "pip install -e '.[web]'.")
ANY_HOST = ("0.0.0.0", "::", "")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # tuneplan.web.app's, without importing starlette
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the page may be opened by (the Host header), besides IP addresses and "
                        "localhost; repeatable. Other names are refused, against DNS rebinding")
    p.add_argument("--hub", action="store_true",
                   help="allow fetching config.json of a model not in the catalog from the Hugging Face Hub "
                        "(the only network use)")


def allowed_hosts(host: str, allow: list[str]) -> tuple[str, ...]:
    """The Host names the server accepts besides IP addresses: localhost, the address it is
    bound to and every --allow-host NAME (checked: a DNS name, no port)."""
    names = [*LOCAL_HOSTS, host.strip().lower()] if host.strip() not in ANY_HOST else [*LOCAL_HOSTS]
    for name in allow:
        n = name.strip().lower().rstrip(".")
        if not _HOST_NAME.match(n):
            raise TuneplanError(f"--allow-host takes a host name such as myserver.lan (no port, no scheme), got "
                                f"{name!r}")
        names.append(n)
    return tuple(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    try:
        from tuneplan.web.app import create_app
        from tuneplan.web.limits import Limits
        from tuneplan.web.server import bind, serve
    except ImportError as e:
        raise TuneplanError(f"tuneplan serve needs the web extra (missing {e.name}): pip install -e '.[web]'") from None
    if not 0 <= args.port <= 65535:
        raise TuneplanError(f"--port must be 0-65535, got {args.port}")
    host = args.host.strip()
    hosts = allowed_hosts(host, args.allow_host)
    # fail in one line, before uvicorn starts, when the address cannot be had
    try:
        sock = bind(host, args.port)
    except OSError as e:
        raise TuneplanError(f"cannot listen on {host}:{args.port}: {e.strerror or e}") from None
    port = sock.getsockname()[1]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"tuneplan: serving http://{'127.0.0.1' if host in ANY_HOST else shown}:{port}/ "
                     f"(Ctrl-C stops){'; Hub look-ups on' if args.hub else ''}\n")
    if host in ANY_HOST:
        extra = [h for h in hosts if h not in LOCAL_HOSTS]
        sys.stderr.write(f"tuneplan: note: listening on {host or 'every address'}: anyone who can reach this machine "
                         "can use the page; it answers requests addressed to an IP address or to "
                         f"{', '.join(['localhost', *extra])} (add a name with --allow-host NAME)\n")
    limits = Limits()
    with sock:
        serve(create_app(hub=args.hub, hosts=hosts, limits=limits), limits, sock, log_level="info")
    return 0
