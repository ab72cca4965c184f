"""`tuneplan serve`: the local web page and its JSON API over the same core (extra: web)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from tuneplan.errors import TuneplanError

DESCRIPTION = ("Serve a local web page (and its JSON API under /api/) that estimates, fits, plans and exports as "
               "the commands do. Binds 127.0.0.1; no network use unless --hub. Needs the web extra: "
               "pip install -e '.[web]'.")
ANY_HOST = ("0.0.0.0", "::", "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--hub", action="store_true",
                   help="allow fetching config.json of a model not in the catalog from the Hugging Face Hub "
                        "(the only network use)")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tuneplan.web.app import LOCAL_HOSTS, create_app
    except ImportError as e:
        raise TuneplanError(f"tuneplan serve needs the web extra (missing {e.name}): pip install -e '.[web]'") from None
    if not 0 <= args.port <= 65535:
        raise TuneplanError(f"--port must be 0-65535, got {args.port}")
    host = args.host.strip()
    # fail in one line, before uvicorn starts, when the address cannot be had
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, args.port))
            port = s.getsockname()[1] if args.port == 0 else args.port
    except OSError as e:
        raise TuneplanError(f"cannot listen on {host}:{args.port}: {e.strerror or e}") from None
    hosts = None if host in ANY_HOST else (*LOCAL_HOSTS, host)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"tuneplan: serving http://{'127.0.0.1' if host in ANY_HOST else shown}:{port}/ "
                     f"(Ctrl-C stops){'; Hub look-ups on' if args.hub else ''}\n")
    if hosts is None:
        sys.stderr.write(f"tuneplan: note: listening on {host or 'every address'}: anyone who can reach this machine "
                         "can use the page\n")
    uvicorn.run(create_app(hub=args.hub, hosts=hosts), host=host, port=port, log_level="info", server_header=False)
    return 0
