"""Your own model on lab's loop, linen or NNX: the same MLP written both ways trains to the same
losses; an NNX run (dropout, BatchNorm) resumes bit for bit, runs on 4 devices and exports; a
linen module without a `train` argument and a linen BatchNorm model train with the default update;
`configs.base_config` takes a plain dict."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lab.data
from lab import checkpoint, configs, train
from lab.tasks.classification import NNX_STATE, ClassificationTask
from tests import toys
from tests.helpers import math_records, read_jsonl, trees_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = 32


class LinenMLP(nn.Module):
    """64 -> 32 -> relu -> 10; no `train` argument (nothing in it differs between train and eval)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(HIDDEN, name="hidden")(x.reshape((x.shape[0], -1))))
        return nn.Dense(10, name="out")(x)


class NNXMLP(nnx.Module):
    """The same MLP in NNX; optionally BatchNorm after the hidden layer and dropout after relu."""

    def __init__(self, *, dropout_rate: float = 0.0, batch_norm: bool = False, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
        self.norm = nnx.BatchNorm(HIDDEN, momentum=0.9, rngs=rngs) if batch_norm else None
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
        x = self.hidden(x.reshape((x.shape[0], -1)))
        if self.norm is not None:
            x = self.norm(x)
        return self.out(self.dropout(nnx.relu(x)))


def small_config(**overrides):
    return configs.base_config({"batch_size": 32, "num_train_steps": 50, "log_every_steps": 1,
                                "eval_every_steps": 25, "checkpoint_every_steps": 25,
                                "optimizer": {"learning_rate": 0.01}, **overrides})


def digits():
    return {s: lab.data.load("digits", s) for s in ("train", "test")}


def example(arrays):
    return {"inputs": arrays["train"]["inputs"][:1]}


def run(config, workdir, task, arrays=None):
    arrays = arrays or digits()
    return train.train_and_evaluate(config, str(workdir), task,
                                    train.epoch_data(arrays["train"], {"test": arrays["test"]}, config))


def nnx_copy_of_linen(linen_task, seed=0):
    """An NNXMLP holding the linen task's initial weights (the loop's init key for `seed`)."""
    params = linen_task.init(jax.random.fold_in(jax.random.key(seed), 0))["params"]
    model = NNXMLP(rngs=nnx.Rngs(0))
    for layer in ("hidden", "out"):
        getattr(model, layer).kernel[...] = params[layer]["kernel"]
        getattr(model, layer).bias[...] = params[layer]["bias"]
    return model


def train_losses(workdir):
    return [r["train/loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]


def test_the_same_mlp_in_linen_and_nnx_gives_the_same_losses(tmp_path):
    arrays = digits()
    linen_task = ClassificationTask(LinenMLP(), example(arrays))
    nnx_task = ClassificationTask(nnx_copy_of_linen(linen_task), example(arrays))
    linen_results = run(small_config(), tmp_path / "linen", linen_task, arrays)
    nnx_results = run(small_config(), tmp_path / "nnx", nnx_task, arrays)
    linen_losses, nnx_losses = train_losses(str(tmp_path / "linen")), train_losses(str(tmp_path / "nnx"))
    assert len(linen_losses) == len(nnx_losses) == 50
    np.testing.assert_allclose(nnx_losses, linen_losses, rtol=0, atol=1e-6)
    assert nnx_losses[-1] < nnx_losses[0] - 0.5  # it learned
    assert nnx_results["test_accuracy"] == pytest.approx(linen_results["test_accuracy"], abs=1e-6)
    # The NNX state is plain arrays: params by the module's attribute names, nothing else.
    state, _ = checkpoint.load_state(str(tmp_path / "nnx"))
    assert set(state["params"]) == {"hidden", "out"} and set(state["params"]["hidden"]) == {"kernel", "bias"}
    assert state["extra"] == {}


def nnx_bn_dropout_task(arrays):
    return ClassificationTask(NNXMLP(dropout_rate=0.2, batch_norm=True, rngs=nnx.Rngs(0)), example(arrays))


def test_nnx_dropout_draws_from_the_key_lab_passes():
    arrays = digits()
    task = ClassificationTask(NNXMLP(dropout_rate=0.5, rngs=nnx.Rngs(0)), example(arrays))
    params = task.init(jax.random.key(0))["params"]
    batch = {"inputs": arrays["train"]["inputs"][:64], "label": arrays["train"]["label"][:64]}
    loss = jax.jit(lambda p, key: task.loss(p, batch, key)[0])
    a, b, c = (float(loss(params, jax.random.key(k))) for k in (1, 1, 2))
    assert a == b != c  # the same key, the same mask; another key, another mask
    evaluate = jax.jit(lambda p, key: task.evaluate({"params": p}, dict(batch, mask=np.ones(64)), key)["loss"])
    assert float(evaluate(params, jax.random.key(1))) == float(evaluate(params, jax.random.key(2)))  # eval: no dropout


def test_an_nnx_run_with_dropout_and_batchnorm_resumes_bit_identically_and_exports(tmp_path):
    from lab.artifact import Artifact
    from lab.export import export_run

    arrays = digits()
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    results = run(small_config(), straight, nnx_bn_dropout_task(arrays), arrays)
    run(small_config(num_train_steps=25), resumed, nnx_bn_dropout_task(arrays), arrays)
    run(small_config(), resumed, nnx_bn_dropout_task(arrays), arrays)  # a new process would build these anew
    assert math_records(resumed) == math_records(straight)
    state, _ = checkpoint.load_state(straight)
    assert trees_equal(checkpoint.load_state(resumed)[0], state)
    assert results["test_accuracy"] > 0.8  # evaluated in eval mode, with the running statistics
    # Only BatchNorm's statistics are carried (they moved); no RNG state rides in the train state.
    stats = state["extra"][NNX_STATE]
    assert set(state["extra"]) == {NNX_STATE} and set(stats) == {"norm"} and set(stats["norm"]) == {"mean", "var"}
    assert np.abs(stats["norm"]["mean"]).max() > 0 and not np.allclose(stats["norm"]["var"], 1.0)
    # The trained module back as an NNX object, and exported with its statistics.
    task = nnx_bn_dropout_task(arrays)
    images = arrays["test"]["inputs"][:50]
    model = task.nnx_module({"params": state["params"], **state["extra"]})
    want = np.asarray(model(jnp.asarray(images)))
    with pytest.raises(ValueError, match="extra="):
        task.export_spec()
    export_run(straight, str(tmp_path / "export"), spec=task.export_spec(extra=state["extra"]))
    got = Artifact(str(tmp_path / "export"))(inputs=images)["label"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.mean(np.argmax(got, -1) == arrays["test"]["label"][:50]) > 0.8


def test_an_nnx_mlp_exports_with_the_tasks_spec(tmp_path):
    from lab.artifact import Artifact
    from lab.export import export_run

    arrays = digits()
    task = ClassificationTask(NNXMLP(rngs=nnx.Rngs(0)), example(arrays))
    run(small_config(num_train_steps=10, log_every_steps=5, eval_every_steps=10), tmp_path / "run", task, arrays)
    export_run(str(tmp_path / "run"), str(tmp_path / "export"), spec=task.export_spec({"class_names": ["x"] * 10}))
    params = checkpoint.load_params(str(tmp_path / "run"))[0]
    images = arrays["test"]["inputs"][:7]
    want = np.asarray(task.nnx_module({"params": params})(jnp.asarray(images)))
    np.testing.assert_allclose(Artifact(str(tmp_path / "export"))(inputs=images)["label"], want, rtol=1e-5, atol=1e-5)


_FOUR_DEVICES = """
import sys, jax
assert jax.device_count() == 4, jax.devices()
from tests.test_own_model import NNXMLP, ClassificationTask, digits, example, nnx_bn_dropout_task, run, small_config
from flax import nnx
arrays = digits()
for mode in ("jit", "pmap"):
    run(small_config(parallel=mode, num_train_steps=20), sys.argv[1] + "/" + mode,
        ClassificationTask(NNXMLP(rngs=nnx.Rngs(0)), example(arrays)), arrays)
run(small_config(num_train_steps=20), sys.argv[1] + "/bn_dropout", nnx_bn_dropout_task(arrays), arrays)
"""


def test_an_nnx_run_on_four_devices_gives_the_numbers_of_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arrays = digits()
    run(small_config(num_train_steps=20), tmp_path / "one", ClassificationTask(NNXMLP(rngs=nnx.Rngs(0)), example(arrays)),
        arrays)
    one = train_losses(str(tmp_path / "one"))
    for mode in ("jit", "pmap"):
        np.testing.assert_allclose(train_losses(str(tmp_path / mode)), one, rtol=0, atol=1e-5, err_msg=mode)
        params, ref = checkpoint.load_params(str(tmp_path / mode))[0], checkpoint.load_params(str(tmp_path / "one"))[0]
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=mode)
    bn = train_losses(str(tmp_path / "bn_dropout"))
    assert len(bn) == 20 and np.all(np.isfinite(bn)) and bn[-1] < bn[0]


def test_a_linen_module_without_a_train_argument_trains(tmp_path):
    model = nn.Sequential([lambda x: x.reshape((x.shape[0], -1)), nn.Dense(HIDDEN), nn.relu, nn.Dense(10)])
    arrays = digits()
    results = run(small_config(num_train_steps=20, log_every_steps=5, eval_every_steps=20), tmp_path,
                  ClassificationTask(model, example(arrays)), arrays)
    losses = train_losses(str(tmp_path))
    assert losses[-1] < losses[0] and results["test_accuracy"] > 0.5


def test_a_linen_batchnorm_model_trains_with_the_default_update(tmp_path):
    """ClassificationTask carries 'batch_stats' itself: the numbers of the hand-written update
    (tests/toys.py's BatchNormTask), bit for bit."""
    arrays = digits()
    config = small_config(num_train_steps=20, log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=10,
                          optimizer={"learning_rate": 0.05})
    results = run(config, tmp_path / "default", ClassificationTask(toys.BatchNormNet(), example(arrays)), arrays)
    run(config, tmp_path / "by_hand", toys.BatchNormTask(toys.BatchNormNet(), example(arrays)), arrays)
    state, _ = checkpoint.load_state(str(tmp_path / "default"))
    stats = state["extra"]["batch_stats"]["BatchNorm_0"]
    assert np.abs(stats["mean"]).max() > 0 and not np.allclose(stats["var"], 1.0)  # they moved
    assert results["test_accuracy"] > 0.5
    assert math_records(str(tmp_path / "default")) == math_records(str(tmp_path / "by_hand"))
    assert trees_equal(state, checkpoint.load_state(str(tmp_path / "by_hand"))[0])


def test_base_config_takes_a_plain_dict():
    overrides = {"num_train_steps": 50, "optimizer": {"learning_rate": 0.01}, "optimizer.warmup_steps": 5,
                 "model": {"features": [32]}}
    c = configs.base_config(overrides)
    assert c.num_train_steps == 50 and c.optimizer.learning_rate == 0.01 and c.optimizer.warmup_steps == 5
    assert c.optimizer.name == "adam" and c.parallel == "jit"  # the defaults stay
    assert c.model.features == [32]
    assert overrides["optimizer"] == {"learning_rate": 0.01}  # the caller's dict is not changed
    configs.validate(c)
    named = configs.base_config({"optimizers": {"encoder": {"name": "sgd", "learning_rate": 0.1}}})
    assert "optimizer" not in named and named.optimizers.encoder.name == "sgd"
    assert configs.base_config(c).to_dict() == c.to_dict()
    with pytest.raises(TypeError):
        configs.base_config({"batch_size": "many"})
