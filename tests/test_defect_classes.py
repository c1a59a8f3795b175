"""Defects of one class, closed where they start: each test fails on the code before the fix."""

import jax
import numpy as np

from lab.models import gan
from lab.tasks import generative


def test_the_gan_step_gives_the_discriminator_and_the_generator_their_own_keys():
    task = generative.GANTask(gan.Generator(image_shape=(8, 8, 1), channels=(8, 4)), gan.Discriminator(channels=(4, 8)),
                              8, (8, 8, 1), None, np.zeros((1, 8)))
    params = task.init(jax.random.key(0))["params"]
    seen = []

    class Tools:  # records the key each step's gradient is taken with
        def mean_grads(self, loss_fn, params, batch, rng):
            seen.append(rng)
            return jax.tree.map(np.zeros_like, params), {"count": 1.0, "loss": 0.0, "d_real": 0.0, "d_fake": 0.0}

        def apply_gradients(self, state, grads, name):
            return state

    class State:
        pass

    state = State()
    state.params = params
    batch = {"inputs": np.zeros((2, 8, 8, 1), np.float32), "noise": np.zeros((2, 8), np.float32)}
    task.update(state, batch, jax.random.key(7), Tools())
    assert len(seen) == 2 and not np.array_equal(jax.random.key_data(seen[0]), jax.random.key_data(seen[1]))
