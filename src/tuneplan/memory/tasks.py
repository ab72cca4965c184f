"""Task-specific memory: the rows a task's forward sees, its reference model and its logits.

tuneplan.memory.step walks the moments of a supervised step; for another task (a record of
tuneplan.choices.tasks) it asks this module three things, through small hooks:

- forward_view: the model and job the policy's graded forward sees (micro-batch in rows:
  2 x pairs for DPO/ORPO/CPO/SimPO/RM, as TRL's collators concatenate chosen and rejected;
  a scalar head instead of lm_head for reward modelling);
- task_terms: the reference model's resident weights, the reference forward's working set
  and the log-probability path's bytes at the end of forward and the start of backward;
- largest_block / task_notes / task_assumptions: the allocator's largest block, the
  breakdown's notes and the sentences the estimate states.

Everything is read from TRL's trainers at huggingface/trl@f2cd577 (1.10.0.dev0); each
formula names the file and lines. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from tuneplan.job import Job
from tuneplan.memory import components as K
from tuneplan.memory.activations import logits_bytes
from tuneplan.model_spec import ModelSpec

REF_WEIGHTS = "reference_model"
REF_FORWARD = "reference_forward"
TASK_LABELS = {REF_WEIGHTS: "Reference model", REF_FORWARD: "Reference forward working set"}


def forward_view(spec: ModelSpec, job: Job) -> tuple[ModelSpec, Job]:
    """(spec, job) as the policy's graded forward sees them: micro-batch counted in rows
    (Task.rows_per_sample), and for a scalar-head task the model without its lm_head
    (AutoModelForSequenceClassification's `score` is hidden x 1: trl/trainer/reward_trainer.py
    :385-388). The same objects for SFT."""
    tk = job.task_record
    if tk.is_sft:
        return spec, job
    t = job.training
    if tk.rows_per_sample != 1:
        job = replace(job, training=replace(t, micro_batch=t.micro_batch * tk.rows_per_sample))
    if tk.head == "scalar" and not spec.tie_embeddings:
        # counted as a model whose output projection is the (tied) embedding: no [v, h] lm_head
        # weight, gradient or optimizer state; the h-element score head is left out
        spec = replace(spec, tie_embeddings=True, lm_head_bias=False)
    return spec, job


def task_view(view: Any, job: Job) -> Any:
    """A rank view (tuneplan.memory.ranks.RankView) with the task's head on each of its shapes:
    for a scalar-head task every ModelSpec field is the model without its lm_head."""
    if job.task_record.head != "scalar":
        return view
    return replace(view, **{f.name: forward_view(v, job)[0] for f in fields(view)
                            if isinstance(v := getattr(view, f.name), ModelSpec)})


@dataclass(frozen=True)
class TaskTerms:
    """Bytes a task adds to (or puts instead of) the supervised step's moments.

    Args:
        ref_weights: the reference model's weights, resident for the whole step.
        forward_logits / forward_ref: the log-prob path's and the reference forward's bytes at
            the forward moment (the larger of: the chosen-half NLL, the reference's lm_head
            and log-softmax, the metrics' copies, the reference's mid-stack layer).
        backward_logits: the log-prob path's bytes at the start of backward.
        late_embedding: bytes of a trained input embedding's gradient that the step counts as
            lm_head's (tied) but that only exists at the end of backward: a scalar-head model has
            no lm_head, so its embedding is used once (forward_view counts it as tied to drop the
            [v, h] head); taken out of the decoder-stack moments and of the embedding's working set.
    """

    ref_weights: int
    forward_logits: int
    forward_ref: int
    backward_logits: int
    late_embedding: int = 0

    def apply(self, base: tuple, candidates: tuple) -> tuple[tuple, tuple]:
        """The step's (base, candidates) with these terms: the reference weights in every moment,
        the forward and backward moments' logits replaced, the reference forward added."""
        base = (*base, (REF_WEIGHTS, self.ref_weights))
        out = []
        for name, parts in candidates:
            if name == "forward":
                parts = (*((k, self.forward_logits if k == K.LOGITS else b) for k, b in parts),
                         (REF_FORWARD, self.forward_ref))
            elif name == "backward":
                parts = tuple((k, self.backward_logits if k == K.LOGITS else b) for k, b in parts)
            elif self.late_embedding and name in ("backward_top", "backward_end"):
                parts = tuple((k, b - self.late_embedding if k == K.GRADIENTS else b) for k, b in parts)
            elif self.late_embedding and name == "backward_embed":
                # the untied rule of tuneplan.memory.step: every gradient, the embedding's being made
                parts = tuple((k, b - 2 * self.late_embedding if k == K.WORKING else b) for k, b in parts)
            out.append((name, parts))
        return base, tuple(out)


