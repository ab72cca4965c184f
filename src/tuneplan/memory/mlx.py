"""The mlx-lm training step's memory: what MLX keeps alive, per token, between forward and backward.

mlx-lm 0.32.2 builds the whole step as one lazy graph and evaluates it once per iteration
(mlx_lm/tuner/trainer.py train: `step` is mx.compile'd over nn.value_and_grad(model,
default_loss) and optimizer.update, then `mx.eval(state, losses, n_tokens, grad_accum)`).
An array lives until the last graph node that reads it has run, so a forward tensor stays
alive exactly when a vjp reads it. The counter is MLX's active memory, mx.get_peak_memory()
(what mlx-lm prints as "Peak mem"): no CUDA context, no caching-allocator overhead (freed
buffers go to MLX's cache, mx.get_cache_memory(), which that counter does not include).

Per decoder layer that keeps a graph (bytes per token, c = model dtype bytes, a = adapter
dtype bytes = 4, widths h, q, kv, i of the model; rules read from mlx-lm's models/llama.py,
tuner/lora.py, tuner/dora.py and mlx's vjps, checked by benchmarks/mlx_check.py):
- the residual stream into each RMSNorm and the norm outputs (mx.fast.rms_norm's vjp reads
  its input): 4c·h;
- attention: q, k, v after RoPE and the kernel output, read by the attention vjp:
  c·(2q + 2kv); the MLX CPU backend runs the vjp through the composed fallback, which keeps
  the softmax probabilities, c·heads·seq (Runtime.fused_attention_backward);
- MLP: gate and up outputs (read by swiglu's vjp) and their product: 3c·i;
- LoRA (tuner/lora.py LoRALinear.__call__: `x @ self.lora_a` with an fp32 lora_a): MLX's
  matmul promotes the bf16 input to fp32 and that copy is read by lora_a's gradient, one per
  distinct input (mx.compile merges the q/k/v and gate/up casts): a·(2h + q + i); and each
  lora_a output a·r;
- DoRA (tuner/dora.py DoRALinear.__call__): the unscaled output is kept for the magnitude's
  gradient, c·d_out per adapted linear;
- full fine-tuning (per-layer unfreeze): the weight-gradient matmuls read every linear's
  input, c·(2h + q + i), once more as a transposed copy.
Backward of one layer adds its cotangents: a·(d_in + d_out) per adapted linear (the fp32
LoRA branch) or c·(d_in + d_out) per trained linear, plus 2c·i (gate/up gradients).
Logits (default_loss: nn.losses.cross_entropy on the model-dtype logits): on the CPU the
composed path (logits - max, logsumexp, take_along_axis) keeps the logits, their shifted
copy, and makes two [tokens, vocab] gradients, 4c bytes per logit; on GPU backends
mx.fast.cross_entropy (one fused kernel) keeps the logits and makes one gradient, 2c.
"""

from __future__ import annotations

from tuneplan.job import Job
from tuneplan.memory.trained import is_target, layer_groups, trained_layer_count
from tuneplan.model_spec import ModelSpec, layer_linears


def _layer(spec: ModelSpec, job: Job, layer: int) -> tuple[float, float]:
    """(saved bytes per token, backward working set bytes per token) of one trained layer."""
    m, t = job.method, job.training
    c, a = t.compute_bytes, t.adapter_bytes
    h = spec.hidden_size
    q, kv = spec.q_dim, spec.kv_dim
    lins = layer_linears(spec, layer)
    inter = max((lin.d_out for lin in lins if lin.group in ("mlp", "expert") and lin.name != "down_proj"),
                default=spec.intermediate_size)
    saved = 4 * c * h + c * (2 * q + 2 * kv) + 3 * c * inter
    if not t.rt.fused_attention_backward:
        saved += c * spec.num_heads * t.seq_len
    work = 2 * c * inter
    if m.is_adapter:
        adapted = [lin for lin in lins if is_target(lin, m)]
        # one fp32 copy per distinct input: the attention input (q/k/v), the MLP input
        # (gate/up), o_proj's and down_proj's own inputs
        shared = {lin.group for lin in adapted if lin.name not in ("o_proj", "down_proj")}
        saved += a * h * len(shared)
        saved += a * sum(lin.d_in for lin in adapted if lin.name in ("o_proj", "down_proj"))
        saved += a * m.rank * len(adapted)
        if m.kind == "dora":
            saved += c * sum(lin.d_out for lin in adapted)
        work += a * sum(lin.d_in + lin.d_out for lin in adapted)
    else:  # trained layer (mlx-lm full = unfreeze the last N layers)
        saved += c * (2 * h + q + inter)
        work += c * sum(lin.d_in + lin.d_out for lin in lins)
    return saved, work


def mlx_activations(spec: ModelSpec, job: Job) -> tuple[float, float, float]:
    """(saved bytes per token over the layers that keep a graph, worst layer's saved, worst
    layer's backward working set), bytes per token."""
    m = job.method
    total = worst_saved = worst_work = 0.0
    for layer, n in layer_groups(spec):
        k = trained_layer_count(spec, m, layer, n)
        if not k:
            continue
        saved, work = _layer(spec, job, layer)
        total += saved * k
        if saved + work > worst_saved + worst_work:
            worst_saved, worst_work = saved, work
    return total, worst_saved, worst_work


def mlx_logits_bytes(spec: ModelSpec, job: Job) -> int:
    """Bytes of logits and cross-entropy at the start of backward (see the module docstring)."""
    t = job.training
    per_logit = (2 if t.rt.fast_cross_entropy else 4) * t.compute_bytes
    return per_logit * t.micro_batch * t.seq_len * spec.vocab_size
