"""Every optimizer and schedule the config names builds and moves parameters."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lab import optim


def cfg(**kw):
    c = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1))
    c.update(kw)
    return c


@pytest.mark.parametrize("name,extra", [
    ("sgd", {}), ("sgd", dict(momentum=0.9, nesterov=True)), ("adam", {}),
    ("adamw", dict(weight_decay=0.1)), ("adagrad", {}),
])
def test_each_optimizer_descends_a_quadratic(name, extra):
    tx = optim.make_optimizer(cfg(name=name, **extra), num_train_steps=100)
    params = {"w": jnp.array([3.0, -2.0])}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)
    for _ in range(20):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < 13.0 * 0.8


def test_warmup_cosine_schedule_shape():
    s = optim.make_schedule(cfg(schedule="warmup_cosine", warmup_steps=10, end_learning_rate=0.01), 110)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(s(110)), 0.01, rtol=1e-5)
    assert float(s(60)) < 0.1


def test_clipping_bounds_the_update():
    tx = optim.make_optimizer(cfg(learning_rate=1.0, grad_clip_norm=1.0), 10)
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(params), params)
    np.testing.assert_allclose(np.linalg.norm(updates["w"]), 1.0, rtol=1e-6)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="optimizer.name"):
        optim.make_optimizer(cfg(name="lion"), 10)
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optim.make_optimizer(cfg(schedule="linear"), 10)


def test_frozen_subtree_never_moves_and_the_rest_does():
    tx = optim.make_optimizer(cfg(name="adam", frozen=("encoder",)), 10)
    params = {"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert np.all(updates["encoder"]["w"] == 0) and np.all(updates["head"]["w"] != 0)
    with pytest.raises(ValueError, match="optimizer.frozen"):
        optim.make_optimizer(cfg(frozen=("decoder",)), 10).init(params)


def test_adamw_decays_matrices_only():
    tx = optim.make_optimizer(cfg(name="adamw", learning_rate=1.0, weight_decay=0.5), 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.5)
    np.testing.assert_allclose(updates["bias"], 0.0)
