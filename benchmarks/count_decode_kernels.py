"""Count the kernels one eager decode step launches (the counts cited in tuneplan.calibration).

Runs on the CPU with tiny random models (no weights downloaded): a TorchDispatchMode counts
every ATen op dispatched during decoding; view-only ops (no kernel) are left out. Per-layer
and per-step terms are separated by differencing 1 vs 3 layers and 2 vs 6 new tokens.

- transformers generate (installed transformers, peft): Qwen2, sdpa, sampling as TRL's GRPO
  asks it (temperature 1, top_p 1, top_k 0), with and without PEFT LoRA on the 7 linears;
- gpt-fast (pytorch-labs/gpt-fast model.py, path given as the first argument, optional): one
  decode forward, for EAGER_DECODE_SECONDS_PER_KERNEL's derivation.

Usage: .venv/bin/python benchmarks/count_decode_kernels.py [path/to/gpt-fast/model.py]
Needs torch, transformers and peft (a research script, not part of the estimator).
"""

from __future__ import annotations

import collections
import importlib.util
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = {"aten.view", "aten.t", "aten.unsqueeze", "aten.slice", "aten.select", "aten.expand", "aten.transpose",
         "aten._unsafe_view", "aten.squeeze", "aten.as_strided", "aten.permute", "aten.reshape", "aten.alias",
         "aten.detach", "aten._local_scalar_dense", "aten.split_with_sizes", "aten.split", "aten.unbind"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        return sum(v for k, v in self.ops.items() if k not in VIEWS)


def hf_generate(layers: int, lora: bool, new: int) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    m = Qwen2ForCausalLM(cfg)
    m.config._attn_implementation = "sdpa"
    if lora:
        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=8, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    m.train()
    ids = torch.randint(2, 1000, (8, 20))
    mask = torch.ones_like(ids)
    mask[:3, :4] = 0  # left padding, as TRL pads prompts
    gc = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0,
                          top_k=0, pad_token_id=0, eos_token_id=1)
    c = Count()
    with torch.no_grad(), c:
        m.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    return c.kernels


def gpt_fast(path: str, layers: int) -> int:
    spec = importlib.util.spec_from_file_location("gpt_fast_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.ModelArgs(block_size=64, vocab_size=1000, n_layer=layers, n_head=4, dim=64, intermediate_size=128,
                         n_local_heads=4, head_dim=16)
    t = mod.Transformer(args)
    t.setup_caches(1, 64)
    c = Count()
    with torch.no_grad(), c:
        t(torch.randint(0, 1000, (1, 1)), torch.tensor([5]))
    return c.kernels


def main() -> None:
    for lora in (False, True):
        a, b = hf_generate(1, lora, 2), hf_generate(1, lora, 6)
        x, y = hf_generate(3, lora, 2), hf_generate(3, lora, 6)
        per_layer = ((y - x) - (b - a)) / 8
        print(f"transformers generate{' + PEFT LoRA x7' if lora else ''}: {per_layer:g} kernels per layer per "
              f"decode step, {(b - a) / 4 - per_layer:g} outside the layers (fp32)")
    if len(sys.argv) > 1:
        one, three = gpt_fast(sys.argv[1], 1), gpt_fast(sys.argv[1], 3)
        print(f"gpt-fast: {(three - one) / 2:g} kernels per layer, {one - (three - one) / 2:g} outside (fp32 forward)")


if __name__ == "__main__":
    main()
