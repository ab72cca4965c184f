"""The web app of `tuneplan serve`: the page and a JSON API over the same core as the CLI.

Every API endpoint takes the CLI's option names in the query string (`seq-len=4096`,
`batch=2`, `gpu=rtx-4090`, a flag as `fused-ce=1`), parses them with the command's own
argparse definitions and calls the same functions as the command's `--json`, so a
response is the document the CLI prints for the same job. Three differences, all for
safety or for JSON: the model is a catalog name or alias (a Hub id when started with
--hub) or a config.json POSTed as the request body (at most 1 MiB, parsed in memory,
never written to disk), never a path; options that read or write files (--from, --csv,
-o, ...) are refused. Non-finite numbers are the string "Infinity" in both (cli.output.finite).

Every bad input is a 4xx answer `{"error": "<one line>"}` (the CLI's message); anything
unexpected is logged with its traceback and answered 500 in one line. What the server spends on
a client (time, connections, memory, worker processes) is bounded: see tuneplan.web.limits.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tuneplan import __version__
from tuneplan.checks import check_device_count, check_job
from tuneplan.cli.options import CHOICES, job_from_args
from tuneplan.cli.output import finite
from tuneplan.commands import devices as devices_cmd
from tuneplan.commands import estimate as estimate_cmd
from tuneplan.commands import export as export_cmd
from tuneplan.commands import matrix as matrix_cmd
from tuneplan.commands import plan as plan_cmd
from tuneplan.errors import TuneplanError
from tuneplan.export import TARGETS
from tuneplan.hardware import devices as device_table
from tuneplan.hardware import devices_in, resolve_device, resolve_devices
from tuneplan.job import METHODS, Job
from tuneplan.matrix import fit_matrix, heatmap_grid
from tuneplan.models import (
    ModelSpec,
    catalog,
    catalog_rows,
    decode_config_bytes,
    parse_config_text,
    resolve_model,
    spec_from_config,
)
from tuneplan.web.limits import ApiError, ClientGone, HeavyPool, Limits, Uploads, one_line

log = logging.getLogger("tuneplan.web")

MAX_BODY_BYTES = Limits().max_body_bytes  # 1 MiB: an uploaded config.json, the same gate as a file's
MAX_QUERY_CHARS = 8192  # a query string longer than this is refused (414)
# models x methods x devices of one matrix request: the whole catalog today (45 models x 5 methods x
# 71 devices = 15,975 cells, about 1 s) with room to grow; past it a request is refused before any work
MAX_MATRIX_CELLS = 20_000
WORKER_THREADS = 4  # estimates computed at once in threads when they may reach the Hub (--hub)
MAX_NAME_CHARS = 128  # a model name or Hub id
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

# CLI options the web page does not take: they read or write files, or are the server's to set
REFUSED = {
    "from": "reads a file on the server; POST the config.json as the request body instead",
    "from-format": "belongs to --from, which reads a file on the server",
    "csv": "writes a file on the server; the JSON has every cell",
    "png": "writes a file on the server; the page draws the charts",
    "force": "only overwrites files, which the web page never writes",
    "export": "writes files on the server; use /api/export?to=TARGET",
    "export-to": "writes files on the server; use /api/export?to=TARGET",
    "output": "writes a file on the server; /api/export returns the file",
    "json": "every answer is JSON already",
    "hub": "Hub look-ups are the server's setting: start it with `tuneplan serve --hub`",
}
TRUE, FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")
# query keys that are not command-line options: the model's name, and the name to give an uploaded config.json
PAGE_KEYS = {"estimate": ("model", "name"), "fit": ("model", "name"), "plan": ("model", "name"),
             "export": ("model", "name"), "matrix": ("name",), "heatmap": ("name",)}

# the command whose argparse options each endpoint takes
COMMAND_OF = {"estimate": estimate_cmd, "fit": estimate_cmd, "plan": plan_cmd, "matrix": matrix_cmd,
              "heatmap": matrix_cmd, "export": export_cmd, "devices": devices_cmd}


class _QueryParser(argparse.ArgumentParser):
    """The command's argparse options; a usage error is an ApiError, not an exit."""

    def error(self, message: str) -> None:  # noqa: D102
        raise ApiError(400, message)


