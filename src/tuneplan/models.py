"""Model architecture specs built from a Hugging Face config.json, and the bundled catalog.

A :class:`ModelSpec` holds the shape facts that memory, time and disk estimates need.
Its :func:`layer_linears` lists every weight matrix of a decoder layer, with the module
name transformers uses, so LoRA targets, quantisation and FLOPs all read one source.

Parameter-count formulas follow the modelling files in transformers
(models/<arch>/modeling_<arch>.py): Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3/Phi3 (dense),
Mixtral/Qwen3-MoE/gpt-oss/Llama-4 (MoE), DeepSeek-V3 (MLA + MoE), and the parallel-block
layouts with LayerNorm and a plain GELU MLP: Phi-1/1.5/2 and GPT-NeoX (Pythia, StableLM-Alpha).
"""

from __future__ import annotations

import codecs
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

# model_type -> defaults that differ from the transformers PretrainedConfig defaults.
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_QKV_BIAS = {"qwen2", "qwen2_moe"}
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"}
_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
_FUSED = {"phi3", "gpt_neox"}  # one qkv matrix (and Phi-3's gate_up_proj)
# LayerNorm (weight and bias), a plain up -> GELU -> down MLP with biases, and attention and
# MLP computed side by side from the same residual input (modeling_phi.py PhiDecoderLayer,
# modeling_gpt_neox.py GPTNeoXLayer with use_parallel_residual)
_PARALLEL_GELU = {"phi", "gpt_neox"}
KNOWN_TYPES = {
    "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3",
    "gemma3_text", "phi3", "mixtral", "gpt_oss", "deepseek_v3", "deepseek_v2", "llama4", "llama4_text",
    "olmo2", "granite",
} | _PARALLEL_GELU


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
    # Phi-1/2, GPT-NeoX: LayerNorm with a bias instead of RMSNorm; an MLP of two
    # matrices (up, GELU, down) instead of a gated one; attention and MLP read the same
    # residual input (parallel block; shared_norm: one LayerNorm feeds both)
    layer_norm: bool = False
    gated_mlp: bool = True
    mlp_bias: bool = False
    parallel_block: bool = False
    shared_norm: bool = False
    lm_head_bias: bool = False
    # share of each head's dims that rotary embeddings turn (Phi-1/2 0.5, GPT-NeoX rotary_pct);
    # below 1 the rotated and pass-through parts are concatenated into a new q and k
    rotary_fraction: float = 1.0
    hidden_act: str = "silu"  # config hidden_act; read for the plain MLP's GELU (gelu_new keeps more)
    # the model's own code calls fused RMSNorm and rotary kernels (Qwen-7B v1 remote code,
    # modeling_qwen.py: flash_attn's rms_norm and apply_rotary_emb_func when config
    # use_flash_attn is set and flash-attn is installed): read by the time model's traffic count
    fused_norm_rotary: bool = False
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
    # False when config.json gives no context length (max_position is then a placeholder
    # and sequence lengths are not checked against it)
    max_position_stated: bool = True
    # How the name was resolved when that is worth saying (e.g. an -Instruct variant read
    # with its base model's config); empty otherwise
    note: str = ""

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
    """Gated (SwiGLU/GeGLU) MLP matrices: gate, up, down (or fused gate_up for Phi-3); a
    plain GELU MLP has up and down only (Phi fc1/fc2, GPT-NeoX
    dense_h_to_4h/dense_4h_to_h, named up_proj/down_proj here)."""
    h = spec.hidden_size
    act = count if active is None else active
    if not spec.gated_mlp and group == "mlp":
        return (
            Linear("up_proj", h, intermediate, count, spec.mlp_bias, group, act),
            Linear("down_proj", intermediate, h, count, spec.mlp_bias, group, act),
        )
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
    """Parameters of a layer outside its matrices: norms (LayerNorm: weight and bias), qk-norms,
    sinks, router bias terms."""
    n = spec.norms_per_layer * spec.hidden_size * (2 if spec.layer_norm else 1)
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
    final = h * (2 if spec.layer_norm else 1) + (v if spec.lm_head_bias else 0)  # final norm, lm_head bias
    other = final
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
    active = embed + lm_head + active_layers + final
    return ParamCounts(embed, lm_head, attn, mlp, experts, router, other, total, active,
                       attn + mlp + experts + router)