def _fused(job: Job) -> bool:
    """TRL's Liger path (use_liger_kernel=True): asked for with --cross-entropy fused / --fused-ce.
    A profile's default fused loss (TRL SFTTrainer's fused LM head, Unsloth's CE) is SFT's only."""
    t = job.training
    return t.cross_entropy is not None and t.loss.fused


# trl/kernels/chunked_logprob.py (trl 1.16.0): TOKEN_CHUNK_SIZE tokens per projection tile, and
# trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary columns per tile (mm_buf is
# [min(N, 4096), 32768] in the compute dtype whatever the vocabulary)
TRL_TILE_TOKENS = 4096
TRL_TILE_VOCAB = 32768


def _chunked(job: Job) -> bool:
    """TRL's fused LM head (Task.chunked_logps, on a stack with trl >= 1.16: Stack.trl_chunked_logps)."""
    return job.task_record.chunked_logps and job.training.versions.trl_chunked_logps


def _chunked_terms(spec: ModelSpec, job: Job, ref_weights: int, ref_stack: int, ref_rows: int) -> TaskTerms:
    """TRL's fused LM head (trl/trainer/utils.py add_fused_lm_head :1548-1695, trl/kernels/chunked_logprob.py
    ChunkedLogProbFunction :299-465, trl 1.16.0) for the graded and the no-grad forwards.

    Forward: the backbone output [rows, seq, h] while its valid positions are copied out
    (hidden_states[mask], [n, h] with n = rows x (seq - 1); the copy is saved for backward and
    stands where SFT saves lm_head's input) and one [min(n, 4096), 32768] tile in the compute dtype.
    A no-grad forward (reference, KTO's KL pass) holds the same three at its head. Backward: the
    saved copy, its fp32 gradient accumulator grad_hidden [n, h] and its cast, the tile, and for a
    trainable lm_head the fp32 grad_weight [v, h] and its cast to the parameter dtype (PR #7076 skips
    it for a frozen head). Per-token statistics (7 fp32 vectors) are left out: under 1% of the copy.
    """
    t = job.training
    c, p, v, h, seq = t.compute_bytes, t.param_bytes, spec.vocab_size, spec.hidden_size, t.seq_len
    rows = t.micro_batch
    n = rows * (seq - 1)
    tile = c * min(n, TRL_TILE_TOKENS) * TRL_TILE_VOCAB
    fwd = c * rows * seq * h + tile
    ref_n = ref_rows * (seq - 1)
    ref_head = c * ref_rows * seq * h + c * ref_n * h + c * min(ref_n, TRL_TILE_TOKENS) * TRL_TILE_VOCAB
    head_trains = job.method.kind == "full" or job.method.train_embeddings
    grad_w = (4 + (p if p < 4 else 0)) * v * h if head_trains else 0
    # SFT's step saves lm_head's input only for a trained head (tuneplan.memory.step head_saved);
    # the fused function saves its copy either way (ctx.save_for_backward(hidden, ...))
    copy = 0 if head_trains else c * n * h
    fwd += copy
    bwd = (4 + (c if c < 4 else 0)) * n * h + tile + grad_w + copy
    # the graded head's tile and backbone output die when the fused forward returns, before the
    # no-grad forwards run (dpo_trainer.py _compute_loss :1299-1338): the larger of the two is the moment
    nograd = max(ref_stack, ref_head) if ref_rows else 0
    return TaskTerms(ref_weights, fwd if fwd >= nograd else 0, nograd if nograd > fwd else 0, bwd)


def _selective_kernel_terms(spec: ModelSpec, job: Job, ref_weights: int) -> TaskTerms:
    """ORPO/CPO/SimPO on trl >= 1.16 on a GPU: full logits, but selective_log_softmax runs TRL's Triton
    kernel (trl/trainer/utils.py:572-574 -> trl/kernels/logprob_entropy.py _LogProbEntropyFunction
    :146-247: saves the logits, four fp32 [rows, seq] vectors, one contiguous logits-shaped gradient in
    backward) instead of the per-row log_softmax loop. The NLL on the chosen half
    (orpo_trainer.py concatenated_forward :779-796) is a .contiguous() copy and nn.CrossEntropyLoss,
    whose log_softmax and nll_loss autocast runs in fp32 (torch autocast's fp32 op list).

    Forward: the logits with, at the NLL, its copy, the fp32 upcast and the kept log_softmax.
    Backward (measured by `tuneplan trace --task orpo`): the kernel's gradient next to the slice's
    full-size gradient and the kept NLL log_softmax, or that full-size gradient next to the NLL's
    three fp32 tensors (kept output, nll_loss and log_softmax gradients).
    """
    t, tk = job.training, job.task_record
    c, v, seq, rows = t.compute_bytes, spec.vocab_size, t.seq_len, t.micro_batch
    e = rows * seq * v
    nll_e = int(e * tk.nll_rows)
    nb = 4 if (t.autocast and c < 4) else c  # the NLL's log_softmax dtype
    up = 4 * nll_e if nb > c else 0  # autocast's fp32 copy of the half
    fwd = c * e + max(c * nll_e + up + nb * nll_e, nb * nll_e + 16 * rows * seq)
    bwd = max(2 * c * e + nb * nll_e, c * e + 3 * nb * nll_e)
    return TaskTerms(ref_weights, fwd, 0, bwd)


