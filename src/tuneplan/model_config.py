"""The config.json gate: bytes -> text -> JSON -> typed fields -> ModelSpec.

The one validation boundary for config.json, whatever its source (a file, the Hub, the
catalog, an API caller's dict), so a hostile or mistyped file is refused before any
estimate reads it. Every refusal is one line that names the file or the field. What the
fields become is tuneplan.model_spec.ModelSpec; which names resolve to which config is
tuneplan.models.
"""

from __future__ import annotations

import codecs
import difflib
import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from tuneplan.errors import TuneplanError
from tuneplan.model_spec import ModelSpec

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

# Bounds of the file itself: size, nesting and number length.
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
        raise TuneplanError(f"config.json field 'model_type' must be a name, got {value_text(mtype)}")
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
    raise TuneplanError(f"model_type {value_text(mtype)} is {why}; supported: {', '.join(supported_model_types())}")


def value_text(value: Any) -> str:
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
        raise TuneplanError(f"config.json field {key!r} must be an integer, got {value_text(val)}")
    if isinstance(val, float) and not (val == val and abs(val) != float("inf") and val.is_integer()):
        raise TuneplanError(f"config.json field {key!r} must be an integer, got {value_text(val)}")
    if val < 0:
        raise TuneplanError(f"config.json field {key!r} must not be negative, got {val:g}")
    if val > hi:
        raise TuneplanError(f"config.json field {key!r} is {value_text(val)}, above the {hi:,} tuneplan accepts")
    return int(val)


def _bool(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """A true/false field; a string such as "false" is refused, not read as true."""
    val = cfg.get(key)
    if val is None:
        return default
    if not isinstance(val, bool):
        raise TuneplanError(f"config.json field {key!r} must be true or false, got {value_text(val)}")
    return val


def _opt_float(cfg: dict[str, Any], key: str, default: float | None) -> float | None:
    """A finite, non-negative number or null (the default)."""
    val = cfg.get(key, default)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not (0 <= val < float("inf")):
        raise TuneplanError(f"config.json field {key!r} must be a non-negative number or null, got {value_text(val)}")
    return val


def _opt_int(cfg: dict[str, Any], key: str, hi: int = MAX_POSITION) -> int | None:
    return None if cfg.get(key) is None else _int(cfg, key, hi=hi)


def _str(cfg: dict[str, Any], *keys: str, default: str) -> str:
    val = _get(cfg, *keys, default=default)
    if not isinstance(val, str) or len(val) > 100:
        raise TuneplanError(f"config.json field {_key(cfg, keys)!r} must be a short name, got {value_text(val)}")
    return val


def _int_list(cfg: dict[str, Any], key: str) -> list[int] | None:
    """A list of layer indices, or None when absent."""
    val = cfg.get(key)
    if val is None:
        return None
    if not isinstance(val, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
        raise TuneplanError(f"config.json field {key!r} must be a list of layer indices, got {value_text(val)}")
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
            raise TuneplanError(f"config.json field 'text_config' must be an object, got {value_text(text_cfg)}")
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
        raise TuneplanError(f"config.json field {_key(cfg, keys)!r} must be a number in (0, 1], got {value_text(val)}")
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
                raise TuneplanError(f"config.json field 'topk_method' must be a name, got {value_text(topk)}")
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
        raise TuneplanError(f"cannot read {path_text(p)}: {os_reason(e)}") from None
    data = read_regular_file(p, path_text(p), MAX_CONFIG_BYTES, "a config.json is a few KiB")
    return parse_config_text(decode_config_bytes(data, path_text(p)), path_text(p))


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
        raise TuneplanError(f"cannot read {shown}: {os_reason(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TuneplanError(f"{shown} is not a regular file")
        if st.st_size > limit:
            raise TuneplanError(f"{shown} is {st.st_size:,} bytes; {typical} (limit {limit:,})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TuneplanError(f"cannot read {shown}: {os_reason(e)}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TuneplanError(f"{shown} is larger than {limit:,} bytes; {typical}")
    return data


def path_text(p: Path | str) -> str:
    """A path for a one-line error: control characters escaped, long paths cut."""
    text = str(p)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= 200 else text[:100] + "..." + text[-97:]


def os_reason(e: BaseException) -> str:
    """Why an OS call failed, for a one-line error (strerror, else the exception's name)."""
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
