"""Layers the image models share, written for speed on XLA:CPU with the same math as flax's.

XLA:CPU computes the weight gradient of a strided `nn.ConvTranspose` as a window-dilated
convolution, far slower than its forward pass. `ConvTranspose2x` computes the identical function
as four stride-1 2x2 convolutions, one per output phase, whose gradients are ordinary (fast)
convolutions. BUILD_NOTES.md ("Generative family") has the timings.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_transpose(x, kernel, (2, 2), 'SAME')` for a 4x4 kernel, by output phases.

    Output pixel (2i + a, 2j + b) sees only the 2x2 input neighbourhood and the 2x2 of kernel
    taps whose parity matches (a, b): four stride-1 VALID convolutions on the input padded by 1,
    interleaved.

    Args:
      x: (B, H, W, Cin).
      kernel: (4, 4, Cin, Cout), flax `nn.ConvTranspose`'s layout (not flipped).
    Returns:
      (B, 2H, 2W, Cout).
    """
    b, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = []
    for a in (0, 1):
        row = []
        for c in (0, 1):
            # Taps k of the 4-wide kernel meeting phase p: (p + k) even; input offset (p + k - 2) / 2.
            taps_h, taps_w = [k for k in range(4) if (a + k) % 2 == 0], [k for k in range(4) if (c + k) % 2 == 0]
            start_h, start_w = 1 + (a + taps_h[0] - 2) // 2, 1 + (c + taps_w[0] - 2) // 2
            window = padded[:, start_h:start_h + h + 1, start_w:start_w + w + 1]
            row.append(jax.lax.conv_general_dilated(window, kernel[np.ix_(taps_h, taps_w)], (1, 1), "VALID",
                                                    dimension_numbers=_DIMENSIONS))
        phases.append(jnp.stack(row, axis=3))  # (B, H, W, 2 [c], Cout)
    return jnp.stack(phases, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])  # (B, H, 2 [a], W, 2, Cout)


class ConvTranspose2x(nn.Module):
    """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')`, the same parameters
    (`kernel` (4, 4, Cin, features), `bias`) and the same output, computed by `conv_transpose_2x`.

    Attributes:
      features: output channels.
      kernel_init, bias_init: as flax's (lecun normal, zeros).
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, Cin) -> (B, 2H, 2W, features)."""
        kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return conv_transpose_2x(x, kernel) + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2, (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C).

    Even sizes take a reshape and a max: on XLA:CPU its gradient is faster than `nn.max_pool`'s
    select-and-scatter in the CNN's train step."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def sample_logits(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array) -> jax.Array:
    """Next token ids (int32 B) from float32 logits_BxV (every family's decoding samples here).

    temperature (float32 scalar): 0 = greedy argmax, else sample softmax(logits / temperature);
    top_k (int32 scalar in [1, V]): sample among the k largest logits (V = no filtering). Both
    are traced values, so changing them does not recompile. Ties at the k-th logit are kept.
    """
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    vocab = logits_BxV.shape[-1]
    # A sort, not lax.top_k: top_k is traced (a served model takes it per request without
    # recompiling), and lax.top_k needs k static.
    kth_Bx1 = lax.dynamic_index_in_dim(jnp.sort(logits_BxV, axis=-1), vocab - top_k, axis=-1)
    scaled_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
    scaled_BxV = jnp.where(logits_BxV >= kth_Bx1, scaled_BxV, -jnp.inf)
    sampled_B = jax.random.categorical(key, scaled_BxV, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled_B, greedy_B)
