"""Post-training compression for deployment: int8 weights with per-channel scales.

    quantize.py  quantize(params) -> int8 + per-channel scales; dequantize (jnp); param_bytes

Compression during training lives with its layer: magnitude pruning is an optax transform
(`lab.optim.prune`, the `optimizer.prune` config block) and distillation is a task
(`lab.tasks.distill.DistillationTask`).
"""

from lab.compress.quantize import dequantize, param_bytes, quantize, quantize_array

__all__ = ["dequantize", "param_bytes", "quantize", "quantize_array"]
