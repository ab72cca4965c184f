"""Static memory: bytes that live for the whole step (weights, quantisation constants,
adapters, gradients, optimizer states, master weights), before sharding."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from tuneplan import calibration as cal
from tuneplan import lowprec
from tuneplan.job import Job, Method, Training
from tuneplan.memory.trained import layer_groups, trainable
from tuneplan.model_spec import Linear, ModelSpec, layer_linears, param_counts


def quantised_bytes(n: int, method: Method) -> tuple[int, int]:
    """(storage bytes, quantisation-constant bytes) of one n-element matrix.

    NF4/FP4 (bitsandbytes Linear4bit): two 4-bit values per uint8 byte; one absmax per
    `quant_blocksize` values, fp32, or with double quantisation uint8 plus one fp32 absmax
    per 256 absmax values, a 256-entry fp32 code and an fp32 offset (bitsandbytes
    functional.quantize_4bit). LLM.int8 (Linear8bitLt): int8 weights plus an fp32 scale per
    output row (counted by the caller via `rows`).
    """
    if method.quant == "int8":
        return n, 0
    blocks = math.ceil(n / method.quant_blocksize)
    if method.double_quant:
        consts = blocks + 4 * math.ceil(blocks / cal.DQ_BLOCKSIZE) + 4 * 256 + 4 + 4 * 16
    else:
        consts = 4 * blocks + 4 * 16
    return math.ceil(n / 2), consts


@dataclass(frozen=True)
class Static:
    """Bytes that live for the whole step (before sharding), plus the largest single matrix."""

    weights: int
    quant_constants: int
    adapters: int
    gradients: int
    optimizer: int
    master: int
    optimizer_temp: int
    largest_matrix: int  # elements of the largest single weight matrix (one expert)
    layer_params: int  # elements of the largest decoder layer (for ZeRO-3 gathers)


def optimizer_bytes(tensors: tuple[tuple[int, int, int, int], ...], training: Training, state_bytes: int) -> int:
    """Optimizer-state bytes for the trainable tensors (rules in tuneplan.choices.optimizers).

    AdamW: 2 states (exp_avg, exp_avg_sq) in the parameter dtype (torch.optim.AdamW uses
    zeros_like(param)). 8-bit (bitsandbytes): 1 byte per state value + fp32 absmax per
    256 values, 32-bit state for tensors under 4096 elements. Adafactor (HF default
    beta1=None): factored second moment, rows + cols fp32 values per matrix, full for
    vectors (Shazeer & Stern 2018). SGD: none; with momentum one buffer. Lion: one momentum
    buffer (Chen et al. 2023).
    """
    opt = training.optim
    total = 0
    for numel, rows, cols, copies in tensors:
        if opt.factored:
            per = 4 * (rows + cols) if cols > 1 else 4 * numel
        elif opt.eight_bit and numel >= cal.BNB_OPT_MIN_8BIT_SIZE:
            per = opt.states * (numel + 4 * math.ceil(numel / cal.BNB_OPT_BLOCKSIZE))
        elif opt.eight_bit:
            per = opt.states * 4 * numel
        else:
            per = opt.states * state_bytes * numel
        total += per * copies
    return total


def fsdp_fp32_params(job: Job) -> bool:
    """Whether trained parameters are held as fp32 shards: FSDP under a stack that upcasts a
    16-bit model's flat parameters (FrameworkProfile.fsdp_fp32_params) with bf16/fp16
    mixed precision (the precision whose autocast the profile decides). Asked for on one GPU
    (--gpus 1 --sharding fsdp, as a single process launched with an FSDP config runs), FSDP
    still wraps and upcasts: the upcast does not depend on the world size. With model
    parallelism and a single data rank no FSDP wrapper runs (torchtitan, trace, probe)."""
    t, p = job.training, job.parallel
    return (t.profile.fsdp_fp32_params and p.layout.engine == "fsdp" and (p.data * p.context > 1 or p.num_gpus == 1)
            and t.dtypes.autocast == "profile" and t.param_bytes == 2)


def engine_fp32_master(job: Job) -> bool:
    """Whether the engine keeps fp32 master weights and fp32 optimizer states next to a 16-bit
    model although --precision says pure 16-bit: DeepSpeed ZeRO's optimizer (Sharding.
    fp32_master_states) and Megatron-Core's (FrameworkProfile.fp32_main_grads)."""
    t, p = job.training, job.parallel
    return (t.param_bytes == 2 and not t.dtypes.fp32_master and not t.dtypes.pure_16bit and not fsdp_fp32_params(job)
            and (p.layout.fp32_master_states or t.profile.fp32_main_grads))