@cache
def _parser(endpoint: str) -> tuple[_QueryParser, dict[str, argparse.Action]]:
    """The parser of an endpoint's command and its options by long name (without '--')."""
    p = _QueryParser(prog=f"/api/{endpoint}", add_help=False)
    COMMAND_OF[endpoint].add_arguments(p)
    options = {o[2:]: a for a in p._actions for o in a.option_strings if o.startswith("--")}
    return p, options


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Strict JSON (UTF-8); non-finite numbers as strings (see `finite`)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(finite(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": one_line(message)}, status, headers)


@dataclass(frozen=True)
class Download:
    """A file to send as an attachment (built in a worker process, sent from the server's)."""

    body: bytes
    media_type: str
    headers: dict[str, str]

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=self.headers)


# ---------------------------------------------------------------- models: names and uploads, never paths

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?\Z")


@cache
def _catalog_names() -> frozenset[str]:
    return frozenset(n.lower() for hf_id, m in catalog().items() for n in (hf_id, *m.aliases))


def resolve_name(name: str, hub: bool) -> ModelSpec:
    """A model given by name: a catalog id or alias (or an -Instruct/-it/-chat variant of one),
    or with `hub` a Hub repo id. Anything that could name a file on the server is refused
    before tuneplan.models.resolve_model sees it: absolute or home paths, '.', '..',
    backslashes, a .json suffix, more than one '/', and names of existing files or folders."""
    text = name.strip() if isinstance(name, str) else ""
    if not text:
        raise ApiError(400, "the model is empty; give a catalog id or alias (see /api/models) or POST a config.json")
    shown = one_line(text, 80)
    where = "a catalog id or alias" + (" or a Hub repo id" if hub else "")
    if len(text) > MAX_NAME_CHARS or not _NAME.match(text) or ".." in text or text.lower().endswith(".json"):
        raise ApiError(400, f"model {shown!r} is not {where}; the web page reads no paths: POST the config.json "
                            "as the request body instead")
    if text.lower() not in _catalog_names() and os.path.lexists(text):
        raise ApiError(400, f"model {shown!r} names a file or folder on the server, which the web page does not "
                            "read; POST the config.json as the request body instead")
    return resolve_model(text, hub=hub)


def uploaded_spec(body: bytes, name: str | None) -> ModelSpec:
    """A ModelSpec from a config.json sent as the request body (parsed in memory, never written):
    the same gate as a config.json file (UTF-8, strict JSON, type-checked fields)."""
    where = "the uploaded config.json"
    cfg = parse_config_text(decode_config_bytes(body, where), where)
    if name is None:
        guess = cfg.get("_name_or_path")
        name = guess if isinstance(guess, str) and guess.strip() else "custom"
    name = one_line(name, MAX_NAME_CHARS) or "custom"
    return spec_from_config(cfg, name=name)


# ---------------------------------------------------------------- the API


class Api:
    """The endpoints' work, synchronous and pure apart from the Hub (when `hub`)."""

    def __init__(self, hub: bool = False):
        self.hub = bool(hub)

    # -- request -> arguments

    def args(self, endpoint: str, params: list[tuple[str, str]]) -> tuple[argparse.Namespace, dict[str, str]]:
        """The endpoint's command-line options from the query (CLI long names), parsed by the
        command's own argparse definitions; and the page keys (model, name)."""
        parser, options = _parser(endpoint)
        page_keys = PAGE_KEYS.get(endpoint, ())
        argv: list[str] = []
        seen: set[str] = set()
        page: dict[str, str] = {}
        for key, value in params:
            if key in seen:
                raise ApiError(400, f"{key} is given twice")
            seen.add(key)
            if key in page_keys:
                page[key] = value
                continue
            if key in REFUSED:
                raise ApiError(400, f"{key} is not taken by the web API: it {REFUSED[key]}")
            action = options.get(key)
            if action is None:
                known = ", ".join(sorted(k for k in options if k not in REFUSED))
                raise ApiError(400, f"unknown option {one_line(key, 40)!r} for /api/{endpoint}; "
                                    f"{''.join(k + ', ' for k in page_keys)}{known}")
            if action.nargs == 0:  # a flag: given when true
                v = value.strip().lower()
                if v in TRUE:
                    argv.append(f"--{key}")
                elif v not in FALSE:
                    raise ApiError(400, f"{key} is a flag: give 1 or 0 (true/false), got {one_line(value, 40)!r}")
            else:
                argv.append(f"--{key}={value}")
        ns = parser.parse_args(argv)
        ns.hub = self.hub
        return ns, page

    def spec(self, page: dict[str, str], body: bytes | None) -> ModelSpec:
        """The model: a name (catalog, or the Hub with --hub), or the uploaded config.json."""
        if body is not None:
            if page.get("model"):
                raise ApiError(400, "give model=NAME or a config.json as the request body, not both")
            return uploaded_spec(body, page.get("name"))
        if "model" not in page:
            raise ApiError(400, "give model=NAME (a catalog id or alias, see /api/models) or POST a config.json")
        if "name" in page:
            raise ApiError(400, "name names an uploaded config.json; with model=NAME there is none")
        return resolve_name(page["model"], self.hub)

    def request(self, endpoint: str, params: list[tuple[str, str]], body: bytes | None, need_gpu: bool = False):
        """Model, job and --gpu device checked together, in the order `checked_request` checks them."""
        ns, page = self.args(endpoint, params)
        if need_gpu and not ns.gpu:
            raise ApiError(400, f"/api/{endpoint} needs gpu=DEVICE (a catalog device, see /api/devices)")
        job = job_from_args(ns)
        spec = self.spec(page, body)
        device = resolve_device(ns.gpu) if ns.gpu else None
        check_job(spec, job, ns.allow_long_context)
        if device:
            check_device_count(job, device)
        return ns, spec, job, device

    # -- endpoints

    def estimate(self, params: list[tuple[str, str]], body: bytes | None, need_gpu: bool = False) -> dict:
        """`estimate --json` (with gpu: `estimate --gpu DEVICE --json`)."""
        _, spec, job, device = self.request("fit" if need_gpu else "estimate", params, body, need_gpu)
        est, verdict = estimate_cmd.estimate_data(spec, job, device)
        return estimate_cmd.estimate_json(spec, est, verdict, estimate_cmd.estimate_time(spec, job, device))

    def plan(self, params: list[tuple[str, str]], body: bytes | None) -> dict:
        """`plan --json`."""
        ns, page = self.args("plan", params)
        spec = self.spec(page, body)
        spec, report = plan_cmd.plan_data(ns, spec)
        return plan_cmd.plan_json(spec, report)

    def _matrix(self, endpoint: str, params: list[tuple[str, str]], body: bytes | None):
        ns, page = self.args(endpoint, params)
        upload = None
        if body is not None:
            if any(k == "models" for k, _ in params):
                raise ApiError(400, "give models=NAMES or a config.json as the request body, not both")
            upload = uploaded_spec(body, page.get("name"))
            ns.models = "upload"  # one row of models: the uploaded config
        elif "name" in page:
            raise ApiError(400, "name names an uploaded config.json; with models=NAMES there is none")

        def resolve(name: str) -> ModelSpec:
            return upload if upload is not None else resolve_name(name, self.hub)

        cells = (len(matrix_cmd.model_names(ns.models)) * len(matrix_cmd.method_kinds(ns.methods))
                 * len(resolve_devices(ns.devices)))
        if cells > MAX_MATRIX_CELLS:
            raise ApiError(400, f"the matrix would have {cells:,} cells; the web API computes at most "
                                f"{MAX_MATRIX_CELLS:,} (models x methods x devices)")
        specs, methods, devs, job = matrix_cmd.matrix_request(ns, resolve)
        return job, fit_matrix(specs, methods, devs, job)

    def matrix(self, params: list[tuple[str, str]], body: bytes | None) -> dict:
        """`matrix --json`."""
        job, cells = self._matrix("matrix", params, body)
        return matrix_cmd.matrix_json(job, cells)

    def heatmap(self, params: list[tuple[str, str]], body: bytes | None) -> dict:
        """The matrix laid out for the page's heat map (tuneplan.matrix.heatmap_grid, as the PNG
        lays it out): rows (model, method), device columns, verdicts, largest micro-batch labels,
        and per cell the peak (bytes, None for n/a) and note; usable bytes per device."""
        job, cells = self._matrix("heatmap", params, body)
        grid = heatmap_grid(cells)
        ri = {r: i for i, r in enumerate(grid.rows)}
        ci = {c: i for i, c in enumerate(grid.cols)}
        peaks: list[list[int | None]] = [[None] * len(grid.cols) for _ in grid.rows]
        notes = [[""] * len(grid.cols) for _ in grid.rows]
        usable = [0] * len(grid.cols)
        for c in cells:
            i, k = ri[(c.model, c.method)], ci[c.device]
            peaks[i][k], notes[i][k], usable[k] = c.peak_bytes, c.note, c.usable_bytes
        return {"settings": matrix_cmd.matrix_json(job, [])["settings"], "unit": "bytes",
                "rows": [list(r) for r in grid.rows], "cols": list(grid.cols),
                "verdicts": [list(r) for r in grid.verdicts], "labels": [list(r) for r in grid.labels],
                "peak_bytes": peaks, "usable_bytes": usable, "notes": notes}

    def export(self, params: list[tuple[str, str]], body: bytes | None) -> Download:
        """The file `export --to TARGET` writes, as an attachment."""
        ns, spec, job, device = self.request("export", params, body)
        exp = export_cmd.export_file(ns.to, spec, job, device)
        media = "application/json" if exp.file_name.endswith(".json") else "text/plain; charset=utf-8"
        headers = {"Content-Disposition": f'attachment; filename="{exp.file_name}"',
                   "X-Tuneplan-Cannot": json.dumps(list(exp.cannot)),
                   "X-Tuneplan-Notes": json.dumps(list(exp.notes)),
                   "X-Tuneplan-Launch": json.dumps(exp.launch)}
        return Download(exp.text.encode("utf-8"), media, headers)

    def devices(self, params: list[tuple[str, str]]) -> list[dict]:
        """`devices --json` (category= for one category)."""
        ns, _ = self.args("devices", params)
        return [d.to_dict() for d in devices_in(ns.category)]

    def options(self, limits: Limits | None = None) -> dict:
        """What the page's form needs: every job option (the CLI's name, help and default), the
        choices of each, export targets, device categories and the server's limits."""
        parser, options = _parser("estimate")
        limits = limits or Limits()
        default = Job().settings()
        fields = {}
        setting_option = {}
        for name, a in options.items():
            if name in REFUSED or a.dest in ("gpu", "allow_long_context"):
                continue
            setting_option.setdefault(a.dest, name)
            if a.dest in default and a.dest not in fields:
                fields[a.dest] = {"option": name, "flag": a.nargs == 0, "help": a.help, "default": default[a.dest]}
        choices = {key: list(names) for key, names in CHOICES.items()}
        choices.update({"rank-by": ["time", "cost", "purchase"], "matrix-methods": list(METHODS)})
        return {"version": __version__, "hub": self.hub, "fields": fields, "setting_option": setting_option,
                "choices": choices,
                "export_targets": [{"name": t.name, "label": t.label, "file_name": t.file_name}
                                   for t in TARGETS.values()],
                "device_categories": sorted({d.category for d in device_table().values()}),
                "matrix_defaults": {"models": matrix_cmd.DEFAULT_MODELS, "devices": matrix_cmd.DEFAULT_DEVICES},
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_matrix_cells": MAX_MATRIX_CELLS,
                           "max_query_chars": MAX_QUERY_CHARS, "body_timeout_s": limits.body_timeout}}


