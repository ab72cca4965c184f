"""Stand-ins for bitsandbytes quantised linear layers, with the same storage and memory pattern.

bitsandbytes needs its native library and (for 4-bit training) a GPU, and cannot run on
fake tensors; these modules hold tensors of exactly the shapes and dtypes bitsandbytes
keeps and allocate the same temporaries in forward and backward, so a memory tracker
sees what it would see on a GPU. Numerical values are not meaningful.

Linear4bit (bitsandbytes/nn/modules.py Linear4bit, functional.py quantize_4bit):
  - weight: Params4bit, uint8 of shape [ceil(out*in/2), 1] (two 4-bit codes per byte);
  - quant_state.absmax: fp32 [blocks] (blocks = ceil(n / blocksize)), or with double
    quantisation (compress_statistics=True) uint8 [blocks] plus a nested state: fp32
    absmax [ceil(blocks / 256)], fp32 code [256], and an fp32 offset;
  - quant_state.code: fp32 [16] (the NF4/FP4 table).
  forward (autograd/_functions.py MatMul4Bit.forward): dequantize_4bit -> a full
  compute-dtype [out, in] weight (after dequantising absmax to fp32 [blocks] when double
  quantised), F.linear, nothing of the input saved; backward: dequantise again and
  matmul with grad_output.

Linear8bitLt (LLM.int8 with has_fp16_weights=False): int8 weight [out, in] and fp32 SCB
[out]; forward quantises the input row-wise to int8 (+fp32 scale per row), int8 matmul to
an int32 [tokens, out] result, dequantises to the compute dtype; it saves the int8 input
(CAt in older releases) for the weight gradient only, so with a frozen weight the
backward dequantises the weight to the compute dtype and multiplies.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DQ_BLOCK = 256  # double-quantisation block of absmax values (functional.quantize_4bit)


def _fill(t: torch.Tensor) -> torch.Tensor:
    """Give a fresh buffer finite values without allocating (no-op on fake tensors)."""
    if not isinstance(t, torch._subclasses.fake_tensor.FakeTensor) and t.is_floating_point():
        t.normal_(0.0, 0.02)
    return t


class _MatMul4bit(torch.autograd.Function):
    """Dequantise-then-matmul, saving only the packed weight (bitsandbytes MatMul4Bit)."""

    @staticmethod
    def forward(ctx, x, packed, module):  # noqa: D102
        weight = module.dequantize(x.dtype)
        out = torch.nn.functional.linear(x, weight, module.bias)
        ctx.module = module
        ctx.save_for_backward(packed)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        (packed,) = ctx.saved_tensors
        weight = ctx.module.dequantize(grad_out.dtype)
        return torch.matmul(grad_out, weight), None, None


class Linear4bitStandIn(nn.Module):
    """A frozen NF4/FP4 linear layer with bitsandbytes Linear4bit storage.

    Args:
        in_features / out_features: matrix shape.
        bias: keep a compute-dtype bias (bitsandbytes keeps the original bias unquantised).
        compute_dtype: dtype the weight is dequantised to (bnb_4bit_compute_dtype).
        blocksize: values per absmax block (default 64).
        double_quant: quantise absmax to uint8 in blocks of 256 (bnb_4bit_use_double_quant).
        device: where the storage lives.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype,
                 blocksize: int = 64, double_quant: bool = True, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.double_quant = double_quant
        n = in_features * out_features
        blocks = math.ceil(n / blocksize)
        self.weight = nn.Parameter(torch.empty(math.ceil(n / 2), 1, dtype=torch.uint8, device=device),
                                   requires_grad=False)
        self.register_buffer("code", torch.empty(16, dtype=torch.float32, device=device))
        if double_quant:
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=device))
            self.register_buffer("nested_absmax", torch.empty(math.ceil(blocks / DQ_BLOCK), dtype=torch.float32,
                                                              device=device))
            self.register_buffer("nested_code", torch.empty(256, dtype=torch.float32, device=device))
            self.register_buffer("offset", torch.empty((), dtype=torch.float32, device=device))
        else:
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The [out, in] weight in `dtype`, allocated as bitsandbytes dequantize_4bit does."""
        absmax = None
        if self.double_quant:  # dequantize_blockwise(absmax) + offset -> fp32 [blocks]
            absmax = torch.empty(self.absmax.shape, dtype=torch.float32, device=self.absmax.device)
        w = torch.empty(self.out_features, self.in_features, dtype=self.compute_dtype, device=self.weight.device)
        _fill(w)
        del absmax  # freed when dequantize_4bit returns
        return w if w.dtype == dtype else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)  # Linear4bit.forward casts to compute_dtype
        return _MatMul4bit.apply(x, self.weight, self).to(inp_dtype)


class _MatMul8bit(torch.autograd.Function):
    """LLM.int8 matmul with a frozen int8 weight (bitsandbytes MatMul8bitLt, threshold 0)."""

    @staticmethod
    def forward(ctx, x, weight, module):  # noqa: D102
        rows = x.reshape(-1, x.shape[-1])
        x_int8 = torch.empty(rows.shape, dtype=torch.int8, device=x.device)  # int8_vectorwise_quant
        x_scale = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
        acc = torch.empty(rows.shape[0], module.out_features, dtype=torch.int32, device=x.device)  # int8 mm
        del x_int8, x_scale
        out = torch.empty(*x.shape[:-1], module.out_features, dtype=x.dtype, device=x.device)  # mm_dequant
        del acc
        _fill(out)
        if module.bias is not None:
            out = out + module.bias
        ctx.module = module
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        m = ctx.module
        weight = torch.empty(m.out_features, m.in_features, dtype=grad_out.dtype, device=grad_out.device)
        _fill(weight)  # CB.to(dtype).mul_(SCB / 127)
        return torch.matmul(grad_out, weight), None, None


class Linear8bitStandIn(nn.Module):
    """A frozen LLM.int8 linear layer (bitsandbytes Linear8bitLt, has_fp16_weights=False)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _MatMul8bit.apply(x, self.weight, self)
