"""Which model a name means: the bundled catalog, a local config.json, or the Hub.

:func:`resolve_model` turns a user's model argument (a catalog id or alias, an -Instruct
variant of one, a path, a Hub repo id) into a ModelSpec; every config it reads goes
through the one gate in tuneplan.model_config. The spec itself and its matrices live in
tuneplan.model_spec; their names, and the gate's, are importable from here too, so callers
need one module.
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import re
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError
from tuneplan.model_config import (
    KNOWN_TYPES,
    MAX_CONFIG_BYTES,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_JSON_DEPTH,
    MAX_LAYERS,
    MAX_NUMBER_DIGITS,
    MAX_POSITION,
    MAX_VOCAB,
    MAX_WIDTH,
    decode_config_bytes,
    load_config_file,
    os_reason,
    parse_config_text,
    path_text,
    read_regular_file,
    spec_from_config,
    supported_model_types,
    value_text,
)
from tuneplan.model_spec import (
    Linear,
    ModelSpec,
    ParamCounts,
    attention_linears,
    layer_linears,
    layer_small_params,
    mlp_linears,
    param_counts,
)


@dataclass(frozen=True)
class CatalogModel:
    """A bundled model: its config, published parameter count and where the facts come from."""

    hf_id: str
    aliases: tuple[str, ...]
    config: dict[str, Any]
    published_params: int | None
    published_source: str
    count_note: str
    unconfirmed: str

    @property
    def spec(self) -> ModelSpec:
        return _catalog_spec(self.hf_id)


@lru_cache(maxsize=1)
def catalog() -> dict[str, CatalogModel]:
    """Bundled models by HF id, loaded once from data/models.json."""
    raw = json.loads(resources.files("tuneplan").joinpath("data/models.json").read_text())
    out = {}
    for row in raw["models"]:
        out[row["hf_id"]] = CatalogModel(
            hf_id=row["hf_id"], aliases=tuple(row["aliases"]), config=row["config"],
            published_params=row.get("published_params"), published_source=row.get("published_source", ""),
            count_note=row.get("count_note", ""), unconfirmed=row.get("unconfirmed", ""),
        )
    return out


@lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    idx = {}
    for hf_id, m in catalog().items():
        idx[hf_id.lower()] = hf_id
        for a in m.aliases:
            idx[a.lower()] = hf_id
    return idx


@cache
def _catalog_spec(hf_id: str) -> ModelSpec:
    return spec_from_config(catalog()[hf_id].config, name=hf_id)


HUB_ENV = "TUNEPLAN_HUB"  # for API users: set to 1 to allow Hub look-ups when `hub` is not passed


def hub_enabled(hub: bool | None = None) -> bool:
    """Hub look-ups are off unless asked for (no network at run time by default): the
    caller's `hub` flag (the CLI's --hub), else the TUNEPLAN_HUB environment variable."""
    if hub is not None:
        return hub
    return os.environ.get(HUB_ENV, "") not in ("", "0", "false", "no")


def fetch_hub_config(repo_id: str, revision: str = "main", timeout: float = 20.0) -> dict[str, Any]:
    """Download a model's config.json from the Hugging Face Hub (no weights).

    The endpoint follows huggingface_hub's HF_ENDPOINT variable (default
    https://huggingface.co); HF_TOKEN is sent for gated repos. The file is cached under
    $XDG_CACHE_HOME/tuneplan/hub so later runs work offline. The answer goes through the
    same checks as a local file (size, encoding, JSON, fields).

    Raises:
        TuneplanError: not found, gated without a token, network failure or a bad answer.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id, flags=re.ASCII) or ".." in repo_id:
        raise TuneplanError(f"{value_text(repo_id)} is not a Hub repo id (owner/name)")
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneplan" / "hub" / repo_id / revision
        cached = cache / "config.json"
        is_cached = cached.is_file()
    except (OSError, RuntimeError):  # no home directory, or an unreadable cache: fetch again
        cache = cached = None
        is_cached = False
    if is_cached:
        return load_config_file(cached)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo_id}/resolve/{revision}/config.json"
    where = f"config.json of {repo_id} from the Hub"
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "tuneplan"})
        token = os.environ.get("HF_TOKEN")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(MAX_CONFIG_BYTES + 1)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise TuneplanError(f"{repo_id} is gated or private on the Hub; set HF_TOKEN") from None
        if e.code == 404:
            raise TuneplanError(f"{repo_id} has no config.json on the Hub (HTTP 404)") from None
        raise TuneplanError(f"Hub answered HTTP {e.code} for {repo_id}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise TuneplanError(f"cannot reach the Hub for {repo_id}: {getattr(e, 'reason', None) or e}") from None
    except (ValueError, http.client.HTTPException) as e:  # a malformed HF_ENDPOINT or answer
        raise TuneplanError(f"cannot fetch {repo_id} from {value_text(endpoint)}: {type(e).__name__}: {e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise TuneplanError(f"{where} is larger than {MAX_CONFIG_BYTES:,} bytes; not a config.json")
    text = decode_config_bytes(data, where)
    cfg = parse_config_text(text, where)
    spec_from_config(cfg, name=repo_id)  # cache only what the checks accept
    if cache is None:
        return cfg
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".config.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only or full cache only costs a download next time
    return cfg


def resolve_model(name: str, hub: bool | None = None) -> ModelSpec:
    """Turn a user's model argument into a ModelSpec.

    Accepts a catalog HF id or alias (case-insensitive), an -Instruct/-it/-chat variant of
    one (read with the base model's config, said in `spec.note`), a path to a config.json
    (or a folder holding one), or, when Hub look-ups are enabled (`hub=True`, the CLI's
    --hub; None reads TUNEPLAN_HUB), any Hub repo id.

    Raises:
        TuneplanError: unknown name (with close matches) or unreadable config.
    """
    if isinstance(name, str):
        hf_id = _name_index().get(name.strip().lower())
        if hf_id is not None:  # a catalog name: its spec is built once (no copy of its config)
            return _catalog_spec(hf_id)
        key = _file_key(name)
        if key is not None:
            return _file_spec(key)
    return resolve_config(name, hub)[0]


def _file_key(name: str) -> tuple | None:
    """The cache key of a local config.json (or a folder holding one): the name as given and
    the file's identity and version (device, inode, size, mtime and ctime in ns), so an edited
    or replaced file is read again. None when it is not a regular file (resolve_config then
    says why, or reads the name another way)."""
    try:
        p = Path(name)
        target = p / "config.json" if p.is_dir() else p
        st = os.stat(target)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@lru_cache(maxsize=256)
def _file_spec(key: tuple) -> ModelSpec:
    """The spec of a local config.json, read through the one gate (load_config_file); a
    refusal is not cached (it raises every time)."""
    p = Path(key[0])
    return spec_from_config(load_config_file(p), name=str(p))


# Instruction/chat-tuned releases share every architecture field with their base model.
_VARIANT = re.compile(r"-(instruct|it|chat|chat-hf)(?=-|$)")


def _variant_base(key: str) -> str | None:
    """The catalog id of the base model of an -Instruct/-it/-chat variant, or None."""
    owner, _, tail = key.rpartition("/")
    base_tail = _VARIANT.sub("", tail)
    if base_tail == tail:
        return None
    idx = _name_index()
    for cand in (f"{owner}/{base_tail}" if owner else base_tail, base_tail):
        if cand in idx:
            return idx[cand]
    return None


def resolve_config(name: str, hub: bool | None = None) -> tuple[ModelSpec, dict[str, Any]]:
    """Like :func:`resolve_model`, but also return the raw config dict (for trace/probe)."""
    if not isinstance(name, str):
        raise TuneplanError(f"model must be a catalog name or a path to config.json, got {value_text(name)}")
    if not name.strip():
        raise TuneplanError("the model name is empty; run `tuneplan models` for the list")
    key = name.strip().lower()
    idx = _name_index()
    if key in idx:
        hf_id = idx[key]
        return _catalog_spec(hf_id), dict(catalog()[hf_id].config)
    p = Path(name)
    try:
        is_path = p.suffix == ".json" or p.is_dir() or p.exists()
    except (OSError, ValueError) as e:
        raise TuneplanError(f"cannot read {path_text(name)}: {os_reason(e)}") from None
    if is_path:
        cfg = load_config_file(p)
        return spec_from_config(cfg, name=str(p)), cfg
    if hub_enabled(hub) and "/" in name:
        cfg = fetch_hub_config(name.strip())
        return spec_from_config(cfg, name=name.strip()), cfg
    base = _variant_base(key)
    if base is not None:
        note = (f"{name.strip()} is not in the catalog; using the config of {base}: instruction-tuned variants "
                "share the base architecture")
        return replace(_catalog_spec(base), name=name.strip(), note=note), dict(catalog()[base].config)
    hint = f"; did you mean {', '.join(close)}?" if (close := suggestions(name)) else \
        "; run `tuneplan models` for the list"
    if "/" in name and not hub_enabled(hub):
        hint += " (or pass --hub to fetch its config.json from the Hugging Face Hub)"
    raise TuneplanError(f"unknown model {value_text(name.strip())}{hint}")


def suggestions(name: str, n: int = 3) -> list[str]:
    """Catalog names close to `name`, as the catalog spells them; same size (8b, 70b) first."""
    key = name.strip().lower()
    display: dict[str, tuple[str, str]] = {}  # lower-case name -> (as spelled, hf id)
    for hf_id, m in catalog().items():
        for spelled in (hf_id, *m.aliases):
            display.setdefault(spelled.lower(), (spelled, hf_id))
    close = difflib.get_close_matches(key, list(display), n=12, cutoff=0.5)
    if not close:  # try the name part of an HF id
        tail = re.sub(r"^[^/]+/", "", key)
        close = [k for k in display if tail and tail in k][:12]
    size = re.search(r"(?<![\d.])(\d+(?:\.\d+)?[bm])(?![a-z0-9])", key)
    if size:
        same = re.compile(rf"(?<![\d.]){re.escape(size.group(1))}(?![a-z0-9])")
        close.sort(key=lambda k: not same.search(k))  # stable: similarity order within each group
    out: list[str] = []
    seen: set[str] = set()
    for k in close:
        spelled, hf_id = display[k]
        if hf_id not in seen:
            seen.add(hf_id)
            out.append(spelled)
    return out[:n]


def catalog_rows() -> list[dict[str, Any]]:
    """One JSON-ready row per bundled model: ids, type, counted and published parameters, shape."""
    rows = []
    for hf_id, m in catalog().items():
        spec = m.spec
        pc = param_counts(spec)
        rows.append({
            "hf_id": hf_id, "aliases": list(m.aliases), "model_type": spec.model_type,
            "params": pc.total, "active_params": pc.active, "published_params": m.published_params,
            "layers": spec.num_layers, "hidden": spec.hidden_size, "vocab": spec.vocab_size,
            "moe": f"{spec.num_experts}x{spec.experts_per_token}" if spec.is_moe else "",
            "max_position": spec.max_position, "count_note": m.count_note,
        })
    return rows


# The spec's and the gate's names, for callers that import them from here.
__all__ = [
    "HUB_ENV", "KNOWN_TYPES", "MAX_CONFIG_BYTES", "MAX_EXPERTS", "MAX_HEADS", "MAX_JSON_DEPTH", "MAX_LAYERS",
    "MAX_NUMBER_DIGITS", "MAX_POSITION", "MAX_VOCAB", "MAX_WIDTH", "CatalogModel", "Linear", "ModelSpec",
    "ParamCounts", "attention_linears", "catalog", "catalog_rows", "decode_config_bytes", "fetch_hub_config",
    "hub_enabled", "layer_linears", "layer_small_params", "load_config_file", "mlp_linears", "param_counts",
    "parse_config_text", "read_regular_file", "resolve_config", "resolve_model", "spec_from_config",
    "suggestions", "supported_model_types",
]
