"""Defects of one class, closed where they start: each test fails on the code before the fix."""

import os

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


def test_each_eval_batch_gets_its_own_key_and_a_task_without_on_eval_gathers_nothing(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from lab import configs, train
    from lab.task import Task

    class DrawingTask(Task):  # a linear regression whose evaluation draws a number from its key
        def init(self, rng):
            return {"params": {"w": jnp.zeros((3,))}}

        def loss(self, params, batch, rng):
            per_example = (batch["inputs"] @ params["w"] - batch["label"]) ** 2
            return jnp.sum(per_example), {"count": jnp.asarray(per_example.shape[0], jnp.float32)}

        def evaluate(self, variables, batch, rng):
            draw = jax.random.uniform(rng)
            return {"count": jnp.sum(batch["mask"]), "batches": jnp.float32(1), "draw": draw, "draw_sq": draw * draw}

        def summarize(self, sums):  # train windows have no draws
            if "draw" not in sums:
                return {"loss": 0.0}
            return {"loss": 0.0, "draw_spread": float(sums["batches"] * sums["draw_sq"] - sums["draw"] ** 2)}

    hooked = []  # the eval-output hook, where a multi-process run gathers the variables first
    monkeypatch.setattr(train.report, "eval_outputs", lambda *a, **k: hooked.append(1))
    rng = np.random.default_rng(0)
    arrays = {"inputs": rng.standard_normal((64, 3)).astype(np.float32), "label": rng.standard_normal(64).astype(np.float32)}
    config = configs.base_config({"num_train_steps": 4, "eval_every_steps": 4, "checkpoint_every_steps": 4,
                                  "batch_size": 8, "eval_batch_size": 8})
    config.optimizer.learning_rate = 0.1
    results = train.train_and_evaluate(config, str(tmp_path), DrawingTask(), train.epoch_data(arrays, {"test": arrays}, config))
    assert results["test_draw_spread"] > 1e-4  # 8 batches, 8 different draws (one key: spread 0)
    assert not hooked


def test_a_non_finite_optimizer_state_or_extra_stops_the_run_before_a_checkpoint(tmp_path):
    """Finite loss and parameters, NaN in `extra` (a BatchNorm statistic, say) from the third
    step: refused at the next sync, the last good checkpoint kept."""
    import jax.numpy as jnp
    import pytest

    from lab import configs, train
    from lab.errors import NonFiniteLossError
    from lab.task import Task

    class Regression(Task):
        def init(self, rng):
            return {"params": {"w": jnp.zeros((3,))}, "stat": jnp.zeros(())}

        def loss(self, params, batch, rng):
            per_example = (batch["inputs"] @ params["w"] - batch["label"]) ** 2
            return jnp.sum(per_example), {"count": jnp.asarray(per_example.shape[0], jnp.float32)}

        def update(self, state, batch, rng, tools):
            state, sums = super().update(state, batch, rng, tools)
            return state.replace(extra={**state.extra, "stat": jnp.where(state.step >= 2, jnp.nan, 0.0)}), sums

        def evaluate(self, variables, batch, rng):
            return {"count": jnp.sum(batch["mask"])}

        def summarize(self, sums):
            return {"loss": 0.0}

    rng = np.random.default_rng(0)
    arrays = {"inputs": rng.standard_normal((64, 3)).astype(np.float32), "label": rng.standard_normal(64).astype(np.float32)}
    config = configs.base_config({"num_train_steps": 6, "eval_every_steps": 6, "checkpoint_every_steps": 2,
                                  "log_every_steps": 2, "batch_size": 8, "eval_batch_size": 8})
    with pytest.raises(NonFiniteLossError, match="state_norm"):
        train.train_and_evaluate(config, str(tmp_path), Regression(), train.epoch_data(arrays, {"test": arrays}, config))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]

    class NanAccuracy(Regression):  # every metric of an eval is checked, not only its losses
        def update(self, state, batch, rng, tools):
            return Task.update(self, state, batch, rng, tools)

        def summarize(self, sums):
            return {"loss": 0.0, "accuracy": float("nan")}

    with pytest.raises(NonFiniteLossError, match=r"non-finite eval_test/accuracy at step 6; the last good checkpoint \(step 4\)"):
        train.train_and_evaluate(config, str(tmp_path / "nan_accuracy"), NanAccuracy(),
                                 train.epoch_data(arrays, {"test": arrays}, config))
    assert "6" not in os.listdir(tmp_path / "nan_accuracy" / "checkpoints")


def test_extending_a_pruning_run_keeps_its_ramp(tmp_path):
    """`prune.end_step=None` resolves to num_train_steps // 2: extending the run would move the
    ramp's end and revive pruned weights, so the resolved end is compared on resume."""
    import ml_collections
    import pytest

    from lab import configs
    from lab.errors import WorkdirConfigError

    def config(steps, end_step=None):
        c = configs.base_config({"num_train_steps": steps})
        c.optimizer.schedule = "constant"
        c.optimizer.prune = ml_collections.ConfigDict({"target_sparsity": 0.9, "begin_step": 0, "end_step": end_step})
        return c

    configs.check_workdir(str(tmp_path), config(1000))
    with pytest.raises(WorkdirConfigError, match="prune.end_step=500.*--allow_config_change"):
        configs.check_workdir(str(tmp_path), config(4000))
    configs.check_workdir(str(tmp_path), config(4000, end_step=500))  # the same ramp, stated: resumes


def test_a_resumed_run_says_its_first_train_window_is_partial(tmp_path):
    """6 steps then extended to 8, logging every 4: the resumed record at step 8 covers steps 7-8
    (window_steps 2), where an uninterrupted run's covers 5-8 (4)."""
    from tests.helpers import read_jsonl
    from tests.test_train import small_config
    from experiments.mlp_classifier.__main__ import main

    def config(steps):
        c = small_config(num_train_steps=steps, log_every_steps=4, eval_every_steps=8, checkpoint_every_steps=2)
        c.optimizer.schedule = "constant"
        return c

    main(config(8), str(tmp_path / "whole"))
    main(config(6), str(tmp_path / "resumed"))
    main(config(8), str(tmp_path / "resumed"))
    whole = {r["step"]: r for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl") if "train/loss" in r}
    resumed = {r["step"]: r for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if "train/loss" in r}
    assert whole[4]["train/window_steps"] == whole[8]["train/window_steps"] == 4
    assert resumed[4]["train/window_steps"] == 4 and resumed[8]["train/window_steps"] == 2
