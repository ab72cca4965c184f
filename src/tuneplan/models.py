"""Model architecture specs built from a Hugging Face config.json, and the bundled catalog.

A :class:`ModelSpec` holds the shape facts that memory, time and disk estimates need.
Its :func:`layer_linears` lists every weight matrix of a decoder layer, with the module
name transformers uses, so LoRA targets, quantisation and FLOPs all read one source.

Parameter-count formulas follow the modelling files in transformers
(models/<arch>/modeling_<arch>.py): Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3/Phi3 (dense),
Mixtral/Qwen3-MoE/gpt-oss/Llama-4 (MoE), DeepSeek-V3 (MLA + MoE).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError

# model_type -> defaults that differ from the transformers PretrainedConfig defaults.
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_QKV_BIAS = {"qwen2", "qwen2_moe"}
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"}
_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
_FUSED = {"phi3"}  # qkv_proj and gate_up_proj are single matrices
KNOWN_TYPES = {
    "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "mixtral", "gpt_oss", "deepseek_v3", "deepseek_v2", "llama4", "llama4_text",
    "olmo2", "granite",
}


@dataclass(frozen=True)
class Linear:
    """One weight matrix (or a stack of `count` equal expert matrices).

    Args:
        name: transformers module name (q_proj, gate_up_proj, ...), used for LoRA targets.
        d_in: input features.
        d_out: output features.
        count: how many copies (experts) share this shape.
        bias: whether each copy has a bias of size d_out.
        group: attn | mlp | expert | shared | router.
        active: copies used per token (experts_per_token for routed experts, else count).
    """

    name: str
    d_in: int
    d_out: int
    count: int = 1
    bias: bool = False
    group: str = "attn"
    active: int = 1

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))

    @property
    def active_params(self) -> int:
        return self.active * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


@dataclass(frozen=True)
class ModelSpec:
    """Shape facts of a decoder-only transformer, as read from config.json.

    All sizes are element counts (not bytes). `moe_layers` flags which decoder layers
    use routed experts; `q_lora_rank`/`kv_lora_rank` > 0 marks DeepSeek multi-head latent attention.
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    max_position: int
    torch_dtype: str = "bfloat16"
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    fused: bool = False
    attn_sinks: bool = False
    sliding_window: int | None = None
    attn_softcap: float | None = None  # Gemma 2: tanh soft-capping of attention scores
    final_softcap: float | None = None  # Gemma 2: tanh soft-capping of the output logits
    # MoE
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_experts: int = 0
    shared_intermediate_size: int = 0
    moe_layers: tuple[bool, ...] = ()
    router_bias: bool = False
    expert_bias: bool = False
    router_correction_bias: bool = False
    # Multi-head latent attention (DeepSeek V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def __hash__(self) -> int:
        # Specs key the estimator's caches; hash the fields once, not on every lookup.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0 and any(self.moe_layers)

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def q_dim(self) -> int:
        """Width of the attention query projection output (heads x head_dim)."""
        if self.is_mla:
            return self.num_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections (kv heads x head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def attn_out_dim(self) -> int:
        """Width of the attention output fed to o_proj."""
        if self.is_mla:
            return self.num_heads * self.v_head_dim
        return self.num_heads * self.head_dim


def attention_linears(spec: ModelSpec) -> tuple[Linear, ...]:
    """Weight matrices of one attention block (transformers module names)."""
    h = spec.hidden_size
    if spec.is_mla:  # modeling_deepseek_v3.py DeepseekV3Attention
        q = (
            (Linear("q_a_proj", h, spec.q_lora_rank), Linear("q_b_proj", spec.q_lora_rank, spec.q_dim))
            if spec.q_lora_rank
            else (Linear("q_proj", h, spec.q_dim),)
        )
        return q + (
            Linear("kv_a_proj_with_mqa", h, spec.kv_lora_rank + spec.qk_rope_head_dim),
            Linear("kv_b_proj", spec.kv_lora_rank, spec.num_heads * (spec.qk_nope_head_dim + spec.v_head_dim)),
            Linear("o_proj", spec.attn_out_dim, h, bias=spec.o_bias),
        )
    if spec.fused:  # modeling_phi3.py: one qkv_proj
        return (
            Linear("qkv_proj", h, spec.q_dim + 2 * spec.kv_dim, bias=spec.qkv_bias),
            Linear("o_proj", spec.q_dim, h, bias=spec.o_bias),
        )
    return (
        Linear("q_proj", h, spec.q_dim, bias=spec.qkv_bias),
        Linear("k_proj", h, spec.kv_dim, bias=spec.qkv_bias),
        Linear("v_proj", h, spec.kv_dim, bias=spec.qkv_bias),
        Linear("o_proj", spec.q_dim, h, bias=spec.o_bias),
    )


def mlp_linears(spec: ModelSpec, intermediate: int, group: str = "mlp", count: int = 1,
                active: int | None = None, bias: bool = False) -> tuple[Linear, ...]:
    """Gated (SwiGLU/GeGLU) MLP matrices: gate, up, down (or fused gate_up for Phi-3)."""
    h = spec.hidden_size
    act = count if active is None else active
    if spec.fused and group == "mlp":
        return (
            Linear("gate_up_proj", h, 2 * intermediate, count, bias, group, act),
            Linear("down_proj", intermediate, h, count, bias, group, act),
        )
    return (
        Linear("gate_proj", h, intermediate, count, bias, group, act),
        Linear("up_proj", h, intermediate, count, bias, group, act),
        Linear("down_proj", intermediate, h, count, bias, group, act),
    )


@lru_cache(maxsize=65536)
def layer_linears(spec: ModelSpec, layer: int) -> tuple[Linear, ...]:
    """All weight matrices of decoder layer `layer` (0-based)."""
    out = attention_linears(spec)
    if spec.moe_layers and spec.moe_layers[layer]:
        out += (Linear("router", spec.hidden_size, spec.num_experts, 1, spec.router_bias, "router"),)
        out += mlp_linears(spec, spec.moe_intermediate_size, "expert", spec.num_experts,
                           spec.experts_per_token, spec.expert_bias)
        if spec.shared_experts:
            out += mlp_linears(spec, spec.shared_intermediate_size * spec.shared_experts, "shared")
    else:
        out += mlp_linears(spec, spec.intermediate_size)
    return out


def layer_small_params(spec: ModelSpec, layer: int) -> int:
    """Parameters of a layer outside its matrices: norms, qk-norms, sinks, router bias terms."""
    n = spec.norms_per_layer * spec.hidden_size
    if spec.qk_norm:
        n += 2 * spec.head_dim
    if spec.is_mla:
        n += spec.kv_lora_rank + (spec.q_lora_rank or 0)
    if spec.attn_sinks:
        n += spec.num_heads
    if spec.moe_layers and spec.moe_layers[layer] and spec.router_correction_bias:
        n += spec.num_experts
    return n


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by kind (elements). `total` counts a tied lm_head once."""

    embed: int
    lm_head: int
    attention: int
    mlp: int
    experts: int
    router: int
    other: int
    total: int
    active: int
    linear_in_layers: int


@lru_cache(maxsize=4096)
def param_counts(spec: ModelSpec) -> ParamCounts:
    """Count parameters by kind from the spec.

    Returns:
        ParamCounts; `active` is per-token (routed experts counted experts_per_token times).
    """
    h, v = spec.hidden_size, spec.vocab_size
    embed = v * h
    lm_head = 0 if spec.tie_embeddings else v * h
    attn = mlp = experts = router = 0
    active_layers = 0
    other = h  # final norm
    for i in range(spec.num_layers):
        for lin in layer_linears(spec, i):
            if lin.group == "attn":
                attn += lin.params
            elif lin.group in ("mlp", "shared"):
                mlp += lin.params
            elif lin.group == "expert":
                experts += lin.params
            else:
                router += lin.params
            active_layers += lin.active_params if lin.group == "expert" else lin.params
        small = layer_small_params(spec, i)
        other += small
        active_layers += small
    total = embed + lm_head + attn + mlp + experts + router + other
    active = embed + lm_head + active_layers + h
    return ParamCounts(embed, lm_head, attn, mlp, experts, router, other, total, active,
                       attn + mlp + experts + router)


# ---------------------------------------------------------------- config.json parsing


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def _int(cfg: dict[str, Any], *keys: str, default: int | None = None) -> int:
    val = _get(cfg, *keys, default=default)
    if val is None:
        raise TuneplanError(f"config.json is missing {keys[0]!r}")
    if isinstance(val, bool) or not isinstance(val, (int, float)) or int(val) != val:
        raise TuneplanError(f"config.json field {keys[0]!r} must be an integer, got {val!r}")
    if val < 0:
        raise TuneplanError(f"config.json field {keys[0]!r} must not be negative, got {val}")
    return int(val)


def spec_from_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a transformers config.json dict.

    Multimodal configs (Gemma 3, Llama 4, Mistral 3) are read from their `text_config`;
    the vision tower is not counted. Unknown model types are read as Llama-like.

    Raises:
        TuneplanError: a required field is missing or not a positive integer.
    """
    if not isinstance(cfg, dict):
        raise TuneplanError("config.json must hold a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        outer_type = cfg.get("model_type", "")
        cfg = {**cfg["text_config"], "_outer_model_type": outer_type}
        cfg.setdefault("model_type", outer_type + "_text")
    mtype = str(cfg.get("model_type", "llama"))
    h = _int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(cfg, "num_attention_heads", "n_head")
    if h == 0 or layers == 0 or heads == 0:
        raise TuneplanError("config.json: hidden_size, num_hidden_layers and num_attention_heads must be > 0")
    kv = _int(cfg, "num_key_value_heads", default=heads)
    if kv == 0 or heads % kv:
        raise TuneplanError(f"config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    head_dim = _int(cfg, "head_dim", default=h // heads)
    vocab = _int(cfg, "vocab_size")
    inter = _int(cfg, "intermediate_size_mlp", "intermediate_size", "ffn_dim", "n_inner", default=4 * h)
    if vocab == 0 or head_dim == 0:
        raise TuneplanError("config.json: vocab_size and head_dim must be > 0")
    tie = bool(_get(cfg, "tie_word_embeddings", default=mtype in _TIED_BY_DEFAULT))
    max_pos = _int(cfg, "max_position_embeddings", "n_positions", "seq_length", default=4096)
    dtype = str(_get(cfg, "torch_dtype", "dtype", default="bfloat16"))
    attn_bias = bool(_get(cfg, "attention_bias", default=mtype in _QKV_BIAS))
    spec = ModelSpec(
        name=name, model_type=mtype, hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=head_dim, intermediate_size=inter, vocab_size=vocab,
        tie_embeddings=tie, max_position=max_pos, torch_dtype=dtype,
        qkv_bias=attn_bias, o_bias=bool(_get(cfg, "attention_bias", default=False)) and mtype not in _QKV_BIAS,
        qk_norm=mtype in _QK_NORM, norms_per_layer=4 if mtype in _FOUR_NORMS else 2,
        fused=mtype in _FUSED, sliding_window=_get(cfg, "sliding_window"),
        # Gemma2Config defaults both caps (50, 30); Gemma 3 sets them to None
        attn_softcap=_get(cfg, "attn_logit_softcapping", default=50.0 if mtype == "gemma2" else None),
        final_softcap=_get(cfg, "final_logit_softcapping", default=30.0 if mtype == "gemma2" else None),
    )
    return _with_moe_and_mla(spec, cfg, mtype, layers)


def _with_moe_and_mla(spec: ModelSpec, cfg: dict[str, Any], mtype: str, layers: int) -> ModelSpec:
    """Add MoE and MLA fields for the architectures that have them."""
    n_exp = _int(cfg, "num_local_experts", "n_routed_experts", "num_experts", default=0)
    changes: dict[str, Any] = {}
    if mtype == "gpt_oss":
        changes.update(attn_sinks=True, router_bias=True, expert_bias=True, qkv_bias=True,
                       o_bias=bool(_get(cfg, "attention_bias", default=True)))
    if n_exp:
        k = _int(cfg, "num_experts_per_tok", "experts_per_token", "num_experts_per_token")
        if k == 0 or k > n_exp:
            raise TuneplanError(f"config.json: experts per token ({k}) must be between 1 and num_experts ({n_exp})")
        if mtype.startswith("llama4"):  # Llama4TextMoe: experts + one shared expert of intermediate_size
            moe_inter = _int(cfg, "intermediate_size")
            step = _int(cfg, "interleave_moe_layer_step", default=1)
            flags = cfg.get("moe_layers")
            moe = tuple((i in flags) if isinstance(flags, list) else ((i + 1) % step == 0) for i in range(layers))
            changes.update(shared_experts=1, shared_intermediate_size=moe_inter)
        elif mtype.startswith("deepseek"):
            moe_inter = _int(cfg, "moe_intermediate_size")
            first = _int(cfg, "first_k_dense_replace", default=0)
            freq = _int(cfg, "moe_layer_freq", default=1) or 1
            moe = tuple(i >= first and i % freq == 0 for i in range(layers))
            changes.update(shared_experts=_int(cfg, "n_shared_experts", default=0),
                           shared_intermediate_size=moe_inter,
                           router_correction_bias=_get(cfg, "topk_method") == "noaux_tc")
        elif mtype in ("qwen3_moe", "qwen2_moe"):
            moe_inter = _int(cfg, "moe_intermediate_size")
            step = _int(cfg, "decoder_sparse_step", default=1) or 1
            dense = set(cfg.get("mlp_only_layers") or [])
            moe = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
            shared = _int(cfg, "shared_expert_intermediate_size", default=0)
            if shared:
                changes.update(shared_experts=1, shared_intermediate_size=shared)
        else:  # mixtral, gpt_oss: every layer, expert width = intermediate_size
            moe_inter = _int(cfg, "moe_intermediate_size", "intermediate_size")
            moe = (True,) * layers
        changes.update(num_experts=n_exp, experts_per_token=k, moe_intermediate_size=moe_inter, moe_layers=moe)
    if _get(cfg, "kv_lora_rank"):
        changes.update(
            q_lora_rank=_int(cfg, "q_lora_rank", default=0), kv_lora_rank=_int(cfg, "kv_lora_rank"),
            qk_nope_head_dim=_int(cfg, "qk_nope_head_dim"), qk_rope_head_dim=_int(cfg, "qk_rope_head_dim"),
            v_head_dim=_int(cfg, "v_head_dim"), head_dim=_int(cfg, "qk_nope_head_dim") + _int(cfg, "qk_rope_head_dim"),
        )
    return replace(spec, **changes) if changes else spec


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config.json (or a folder holding one) into a dict, with one-line errors."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text()
    except OSError as e:
        raise TuneplanError(f"cannot read {p}: {e.strerror or e}") from None
    return parse_config_text(text, str(p))


def parse_config_text(text: str, where: str) -> dict[str, Any]:
    """Parse config.json text into a dict; `where` names the source in the one-line error."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneplanError(f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(cfg, dict):
        raise TuneplanError(f"{where} must hold a JSON object, not {type(cfg).__name__}")
    return cfg


# ---------------------------------------------------------------- bundled catalog


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
    $XDG_CACHE_HOME/tuneplan/hub so later runs work offline.

    Raises:
        TuneplanError: not found, gated without a token, network failure or bad JSON.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise TuneplanError(f"{repo_id!r} is not a Hub repo id (owner/name)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuneplan" / "hub" / repo_id / revision
    cached = cache / "config.json"
    if cached.exists():
        return load_config_file(cached)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo_id}/resolve/{revision}/config.json"
    req = urllib.request.Request(url, headers={"User-Agent": "tuneplan"})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise TuneplanError(f"{repo_id} is gated or private on the Hub; set HF_TOKEN") from None
        if e.code == 404:
            raise TuneplanError(f"{repo_id} has no config.json on the Hub (HTTP 404)") from None
        raise TuneplanError(f"Hub answered HTTP {e.code} for {repo_id}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise TuneplanError(f"cannot reach the Hub for {repo_id}: {getattr(e, 'reason', e)}") from None
    cfg = parse_config_text(text, f"config.json of {repo_id}")
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(text)
    return cfg


def resolve_model(name: str, hub: bool | None = None) -> ModelSpec:
    """Turn a user's model argument into a ModelSpec.

    Accepts a catalog HF id or alias (case-insensitive), a path to a config.json (or a
    folder holding one), or, when Hub look-ups are enabled (`hub=True`, the CLI's --hub;
    None reads TUNEPLAN_HUB), any Hub repo id.

    Raises:
        TuneplanError: unknown name (with close matches) or unreadable config.
    """
    return resolve_config(name, hub)[0]


def resolve_config(name: str, hub: bool | None = None) -> tuple[ModelSpec, dict[str, Any]]:
    """Like :func:`resolve_model`, but also return the raw config dict (for trace/probe)."""
    key = name.strip().lower()
    idx = _name_index()
    if key in idx:
        hf_id = idx[key]
        return _catalog_spec(hf_id), dict(catalog()[hf_id].config)
    p = Path(name)
    if p.suffix == ".json" or p.is_dir() or p.exists():
        cfg = load_config_file(p)
        return spec_from_config(cfg, name=str(p)), cfg
    if hub_enabled(hub) and "/" in name:
        cfg = fetch_hub_config(name.strip())
        return spec_from_config(cfg, name=name.strip()), cfg
    close = difflib.get_close_matches(key, list(idx), n=3, cutoff=0.5)
    if not close:  # try the name part of an HF id
        tail = re.sub(r"^[^/]+/", "", key)
        close = [k for k in idx if tail and tail in k][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `tuneplan models` for the list"
    if "/" in name and not hub_enabled(hub):
        hint += " (or pass --hub to fetch its config.json from the Hugging Face Hub)"
    raise TuneplanError(f"unknown model {name!r}{hint}")



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
