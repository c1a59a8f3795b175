"""The step's metric accumulator: one float32 vector on device that the host reads at sync points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class MetricVector:
    """Packs a step's metric dict into one float32 vector, and unpacks it on the host.

    The step adds its metrics into one on-device vector: one buffer in and out per step
    instead of one per metric.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.keys = sorted(shapes)
        self.shapes = [tuple(shapes[k]) for k in self.keys]
        self.size = int(sum(np.prod(s, dtype=int) for s in self.shapes))

    def pack(self, metrics: dict) -> jax.Array:
        return jnp.concatenate([jnp.ravel(metrics[k]).astype(jnp.float32) for k in self.keys])

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for k, shape in zip(self.keys, self.shapes):
            n = int(np.prod(shape, dtype=int))
            out[k] = np.asarray(vector[i:i + n]).reshape(shape)
            i += n
        return out

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size,), np.float32)
