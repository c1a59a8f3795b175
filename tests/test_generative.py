"""The generative family end to end on digits: the GAN's two-optimizer step, its exact resume and
its agreement across jit, pmap and one device; the VAE's run; the feature-network checks."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import lab.data
from lab import checkpoint, generative_setup, parallel, pipeline
from lab.errors import ConfigValueError
from lab.models import gan
from lab.tasks import generative
from tests.helpers import math_records, override, read_jsonl, trees_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def features_config(**overrides):
    from experiments.mlp_classifier.config import get_config
    return override(get_config("cnn_digits"), **{"num_train_steps": 10, "log_every_steps": 5, "eval_every_steps": 10,
                                           "checkpoint_every_steps": 10, "model.channels": (4, 8),
                                           "model.features": (8,), **overrides})


def gan_config(features_run, **overrides):
    from experiments.gan.config import get_config
    return override(get_config("digits"), **{
        "features_run": features_run, "batch_size": 16, "num_train_steps": 4, "log_every_steps": 2,
        "eval_every_steps": 2, "checkpoint_every_steps": 2, "model.latent_dim": 8,
        "model.generator_channels": (8, 4), "model.discriminator_channels": (4, 8), **overrides})


def vae_config(features_run, **overrides):
    from experiments.vae.config import get_config
    return override(get_config("digits"), **{
        "features_run": features_run, "batch_size": 16, "num_train_steps": 4, "log_every_steps": 2,
        "eval_every_steps": 4, "checkpoint_every_steps": 4, "model.latent_dim": 4, "model.channels": (4, 8),
        "model.hidden": 16, **overrides})


def _shared_run(tmp_path_factory, name: str, build) -> str:
    """The workdir `name`, built once per test session even when several xdist workers ask for
    it: under a file lock in the session's shared temp folder, the first builds, the others wait
    and reuse it (a finished run returns its results without training)."""
    from lab.data.storage import build_lock

    base = tmp_path_factory.getbasetemp()
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = base.parent / f"shared-{uid}" if uid else base  # per worker: popen-gwN/; shared: its parent
    workdir = str(root / name)
    with build_lock(str(root), name):
        build(workdir)
    return workdir


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """A (barely) trained CNN on digits: the feature network of the quality metrics."""
    from experiments.mlp_classifier.__main__ import main
    return _shared_run(tmp_path_factory, "cnn_digits", lambda w: main(features_config(), w))


@pytest.fixture(scope="module")
def gan_reference(tmp_path_factory, features_run):
    """Four GAN steps on one device, uninterrupted."""
    from experiments.gan.__main__ import main
    return _shared_run(tmp_path_factory, "gan_straight", lambda w: main(gan_config(features_run), w))


def test_gan_run_logs_losses_quality_and_writes_samples(gan_reference):
    records = read_jsonl(os.path.join(gan_reference, "metrics.jsonl"))
    evals = [r for r in records if "eval_test/fd" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["eval_test/fd"] > 0 and 0 <= r["eval_test/class_entropy"] <= np.log(10) + 1e-6
        assert 0.1 <= r["eval_test/max_class_fraction"] <= 1
        histogram = r["eval_test/class_histogram"]
        assert len(histogram) == 10 and max(histogram) == r["eval_test/max_class_fraction"]
    train = [r for r in records if "train/d_loss" in r]
    assert train and all(np.isfinite(r["train/d_loss"]) and r["train/g_grad_norm"] > 0 for r in train)
    for name in ("samples.png", "curves.png", "samples/samples_0000002.png", "samples/samples_0000004.png"):
        assert os.path.getsize(os.path.join(gan_reference, name)) > 0, name
    results = __import__("json").load(open(os.path.join(gan_reference, "results.json")))
    assert len(results["test_class_histogram"]) == 10 and abs(sum(results["test_class_histogram"]) - 1) < 1e-6


def test_gan_step_moves_each_parameter_set_only_through_its_own_optimizer(gan_reference, features_run):
    """The four steps written out by hand with optax: Adam(2e-4, b1=0.5) on the discriminator's
    loss against the fixed generator, then Adam on the generator's loss through the updated
    discriminator, each optimizer on its own parameter set and the batch's own noise."""
    config = gan_config(features_run)
    state, _ = checkpoint.load_state(gan_reference)
    generator = gan.Generator(image_shape=(8, 8, 1), channels=(8, 4))
    task = generative.GANTask(generator, gan.Discriminator(channels=(4, 8)), 8, (8, 8, 1), None, np.zeros((1, 8)))
    key = jax.random.fold_in(jax.random.key(0), 0)
    params = parallel.compile_once(task.init, key)(key)["params"]
    g, d = params["generator"], params["discriminator"]
    tx = optax.adam(2e-4, b1=0.5)
    g_opt, d_opt = tx.init(g), tx.init(d)
    images = {"inputs": lab.data.load("digits", "train")["inputs"]}
    batches = generative_setup.LatentBatcher(pipeline.EpochBatcher(images, 16, seed=0), 8, seed=0)

    def by_hand(g, d, g_opt, d_opt, batch):
        d_grads = jax.grad(lambda p: task.d_loss(g)(p, batch, None)[0] / 16)(d)
        updates, d_opt = tx.update(d_grads, d_opt, d)
        d = optax.apply_updates(d, updates)
        g_grads = jax.grad(lambda p: task.g_loss(d)(p, batch, None)[0] / 16)(g)
        updates, g_opt = tx.update(g_grads, g_opt, g)
        return optax.apply_updates(g, updates), d, g_opt, d_opt

    step_fn = parallel.compile_once(by_hand, g, d, g_opt, d_opt, batches.batch(0))
    for step in range(config.num_train_steps):
        g, d, g_opt, d_opt = step_fn(g, d, g_opt, d_opt, batches.batch(step))
    for name, ours in (("discriminator", d), ("generator", g)):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(state["params"][name])):
            np.testing.assert_allclose(a, b, atol=2e-6, err_msg=name)
        assert int(state["opt_state"][name][0]["count"]) == 4


