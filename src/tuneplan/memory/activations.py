"""Activations and logits: the bytes autograd keeps from forward to backward, per token.

Derived from the tensors saved for backward in transformers' decoder layers and checked
against `tuneplan trace` (benchmarks/results/trace_vs_estimate.md: per-layer saved bytes
equal to the byte for Qwen2.5-0.5B, Llama-3.2-3B, Llama-3.1-8B, full/LoRA/QLoRA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from tuneplan import lowprec
from tuneplan.choices.attention import Attention, kernel_for
from tuneplan.job import Job, Method, Training
from tuneplan.memory.trained import first_trained_layer, is_target, layer_groups, trained_layer_count
from tuneplan.model_spec import Linear, ModelSpec, layer_linears


@dataclass(frozen=True)
class LayerActs:
    """Per-token bytes of one decoder layer.

    Args:
        saved: tensors autograd keeps from forward to backward (no checkpointing).
        transient: extra working memory while this layer's backward runs (gradients of
            its widest intermediates), on top of what is saved.
        grad_free_branch: of `saved`, what a parallel block's MLP branch keeps when it has no
            trainable matrix: in the first trained layer its input (the embeddings, or a
            frozen layer's output) needs no gradient, so that branch keeps nothing there.
    """

    saved: int
    transient: int
    grad_free_branch: int = 0


def attention_kernel(spec: ModelSpec, t: Training) -> Attention:
    """The attention kernel that actually runs (sdpa falls back to eager where
    transformers has no SDPA path for the architecture)."""
    return kernel_for(spec.model_type, t.profile.attention or t.attention)  # a stack's own attention first


def _attention_core(spec: ModelSpec, kernel: Attention, c: int, seq: int, expands_kv: bool = False) -> int:
    """Bytes per token saved inside attention (after q/k/v projections).

    SDPA flash/mem-efficient and FlashAttention-2 save q, k, v (GQA native, no repeat),
    the output and an fp32 logsumexp per head (torch/nn/attention, flash_attn
    flash_attn_interface.py). transformers eager attention (modeling_llama.py
    eager_attention_forward) repeats k/v to all heads, upcasts the softmax to fp32 and
    keeps the probabilities: fp32 softmax output + its bf16 cast, s per head per token.
    Gemma 2's score soft-capping (modeling_gemma2.py: scores / cap -> tanh -> * cap) keeps
    tanh's output, one more compute-dtype s x s matrix per head. torchtune repeats k and v
    to every query head before SDPA (torchtune 0.6.1 modules/attention.py:
    `k.unsqueeze(2).expand(...).flatten(1, 2)`, a copy), so SDPA saves the repeated k, v.
    """
    if kernel.quadratic:
        qkv = c * (spec.q_dim + 2 * spec.num_heads * (spec.v_head_dim if spec.is_mla else spec.head_dim))
        probs = 4 + c + (c if spec.attn_softcap else 0)
        return qkv + probs * spec.num_heads * seq
    v_dim = spec.num_heads * spec.v_head_dim if spec.is_mla else spec.kv_dim
    k_dim = spec.q_dim if spec.is_mla else spec.kv_dim
    if expands_kv and not spec.is_mla:
        k_dim = v_dim = spec.num_heads * spec.head_dim
    return c * (spec.q_dim + k_dim + v_dim + spec.attn_out_dim) + 4 * spec.num_heads


@dataclass(frozen=True)
class _Saver:
    """Per-token save rules of one layer's linears for a method and precision.

    A linear keeps its input only when its weight (or an adapter on it) needs a gradient
    (PyTorch saves mm inputs only for outputs that require grad). With PEFT under
    autocast each adapted module keeps its own compute-dtype copy of its input (peft lora
    Linear.forward casts x to the fp32 adapter dtype, autocast casts it back for the matmul
    and saves that copy). The 4-bit LoRA layer (peft lora/bnb.py Linear4bit.forward) skips
    that cast under autocast, so its adapters share the input, and bitsandbytes
    MatMul4Bit saves no input at all.
    """

    method: Method
    c: int
    per_adapter_copy: bool
    quantised_saves_input: bool = False  # bitsandbytes < 0.43.2 MatMul4Bit (tuneplan.choices.versions)
    experts_quantised: bool = False
    copy_bytes: int = 0  # bytes per element of a per-adapter copy (default: the compute dtype)
    lora_out_bytes: int = 0  # bytes per element of lora_A's output (default: the compute dtype)
    casts_compute_input: bool = True  # a compute-dtype input (o_proj's) is copied too
    fused_qkv_adapter: bool = False  # one adapter (and one dropout) over q, k and v (litgpt LoRAQKVLinear)

    def base_saves_input(self, lin: Linear) -> bool:
        """The frozen or trained base matrix itself keeps its input (not its adapter)."""
        if self.quantised_saves_input and (lin.group != "expert" or self.experts_quantised):
            return True
        return self.method.kind in ("full", "freeze")

    def saves_input(self, lin: Linear) -> bool:
        m = self.method
        return self.base_saves_input(lin) or (m.is_adapter and is_target(lin, m))

    def _dropout_calls(self, targets: list[Linear]) -> int:
        """Dropout calls before lora_A in a group: one per adapted module (PEFT, torchtune),
        one for litgpt's fused qkv adapter (lora.py LoRAQKVLinear.forward:
        `F.linear(self.lora_dropout(x), self.lora_A)`)."""
        if self.fused_qkv_adapter:
            qkv = [lin for lin in targets if lin.name in ("q_proj", "k_proj", "v_proj")]
            return len(targets) - len(qkv) + (1 if qkv else 0)
        return len(targets)

    def input_bytes(self, group: list[Linear], width: int, tokens_factor: float = 1.0,
                    per_linear_copy: bool = False, shared_kept: bool = False) -> float:
        """Bytes/token kept for the input of `group` (all read the same tensor).

        Args:
            per_linear_copy: the input is fp32 under autocast (LayerNorm's output), so each
                linear that keeps it keeps its own compute-dtype cast.
            shared_kept: the shared input is already kept by another group (a parallel block
                whose attention and MLP read one LayerNorm output).
        """
        needed = [lin for lin in group if self.saves_input(lin)]
        if not needed:
            return 0.0
        if self.per_adapter_copy or per_linear_copy:
            return tokens_factor * (self.copy_bytes or self.c) * width * len(needed)
        m = self.method
        targets = [lin for lin in needed if m.is_adapter and is_target(lin, m)]
        if m.lora_dropout > 0 and targets:
            # lora_A keeps dropout(x), a new tensor per dropout call (torch native_dropout); x
            # itself is kept only if a base matrix keeps it (bitsandbytes < 0.43.2 MatMul4Bit)
            base = any(self.base_saves_input(lin) for lin in needed) and not shared_kept
            return tokens_factor * self.c * width * (self._dropout_calls(targets) + base)
        return 0.0 if shared_kept else tokens_factor * self.c * width

    def adapter_extras(self, group: list[Linear], tokens_factor: float = 1.0) -> float:
        """lora_A outputs, dropout masks and DoRA's kept results, bytes/token."""
        m = self.method
        if not m.is_adapter:
            return 0.0
        extra = 0.0
        for lin in group:
            if not is_target(lin, m):
                continue
            extra += (self.lora_out_bytes or self.c) * m.rank  # lora_A output, saved by lora_B
            if m.lora_dropout > 0:
                extra += lin.d_in  # dropout mask (bool)
            if m.kind == "dora":
                extra += 2 * self.c * lin.d_out  # base and lora results kept for the magnitude scale
        return tokens_factor * extra


def norm_weight_fp32(t: Training) -> bool:
    """The stack's RMSNorm keeps the fp32 normalised value for a trained weight: its --stack record
    says so where it dates the change (versions.Stack.norm_weight_fp32), else its profile."""
    dated = t.versions.norm_weight_fp32
    return t.profile.norm_weight_fp32 if dated is None else dated


def _norm_bytes(spec: ModelSpec, t: Training, full: bool) -> int:
    """Bytes/token saved by one RMSNorm (or LayerNorm, for the models that use it).

    RMSNorm (modeling_llama.py LlamaRMSNorm) upcasts to fp32 and keeps that fp32 input
    (4 B/elem) and, when its weight trains, the normalised value in the compute dtype.
    amp: the residual stream is fp32, so is the normalised value. Gemma's RMSNorm
    multiplies the fp32 normalised value by (1 + weight) before casting back
    (modeling_gemma3.py Gemma3RMSNorm), so a trained weight keeps it in fp32 (trace:
    Gemma-3-1B full fine-tuning). Under torch.compile nothing (tuneplan.choices.compilation).
    """
    h = spec.hidden_size
    if not t.compilation.norm_saves:  # torch.compile recomputes the upcast and the normalised value
        return 0
    if spec.layer_norm:
        # torch.nn.LayerNorm (aten native_layer_norm) keeps its input and fp32 mean and rstd per
        # row, whether or not its weight trains; under autocast layer_norm runs in fp32 (autocast
        # fp32 op list), so the kept input is an fp32 copy
        return (4 if t.autocast or t.fp32_residual else t.compute_bytes) * h + 8
    if t.fp32_residual or spec.model_type.startswith("gemma") or norm_weight_fp32(t):
        return 4 * h + (4 * h if full else 0)  # torchtune: FrameworkProfile.norm_weight_fp32
    return 4 * h + (t.compute_bytes * h if full else 0)


def _attention_saves(spec: ModelSpec, kernel: Attention, t: Training, sv: _Saver, lins: tuple[Linear, ...],
                     norm: int) -> float:
    """Bytes/token saved by the attention block (projections, qk-norm, kernel, o_proj)."""
    c, h = sv.c, spec.hidden_size
    attn = [lin for lin in lins if lin.group == "attn"]
    first_attn = [lin for lin in attn if lin.name != "o_proj" and lin.d_in == h]
    o_proj = [lin for lin in attn if lin.name == "o_proj"]
    saved = sv.input_bytes(first_attn, h, per_linear_copy=spec.layer_norm and t.autocast)
    if spec.qk_norm:  # per-head RMSNorm of q and k (Qwen3, Gemma 3, OLMo 2): same saves as a norm
        saved += (norm // h) * (spec.q_dim + spec.kv_dim)
    if (spec.fused or t.profile.fused_qkv) and not kernel.quadratic and not spec.is_mla:
        # Phi-3 (and litgpt's own model code, for every architecture) slices q, k, v out of
        # one qkv output; SDPA saves v, a view, which keeps the whole [q + 2 kv] storage
        # alive (trace: Phi-3.5-mini)
        saved += c * (spec.q_dim + spec.kv_dim)
    if spec.is_mla:  # latent projections: q_b and kv_b read normalised latents
        for lin in (lin for lin in attn if lin.name in ("q_b_proj", "kv_b_proj")):
            saved += 4 * lin.d_in + sv.input_bytes([lin], lin.d_in)
    saved += _attention_core(spec, kernel, c, t.seq_len, t.profile.expands_kv_heads)
    # With SDPA/flash the o_proj input is the kernel's output, already counted; it costs
    # nothing more unless something copies it: eager makes a contiguous copy; MLA slices
    # padded heads; PEFT copies. Phi-3's rotary concatenates rotated and pass-through
    # halves, so q is head-major, the SDPA output follows q's layout (CPU kernel and
    # flash's empty_like(q) alike) and transpose(1, 2).contiguous() copies it (trace:
    # Phi-3.5-mini full fine-tuning).
    # (PEFT's 4-bit LoRA layer does not cast under autocast: o_proj's compute-dtype input is
    # shared, peft tuners/lora/bnb.py Linear4bit.forward)
    # Phi-1/2 and GPT-NeoX concatenate partial rotary dims likewise (modeling_phi.py PhiAttention:
    # `torch.cat((query_rot, query_pass), dim=-1)`). litgpt re-assembles the heads with
    # `y.reshape(B, T, C)` of the transposed SDPA output, also a copy
    # (FrameworkProfile.attention_output_copy).
    head_major = spec.fused or spec.rotary_fraction < 1 or t.profile.attention_output_copy
    if kernel.quadratic or spec.is_mla or head_major or (sv.per_adapter_copy and sv.casts_compute_input):
        saved += sv.input_bytes(o_proj, spec.attn_out_dim)
    elif t.compilation.attention_output_copy:  # compiled: a contiguous copy beside the kernel's output
        saved += c * spec.attn_out_dim
    return saved + sv.adapter_extras(attn)


def _moe_saves(spec: ModelSpec, sv: _Saver, lins: tuple[Linear, ...], act_output_saved: bool = True,
               inter_bytes: int | None = None) -> tuple[float, int]:
    """(bytes/token, widest intermediate) of a routed-expert MLP with optional shared experts.

    act_output_saved False: torch.compile recomputes act(gate) (tuneplan.choices.compilation).
    inter_bytes: bytes per element of gate/up/act outputs (default the compute dtype)."""
    h = spec.hidden_size
    c = inter_bytes or sv.c
    k, e = spec.experts_per_token, spec.num_experts
    im = spec.moe_intermediate_size
    experts = [lin for lin in lins if lin.group == "expert"]
    # router: fp32 probabilities; the per-expert gathered token copies are kept only
    # when the experts' gate/up weights need gradients (traced: Mixtral, Qwen3-MoE LoRA)
    saved = 4 * e + sv.input_bytes([lin for lin in experts if lin.name != "down_proj"], h, k)
    acts = 3 if act_output_saved else 2
    saved += k * c * im * acts + k * c * h  # gate, act, up per routed copy; expert output before weighting
    saved += sv.input_bytes([lin for lin in experts if lin.name == "down_proj"], im, k)
    saved += sv.adapter_extras(experts, k)  # each token passes through k adapted experts
    width = k * im
    shared = [lin for lin in lins if lin.group == "shared"]
    if shared:
        si = spec.shared_intermediate_size * spec.shared_experts
        saved += sv.input_bytes([lin for lin in shared if lin.name != "down_proj"], h)
        saved += acts * c * si + sv.input_bytes([lin for lin in shared if lin.name == "down_proj"], si)
        saved += sv.adapter_extras(shared)
        width += si
    return saved, width


def _dense_mlp_saves(spec: ModelSpec, sv: _Saver, lins: tuple[Linear, ...],
                     act_output_saved: bool = True, inter_bytes: int | None = None) -> tuple[float, int]:
    """(bytes/token, intermediate width) of a gated MLP: gate, act(gate), up and, if
    down_proj trains, their product. Compiled, act(gate) is recomputed from gate.
    inter_bytes: bytes per element of gate/up/act outputs (default the compute dtype)."""
    mlp = [lin for lin in lins if lin.group == "mlp"]
    inter = spec.intermediate_size
    saved = sv.input_bytes([lin for lin in mlp if lin.name != "down_proj"], spec.hidden_size)
    saved += (3 if act_output_saved else 2) * (inter_bytes or sv.c) * inter  # gate out (act input), act out, up out
    saved += sv.input_bytes([lin for lin in mlp if lin.name == "down_proj"], inter)
    saved += sv.adapter_extras(mlp)
    return saved, inter


def python_gelu(spec: ModelSpec, t: Training) -> bool:
    """The plain MLP's activation is transformers' Python gelu_new chain (Phi-1/2), not a
    one-kernel GELU (the config's other GELUs, or a stack calling F.gelu itself)."""
    return spec.hidden_act == "gelu_new" and not t.profile.gelu_kernel


def gelu_bytes(spec: ModelSpec, t: Training, inter_bytes: int) -> int:
    """Bytes per intermediate element kept by a plain MLP's activation (GELU).

    torch's GELU kernel (F.gelu, transformers "gelu"/"gelu_pytorch_tanh", litgpt GptNeoxMLP)
    keeps only its input. transformers' "gelu_new" (activations.py NewGELUActivation, Phi-1/2)
    is a Python chain `0.5 * x * (1 + tanh(k * (x + 0.044715 * pow(x, 3))))` that keeps
    pow's input, tanh's output, 0.5 * x and 1 + tanh; under autocast pow runs in fp32
    (autocast fp32 op list), so three of them are fp32. Compiled, one fused kernel.
    """
    if not python_gelu(spec, t) or t.compilation.compiled:
        return inter_bytes
    wide = 4 if t.autocast else inter_bytes
    return 3 * wide + inter_bytes


def _plain_mlp_saves(spec: ModelSpec, t: Training, sv: _Saver, lins: tuple[Linear, ...], inter_bytes: int,
                     input_kept: bool) -> tuple[float, int]:
    """(bytes/token, intermediate width) of an up -> GELU -> down MLP (Phi-1/2, GPT-NeoX).

    input_kept: a parallel block whose attention already keeps the shared LayerNorm output.
    Under autocast GELU-new's output is fp32, so down's kept input is its own cast.
    """
    mlp = [lin for lin in lins if lin.group == "mlp"]
    inter = spec.intermediate_size
    fp32_in = spec.layer_norm and t.autocast
    saved = sv.input_bytes([lin for lin in mlp if lin.name != "down_proj"], spec.hidden_size,
                           per_linear_copy=fp32_in, shared_kept=input_kept and not fp32_in)
    saved += gelu_bytes(spec, t, inter_bytes) * inter
    saved += sv.input_bytes([lin for lin in mlp if lin.name == "down_proj"], inter)
    saved += sv.adapter_extras(mlp)
    return saved, inter


def layer_activations(spec: ModelSpec, job: Job, layer: int, adapters_16bit: bool = False) -> LayerActs:
    """Per-token activation bytes of decoder layer `layer` without checkpointing.

    `adapters_16bit`: the fp32 adapters compute in the 16-bit dtype (FSDP's mixed-precision
    policy gathers every parameter as param_dtype=bf16), so PEFT's cast of the input to the
    adapter dtype is a no-op and keeps no copy (traced: benchmarks/results/trace_dist_grid.md).

    Norms per _norm_bytes, attention per _attention_saves, the MLP per _dense_mlp_saves or
    _moe_saves; linears and adapters per _Saver. Checked against `tuneplan trace`
    (benchmarks/results/trace_vs_estimate.md).
    """
    m, t = job.method, job.training
    kernel = attention_kernel(spec, t)  # what actually runs
    full = m.kind in ("full", "freeze")
    lins = layer_linears(spec, layer)
    norm = _norm_bytes(spec, t, full)
    copies = (m.is_adapter and t.profile.adapter_input_copies and t.compilation.adapter_input_copies
              and not adapters_16bit)
    if t.autocast:
        # autocast casts PEFT's fp32 copy back and saves that compute-dtype copy; PEFT's 4-bit
        # LoRA layer does not cast under autocast (an fp32 residual stream still makes copies)
        per_adapter_copy = copies and (m.kind != "qlora" or t.fp32_residual)
        copy_bytes = lora_out = t.compute_bytes
    else:
        # no autocast (a custom loop on a bf16 model): peft lora Linear.forward and the 4-bit
        # layer alike cast x to the adapter dtype (_cast_input_dtype) and lora_A saves that copy;
        # lora_A's output is in the adapter dtype too
        per_adapter_copy = copies and t.adapter_bytes != t.compute_bytes
        copy_bytes = lora_out = t.adapter_bytes
    old_bnb = m.kind == "qlora" and m.quant != "int8" and t.versions.bnb_4bit_saves_input
    sv = _Saver(m, t.compute_bytes, per_adapter_copy, old_bnb, t.profile.quantises_fused_experts,
                copy_bytes, lora_out, casts_compute_input=m.kind != "qlora" or not t.autocast,
                fused_qkv_adapter=t.profile.fused_qkv)
    saved = spec.norms_per_layer * norm  # Gemma 2/3 add post-attention and post-MLP norms
    mlp_norm = norm if spec.parallel_block and spec.norms_per_layer == 2 else 0
    if mlp_norm and not (t.autocast or t.fp32_residual):
        saved -= norm - 8  # GPT-NeoX: both LayerNorms read the layer input, one kept tensor
        mlp_norm = 8
    saved += _attention_saves(spec, kernel, t, sv, lins, norm)
    # a bitsandbytes linear returns its input's dtype (nn/modules.py Linear4bit.forward:
    # `out.to(inp_dtype)`), so after a k-bit preparation's fp32 norms gate/up/act are fp32
    inter_bytes = 4 if t.prep.fp32_residual else sv.c
    if not spec.gated_mlp:
        # x itself (not a dropout of it) is kept by the attention's base matrices or adapters
        attn_keeps = spec.shared_norm and any(
            sv.base_saves_input(lin) or (m.is_adapter and is_target(lin, m) and m.lora_dropout == 0)
            for lin in lins if lin.group == "attn" and lin.name != "o_proj")
        mlp, mlp_width = _plain_mlp_saves(spec, t, sv, lins, inter_bytes, attn_keeps)
    elif spec.moe_layers and spec.moe_layers[layer]:
        mlp, mlp_width = _moe_saves(spec, sv, lins, t.compilation.activation_output_saved, inter_bytes)
    else:
        mlp, mlp_width = _dense_mlp_saves(spec, sv, lins, t.compilation.activation_output_saved, inter_bytes)
    saved += mlp
    saved -= lowprec.saved_input_saving(lins, job)  # [lowprec hook] TE keeps linear inputs quantised
    branch = 0
    if spec.parallel_block and m.is_adapter and not m.train_embeddings and not any(
            is_target(lin, m) for lin in lins if lin.group == "mlp"):
        branch = int(mlp + mlp_norm)
    # backward working set of one layer: grads of the widest intermediates (gate/up) and
    # of the hidden state flowing through the residual stream
    transient = inter_bytes * 2 * mlp_width + t.residual_bytes * 2 * spec.hidden_size
    if per_adapter_copy and t.autocast and any(is_target(lin, m) for lin in lins if lin.name == "down_proj"):
        # PEFT's cast of down_proj's input to the fp32 adapter dtype (lora/layer.py Linear.forward
        # _cast_input_dtype) is made again when the layer is recomputed and is alive while its
        # MLP backward runs: 4 bytes per intermediate element (`tuneplan trace --task dpo --method
        # lora`, where no logits hide the layer's backward: benchmarks/results/trace_tasks.md)
        transient += 4 * mlp_width
    return LayerActs(int(saved), int(transient), branch)


@lru_cache(maxsize=16384)
def logits_bytes(spec: ModelSpec, t: Training) -> tuple[int, int, int]:
    """(forward peak, kept into backward, backward peak) bytes of logits + cross-entropy.

    plain: transformers ForCausalLMLoss (loss/loss_utils.py) upcasts the compute-dtype
    logits to fp32 and runs cross_entropy: log_softmax keeps its fp32 output for backward.
    The Trainer drops the model outputs before backward (trainer.py compute_loss returns
    only the loss), so the compute-dtype logits and the fp32 upcast die with the forward
    and only the fp32 log-probabilities are kept. In backward the nll gradient and the
    log_softmax input gradient (fp32 each) coexist with them: 12 bytes per logit, as
    `tuneplan trace` measures (benchmarks/results/trace_vs_estimate.md).
    fused (Liger, Unsloth) never materialises more than a chunk of fp32 logits (Liger
    fused_linear_cross_entropy.py: chunk = next_power_of_2(ceil(BT / ceil(V / H))) rows);
    chunked (torchtune) has the compute-dtype logits in chunks and upcasts 1/chunks at a
    time; eager, each chunk's fp32 log-probabilities are kept, compiled only the chunks.
    """
    tokens = t.micro_batch * t.seq_len
    v, h, c = spec.vocab_size, spec.hidden_size, t.compute_bytes
    ce = t.loss
    if ce.fused:
        chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(v / h))))))
        chunk = min(chunk, tokens)
        work = 8 * chunk * v  # fp32 chunk logits + their gradient
        return work, 0, work + c * tokens * h
    if ce.chunks:
        chunk = math.ceil(tokens / ce.chunks)
        if t.compilation.fuses_loss_upcast:
            # compiled chunk loss: each chunk's fused kernel saves the chunk itself and writes
            # its gradient in the compute dtype (benchmarks/compile_saved.py, loss case)
            return c * tokens * v, c * tokens * v, c * tokens * v + c * chunk * v
        # eager: each chunk's F.cross_entropy(chunk.float()) keeps its fp32 log-probabilities
        # for backward; the recipe drops the compute-dtype chunks after the loss (torchtune
        # recipes `del logits`), so 4 B/logit are kept. Forward peak at the last chunk: all
        # compute-dtype chunks, the kept log-probs and that chunk's fp32 upcast; backward: the
        # kept log-probs, one chunk's fp32 gradients (output and input) and its cast
        return (c * tokens * v + 4 * tokens * v + 4 * chunk * v, 4 * tokens * v,
                4 * tokens * v + (8 + c) * chunk * v)
    if ce.chunk_tokens:
        # litgpt: the list of compute-dtype logit chunks stays referenced by the training
        # loop through backward (finetune/lora.py: `logits = model(...)`, then
        # chunked_cross_entropy(logits, ...), then fabric.backward), and each chunk's
        # log_softmax output is kept: 2 x c bytes per logit; backward works one chunk at a time
        chunk = min(tokens, ce.chunk_tokens * t.micro_batch)
        kept = 2 * c * tokens * v
        return kept, kept, kept + 2 * c * chunk * v
    fwd = (c + 8) * tokens * v if c == 2 else 8 * tokens * v
    if t.versions.fp32_logits_copy:  # fp32 logits + shifted contiguous copy + log-probs
        fwd = 12 * tokens * v
        if t.versions.logits_alive_in_loss:  # and the caller's compute-dtype logits (4.46-4.48)
            fwd += c * tokens * v
    kept = 4 * tokens * v
    if spec.final_softcap:  # Gemma 2: logits / cap -> tanh -> * cap; tanh keeps its output
        fwd += c * tokens * v
        kept += c * tokens * v
    bwd = kept + 8 * tokens * v
    return fwd, kept, bwd


