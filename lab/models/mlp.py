"""Multi-layer perceptron classifier (the seed recipe's 784 -> 128 -> 64 -> 10)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Dense + ReLU hidden layers, then a linear layer of class logits.

    Attributes:
      features: widths of the hidden layers.
      num_classes: number of output logits.
      dropout_rate: dropout after each hidden activation (0 = none; needs a 'dropout' rng
        when `train=True` and > 0).

    Use from plain research code:
      params = MLP().init(key, x_BxD)            # a {'params': ...} variables dict
      logits_BxC = MLP().apply(params, x_BxD)
    Inputs of any trailing shape are flattened: x (B, ...) -> (B, D).
    """

    features: Sequence[int] = (128, 64)
    num_classes: int = 10
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        """x: (B, ...) float -> logits (B, num_classes), or (logits, the last hidden layer's
        activations (B, features[-1])) with `return_features`."""
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, name="logits")(x)
        return (logits, x) if return_features else logits
