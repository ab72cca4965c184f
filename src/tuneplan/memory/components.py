"""The names of the memory components, defined once.

Every breakdown line has a key (used in JSON, by the trace comparison and by tests) and
a label (shown to people). Keys are plain strings so JSON stays plain.
"""

from __future__ import annotations

WEIGHTS = "weights"
QUANT_CONSTANTS = "quant_constants"
ADAPTERS = "adapters"
PARAM_GATHER = "param_gather"
GRADIENTS = "gradients"
OPTIMIZER = "optimizer"
MASTER_WEIGHTS = "master_weights"
DDP_BUCKETS = "ddp_buckets"
OPTIMIZER_TEMP = "optimizer_temp"
ACTIVATIONS = "activations"
LOGITS = "logits"
WORKING = "working"
ALLOCATOR = "allocator"
CUDA_CONTEXT = "cuda_context"

LABELS = {
    WEIGHTS: "Weights", QUANT_CONSTANTS: "Quantisation constants", ADAPTERS: "Adapters (LoRA)",
    PARAM_GATHER: "Gathered params", GRADIENTS: "Gradients", OPTIMIZER: "Optimizer states",
    MASTER_WEIGHTS: "Master weights (fp32)", DDP_BUCKETS: "DDP gradient buckets",
    OPTIMIZER_TEMP: "Optimizer temporaries", ACTIVATIONS: "Activations", LOGITS: "Logits + loss",
    WORKING: "Backward working set", ALLOCATOR: "Allocator overhead", CUDA_CONTEXT: "CUDA context",
}

# What a torch allocation counter cannot see: the estimate adds them on top of allocated bytes.
OVERHEAD = (ALLOCATOR, CUDA_CONTEXT)