def task_terms(spec: ModelSpec, job: Job, resident_weights: int, layer_saved_per_token: int) -> TaskTerms | None:
    """What the task adds to a step (None for SFT).

    Args:
        spec, job: the forward view (forward_view): micro_batch counts the graded rows.
        resident_weights: the policy's per-GPU base weights and quantisation constants (after
            sharding and offload): what a separate reference copy of the same checkpoint holds.
        layer_saved_per_token: bytes per token one decoder layer saves for backward, the bound
            used for one layer of the no-grad reference forward.
    """
    tk = job.task_record
    if tk.is_sft:
        return None
    t = job.training
    c, v, h, seq = t.compute_bytes, spec.vocab_size, spec.hidden_size, t.seq_len
    rows = t.micro_batch  # graded rows (pairs x 2)
    samples = rows // tk.rows_per_sample
    ref = job.reference
    ref_forward = ref in ("separate", "adapter")
    # the reference runs over the graded rows and, for KTO, the KL rows (one pass at a time,
    # kto_trainer.py :1524-1534): the larger of the two
    ref_rows = max(rows, samples * tk.kl_rows_per_sample) if ref_forward else 0
    ref_weights = resident_weights if ref == "separate" else 0
    # one no-grad decoder layer over the reference rows, and the hidden states it passes on
    ref_stack = (layer_saved_per_token + c * h) * ref_rows * seq if ref_forward else 0

    if tk.head == "scalar":
        # score head: [rows, seq, 1] in the compute dtype (reward_trainer.py :747), no vocabulary term
        head = c * rows * seq
        # a trained embedding of a checkpoint with tied embeddings: forward_view kept it tied, so the
        # step counts its gradient from the top of the stack on (one GPU, no accumulation: the rule
        # this corrects; measured by `tuneplan trace --task rm`, benchmarks/results/trace_tasks.md)
        m, p = job.method, job.parallel
        late = (t.param_bytes * v * h if spec.tie_embeddings and (m.kind == "full" or m.train_embeddings)
                and p.num_gpus == 1 and t.grad_accum == 1 and not t.optimizer_in_backward else 0)
        return TaskTerms(ref_weights, head, ref_stack, 2 * head, late)
    if _chunked(job):
        # KTO's policy KL pass runs under no_grad even with precomputed reference log-probs
        nograd_rows = ref_rows or samples * tk.kl_rows_per_sample
        nograd_stack = ref_stack or (layer_saved_per_token + c * h) * nograd_rows * seq
        return _chunked_terms(spec, job, ref_weights, nograd_stack, nograd_rows)
    if tk.logps == "selective" and not ref_forward and t.versions.trl_chunked_logps and not _fused(job):
        return _selective_kernel_terms(spec, job, ref_weights)
    if _fused(job):
        # Liger (dpo_trainer.py _compute_loss_liger :1221-1330): backbone hidden states [rows, seq-1, h]
        # made contiguous, the fused linear+loss in chunks; the reference's hidden states likewise
        fwd, _, bwd = logits_bytes(spec, t)
        hidden = c * rows * seq * h
        ref_hidden = c * ref_rows * seq * h
        return TaskTerms(ref_weights, fwd + hidden, max(ref_stack, ref_hidden), bwd + hidden)

    e = rows * seq * v  # logit elements of the graded forward
    logits = c * e  # outputs.logits: referenced by `outputs` until the loss function returns
    # selective_log_softmax (trl/trainer/utils.py:479-523): 16-bit logits -> per-row log_softmax,
    # each row's output kept for backward (c bytes per element); fp32 logits -> gather and a
    # per-row logsumexp, which keep the logits themselves (nothing extra)
    kept = 0 if c >= 4 else c * e
    row = c * seq * v  # one row's log_softmax while it is computed
    nll = int(c * e * tk.nll_rows)  # chosen-half NLL: kept log_softmax (+ a .contiguous() copy while made)
    metric = int(c * e * tk.metric_rows)  # metrics' copies of the policy logits (after the loss)
    ref_logits = c * ref_rows * seq * v  # the reference's logits (no grad), alive until the loss returns
    moments = (
        (logits + 2 * nll, 0),  # the NLL on the chosen half (before the sequence log-probs)
        (logits + kept + nll + (0 if ref_forward else row), ref_logits + row if ref_forward else 0),
        (logits + kept + nll + metric, ref_logits),  # the metrics, reference logits still referenced
        (logits + kept + nll, ref_stack),  # the reference forward inside the decoder stack
    )
    fwd_logits, fwd_ref = max(moments, key=sum)
    # backward: the rows' log_softmax gradients collected for the unbind, their stack and the
    # shifted slice's gradient (2 x c per element), plus the NLL half's kept output and gradient
    bwd = 2 * c * e + 2 * nll
    return TaskTerms(ref_weights, fwd_logits, fwd_ref, bwd)


