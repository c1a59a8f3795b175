"""Variational autoencoder: an encoder to a diagonal Gaussian q(z|x), a decoder p(x|z), N(0, I) prior.

    model = VAE(image_shape=(28, 28, 1), latent_dim=16)
    variables = model.init(key, x_BxHxWxC, eps_BxZ)
    decoded, mean_BxZ, logvar_BxZ = model.apply(variables, x_BxHxWxC, eps_BxZ)
    recon_nll_B, kl_B = elbo_terms(model, variables['params'], x_BxHxWxC, eps_BxZ)
    images = generate(model, variables['params'], key, n=64)

The reparameterisation noise `eps` is an argument, not an rng drawn inside: z = mean + exp(logvar/2)
* eps, so gradients reach the encoder through both mean and logvar, and the caller decides where
every random number comes from. `decoded` is the decoder's raw output: Bernoulli logits, or the
Gaussian mean before its sigmoid; `mean_image` maps it to [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lab.models.layers import ConvTranspose2x

ARCHITECTURES = ("conv", "mlp")
LIKELIHOODS = ("bernoulli", "gaussian")


class Encoder(nn.Module):
    """x (B, H, W, C) -> (mean, logvar), each (B, latent_dim)."""

    latent_dim: int
    architecture: str
    channels: Sequence[int]
    hidden: int

    @nn.compact
    def __call__(self, x):
        if self.architecture == "conv":
            for i, width in enumerate(self.channels):
                x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", name=f"down_{i}")(x))
        x = nn.relu(nn.Dense(self.hidden, name="hidden")(x.reshape((x.shape[0], -1))))
        stats = nn.Dense(2 * self.latent_dim, name="stats")(x)
        return stats[:, :self.latent_dim], stats[:, self.latent_dim:]


class Decoder(nn.Module):
    """z (B, latent_dim) -> raw output (B, H, W, C): the mirror image of the encoder."""

    image_shape: Sequence[int]
    architecture: str
    channels: Sequence[int]
    hidden: int

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        x = nn.relu(nn.Dense(self.hidden, name="hidden")(z))
        if self.architecture == "mlp":
            return nn.Dense(h * w * c, name="to_image")(x).reshape((-1, h, w, c))
        f = 2 ** len(self.channels)
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by 2**{len(self.channels)}: "
                             f"use fewer channels entries")
        widths = list(self.channels)[::-1]
        x = nn.relu(nn.Dense((h // f) * (w // f) * widths[0], name="project")(x))
        x = x.reshape((-1, h // f, w // f, widths[0]))
        for i, width in enumerate(widths[1:], start=1):
            x = nn.relu(ConvTranspose2x(width, name=f"up_{i}")(x))
        return nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME", name="to_image")(x)


class VAE(nn.Module):
    """Encoder -> reparameterised z -> decoder.

    Attributes:
      image_shape: (H, W, C); with the conv architecture H and W divisible by 2 ** len(channels).
      latent_dim: size of z.
      architecture: 'conv' (strided 4x4 convolutions down, transposed ones up) or 'mlp'.
      channels: conv widths, from the image's resolution down (the decoder mirrors them).
      hidden: width of the Dense layer between the image part and the latent statistics.
      likelihood: 'bernoulli' (decoder logits; pixels in [0, 1] as probabilities, the usual
        choice for MNIST-like data) or 'gaussian' (mean sigmoid(decoded), one learned log scale).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    latent_dim: int = 16
    architecture: str = "conv"
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    likelihood: str = "bernoulli"

    def setup(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}: use {' or '.join(ARCHITECTURES)}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}: use {' or '.join(LIKELIHOODS)}")
        self.encoder = Encoder(self.latent_dim, self.architecture, tuple(self.channels), self.hidden)
        self.decoder = Decoder(tuple(self.image_shape), self.architecture, tuple(self.channels), self.hidden)
        if self.likelihood == "gaussian":
            self.log_scale = self.param("log_scale", nn.initializers.zeros, ())

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (B, H, W, C) in [0, 1] -> (mean, logvar) of q(z|x), each (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """z (B, latent_dim) -> the decoder's raw output (B, H, W, C)."""
        return self.decoder(z)

    def decode_mean(self, z: jax.Array) -> jax.Array:
        """z (B, latent_dim) -> the mean image E[x|z] (B, H, W, C) in [0, 1]."""
        return jax.nn.sigmoid(self.decoder(z))

    def __call__(self, x: jax.Array, eps: jax.Array):
        """x (B, H, W, C), eps (B, latent_dim) ~ N(0, I) -> (decoded (B, H, W, C), mean, logvar)."""
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z), mean, logvar

    def nll(self, decoded: jax.Array, x: jax.Array) -> jax.Array:
        """-log p(x|z) summed over pixels, in nats: decoded and x (B, H, W, C) -> (B,)."""
        axes = tuple(range(1, x.ndim))
        if self.likelihood == "bernoulli":  # binary cross-entropy with logits, stable form
            per_pixel = jnp.maximum(decoded, 0) - decoded * x + jnp.log1p(jnp.exp(-jnp.abs(decoded)))
        else:
            mean = jax.nn.sigmoid(decoded)
            per_pixel = (0.5 * jnp.square((x - mean) * jnp.exp(-self.log_scale)) + self.log_scale
                         + 0.5 * math.log(2 * math.pi))
        return jnp.sum(per_pixel, axis=axes)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats: (B, Z) each -> (B,)."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def elbo_terms(model: VAE, params, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two parts of the negative ELBO of each image, one-sample estimate with noise `eps`:
    (reconstruction -log p(x|z) (B,), KL(q(z|x) || p(z)) (B,)); -ELBO = their sum."""
    decoded, mean, logvar = model.apply({"params": params}, x, eps)
    nll = model.apply({"params": params}, decoded, x, method=VAE.nll)
    return nll, kl_to_standard_normal(mean, logvar)


def generate(model: VAE, params, rng: jax.Array, n: int) -> jax.Array:
    """`n` mean images (n, H, W, C) in [0, 1] decoded from z ~ N(0, I) drawn with `rng`."""
    z = jax.random.normal(rng, (n, model.latent_dim))
    return model.apply({"params": params}, z, method=VAE.decode_mean)
