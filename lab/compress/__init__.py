"""Model compression as general tools: int8 quantization, magnitude pruning, distillation.

    quantize.py  quantize(params) -> int8 + per-channel scales; dequantize (jnp); param_bytes
    prune.py     magnitude_prune(...): an optax transformation (gradual, Zhu & Gupta); sparsity.
                 In the loop: the `optimizer.prune` config block (lab.optim)
    distill.py   DistillationTask: a student on a teacher's soft targets + the labels, on the one loop
"""

from lab.compress.distill import DistillationTask, distillation_sums
from lab.compress.prune import magnitude_prune, sparsity, sparsity_at
from lab.compress.quantize import dequantize, eligible, param_bytes, quantize, quantize_array

__all__ = ["DistillationTask", "distillation_sums", "magnitude_prune", "sparsity", "sparsity_at",
           "dequantize", "eligible", "param_bytes", "quantize", "quantize_array"]
