"""Build src/tuneplan/data/models.json from ../shared/catalog/models.csv.

Each CSV row becomes a transformers-style config dict (so bundled models go through the
same parser as a user's config.json), plus its published parameter count, sources and
unconfirmed flags. Run: python scripts/build_model_catalog.py [path/to/models.csv]
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "catalog" / "models.csv"
OUT = ROOT / "src" / "tuneplan" / "data" / "models.json"

FAMILY_TYPE = {
    "llama3.2": "llama", "llama3.1": "llama", "llama3.3": "llama", "llama": "llama", "smollm2": "llama",
    "llama3.1 (distill)": "llama", "llama4": "llama4_text", "mistral": "mistral", "mistral-nemo": "mistral",
    "mistral-small": "mistral", "mixtral": "mixtral", "qwen2.5": "qwen2", "qwen2 (distill)": "qwen2",
    "qwen3": "qwen3", "qwen3-moe": "qwen3_moe", "gemma2": "gemma2", "gemma3": "gemma3_text",
    "phi3": "phi3", "phi3 (phi-4)": "phi3", "deepseek_v3": "deepseek_v3", "gpt_oss": "gpt_oss",
}

# Why a published count differs from the computed (text decoder, tied weights once) count.
COUNT_NOTES = {
    "Qwen/Qwen3-0.6B": "published count stores the tied lm_head a second time (+vocab x hidden)",
    "Qwen/Qwen3-1.7B": "published count stores the tied lm_head a second time (+vocab x hidden)",
    "google/gemma-3-4b-it": "published count includes the SigLIP vision tower and projector (~0.42B); tuneplan counts the text decoder",
    "google/gemma-3-12b-it": "published count includes the SigLIP vision tower and projector (~0.42B); tuneplan counts the text decoder",
    "google/gemma-3-27b-it": "published count includes the SigLIP vision tower and projector (~0.42B); tuneplan counts the text decoder",
    "meta-llama/Llama-4-Scout-17B-16E": "published count includes the vision encoder (~0.87B); tuneplan counts the text decoder",
    "deepseek-ai/DeepSeek-V3": "published HF total includes the multi-token-prediction layer (~14B); tuneplan counts the 671B main model",
}


def first_int(text: str) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def clean_ids(raw: str) -> tuple[str, list[str]]:
    """'google/gemma-3-1b-it (and -pt)' -> ('google/gemma-3-1b-it', ['google/gemma-3-1b-pt'])."""
    extra: list[str] = []
    m = re.match(r"^(\S+?)\(-(\w+)\)$", raw.strip())
    if m:  # meta-llama/Llama-4-Scout-17B-16E(-Instruct)
        base = m.group(1)
        return base, [f"{base}-{m.group(2)}"]
    base = raw.split(" (")[0].strip()
    paren = re.search(r"\((.*)\)", raw)
    if paren:
        for alt in re.findall(r"-(\w[\w.-]*)", paren.group(1)):
            if base.endswith("-it") and alt in ("pt",):
                extra.append(base[:-3] + "-pt")
            elif alt.startswith("intermediate"):
                extra.append(base.rsplit("-Chat", 1)[0] + "-" + alt)
        for word in re.findall(r"\b(V3-Base|R1)\b", paren.group(1)):
            extra.append(base.rsplit("-", 1)[0] + "-" + word)
    return base, extra


def short_alias(hf_id: str) -> list[str]:
    """Short, lower-case aliases: 'meta-llama/Llama-3.1-8B' -> ['llama-3.1-8b']."""
    name = hf_id.split("/", 1)[1].lower()
    out = [name]
    for suffix in ("-instruct", "-it", "-pt", "-base", "-chat-v1.0", "-v0.1", "-v0.3"):
        if name.endswith(suffix):
            out.append(name[: -len(suffix)])
    trimmed = re.sub(r"-(base-)?(2407|2501)$", "", name)
    if trimmed != name:
        out.append(trimmed)
    special = {
        "mistral-nemo-base-2407": ["mistral-nemo-12b", "mistral-nemo"],
        "mistral-small-24b-base-2501": ["mistral-small-24b"],
        "phi-3.5-mini-instruct": ["phi-3.5-mini"],
        "llama-4-scout-17b-16e": ["llama-4-scout"],
        "deepseek-v3": ["deepseek-v3"],
        "tinyllama-1.1b-chat-v1.0": ["tinyllama-1.1b", "tinyllama"],
        "llama-3.3-70b-instruct": ["llama-3.3-70b"],
    }
    out += special.get(name, [])
    seen: list[str] = []
    for a in out:
        if a not in seen:
            seen.append(a)
    return seen


def row_config(row: dict[str, str], mtype: str) -> dict:
    """A transformers-style config.json dict for one CSV row."""
    g = row.get
    h = first_int(g("hidden_size"))
    cfg: dict = {
        "model_type": mtype,
        "hidden_size": h,
        "intermediate_size": first_int(g("intermediate_size")),
        "num_hidden_layers": first_int(g("num_hidden_layers")),
        "num_attention_heads": first_int(g("num_attention_heads")),
        "num_key_value_heads": first_int(g("num_key_value_heads")),
        "vocab_size": first_int(g("vocab_size")),
        "tie_word_embeddings": g("tie_word_embeddings").strip().lower() == "true",
        "max_position_embeddings": first_int(g("max_position_embeddings")),
        "torch_dtype": "bfloat16",
    }
    hd = first_int(g("head_dim"))
    if hd:
        cfg["head_dim"] = hd
    experts = first_int(g("num_experts"))
    if experts:
        k = first_int(g("experts_per_token"))
        cfg["num_experts_per_tok"] = k
        moe_inter = first_int(g("moe_intermediate_size"))
        if mtype == "mixtral":
            cfg["num_local_experts"] = experts
        elif mtype == "gpt_oss":
            cfg.update(num_local_experts=experts, experts_per_token=k, attention_bias=True)
        elif mtype == "qwen3_moe":
            cfg.update(num_experts=experts, moe_intermediate_size=moe_inter, decoder_sparse_step=1, mlp_only_layers=[])
        elif mtype == "llama4_text":
            cfg.update(num_local_experts=experts, intermediate_size=moe_inter, intermediate_size_mlp=16384,
                       interleave_moe_layer_step=1)
        elif mtype == "deepseek_v3":
            cfg.update(n_routed_experts=experts, moe_intermediate_size=moe_inter, n_shared_experts=first_int(g("shared_experts")),
                       first_k_dense_replace=3, moe_layer_freq=1, topk_method="noaux_tc", q_lora_rank=1536,
                       kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
            cfg.pop("head_dim", None)
    if mtype == "gemma2":  # softcaps 50/30 per the catalog notes (Gemma2Config defaults)
        cfg.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if mtype == "llama4_text":  # every layer is MoE in Scout; the dense width is unused
        cfg["intermediate_size_mlp"] = 16384
    return cfg


def build(csv_path: Path) -> dict:
    models = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            hf_id, extra_ids = clean_ids(row["hf_id"])
            mtype = FAMILY_TYPE[row["family"].strip()]
            aliases = short_alias(hf_id) + [e for x in extra_ids for e in [x] + short_alias(x)]
            aliases = list(dict.fromkeys(a for a in aliases if a.lower() != hf_id.lower()))
            models.append({
                "hf_id": hf_id,
                "aliases": aliases,
                "family": row["family"],
                "config": row_config(row, mtype),
                "published_params": first_int(row["total_params_published"]),
                "published_source": row["published_source"],
                "count_note": COUNT_NOTES.get(hf_id, ""),
                "config_source": row["config_source"],
                "notes": row["notes"],
                "unconfirmed": row["unconfirmed"],
            })
    return {"source": "shared/catalog/models.csv (architecture fields from config.json files; see per-row sources)",
            "models": models}


def readable(path: Path) -> Path:
    """`path` if it can be read; else one line on stderr and exit code 2 (no traceback): the
    shared catalog lives next to this repository (../shared), which a clone alone lacks."""
    try:
        with path.open("rb"):
            return path
    except OSError as e:
        where = " (the shared catalog, next to this repository)" if path == DEFAULT_CSV else ""
        sys.stderr.write(f"{Path(__file__).name}: error: cannot read models.csv {path}{where}: "
                         f"{e.strerror or type(e).__name__}; give its path: python scripts/{Path(__file__).name} "
                         "PATH/models.csv\n")
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    csv_path = readable(Path(argv[1]) if len(argv) > 1 else DEFAULT_CSV)
    data = build(csv_path)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data['models'])} models to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
