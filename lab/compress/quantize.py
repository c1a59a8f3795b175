"""Post-training int8 weight quantization with per-channel symmetric scales.

A weight `w` of shape (..., C) (a Dense kernel (in, out), a conv kernel (kh, kw, cin, cout))
becomes `int8 = round(w / scale)` in [-127, 127] with one float32 `scale = max|w[..., c]| / 127`
per output channel c, so `int8 * scale` is within `scale / 2` of `w` in every element. Small
leaves (biases, norm scales, anything under `min_size` elements or of rank < 2) stay as they are:
they are a small share of the bytes and the most sensitive to rounding.

The quantized tree holds plain arrays only: it saves with numpy or Orbax and travels as the
arguments of a `jax.export` function, which calls `dequantize` inside (it is jnp, jit-able):

    qparams = quantize(params)                        # {'hidden_0': {'kernel': {'int8', 'scale'}, 'bias'}, ...}
    logits = jax.jit(lambda q, x: model.apply({'params': dequantize(q)}, x))(qparams, x)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lab.optim.prune import DEFAULT_MIN_SIZE, eligible  # the same weights are pruned and quantized

PyTree = Any
QUANTIZED_KEYS = frozenset({"int8", "scale"})


def is_quantized(node: Any) -> bool:
    """Whether `node` is a quantized leaf: a dict of exactly {'int8', 'scale'}."""
    return isinstance(node, dict) and set(node) == QUANTIZED_KEYS


def quantize_array(w: Any) -> dict[str, np.ndarray]:
    """One weight (..., C) -> {'int8': int8 (..., C), 'scale': float32 (C,)}, symmetric per channel.

    An all-zero channel gets scale 0 (and int8 zeros), so it dequantizes to exact zeros: a
    pruned column stays pruned.
    """
    w = np.asarray(w, np.float32)
    scale_C = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0) / 127.0
    safe_C = np.where(scale_C > 0, scale_C, 1.0)  # 0 / 1 = 0 for an all-zero channel
    q = np.clip(np.rint(w / safe_C), -127, 127).astype(np.int8)
    return {"int8": q, "scale": scale_C.astype(np.float32)}


def quantize(params: PyTree, min_size: int = DEFAULT_MIN_SIZE) -> PyTree:
    """The tree with every eligible leaf (`eligible(leaf, min_size)`) replaced by
    `quantize_array(leaf)`; the other leaves are returned as numpy arrays, unchanged.

    Args:
      params: a parameter tree (nested dicts of arrays, e.g. a flax `params` collection).
      min_size: leaves with fewer elements stay float.
    Returns:
      The same nesting, with quantized leaves as {'int8': int8 (..., C), 'scale': f32 (C,)}.
    """
    return jax.tree.map(lambda w: quantize_array(w) if eligible(w, min_size) else np.asarray(w), params)


def dequantize(qparams: PyTree, dtype=jnp.float32) -> PyTree:
    """`quantize`'s inverse up to rounding: int8 * scale for every quantized leaf (jnp, so it
    runs inside jit or an exported function), the other leaves as they are.

    Args:
      qparams: a tree from `quantize` (numpy or jax arrays).
      dtype: the dtype of the dequantized weights.
    Returns:
      The parameter tree, each quantized leaf back to a (..., C) array of `dtype`.
    """
    def restore(node):
        if is_quantized(node):
            return node["int8"].astype(dtype) * node["scale"].astype(dtype)  # scale broadcasts on C
        return node
    return jax.tree.map(restore, qparams, is_leaf=is_quantized)


def param_bytes(tree: PyTree) -> int:
    """Total bytes of the arrays in `tree` (size x itemsize of each leaf), e.g. of params or of
    `quantize(params)`."""
    return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))
