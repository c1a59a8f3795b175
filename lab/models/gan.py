"""DCGAN-style generator and discriminator, and the non-saturating GAN losses.

    gen, disc = Generator(image_shape=(28, 28, 1)), Discriminator()
    g_vars = gen.init(key, z_BxZ)              # images_BxHxWxC = gen.apply(g_vars, z_BxZ), in [-1, 1]
    d_vars = disc.init(key, images_BxHxWxC)    # logits_B = disc.apply(d_vars, images_BxHxWxC)
    images = generate(gen, g_vars['params'], key, n=64)

Design (see BUILD_NOTES.md): the generator normalises with GroupNorm(1 group), i.e. LayerNorm over
(H, W, C) with per-channel scale and bias, instead of DCGAN's BatchNorm. A per-example norm keeps a
step independent of how the batch is split over devices (jit, pmap and one device agree) and
leaves no running statistics to carry; the discriminator has no norm (DCGAN has none on its first
layer; without it on the others, a 28x28 discriminator still trains stably here).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lab.models.layers import ConvTranspose2x


def _start_size(image_shape: Sequence[int], num_upsamplings: int) -> tuple[int, int]:
    h, w = image_shape[0], image_shape[1]
    f = 2 ** num_upsamplings
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not divisible by 2**{num_upsamplings}: "
                         f"use fewer channels entries")
    return h // f, w // f


class Generator(nn.Module):
    """z (B, Z) -> Dense to (H/2^n, W/2^n, channels[0]) -> GroupNorm -> ReLU -> [ConvTranspose(4x4,
    stride 2) with the next width -> GroupNorm -> ReLU] ... -> ConvTranspose(4x4, stride 2) to the
    image's channels -> tanh.

    Attributes:
      image_shape: (H, W, C) of the images made; H and W divisible by 2 ** len(channels).
      channels: widths from the smallest resolution up; n = len(channels) doublings of size.
    """

    image_shape: Sequence[int] = (28, 28, 1)
    channels: Sequence[int] = (128, 64)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """z: (B, Z) float -> images (B, H, W, C) in [-1, 1]."""
        h, w = _start_size(self.image_shape, len(self.channels))
        x = nn.Dense(h * w * self.channels[0], name="project")(z)
        x = nn.relu(nn.GroupNorm(num_groups=1, name="norm_0")(x.reshape((-1, h, w, self.channels[0]))))
        for i, width in enumerate(self.channels[1:], start=1):
            x = ConvTranspose2x(width, name=f"up_{i}")(x)
            x = nn.relu(nn.GroupNorm(num_groups=1, name=f"norm_{i}")(x))
        # The output layer keeps flax's ConvTranspose: with one or three output channels its
        # gradient is faster than the phase form's (the same function; see lab.models.layers).
        x = nn.ConvTranspose(self.image_shape[2], (4, 4), strides=(2, 2), padding="SAME", name="to_image")(x)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images (B, H, W, C) -> [Conv(4x4, stride 2) -> LeakyReLU(0.2)] per width -> Dense(1) logit.

    Attributes:
      channels: widths of the strided convolutions, from the image's resolution down.
    """

    channels: Sequence[int] = (64, 128)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, C) in [-1, 1] -> real-vs-generated logits (B,)."""
        for i, width in enumerate(self.channels):
            x = nn.leaky_relu(nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", name=f"down_{i}")(x), 0.2)
        return nn.Dense(1, name="logit")(x.reshape((x.shape[0], -1)))[:, 0]


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Per-example binary cross-entropy of real -> 1, generated -> 0: (B,) each -> (B,)."""
    return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """The non-saturating generator loss -log D(G(z)) per example: (B,) -> (B,)."""
    return jax.nn.softplus(-fake_logits)


def generate(generator: Generator, params, rng: jax.Array, n: int, latent_dim: int) -> jax.Array:
    """`n` images (n, H, W, C) in [0, 1] from z ~ N(0, I) of `latent_dim` drawn with `rng`."""
    z = jax.random.normal(rng, (n, latent_dim))
    return to_unit(generator.apply({"params": params}, z))


def to_unit(images: jax.Array) -> jax.Array:
    """[-1, 1] (the generator's range) -> [0, 1] (the data's)."""
    return (images + 1.0) * 0.5


def from_unit(images: jax.Array) -> jax.Array:
    """[0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0