# ---------------------------------------------------------------- HTTP


def _static_files() -> dict[str, bytes]:
    """The page's files, read once from the package (flat: web/static/NAME)."""
    folder = resources.files("tuneplan.web").joinpath("static")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")}


CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a Host header names this server: one of `names`, or an IP address (a page that
    rebinds a DNS name to this machine sends that name, never an address)."""
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        end = host.find("]")
        bare, port = (host[1:end], host[end + 1:]) if end > 0 else ("", "")
        if port and not (port.startswith(":") and port[1:].isdigit()):
            return False
    elif host.count(":") > 1:  # an IPv6 address needs its brackets
        return False
    else:
        bare, _, port = host.partition(":")
        if _ and not port.isdigit():
            return False
    bare = bare[:-1] if bare.endswith(".") else bare  # the root's dot: "localhost."
    if not bare:
        return False
    if bare in names:
        return True
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware: refuses a Host header that is not the server's (DNS rebinding) and an
    over-long query string, in JSON; adds security headers to every response. Holds the
    server's limits, its upload slots and its worker pool (`limits`, `uploads`, `heavy`)."""

    def __init__(self, app: Any, hosts: frozenset[str] | None, limits: Limits | None = None,
                 uploads: Uploads | None = None, heavy: HeavyPool | None = None):
        self.app, self.hosts = app, hosts
        self.limits = limits or Limits()
        self.uploads, self.heavy = uploads, heavy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.hosts):
                await error_response(400, f"Host {one_line(host.strip(), 80)!r} is not this server's; open "
                                          "http://127.0.0.1:PORT/ (a server started with --host can take more "
                                          "names: --allow-host NAME)")(scope, receive, send)
                return
        if len(scope.get("query_string", b"")) > MAX_QUERY_CHARS:
            await error_response(414, f"the query string is longer than {MAX_QUERY_CHARS:,} characters")(
                scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(hub: bool = False, hosts: tuple[str, ...] | None = LOCAL_HOSTS, limits: Limits | None = None) -> Guard:
    """The ASGI app of `tuneplan serve`.

    Args:
        hub: allow Hub look-ups of models not in the catalog (the only network use).
        hosts: Host header names accepted besides IP addresses (None: any name, no check).
        limits: time, size and concurrency limits (default: `Limits()`, `tuneplan serve`'s).
    """
    limits = limits or Limits()
    api = Api(hub=hub)
    static = _static_files()
    uploads = Uploads(limits)
    # plan, matrix and export run in worker processes, a bounded number waiting (tuneplan.web.limits)
    heavy = HeavyPool(limits)
    # estimates that may reach the Hub wait for the network in threads, a few at a time
    workers = anyio.CapacityLimiter(WORKER_THREADS)

    def endpoint(work: Callable[..., Any], reads_body: bool = False, quick: bool = False) -> Callable:
        """A handler around `work(params[, body])`: quick work (a millisecond or so, no network)
        runs on the event loop, first come first served; with --hub in a thread; the rest in the
        worker pool."""

        async def handle(request: Request) -> Response:
            left = "sending the whole body"  # what a client that leaves did not wait for
            try:
                params = list(request.query_params.multi_items())
                body = await uploads.read(request.scope, request.receive) \
                    if reads_body and request.method == "POST" else None
                left = "its turn in the worker pool"
                call = partial(work, params, body) if reads_body else partial(work, params)
                if not quick:
                    out = await heavy.run(call, gone=request.is_disconnected)
                elif api.hub:
                    out = await anyio.to_thread.run_sync(call, limiter=workers)
                else:
                    out = call()
                return out.response() if isinstance(out, Download) else json_response(out)
            except ApiError as e:
                return error_response(e.status, str(e), e.headers)
            except TuneplanError as e:
                return error_response(400, str(e))
            except ClientGone:  # the client's doing, not the server's: one line, no answer to send
                log.info("%s %s: the client left before %s", request.method, request.url.path, left)
                return Response(status_code=400)
            except Exception as e:  # never a stack trace to the client: one line, the trace in the log
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(500, f"internal error ({type(e).__name__}); the server log has the details")
        return handle

    def file(name: str) -> Response:
        data = static.get(name)
        if data is None:
            return error_response(404, f"no such file: {one_line(name, 80)}")
        ext = os.path.splitext(name)[1]
        return Response(data, media_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})

    async def index(request: Request) -> Response:
        return file("index.html")

    async def static_file(request: Request) -> Response:
        return file(request.path_params["name"])

    async def http_error(request: Request, exc: HTTPException) -> Response:
        what = "no such page or endpoint" if exc.status_code == 404 else one_line(exc.detail)
        return error_response(exc.status_code, f"{request.method} {one_line(request.url.path, 80)}: {what}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        heavy.start()
        try:
            yield
        finally:
            heavy.close()

    both = ["GET", "POST"]
    routes = [
        Route("/", index),
        Route("/static/{name}", static_file),
        Route("/api/options", endpoint(lambda params: api.options(limits), quick=True)),
        Route("/api/models", endpoint(lambda params: _no_params("models", params) or catalog_rows(), quick=True)),
        Route("/api/devices", endpoint(api.devices, quick=True)),
        Route("/api/estimate", endpoint(api.estimate, True, quick=True), methods=both),
        Route("/api/fit", endpoint(partial(api.estimate, need_gpu=True), True, quick=True), methods=both),
        Route("/api/plan", endpoint(api.plan, True), methods=both),
        Route("/api/matrix", endpoint(api.matrix, True), methods=both),
        Route("/api/heatmap", endpoint(api.heatmap, True), methods=both),
        Route("/api/export", endpoint(api.export, True), methods=both),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    names = frozenset(h.lower() for h in hosts) if hosts is not None else None
    return Guard(app, names, limits, uploads, heavy)


def _no_params(endpoint: str, params: list[tuple[str, str]]) -> None:
    if params:
        raise ApiError(400, f"/api/{endpoint} takes no options, got {one_line(params[0][0], 40)!r}")
