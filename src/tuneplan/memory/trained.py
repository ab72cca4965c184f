"""What is trained: adapter targets, trainable parameter counts, and which layers keep a graph."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tuneplan.errors import TuneplanError
from tuneplan.job import Method
from tuneplan.model_spec import Linear, ModelSpec, layer_linears, layer_small_params, param_counts

_TARGET_ALIASES = {
    "q_proj": ("q_proj", "qkv_proj", "q_a_proj", "q_b_proj"),
    "k_proj": ("k_proj", "qkv_proj", "kv_a_proj_with_mqa", "kv_b_proj"),
    "v_proj": ("v_proj", "qkv_proj", "kv_b_proj"),
    "o_proj": ("o_proj",),
    "gate_proj": ("gate_proj", "gate_up_proj"),
    "up_proj": ("up_proj", "gate_up_proj"),
    "down_proj": ("down_proj",),
    "w1": ("gate_proj",), "w3": ("up_proj",), "w2": ("down_proj",),
    # transformers' names in Phi-1/2 (dense, fc1, fc2) and GPT-NeoX (query_key_value, dense,
    # dense_h_to_4h, dense_4h_to_h) for the matrices tuneplan.model_spec names by role
    "query_key_value": ("qkv_proj",), "dense": ("o_proj",), "fc1": ("up_proj",), "fc2": ("down_proj",),
    "dense_h_to_4h": ("up_proj",), "dense_4h_to_h": ("down_proj",),
}


def targets_text(targets: str | tuple[str, ...]) -> str:
    """--targets as the user would write it."""
    return targets if isinstance(targets, str) else ",".join(targets)


def is_target(lin: Linear, method: Method) -> bool:
    """Whether a LoRA/DoRA adapter is attached to this matrix.

    "all-linear" follows PEFT (every nn.Linear but the output layer). Routed MoE experts
    are fused 3-D parameters in transformers 5 (MixtralExperts, Qwen3MoeExperts,
    GptOssExperts, DeepseekV3NaiveMoe, Llama4TextExperts), not nn.Linear, so all-linear
    leaves them alone; the target name "experts" adapts them, one rank-r adapter per
    expert and matrix (PEFT target_parameters). The router is never adapted here.
    """
    if lin.group == "router":
        return False
    if lin.group == "expert":
        return method.targets != "all-linear" and "experts" in method.targets
    if method.targets == "all-linear":
        return True
    for t in method.targets:
        if lin.name == t or lin.name in _TARGET_ALIASES.get(t, ()):
            return True
    return False


def check_method(spec: ModelSpec, method: Method) -> None:
    """Reject impossible method settings for this model with a one-line error."""
    if method.is_adapter:
        if method.rank > spec.hidden_size:
            raise TuneplanError(f"LoRA rank {method.rank} is larger than the hidden size {spec.hidden_size}")
        if not any(is_target(lin, method) for lin in layer_linears(spec, spec.num_layers - 1)) and not any(
            is_target(lin, method) for lin in layer_linears(spec, 0)
        ):
            raise TuneplanError(f"--targets {targets_text(method.targets)} match no module of {spec.name}")
    if method.lora_layers > spec.num_layers:
        # mlx_lm/lora.py train_model refuses the same ("Requested to train N layers but the
        # model only has M layers.")
        raise TuneplanError(f"--lora-layers {method.lora_layers} exceeds the model's {spec.num_layers} layers")
    if method.kind == "freeze" and method.trainable_layers > spec.num_layers:
        raise TuneplanError(f"--trainable-layers {method.trainable_layers} exceeds the model's {spec.num_layers} layers")


def first_trained_layer(spec: ModelSpec, method: Method) -> int:
    """Index of the lowest decoder layer that keeps a graph: freeze trains only the last k
    layers, and adapters on the last lora_layers layers (mlx-lm num_layers) likewise, so
    nothing below them needs a gradient; every other method starts at 0."""
    if method.kind == "freeze":
        return spec.num_layers - method.trainable_layers
    if method.is_adapter and method.lora_layers:
        return spec.num_layers - method.lora_layers
    return 0


def layer_groups(spec: ModelSpec) -> list[tuple[int, int]]:
    """(representative layer index, how many layers share its shape): dense and MoE layers."""
    if not spec.moe_layers:
        return [(0, spec.num_layers)]
    groups: dict[bool, list[int]] = {}
    for i, flag in enumerate(spec.moe_layers):
        groups.setdefault(flag, []).append(i)
    return [(idx[0], len(idx)) for idx in groups.values()]


def trained_layer_count(spec: ModelSpec, method: Method, layer: int, n: int) -> int:
    """How many of the `n` layers like `layer` have trainable weights (freeze: the last k;
    adapters on the last lora_layers layers)."""
    if method.kind != "freeze" and not (method.is_adapter and method.lora_layers):
        return n
    first = first_trained_layer(spec, method)
    same = [i for i in range(spec.num_layers) if (not spec.moe_layers or spec.moe_layers[i] == spec.moe_layers[layer])]
    return sum(1 for i in same if i >= first)


@dataclass(frozen=True)
class Trainable:
    """Trainable parameters split by storage.

    Args:
        base: elements of original weights that are trained (full, freeze, embeddings).
        adapter: elements of LoRA/DoRA matrices and DoRA magnitudes.
        tensors: (numel, rows, cols, copies) per trainable tensor shape, for per-tensor
            optimizer rules (Adafactor factoring, bitsandbytes 8-bit thresholds).
    """

    base: int
    adapter: int
    tensors: tuple[tuple[int, int, int, int], ...]

    @property
    def total(self) -> int:
        return self.base + self.adapter


@lru_cache(maxsize=16384)
def trainable(spec: ModelSpec, method: Method) -> Trainable:
    """Count trainable parameters for the method.

    full trains everything; freeze trains the last `trainable_layers` decoder layers;
    lora/qlora train r*(d_in+d_out) per targeted matrix (per expert); dora adds a
    magnitude vector of d_out per targeted matrix (Liu et al. 2024, DoRA).
    """
    pc = param_counts(spec)
    h, v = spec.hidden_size, spec.vocab_size
    tensors: list[tuple[int, int, int, int]] = []
    base = adapter = 0
    if method.kind == "full":
        for layer, n in layer_groups(spec):
            for lin in layer_linears(spec, layer):
                tensors.append((lin.d_in * lin.d_out, lin.d_out, lin.d_in, lin.count * n))
                if lin.bias:
                    tensors.append((lin.d_out, lin.d_out, 1, lin.count * n))
            tensors.append((layer_small_params(spec, layer), layer_small_params(spec, layer), 1, n))
        tensors.append((v * h, v, h, 1 if spec.tie_embeddings else 2))
        tensors.append((h, h, 1, 1))
        return Trainable(pc.total, 0, tuple(tensors))
    if method.kind == "freeze":
        for layer, n in layer_groups(spec):
            k = trained_layer_count(spec, method, layer, n)
            if not k:
                continue
            for lin in layer_linears(spec, layer):
                base += lin.params * k
                tensors.append((lin.d_in * lin.d_out, lin.d_out, lin.d_in, lin.count * k))
            small = layer_small_params(spec, layer)
            base += small * k
            tensors.append((small, small, 1, k))
    else:
        r = method.rank
        for layer, n in layer_groups(spec):
            adapted = trained_layer_count(spec, method, layer, n)
            for lin in layer_linears(spec, layer):
                if not is_target(lin, method) or not adapted:
                    continue
                copies = lin.count * adapted
                adapter += r * (lin.d_in + lin.d_out) * copies
                tensors.append((r * lin.d_in, r, lin.d_in, copies))
                tensors.append((r * lin.d_out, lin.d_out, r, copies))
                if method.kind == "dora":
                    adapter += lin.d_out * copies
                    tensors.append((lin.d_out, lin.d_out, 1, copies))
    if method.train_embeddings:
        copies = 1 if spec.tie_embeddings else 2
        base += v * h * copies
        tensors.append((v * h, v, h, copies))
    return Trainable(base, adapter, tuple(tensors))