def static_memory(spec: ModelSpec, job: Job) -> Static:
    """Weights, constants, adapters, gradients, optimizer states and master weights (bytes).

    Under an engine that keeps fp32 masters (engine_fp32_master) the bytes are those of
    --precision mixed: 16-bit weights and gradients, fp32 master copy, fp32 states (DeepSpeed
    ZeRO: 2 + 2 + 4 + 8 = 16 bytes per trained parameter before sharding); Megatron-Core's
    gradients are its fp32 main_grad buffer (4 bytes: 18 per parameter, Megatron-LM
    theoretical_memory_usage.py)."""
    t = job.training
    prec = "mixed" if engine_fp32_master(job) else t.precision
    st = _static(spec, job.method, prec, t.optimizer, t.framework, fsdp_fp32_params(job), t.kbit_prep)
    if t.profile.fp32_main_grads and t.param_bytes == 2:
        tr = trainable(spec, job.method)
        st = replace(st, gradients=st.gradients + 2 * tr.base)
    cache = lowprec.weight_cache_bytes(spec, t.dtypes)  # [lowprec hook] TE's fp8/fp4 weight copies
    if cache:
        st = replace(st, weights=st.weights + cache)
    return st


def rope_cache_bytes(spec: ModelSpec, job: Job) -> int:
    """The fp32 RoPE cos/sin cache a stack keeps as a buffer (FrameworkProfile.rope_cache): values
    per position per head_dim x head_dim x max_position x 4 bytes, once, or once per layer where
    the stack's LoRA builder makes a RoPE module per layer (torchtune lora_qwen2_self_attention).
    A buffer, not a parameter: whole on every rank (FSDP2's fully_shard shards parameters only),
    so tuneplan.memory.step adds it to each rank's weights after sharding."""
    for model_type, per_dim, per_layer in job.training.profile.rope_cache:
        if spec.model_type == model_type:
            copies = spec.num_layers if per_layer and job.method.is_adapter else 1
            return 4 * per_dim * spec.head_dim * spec.max_position * copies
    return 0


def stores_quantised(lin: Linear, quantises_fused_experts: bool) -> bool:
    """Whether QLoRA stores this decoder weight matrix quantised: every one, except
    transformers 5's fused 3-D MoE experts (nn.Parameter, not nn.Linear, so bitsandbytes
    leaves them 16-bit) on the stacks that do not quantise them themselves
    (FrameworkProfile.quantises_fused_experts)."""
    return lin.group != "expert" or quantises_fused_experts


def quantised_params(spec: ModelSpec, t: Training) -> int:
    """Weights QLoRA stores quantised (and so dequantises at every use): the layers' linears
    and, where the stack quantises it, an untied lm_head."""
    return _quantised_params(spec, t.profile.quantises_fused_experts) + _lm_head_quantised(spec, t)


def _lm_head_quantised(spec: ModelSpec, t: Training) -> int:
    """Elements of the lm_head the stack stores quantised (FrameworkProfile.quantises_lm_head);
    a tied lm_head is the embedding, which stays 16-bit."""
    return spec.hidden_size * spec.vocab_size if t.profile.quantises_lm_head and not spec.tie_embeddings else 0


@lru_cache(maxsize=16384)
def _quantised_params(spec: ModelSpec, quantises_fused_experts: bool) -> int:
    # cached like param_counts: step_time asks for it on every planner call
    return sum(lin.params * n for layer, n in layer_groups(spec) for lin in layer_linears(spec, layer)
               if stores_quantised(lin, quantises_fused_experts))


def _matrix_bytes(d_in: int, d_out: int, m: Method) -> tuple[int, int]:
    """(storage, constant bytes) of one quantised d_in x d_out matrix: quantised_bytes, with
    LLM.int8's one fp32 scale per output row."""
    store, consts = quantised_bytes(d_in * d_out, m)
    return store, 4 * d_out if m.quant == "int8" else consts


def _weights(spec: ModelSpec, m: Method, t: Training) -> tuple[int, int]:
    """(weight bytes, quantisation-constant bytes) of the whole model."""
    pc = param_counts(spec)
    if m.kind != "qlora":
        return t.param_bytes * pc.total, 0
    if m.fmt.constants == "affine":
        return _affine_weights(spec, m, t)
    weights = quant_consts = 0
    for layer, n in layer_groups(spec):
        for lin in layer_linears(spec, layer):
            if not stores_quantised(lin, t.profile.quantises_fused_experts):
                # fused 3-D experts stay 16-bit (fp32 after a k-bit preparation's upcast)
                weights += (4 if t.prep.fp32_unquantised else 2) * lin.params * n
                continue
            store, consts = _matrix_bytes(lin.d_in, lin.d_out, m)
            weights += (store + (2 * lin.d_out if lin.bias else 0)) * lin.count * n
            quant_consts += consts * lin.count * n
    lm_q = _lm_head_quantised(spec, t)
    if lm_q:
        store, consts = _matrix_bytes(spec.hidden_size, spec.vocab_size, m)
        weights += store
        quant_consts += consts
    # embeddings, norms, lm_head: 16-bit, or fp32 where the k-bit preparation upcasts them
    # (tuneplan.choices.kbit_prep)
    prep = t.prep
    emb = spec.vocab_size * spec.hidden_size * (1 if spec.tie_embeddings or lm_q else 2)
    weights += (4 if prep.fp32_embeddings else 2) * emb
    weights += (4 if prep.fp32_norms else 2) * (pc.total - pc.linear_in_layers - emb - lm_q)
    return weights, quant_consts