def chunked_head_bytes(spec: ModelSpec, t: Training, head_grad: int) -> tuple[int, int]:
    """(logit gradients, head-gradient working bytes) while a trainable output projection runs
    its backward under a chunked loss (CrossEntropy.chunks); (0, 0) otherwise.

    torchtune's chunked output runs the projection once per chunk (modules/transformer.py:482
    TransformerDecoder.chunked_output, 0.6.1), so its weight gets `chunks` gradient
    contributions. Every chunk's cross-entropy backward runs first (those nodes are the newest),
    leaving `chunks` compute-dtype logit gradients; then each chunk's matmul backward consumes one
    and makes a [vocab, hidden] weight gradient that autograd's InputBuffer adds to the running sum
    out of place (torch/csrc/autograd/input_buffer.cpp accumulate): old sum, new contribution and
    their sum coexist. The worst moment is the second contribution, (chunks - 2) / chunks of the
    logit gradients left, or the first with (chunks - 1) / chunks and one contribution. Measured
    by the torchtune replay (tuneplan.trace.stacks; benchmarks/results/trace_stacks.md) and on
    real CPU tensors (peak RSS of 8 chunked matmuls: 3 weight-gradient sizes)."""
    n = t.loss.chunks
    if not n or not head_grad or n < 2 or (t.compilation.compiled and t.versions.compiles_whole_model):
        # a whole-model compile (versions.Stack.compiles_whole_model) puts the output projection in
        # the compiled graph, which sums its chunks' gradients itself; torchtune >= 0.5 compiles
        # per layer (training/_compile.py:30 compile_model, 0.6.1), so the head stays eager
        return 0, 0
    logit_grads = t.compute_bytes * t.micro_batch * t.seq_len * spec.vocab_size
    first = (logit_grads * (n - 1) // n, head_grad)
    second = (logit_grads * (n - 2) // n, 3 * head_grad)
    return max(first, second, key=sum)


@lru_cache(maxsize=16384)
def stack_activations(spec: ModelSpec, method: Method, training: Training,
                      adapters_16bit: bool = False) -> tuple[int, LayerActs]:
    """(saved bytes per token summed over the layers that keep activations, worst single layer).

    freeze keeps activations only for the trained top layers: nothing below them needs a
    gradient, so their forward builds no graph. In a parallel block the first trained layer's
    MLP branch reads only that graph-free input, so without a trainable matrix of its own it
    keeps nothing (traced: Phi-1.5 and GPT-NeoX LoRA).
    """
    job = Job(method, training)
    total = 0
    worst = LayerActs(0, 0)
    for layer, n in layer_groups(spec):
        la = layer_activations(spec, job, layer, adapters_16bit)
        count = trained_layer_count(spec, method, layer, n)
        total += la.saved * count
        if la.saved + la.transient > worst.saved + worst.transient:
            worst = la
    if spec.parallel_block:  # only a parallel block has such a branch
        total -= layer_activations(spec, job, first_trained_layer(spec, method), adapters_16bit).grad_free_branch
    return total, worst


__all__ = ["LayerActs", "attention_kernel", "chunked_head_bytes", "norm_weight_fp32", "first_trained_layer", "layer_activations", "logits_bytes",
           "python_gelu", "stack_activations"]


def selective_saved(spec: ModelSpec, t: Training, layers: int) -> int:
    """Bytes per token kept between forward and backward by torchtitan's op-level selective
    activation checkpointing over `layers` decoder layers (the last ones).

    torchtitan/models/llama3/infra/parallelize.py `_apply_ac_to_transformer_block` (mode
    "selective", option "op"): each layer is checkpointed, and the outputs of the ops in
    `_save_list` (aten.mm, the flash / efficient SDPA kernels, max, reduce-scatter) are cached
    for the recomputation, "except every second mm" (the policy counts mm calls per layer and
    recomputes the even ones). Kept per token: the layer's input, the odd-numbered matmul
    outputs in execution order (q, v, o... of layer_linears), and SDPA's output and its fp32
    logsumexp. Routed experts run grouped GEMMs, not aten.mm, so they are recomputed.
    """
    c = t.compute_bytes
    per_layer = []
    for layer, n in layer_groups(spec):
        kept = t.residual_bytes * spec.hidden_size
        mm = 0
        for lin in layer_linears(spec, layer):
            if lin.group == "expert":
                continue
            mm += 1
            if mm % 2 == 1:
                kept += c * lin.d_out
        v_dim = spec.num_heads * (spec.v_head_dim if spec.is_mla else spec.head_dim)
        kept += c * v_dim + 4 * spec.num_heads
        per_layer.append((kept, n))
    total_layers = sum(n for _, n in per_layer)
    return sum(kept * n for kept, n in per_layer) * layers // max(1, total_layers)
