"""The MLP as a pure flax.linen module, usable from plain research code."""

import jax
import jax.numpy as jnp
import numpy as np

from lab.models.mlp import MLP


def test_seed_recipe_shapes_and_parameter_count():
    model = MLP(features=(128, 64), num_classes=10)
    x = jnp.ones((5, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (5, 10)
    count = sum(p.size for p in jax.tree.leaves(variables))
    assert count == (784 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10) == 109_386


def test_pure_function_reuse():
    model = MLP()
    x = jax.random.normal(jax.random.key(1), (3, 64))
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    other = model.init(jax.random.key(2), x)
    assert not np.allclose(model.apply(variables, x), model.apply(other, x))


def test_dropout_only_in_training():
    model = MLP(dropout_rate=0.5)
    x = jnp.ones((4, 64))
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x, train=False))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