def _affine_weights(spec: ModelSpec, m: Method, t: Training) -> tuple[int, int]:
    """(weight bytes, constant bytes) under MLX affine quantisation (mlx-lm convert -q).

    Every linear and the embedding (and an untied lm_head) whose input width divides by the
    group size is quantised (mlx_lm/utils.py quantize_model wrapped_predicate:
    `module.weight.shape[-1] % group_size != 0` -> not quantised): bits/8 bytes per weight
    packed in uint32, plus one scale and one bias per group in the model dtype (mx.quantize,
    mlx 0.32.4). Norms and biases stay in the model dtype.
    """
    pc = param_counts(spec)
    g, bits, pb = m.quant_blocksize, m.fmt.bits, t.param_bytes
    weights = consts = 0
    quantised = 0

    def add(d_in: int, d_out: int, copies: int) -> None:
        nonlocal weights, consts, quantised
        if d_in % g:
            return
        weights += d_in * d_out * bits // 8 * copies
        consts += 2 * pb * (d_in // g) * d_out * copies
        quantised += d_in * d_out * copies

    for layer, n in layer_groups(spec):
        for lin in layer_linears(spec, layer):
            add(lin.d_in, lin.d_out, lin.count * n)
    add(spec.hidden_size, spec.vocab_size, 1 if spec.tie_embeddings else 2)
    weights += pb * (pc.total - quantised)
    return weights, consts


@lru_cache(maxsize=16384)
def _static(spec: ModelSpec, m: Method, precision: str, optimizer: str, framework: str,
            fp32_trained: bool = False, kbit_prep: str = "none") -> Static:
    t = Training(precision=precision, optimizer=optimizer, framework=framework, kbit_prep=kbit_prep)
    largest = max((lin.d_in * lin.d_out for layer, _ in layer_groups(spec) for lin in layer_linears(spec, layer)
                   if stores_quantised(lin, t.profile.quantises_fused_experts)), default=0)
    largest = max(largest, _lm_head_quantised(spec, t) if m.kind == "qlora" else 0)
    tr = trainable(spec, m)
    pb = t.param_bytes
    layer_params = max(sum(lin.params for lin in layer_linears(spec, layer)) for layer, _ in layer_groups(spec))
    weights, quant_consts = _weights(spec, m, t)
    ab = t.adapter_bytes
    adapters = ab * tr.adapter
    # gradients: same dtype as the parameter they belong to
    gradients = pb * tr.base + ab * tr.adapter
    state_bytes = 4 if t.dtypes.fp32_states else pb
    if m.is_adapter:
        # adapter states follow the (fp32) adapter dtype; trained embeddings (the last
        # tensor trainable() lists) keep states in the model dtype (trace: Llama-3.2-1B LoRA
        # + --train-embeddings)
        n_base = 1 if m.train_embeddings else 0
        optimizer_b = optimizer_bytes(tr.tensors[:len(tr.tensors) - n_base], t, ab)
        optimizer_b += optimizer_bytes(tr.tensors[len(tr.tensors) - n_base:], t, state_bytes)
    else:
        optimizer_b = optimizer_bytes(tr.tensors, t, state_bytes)
    master = 4 * tr.base if t.dtypes.fp32_master else 0
    if fp32_trained:
        # accelerate FSDP upcast: the trained flat parameters are fp32 (they are the master
        # copy), so are their gradients and the optimizer states; frozen ones stay 16-bit
        weights += (4 - pb) * tr.base
        gradients += (4 - pb) * tr.base
        # trained base tensors: all of them, or for adapters only the trained embeddings (last)
        base_tensors = tr.tensors if not m.is_adapter else tr.tensors[len(tr.tensors) - (1 if m.train_embeddings else 0):]
        optimizer_b += optimizer_bytes(base_tensors, t, 4) - optimizer_bytes(base_tensors, t, state_bytes)
        master = 0
    # torch _multi_tensor_adamw: exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs) is one
    # full-size temporary over the whole parameter group (torch/optim/adamw.py / adam.py).
    temp = state_bytes * tr.base + ab * tr.adapter if t.optim.full_size_temp else 0
    if fp32_trained and t.optim.full_size_temp:
        temp += (4 - state_bytes) * tr.base
    return Static(weights, quant_consts, adapters, gradients, optimizer_b, master, temp, largest, layer_params)
