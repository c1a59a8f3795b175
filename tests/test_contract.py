"""The loop's contract beyond one loss and one optimizer: a GAN-shaped update with two
optimizers, a model with BatchNorm statistics, evaluation rngs. (Sharded parameters and the
multi-device agreement of these run on fake devices in tests/test_parallel.py.)"""

import jax
import numpy as np
import optax

from lab import checkpoint, pipeline, train
from tests import toys
from tests.helpers import math_records, read_jsonl, trees_equal


def test_two_optimizers_each_step_only_their_own_parameter_set(tmp_path):
    toys.toy_gan_run(str(tmp_path))
    state, _ = checkpoint.load_state(str(tmp_path))
    # The same 8 updates written out by hand with optax: D first (Adam), then G (SGD) against
    # the new D. Each optimizer's state belongs to its own parameter set.
    task, arrays = toys.ToyGAN(), toys.toy_gan_arrays()
    params = task.init(jax.random.fold_in(jax.random.key(0), 0))["params"]
    g, d = params["generator"], params["discriminator"]
    d_tx, g_tx = optax.adam(0.01), optax.sgd(0.1)
    d_opt, g_opt = d_tx.init(d), g_tx.init(g)
    batcher = pipeline.EpochBatcher(arrays, 16, seed=0)
    for step in range(8):
        batch = batcher.batch(step)
        d_grads = jax.grad(lambda p: task.d_loss(g)(p, batch, None)[0] / 16)(d)
        updates, d_opt = d_tx.update(d_grads, d_opt, d)
        d = optax.apply_updates(d, updates)
        g_grads = jax.grad(lambda p: task.g_loss(d)(p, batch, None)[0] / 16)(g)
        updates, g_opt = g_tx.update(g_grads, g_opt, g)
        g = optax.apply_updates(g, updates)
    for name, ours in (("discriminator", d), ("generator", g)):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(state["params"][name])):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    assert int(state["opt_state"]["discriminator"][0]["count"]) == 8  # Adam's step count
    assert set(state["opt_state"]) == {"generator", "discriminator"}
    logged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/d_loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6, 8]
    assert all(np.isfinite(r["train/g_loss"]) and r["train/d_grad_norm"] > 0 for r in logged)


def test_two_optimizer_run_resumes_bit_identically(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    toys.toy_gan_run(straight)
    toys.toy_gan_run(resumed, num_train_steps=4)
    toys.toy_gan_run(resumed)
    assert math_records(resumed) == math_records(straight)
    assert trees_equal(checkpoint.load_state(resumed)[0], checkpoint.load_state(straight)[0])


def _batchnorm_run(workdir, **overrides):
    import lab.data
    from tests.test_train import small_config
    config = small_config(**overrides)
    arrays = {s: lab.data.load("digits", s) for s in ("train", "test")}
    task = toys.BatchNormTask(toys.BatchNormNet(), {"inputs": arrays["train"]["inputs"][:1]})
    return train.train_and_evaluate(config, workdir, task,
                                    train.epoch_data(arrays["train"], {"test": arrays["test"]}, config))


def test_batchnorm_statistics_train_checkpoint_and_resume(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    results = _batchnorm_run(straight)
    assert results["test_accuracy"] > 0.5  # evaluated with the running statistics
    _batchnorm_run(resumed, num_train_steps=10)
    _batchnorm_run(resumed)
    state, _ = checkpoint.load_state(straight)
    stats = state["extra"]["batch_stats"]["BatchNorm_0"]
    assert np.abs(stats["mean"]).max() > 0 and not np.allclose(stats["var"], 1.0)  # they moved
    assert math_records(resumed) == math_records(straight)
    assert trees_equal(checkpoint.load_state(resumed)[0], state)