# ---------------------------------------------------------------- config.json parsing

# The one validation boundary for config.json, whatever its source (a file, the Hub, the
# catalog, an API caller's dict): bytes -> text -> JSON -> typed fields -> ModelSpec. Every
# refusal is one line that names the file or the field.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB; released config.json files are a few KiB
MAX_JSON_DEPTH = 32  # released configs nest 3-4 levels (text_config.rope_scaling)
MAX_NUMBER_DIGITS = 30  # longer integers are not sizes (and Python refuses 4300+ digits)
# Shape bounds: far above any released model (405B: 126 layers, 16384 wide; Gemma 3:
# 262k vocabulary), low enough that a typo or a hostile file (10**9 layers) is refused at once.
MAX_LAYERS = 2048
MAX_WIDTH = 1 << 20  # hidden, intermediate and per-expert widths
MAX_HEADS = 1 << 14
MAX_VOCAB = 1 << 24
MAX_EXPERTS = 1 << 14
MAX_POSITION = 1 << 40

# Types outside KNOWN_TYPES that people try, and why their layout is not the one counted here.
_ENCODERS = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
             "modernbert", "camembert", "mpnet", "ernie", "nomic_bert", "xlm", "longformer", "big_bird"}
_ENCODER_DECODERS = {"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "longt5", "flan-t5", "whisper"}
_OTHER_DECODERS = {
    "gpt2": "GPT-2", "gpt_neo": "GPT-Neo", "gptj": "GPT-J", "gpt_bigcode": "StarCoder",
    "opt": "OPT", "bloom": "BLOOM", "falcon": "Falcon", "mpt": "MPT", "codegen": "CodeGen",
    "stablelm": "StableLM", "starcoder2": "StarCoder2", "qwen": "Qwen v1", "chatglm": "ChatGLM",
}


def supported_model_types() -> tuple[str, ...]:
    """The config.json model_type values whose layout tuneplan counts."""
    return tuple(sorted(KNOWN_TYPES))


def _check_model_type(mtype: Any) -> str:
    if mtype is None:
        raise TuneplanError("config.json is missing 'model_type'; tuneplan needs it to know the layer layout "
                            f"(supported: {', '.join(supported_model_types())})")
    if not isinstance(mtype, str):
        raise TuneplanError(f"config.json field 'model_type' must be a name, got {_show(mtype)}")
    if mtype in KNOWN_TYPES:
        return mtype
    if mtype in _ENCODERS:
        why = "an encoder (bidirectional, no causal LM head); tuneplan estimates decoder-only causal LM fine-tuning"
    elif mtype in _ENCODER_DECODERS:
        why = "an encoder-decoder; tuneplan estimates decoder-only causal LM fine-tuning"
    elif mtype in _OTHER_DECODERS:
        why = (f"{_OTHER_DECODERS[mtype]}, a decoder with another layout (LayerNorm with biases, GELU MLP, fused or "
               "parallel blocks) that tuneplan does not count")
    else:
        close = difflib.get_close_matches(mtype.lower(), sorted(KNOWN_TYPES), n=1, cutoff=0.75)
        why = "not a layout tuneplan counts" + (f" (did you mean {close[0]}?)" if close else "")
    raise TuneplanError(f"model_type {_show(mtype)} is {why}; supported: {', '.join(supported_model_types())}")


def _show(value: Any) -> str:
    """A value for a one-line error, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def _key(cfg: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The key that _get read (for error messages)."""
    return next((k for k in keys if cfg.get(k) is not None), keys[0])


def _int(cfg: dict[str, Any], *keys: str, default: int | None = None, hi: int = MAX_WIDTH) -> int:
    """A non-negative whole number field (4096.0 is read as 4096), at most `hi`."""
    val = _get(cfg, *keys, default=default)
    key = _key(cfg, keys)
    if val is None:
        raise TuneplanError(f"config.json is missing {keys[0]!r}")
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise TuneplanError(f"config.json field {key!r} must be an integer, got {_show(val)}")
    if isinstance(val, float) and not (val == val and abs(val) != float("inf") and val.is_integer()):
        raise TuneplanError(f"config.json field {key!r} must be an integer, got {_show(val)}")
    if val < 0:
        raise TuneplanError(f"config.json field {key!r} must not be negative, got {val:g}")
    if val > hi:
        raise TuneplanError(f"config.json field {key!r} is {_show(val)}, above the {hi:,} tuneplan accepts")
    return int(val)


def _bool(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """A true/false field; a string such as "false" is refused, not read as true."""
    val = cfg.get(key)
    if val is None:
        return default
    if not isinstance(val, bool):
        raise TuneplanError(f"config.json field {key!r} must be true or false, got {_show(val)}")
    return val


def _opt_float(cfg: dict[str, Any], key: str, default: float | None) -> float | None:
    """A finite, non-negative number or null (the default)."""
    val = cfg.get(key, default)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not (0 <= val < float("inf")):
        raise TuneplanError(f"config.json field {key!r} must be a non-negative number or null, got {_show(val)}")
    return val


def _opt_int(cfg: dict[str, Any], key: str, hi: int = MAX_POSITION) -> int | None:
    return None if cfg.get(key) is None else _int(cfg, key, hi=hi)


def _str(cfg: dict[str, Any], *keys: str, default: str) -> str:
    val = _get(cfg, *keys, default=default)
    if not isinstance(val, str) or len(val) > 100:
        raise TuneplanError(f"config.json field {_key(cfg, keys)!r} must be a short name, got {_show(val)}")
    return val


def _int_list(cfg: dict[str, Any], key: str) -> list[int] | None:
    """A list of layer indices, or None when absent."""
    val = cfg.get(key)
    if val is None:
        return None
    if not isinstance(val, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
        raise TuneplanError(f"config.json field {key!r} must be a list of layer indices, got {_show(val)}")
    return val


def spec_from_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a transformers config.json dict.

    Multimodal configs (Gemma 3, Llama 4, Mistral 3) are read from their `text_config`;
    the vision tower is not counted. Only the decoder layouts in KNOWN_TYPES are read;
    others (GPT-2, encoders such as BERT, encoder-decoders) are refused.

    Raises:
        TuneplanError: unsupported model_type, a required field missing, a field of the
            wrong type or outside the accepted bounds.
    """
    if not isinstance(cfg, dict):
        raise TuneplanError("config.json must hold a JSON object")
    text_cfg = cfg.get("text_config")
    if text_cfg is not None:
        if not isinstance(text_cfg, dict):
            raise TuneplanError(f"config.json field 'text_config' must be an object, got {_show(text_cfg)}")
        outer_type = cfg.get("model_type")
        if not isinstance(outer_type, str):
            outer_type = _check_model_type(outer_type)
        cfg = {**text_cfg, "_outer_model_type": outer_type}
        cfg.setdefault("model_type", outer_type + "_text")
    mtype = _check_model_type(cfg.get("model_type"))
    h = _int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers", hi=MAX_LAYERS)
    heads = _int(cfg, "num_attention_heads", "n_head", hi=MAX_HEADS)
    if h == 0 or layers == 0 or heads == 0:
        raise TuneplanError("config.json: hidden_size, num_hidden_layers and num_attention_heads must be > 0")
    kv = _int(cfg, "num_key_value_heads", default=heads, hi=MAX_HEADS)
    if kv == 0 or heads % kv:
        raise TuneplanError(f"config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    head_dim = _int(cfg, "head_dim", default=h // heads)
    vocab = _int(cfg, "vocab_size", hi=MAX_VOCAB)
    inter = _int(cfg, "intermediate_size_mlp", "intermediate_size", "ffn_dim", "n_inner", default=4 * h)
    if vocab == 0 or head_dim == 0:
        raise TuneplanError("config.json: vocab_size and head_dim must be > 0")
    tie = _bool(cfg, "tie_word_embeddings", default=mtype in _TIED_BY_DEFAULT)
    stated_pos = _get(cfg, "max_position_embeddings", "n_positions", "seq_length") is not None
    max_pos = _int(cfg, "max_position_embeddings", "n_positions", "seq_length", default=4096, hi=MAX_POSITION)
    dtype = _str(cfg, "torch_dtype", "dtype", default="bfloat16")
    attn_bias = _bool(cfg, "attention_bias", default=mtype in _QKV_BIAS)
    spec = ModelSpec(
        name=name, model_type=mtype, hidden_size=h, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=head_dim, intermediate_size=inter, vocab_size=vocab,
        tie_embeddings=tie, max_position=max_pos, torch_dtype=dtype,
        qkv_bias=attn_bias, o_bias=_bool(cfg, "attention_bias", default=False) and mtype not in _QKV_BIAS,
        qk_norm=mtype in _QK_NORM, norms_per_layer=4 if mtype in _FOUR_NORMS else 2,
        fused=mtype in _FUSED, sliding_window=_opt_int(cfg, "sliding_window"),
        # Gemma2Config defaults both caps (50, 30); Gemma 3 sets them to None
        attn_softcap=_opt_float(cfg, "attn_logit_softcapping", 50.0 if mtype == "gemma2" else None),
        final_softcap=_opt_float(cfg, "final_logit_softcapping", 30.0 if mtype == "gemma2" else None),
        max_position_stated=stated_pos,
        # Qwen v1 config: "auto" (on when flash-attn is installed) or true
        fused_norm_rotary=cfg.get("use_flash_attn") in (True, "auto"),
    )
    if mtype in _PARALLEL_GELU:
        spec = _parallel_gelu(spec, cfg, mtype)
    return _with_moe_and_mla(spec, cfg, mtype, layers)


def _parallel_gelu(spec: ModelSpec, cfg: dict[str, Any], mtype: str) -> ModelSpec:
    """Phi-1/2 and GPT-NeoX: LayerNorm, a plain GELU MLP, biases and the parallel block.

    modeling_phi.py: one input_layernorm feeds attention and MLP; q/k/v, dense, fc1, fc2 and
    lm_head carry biases; partial_rotary_factor (0.5). modeling_gpt_neox.py: input and
    post-attention LayerNorms both read the layer input when use_parallel_residual (default);
    query_key_value and dense biased unless attention_bias is false; rotary_pct (0.25).
    """
    if mtype == "phi":
        if _bool(cfg, "qk_layernorm", default=False):
            raise TuneplanError("config.json: Phi with qk_layernorm is not a layout tuneplan counts")
        return replace(spec, layer_norm=True, gated_mlp=False, mlp_bias=True, qkv_bias=True, o_bias=True,
                       lm_head_bias=True, parallel_block=True, shared_norm=True, norms_per_layer=1,
                       hidden_act=_str(cfg, "hidden_act", default="gelu_new"),
                       rotary_fraction=_fraction(cfg, ("partial_rotary_factor",), 0.5))
    bias = _bool(cfg, "attention_bias", default=True)  # gpt_neox
    parallel = _bool(cfg, "use_parallel_residual", default=True)
    return replace(spec, layer_norm=True, gated_mlp=False, mlp_bias=True, qkv_bias=bias, o_bias=bias,
                   parallel_block=parallel, hidden_act=_str(cfg, "hidden_act", default="gelu"),
                   rotary_fraction=_fraction(cfg, ("rotary_pct", "partial_rotary_factor"), 0.25))


def _fraction(cfg: dict[str, Any], keys: tuple[str, ...], default: float) -> float:
    """A share in (0, 1] (rotary_pct, partial_rotary_factor)."""
    val = _get(cfg, *keys, default=default)
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 1:
        raise TuneplanError(f"config.json field {_key(cfg, keys)!r} must be a number in (0, 1], got {_show(val)}")
    return float(val)


def _with_moe_and_mla(spec: ModelSpec, cfg: dict[str, Any], mtype: str, layers: int) -> ModelSpec:
    """Add MoE and MLA fields for the architectures that have them."""
    n_exp = _int(cfg, "num_local_experts", "n_routed_experts", "num_experts", default=0, hi=MAX_EXPERTS)
    changes: dict[str, Any] = {}
    if mtype == "gpt_oss":
        changes.update(attn_sinks=True, router_bias=True, expert_bias=True, qkv_bias=True,
                       o_bias=_bool(cfg, "attention_bias", default=True))
    if n_exp:
        k = _int(cfg, "num_experts_per_tok", "experts_per_token", "num_experts_per_token", hi=MAX_EXPERTS)
        if k == 0 or k > n_exp:
            raise TuneplanError(f"config.json: experts per token ({k}) must be between 1 and num_experts ({n_exp})")
        if mtype.startswith("llama4"):  # Llama4TextMoe: experts + one shared expert of intermediate_size
            moe_inter = _int(cfg, "intermediate_size")
            step = _int(cfg, "interleave_moe_layer_step", default=1, hi=MAX_LAYERS) or 1
            flags = _int_list(cfg, "moe_layers")
            moe = tuple((i in flags) if flags is not None else ((i + 1) % step == 0) for i in range(layers))
            changes.update(shared_experts=1, shared_intermediate_size=moe_inter)
        elif mtype.startswith("deepseek"):
            moe_inter = _int(cfg, "moe_intermediate_size")
            first = _int(cfg, "first_k_dense_replace", default=0, hi=MAX_LAYERS)
            freq = _int(cfg, "moe_layer_freq", default=1, hi=MAX_LAYERS) or 1
            moe = tuple(i >= first and i % freq == 0 for i in range(layers))
            topk = cfg.get("topk_method")
            if topk is not None and not isinstance(topk, str):
                raise TuneplanError(f"config.json field 'topk_method' must be a name, got {_show(topk)}")
            changes.update(shared_experts=_int(cfg, "n_shared_experts", default=0, hi=MAX_EXPERTS),
                           shared_intermediate_size=moe_inter,
                           router_correction_bias=topk == "noaux_tc")
        elif mtype in ("qwen3_moe", "qwen2_moe"):
            moe_inter = _int(cfg, "moe_intermediate_size")
            step = _int(cfg, "decoder_sparse_step", default=1, hi=MAX_LAYERS) or 1
            dense = set(_int_list(cfg, "mlp_only_layers") or [])
            moe = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
            shared = _int(cfg, "shared_expert_intermediate_size", default=0)
            if shared:
                changes.update(shared_experts=1, shared_intermediate_size=shared)
        else:  # mixtral, gpt_oss: every layer, expert width = intermediate_size
            moe_inter = _int(cfg, "moe_intermediate_size", "intermediate_size")
            moe = (True,) * layers
        changes.update(num_experts=n_exp, experts_per_token=k, moe_intermediate_size=moe_inter, moe_layers=moe)
    if _get(cfg, "kv_lora_rank") is not None and _int(cfg, "kv_lora_rank"):
        changes.update(
            q_lora_rank=_int(cfg, "q_lora_rank", default=0), kv_lora_rank=_int(cfg, "kv_lora_rank"),
            qk_nope_head_dim=_int(cfg, "qk_nope_head_dim"), qk_rope_head_dim=_int(cfg, "qk_rope_head_dim"),
            v_head_dim=_int(cfg, "v_head_dim"), head_dim=_int(cfg, "qk_nope_head_dim") + _int(cfg, "qk_rope_head_dim"),
        )
        if changes["head_dim"] == 0 or changes["v_head_dim"] == 0:
            raise TuneplanError("config.json: qk_nope_head_dim + qk_rope_head_dim and v_head_dim must be > 0")
    return replace(spec, **changes) if changes else spec


def decode_config_bytes(data: bytes, where: str) -> str:
    """config.json bytes -> text: UTF-8 (a UTF-8 byte-order mark is dropped); UTF-16/32 and
    binary files are refused in one line."""
    boms = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
            (codecs.BOM_UTF16_BE, "UTF-16"))
    for bom, enc in boms:
        if data.startswith(bom):
            raise TuneplanError(f"{where} is {enc} text; save it as UTF-8 (what transformers writes)")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if b"\x00" in data:
        even, odd = data[0::2], data[1::2]
        if len(data) >= 4 and (even.count(0) > len(even) // 2 or odd.count(0) > len(odd) // 2):
            raise TuneplanError(f"{where} looks like UTF-16 text; save it as UTF-8 (what transformers writes)")
        raise TuneplanError(f"{where} is a binary file, not a JSON text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TuneplanError(f"{where} is not UTF-8 text (invalid byte at offset {e.start}); save it as UTF-8") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config.json (or a folder holding one) into a dict, with one-line errors.

    Only regular files up to MAX_CONFIG_BYTES are read (never a device such as /dev/zero,
    a FIFO or a socket); the size is checked before reading.
    """
    p = Path(path)
    try:
        if p.is_dir():
            p = p / "config.json"
    except (OSError, ValueError) as e:
        raise TuneplanError(f"cannot read {_path_text(p)}: {_os_reason(e)}") from None
    data = read_regular_file(p, _path_text(p), MAX_CONFIG_BYTES, "a config.json is a few KiB")
    return parse_config_text(decode_config_bytes(data, _path_text(p)), _path_text(p))


def read_regular_file(path: str | Path, shown: str, limit: int, typical: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, with one-line errors.

    Never a device such as /dev/zero, a FIFO or a socket (opened non-blocking, checked with
    fstat); the size is checked before reading and again after, in case the file grew.

    Args:
        shown: the path as the error messages name it.
        typical: what such a file usually weighs, said when it is too large.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError) as e:
        raise TuneplanError(f"cannot read {shown}: {_os_reason(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TuneplanError(f"{shown} is not a regular file")
        if st.st_size > limit:
            raise TuneplanError(f"{shown} is {st.st_size:,} bytes; {typical} (limit {limit:,})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TuneplanError(f"cannot read {shown}: {_os_reason(e)}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TuneplanError(f"{shown} is larger than {limit:,} bytes; {typical}")
    return data


def _path_text(p: Path | str) -> str:
    """A path for a one-line error: control characters escaped, long paths cut."""
    text = str(p)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= 200 else text[:100] + "..." + text[-97:]


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return str(e) or type(e).__name__


def parse_config_text(text: str, where: str) -> dict[str, Any]:
    """Parse config.json text into a dict; `where` names the source in the one-line error.

    Refused: invalid JSON, NaN/Infinity (not JSON), numbers with more than
    MAX_NUMBER_DIGITS digits or beyond float range, nesting deeper than MAX_JSON_DEPTH,
    and anything but an object at the top.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise TuneplanError(f"{where} is larger than {MAX_CONFIG_BYTES:,} characters; a config.json is a few KiB")

    def constant(name: str) -> Any:
        raise TuneplanError(f"{where} holds {name}, which is not a JSON number")

    def integer(s: str) -> int:
        if len(s.lstrip("-")) > MAX_NUMBER_DIGITS:
            raise TuneplanError(f"{where} holds a {len(s.lstrip('-'))}-digit number; no config field is that large")
        return int(s)

    def number(s: str) -> float:
        v = float(s)
        if v in (float("inf"), float("-inf")):
            raise TuneplanError(f"{where} holds the number {s[:20]}, beyond float range")
        return v

    try:
        cfg = json.loads(text, parse_constant=constant, parse_int=integer, parse_float=number)
    except json.JSONDecodeError as e:
        raise TuneplanError(f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise TuneplanError(f"{where} nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(cfg, dict):
        raise TuneplanError(f"{where} must hold a JSON object, not {type(cfg).__name__}")
    if _depth(cfg) > MAX_JSON_DEPTH:
        raise TuneplanError(f"{where} nests JSON deeper than {MAX_JSON_DEPTH} levels")
    return cfg


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((v, d + 1) for v in o)
    return deepest


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
    $XDG_CACHE_HOME/tuneplan/hub so later runs work offline. The answer goes through the
    same checks as a local file (size, encoding, JSON, fields).

    Raises:
        TuneplanError: not found, gated without a token, network failure or a bad answer.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id, flags=re.ASCII) or ".." in repo_id:
        raise TuneplanError(f"{_show(repo_id)} is not a Hub repo id (owner/name)")
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
        raise TuneplanError(f"cannot fetch {repo_id} from {_show(endpoint)}: {type(e).__name__}: {e}") from None
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
        raise TuneplanError(f"model must be a catalog name or a path to config.json, got {_show(name)}")
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
        raise TuneplanError(f"cannot read {_path_text(name)}: {_os_reason(e)}") from None
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
    raise TuneplanError(f"unknown model {_show(name.strip())}{hint}")


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
