"""The generative family's models: shapes, the reparameterisation gradient, a hand-computed ELBO,
the GAN losses; the CNN classifier and its features."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import parallel
from lab.models import cnn, gan, vae


def once(fn, *args):
    """fn(*args), jitted and compiled without LLVM's expensive passes (each runs once here)."""
    return parallel.compile_once(fn, *args)(*args)


@pytest.mark.parametrize("size", [28, 8])
def test_gan_shapes_and_ranges(size):
    key = jax.random.key(0)
    generator = gan.Generator(image_shape=(size, size, 1), channels=(16, 8))
    g_params = once(generator.init, key, jnp.zeros((1, 12)))["params"]
    images = once(generator.apply, {"params": g_params}, jax.random.normal(key, (5, 12)))
    assert images.shape == (5, size, size, 1)
    assert float(jnp.max(jnp.abs(images))) <= 1.0
    discriminator = gan.Discriminator(channels=(8, 16))
    d_params = once(discriminator.init, key, images)["params"]
    assert once(discriminator.apply, {"params": d_params}, images).shape == (5,)
    samples = once(lambda p, k: gan.generate(generator, p, k, 3, latent_dim=12), g_params, key)
    assert samples.shape == (3, size, size, 1) and float(samples.min()) >= 0 and float(samples.max()) <= 1


def test_gan_losses_are_the_non_saturating_cross_entropies():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x)))
    np.testing.assert_allclose(gan.discriminator_loss(real, fake),
                               -np.log(sigmoid(real)) - np.log(1 - sigmoid(fake)), rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(fake), -np.log(sigmoid(fake)), rtol=1e-6)


def test_generator_refuses_a_size_its_upsamplings_cannot_reach():
    with pytest.raises(ValueError, match="not divisible"):
        gan.Generator(image_shape=(28, 28, 1), channels=(8, 8, 8)).init(jax.random.key(0), jnp.zeros((1, 4)))


@pytest.mark.parametrize("architecture,size", [("conv", 28), ("mlp", 28), ("conv", 8)])
def test_vae_shapes(architecture, size):
    model = vae.VAE(image_shape=(size, size, 1), latent_dim=6, architecture=architecture, channels=(8, 16),
                    hidden=32)
    x = jnp.full((4, size, size, 1), 0.5)
    params = once(model.init, jax.random.key(0), x, jnp.zeros((4, 6)))["params"]
    decoded, mean, logvar = once(model.apply, {"params": params}, x, jnp.ones((4, 6)))
    assert decoded.shape == x.shape and mean.shape == (4, 6) and logvar.shape == (4, 6)
    samples = once(lambda p, k: vae.generate(model, p, k, 3), params, jax.random.key(1))
    assert samples.shape == (3, size, size, 1) and float(samples.min()) >= 0 and float(samples.max()) <= 1


def test_reparameterisation_gradient_reaches_the_encoder_mean_and_variance():
    model = vae.VAE(image_shape=(8, 8, 1), latent_dim=4, architecture="mlp", hidden=32)
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    eps = jax.random.normal(jax.random.key(1), (6, 4))
    params = once(model.init, jax.random.key(2), x, eps)["params"]

    def recon_only(p):  # no KL: any encoder gradient must come through z = mean + sigma * eps
        return jnp.sum(vae.elbo_terms(model, p, x, eps)[0])

    kernel = once(jax.grad(recon_only), params)["encoder"]["stats"]["kernel"]  # (hidden, 2 * latent)
    assert float(jnp.abs(kernel[:, :4]).sum()) > 0  # the mean's columns
    assert float(jnp.abs(kernel[:, 4:]).sum()) > 0  # the log-variance's columns
    # With eps = 0 the sample is the mean: the variance gets no reconstruction gradient.
    zero = once(jax.grad(lambda p: jnp.sum(vae.elbo_terms(model, p, x, jnp.zeros_like(eps))[0])), params)
    assert float(jnp.abs(zero["encoder"]["stats"]["kernel"][:, 4:]).sum()) == 0


def test_elbo_of_a_hand_computable_model():
    """All weights zero: q(z|x) = N(0, I) (KL 0) and logits 0, so every pixel costs log 2 under
    the Bernoulli likelihood, whatever x; the Gaussian case has mean 0.5, scale 1."""
    for likelihood in ("bernoulli", "gaussian"):
        model = vae.VAE(image_shape=(8, 8, 1), latent_dim=3, architecture="mlp", hidden=8, likelihood=likelihood)
        x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
        params = jax.tree.map(jnp.zeros_like, once(model.init, jax.random.key(1), x, jnp.zeros((2, 3)))["params"])
        nll, kl = once(lambda p: vae.elbo_terms(model, p, x, jnp.ones((2, 3))), params)
        np.testing.assert_allclose(kl, 0.0, atol=1e-7)
        if likelihood == "bernoulli":
            np.testing.assert_allclose(nll, 64 * math.log(2), rtol=1e-6)
        else:
            expected = np.sum(0.5 * (np.asarray(x) - 0.5) ** 2 + 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))
            np.testing.assert_allclose(nll, expected, rtol=1e-6)
    kl = vae.kl_to_standard_normal(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, math.log(4.0)]]))
    np.testing.assert_allclose(kl,
                               [0.5 * (1 + 1 - 1) + 0.5 * (4 - 1 - math.log(4.0))], rtol=1e-6)


def test_cnn_logits_and_features():
    model = cnn.CNN(channels=(4, 8), features=(16,), num_classes=10)
    x = jnp.ones((3, 28, 28, 1))
    variables = once(model.init, jax.random.key(0), x)
    logits, features = once(lambda v: model.apply(v, x, return_features=True), variables)
    assert logits.shape == (3, 10) and features.shape == (3, 16) and float(features.min()) >= 0
    np.testing.assert_allclose(once(model.apply, variables, x), logits, atol=1e-6)


def test_max_pool_matches_flax_on_even_and_odd_sizes():
    import flax.linen as nn
    for size in (8, 7):
        x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
        np.testing.assert_array_equal(cnn.max_pool_2x2(x),
                                      nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))


def test_image_classifier_from_config():
    from ml_collections import ConfigDict

    from lab.tasks.classification import image_classifier
    block = dict(features=(8,), dropout_rate=0.0, channels=(4,), kernel_size=3)
    assert isinstance(image_classifier(ConfigDict(dict(block, name="cnn")), 10), cnn.CNN)
    assert type(image_classifier(ConfigDict(block), 10)).__name__ == "MLP"
    with pytest.raises(ValueError, match="unknown model.name"):
        image_classifier(ConfigDict(dict(block, name="resnet")), 10)


def test_phase_transposed_conv_is_flax_conv_transpose():
    """The same parameters give the same output (and gradients) as nn.ConvTranspose 4x4 stride 2."""
    import flax.linen as nn
    from lab.models.layers import ConvTranspose2x

    for shape, features in (((2, 7, 5, 6), 4), ((2, 2, 2, 3), 1)):
        x = jax.random.normal(jax.random.key(0), shape)
        reference = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")
        variables = once(reference.init, jax.random.key(1), x)
        ours = ConvTranspose2x(features)
        assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.key(1), x)) == \
            jax.tree.map(jnp.shape, variables)
        np.testing.assert_allclose(once(ours.apply, variables, x), once(reference.apply, variables, x), atol=1e-5)
        loss = lambda module: once(jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x)))), variables)
        for a, b in zip(jax.tree.leaves(loss(ours)), jax.tree.leaves(loss(reference))):
            np.testing.assert_allclose(a, b, atol=1e-4)
