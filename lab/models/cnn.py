"""A small convolutional image classifier, and the feature network of lab's sample-quality metrics.

    model = CNN(channels=(32, 64), features=(128,), num_classes=10)
    variables = model.init(key, x_BxHxWxC)
    logits_BxC = model.apply(variables, x_BxHxWxC)
    logits_BxC, features_BxF = model.apply(variables, x_BxHxWxC, return_features=True)

`features_BxF` is the penultimate layer (the last hidden Dense, after its ReLU): what the Frechet
distance and the mode-coverage histogram of the generative family read (`lab.tasks.generative`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from lab.models.layers import max_pool_2x2


class CNN(nn.Module):
    """[Conv(k x k, SAME) -> ReLU -> MaxPool(2)] per entry of `channels`, then Dense + ReLU hidden
    layers (`features`, with optional dropout), then a linear layer of class logits.

    Attributes:
      channels: output channels of each conv block; each block halves the height and width.
      kernel_size: the convolutions' square kernel size.
      features: widths of the hidden Dense layers; the last one is the feature layer.
      num_classes: number of output logits.
      dropout_rate: dropout after each hidden Dense (needs a 'dropout' rng when train=True and > 0).
    Inputs: images (B, H, W, C) float (or (B, H, W): one channel).
    """

    channels: Sequence[int] = (32, 64)
    kernel_size: int = 3
    features: Sequence[int] = (128,)
    num_classes: int = 10
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        """x: (B, H, W[, C]) -> logits (B, num_classes), or (logits, features (B, features[-1]))."""
        if x.ndim == 3:
            x = x[..., None]
        k = (self.kernel_size, self.kernel_size)
        for i, width in enumerate(self.channels):
            x = nn.relu(nn.Conv(width, k, padding="SAME", name=f"conv_{i}")(x))
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, name="logits")(x)
        return (logits, x) if return_features else logits
