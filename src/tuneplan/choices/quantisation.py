"""Base-weight quantisation formats for QLoRA: which library, how many bits, what constants.

Each format belongs to one library (bitsandbytes on PyTorch, MLX's affine quantisation on
mlx-lm); a framework profile and a runtime list the libraries they run
(FrameworkProfile.quant_libraries, Runtime.quant_libraries), so a format on the wrong stack
is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneplan.choices import lookup


@dataclass(frozen=True)
class QuantFormat:
    """One quantised-weight storage format.

    Args:
        name: the setting (nf4, fp4, int8, mlx4, mlx8).
        library: bitsandbytes | mlx.
        bits: bits per stored weight.
        constants: how the per-block constants are stored:
            "absmax": bitsandbytes 4-bit, one absmax per block (fp32, or 8-bit with double
                quantisation; bitsandbytes functional.quantize_4bit);
            "row-scale": LLM.int8, one fp32 scale per output row (Linear8bitLt);
            "affine": MLX affine quantisation, one scale and one bias per group of
                `quant_blocksize` (default 64) values in the model dtype (mx.quantize in mlx
                0.32.4 returns (w_q uint32, scales, biases), scales/biases of w's dtype).
        quantises_embeddings: the embedding and output layers are quantised too (mlx-lm
            convert: mlx_lm/utils.py quantize_model quantises every module with
            `to_quantized` (nn.Linear, nn.Embedding) whose input width divides by the group
            size; bitsandbytes replaces decoder nn.Linear only, lm_head stays 16-bit).
        dequant_copy: each use dequantises the weight into a 16-bit copy that a GEMM then reads
            (bitsandbytes MatMul4Bit: dequantize_4bit then linear; bytes per weight in
            tuneplan.calibration.DEQUANT_BYTES_PER_PARAM); False: the matmul kernel reads the
            packed weight and its constants itself (MLX quantized_matmul: mlx/nn/layers/
            quantized.py QuantizedLinear.__call__ -> mx.quantized_matmul).
        label: its name for people.
    """

    name: str
    library: str
    bits: int
    constants: str
    quantises_embeddings: bool
    dequant_copy: bool
    label: str


QUANT_FORMATS: dict[str, QuantFormat] = {q.name: q for q in (
    QuantFormat("nf4", "bitsandbytes", 4, "absmax", False, True, "bitsandbytes NF4"),
    QuantFormat("fp4", "bitsandbytes", 4, "absmax", False, True, "bitsandbytes FP4"),
    QuantFormat("int8", "bitsandbytes", 8, "row-scale", False, True, "bitsandbytes LLM.int8"),
    # bf16 model: 4/8 bits + 2 constants of 2 bytes per 64 values = 0.5625 / 1.0625 bytes per weight
    QuantFormat("mlx4", "mlx", 4, "affine", True, False, "MLX affine 4-bit"),
    QuantFormat("mlx8", "mlx", 8, "affine", True, False, "MLX affine 8-bit"),
)}


def quant_format(name: str) -> QuantFormat:
    """The QuantFormat record for a --quant name."""
    return lookup(QUANT_FORMATS, "quantisation", name)
