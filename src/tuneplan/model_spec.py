"""Model architecture specs: the shape facts of a decoder-only transformer and its matrices.

A :class:`ModelSpec` holds the shape facts that memory, time and disk estimates need.
Its :func:`layer_linears` lists every weight matrix of a decoder layer, with the module
name transformers uses, so LoRA targets, quantisation and FLOPs all read one source;
:func:`param_counts` counts parameters by kind from the same matrices. Specs are built
from a config.json by tuneplan.model_config (the one gate) and resolved from a name by
tuneplan.models (catalog, local file, Hub).

Parameter-count formulas follow the modelling files in transformers
(models/<arch>/modeling_<arch>.py): Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3/Phi3 (dense),
Mixtral/Qwen3-MoE/gpt-oss/Llama-4 (MoE), DeepSeek-V3 (MLA + MoE), and the parallel-block
layouts with LayerNorm and a plain GELU MLP: Phi-1/1.5/2 and GPT-NeoX (Pythia, StableLM-Alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


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