def test_gan_resumes_bit_identically(tmp_path, gan_reference, features_run):
    from experiments.gan.__main__ import main
    resumed = str(tmp_path / "resumed")
    main(gan_config(features_run, num_train_steps=2), resumed)
    main(gan_config(features_run), resumed)
    assert math_records(resumed) == math_records(gan_reference)
    assert trees_equal(checkpoint.load_state(resumed)[0], checkpoint.load_state(gan_reference)[0])


_GAN_ON_FOUR_DEVICES = """
import sys, jax
assert jax.device_count() == 4, jax.devices()
from experiments.gan.__main__ import main
from tests.test_generative import gan_config
for mode in ("jit", "pmap"):
    main(gan_config(sys.argv[1], parallel=mode), sys.argv[2] + "/" + mode)
"""


def test_gan_jit_pmap_and_one_device_agree(tmp_path, gan_reference, features_run):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _GAN_ON_FOUR_DEVICES, features_run, str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = math_records(gan_reference)
    for mode in ("jit", "pmap"):
        records = math_records(str(tmp_path / mode))
        assert [r["step"] for r in records] == [r["step"] for r in reference]
        for r, ref in zip(records, reference):
            for key in ("train/d_loss", "train/g_loss", "eval_test/d_loss", "eval_test/g_loss"):
                if key in ref:
                    np.testing.assert_allclose(r[key], ref[key], atol=1e-5, err_msg=f"{mode} {key}")
            if "eval_test/fd" in ref:  # from float32 moment sums added in another order
                np.testing.assert_allclose(r["eval_test/fd"], ref["eval_test/fd"], rtol=1e-4, err_msg=mode)
                assert r["eval_test/class_entropy"] == pytest.approx(ref["eval_test/class_entropy"], abs=1e-6)
        ours, theirs = checkpoint.load_state(str(tmp_path / mode))[0], checkpoint.load_state(gan_reference)[0]
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), ours["params"], theirs["params"])
        assert max(jax.tree.leaves(diffs)) < 1e-5, mode


def test_vae_run_reports_the_elbo_and_writes_its_pngs(tmp_path, features_run):
    from experiments.vae.__main__ import main
    workdir = str(tmp_path / "vae")
    results = main(vae_config(features_run), workdir)
    assert results["test_elbo"] == pytest.approx(-results["test_loss"])
    assert results["test_loss"] == pytest.approx(results["test_recon"] + results["test_kl"], rel=1e-5)
    assert 0 < results["test_recon"] < 64 * np.log(2) * 1.5 and results["test_kl"] >= 0
    assert results["test_fd"] > 0 and 0 <= results["test_class_entropy"] <= np.log(10) + 1e-6
    for name in ("samples.png", "reconstructions.png", "interpolation.png", "curves.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name


def test_feature_run_checks(tmp_path, features_run):
    with pytest.raises(ConfigValueError, match="holds no trained classifier.*mlp_classifier.*cnn_digits"):
        generative_setup.check_features_run(str(tmp_path / "nothing"), "digits")
    with pytest.raises(ConfigValueError, match="trained on digits"):
        generative_setup.check_features_run(features_run, "fashion_mnist")
    with pytest.raises(ConfigValueError, match="is empty"):
        generative_setup.check_features_run("", "digits")
    with pytest.raises(ConfigValueError, match="not an image dataset"):
        generative.check_image_dataset("mnist1d", 2)
    with pytest.raises(ConfigValueError, match="do not halve 3 times"):
        generative.check_image_dataset("fashion_mnist", 3)
    generative_setup.check_features_run(features_run, "digits")


def test_missing_feature_run_is_one_line_before_any_work(run_cli, tmp_path):
    for module in ("experiments.gan",):  # the VAE's validate runs the same check (tested above)
        proc = run_cli(module, f"--workdir={tmp_path / 'run'}", f"--config.features_run={tmp_path / 'absent'}",
                       "--config.dataset=digits")
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert "holds no trained classifier" in line and "python -m experiments.mlp_classifier" in line, line
        assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_experiment_keys_are_checked_before_any_work(features_run):
    from experiments.gan.__main__ import validate as gan_validate
    from experiments.vae.__main__ import validate as vae_validate
    for bad, match in (({"model.architecture": "resnet"}, "model.architecture"),
                       ({"model.likelihood": "poisson"}, "model.likelihood"),
                       ({"model.latent_dim": 0}, "model.latent_dim"),
                       ({"dataset": "mnist1d"}, "not an image dataset"),
                       ({"model.channels": (4, 4, 4, 4)}, "do not halve 4 times")):
        with pytest.raises(ConfigValueError, match=match):
            vae_validate(vae_config(features_run, **bad))
    with pytest.raises(ConfigValueError, match="model.generator_channels"):
        gan_validate(gan_config(features_run, **{"model.generator_channels": (8, -1)}))
    gan_validate(gan_config(features_run))
    vae_validate(vae_config(features_run, **{"model.architecture": "mlp", "model.channels": (4, 4, 4, 4)}))