def largest_block(spec: ModelSpec, job: Job) -> int | None:
    """The task's largest single tensor, for the allocator's block rule (None: SFT's rule):
    the graded forward's logits [rows, seq, vocab] in the compute dtype; none for the scalar
    head or TRL's Liger path."""
    tk = job.task_record
    if tk.is_sft:
        return None
    spec, job = forward_view(spec, job)
    t = job.training
    if tk.head == "scalar" or (_fused(job) and not _chunked(job)):
        return 0
    if _chunked(job):  # the TRL tile or the backbone output, whichever is larger
        return t.compute_bytes * max(min(t.micro_batch * (t.seq_len - 1), TRL_TILE_TOKENS) * TRL_TILE_VOCAB,
                                     t.micro_batch * t.seq_len * spec.hidden_size)
    return t.compute_bytes * t.micro_batch * t.seq_len * spec.vocab_size


def task_notes(spec: ModelSpec, job: Job) -> dict[str, str]:
    """Breakdown notes for the task's components (and its logits line); {} for SFT."""
    tk = job.task_record
    if tk.is_sft:
        return {}
    t = job.training
    ref = job.reference
    rows = t.micro_batch * tk.rows_per_sample
    if tk.head == "scalar":
        logits = "scalar score head [rows, seq, 1], no vocabulary logits"
    elif _chunked(job):
        logits = (f"TRL fused LM head (trl >= 1.16): per-token log-probs of {rows} rows from "
                  f"[{TRL_TILE_TOKENS}, {TRL_TILE_VOCAB}] logit tiles, no full logits")
    elif tk.logps == "selective" and ref != "separate" and ref != "adapter" and t.versions.trl_chunked_logps \
            and not _fused(job):
        logits = (f"{t.compute_bytes * 8}-bit logits of {rows} rows; TRL selective_log_softmax as its Triton kernel "
                  "(trl >= 1.16)" + (" + fp32 NLL on the chosen half" if tk.nll_rows else ""))
    elif _fused(job):
        logits = "TRL use_liger_kernel: fused linear + loss over hidden states (no full logits)"
    else:
        logits = (f"TRL selective_log_softmax: {t.compute_bytes * 8}-bit logits of {rows} rows + kept per-row "
                  "log-softmax" + (" + NLL on the chosen half" if tk.nll_rows else "")
                  + (" + metrics' logits copies" if tk.metric_rows else ""))
    return {
        K.LOGITS: logits,
        REF_WEIGHTS: f"separate frozen copy, {t.precision} weights as the policy loads them; no gradients or "
                     "optimizer states",
        REF_FORWARD: f"no-grad reference forward ({'adapter disabled' if ref == 'adapter' else 'separate copy'}): "
                     "its logits until the loss returns, or one layer inside the stack",
    }


def task_assumptions(spec: ModelSpec, job: Job) -> list[str]:
    """Sentences the estimate states for a non-SFT task; [] for SFT."""
    tk = job.task_record
    if tk.is_sft:
        return []
    t = job.training
    ref = {"separate": "a separate frozen copy of the weights (TRL's default for full fine-tuning)",
           "adapter": "the policy with its adapters disabled (TRL's default with PEFT: no extra weights)",
           "precomputed": "precomputed log-probs (precompute_ref_log_probs: no reference in the step)",
           "none": "none"}[job.reference]
    rows = t.micro_batch * tk.rows_per_sample
    out = [f"Task {tk.name} ({tk.label}) as TRL's trainer runs it: {rows} rows of {t.seq_len} tokens per "
           f"micro-batch (--seq-len is the padded prompt + completion length of a row)"
           + (f", plus a no-grad KL batch of {t.micro_batch * tk.kl_rows_per_sample} rows" if tk.kl_rows_per_sample
              else "") + f"; reference: {ref}."]
    if tk.head == "scalar":
        out.append("Reward model: AutoModelForSequenceClassification with a 1-output score head; no lm_head, "
                   "no vocabulary logits.")
    return out
