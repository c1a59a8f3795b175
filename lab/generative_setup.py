"""Builders the GAN and VAE experiments share: their image data (with fixed eval latents) and the
feature network that measures their samples, read from another (classifier) run.

They read datasets and other runs' files and build the loop's `Data`, so they live above the
families: a task (`lab.tasks.generative`) is handed the feature network, it never loads one.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

import lab.data
from lab import checkpoint, train
from lab.errors import ConfigValueError
from lab.provenance import read_run_config
from lab.tasks.classification import image_classifier
from lab.tasks.generative import FeatureNetwork


def features_run_command(dataset: str, workdir: str) -> str:
    """The command that trains the feature network of `dataset` into `workdir`."""
    config = "experiments/mlp_classifier/config.py:" + (
        "cnn_digits" if dataset == "digits" else
        "cnn_fashion" if dataset == "fashion_mnist" else f"cnn_fashion --config.dataset={dataset}")
    return f"python -m experiments.mlp_classifier --workdir={workdir} --config={config}"


def check_features_run(workdir: str, dataset: str) -> None:
    """Raises ConfigValueError unless `workdir` holds a finished classifier run on `dataset`."""
    hint = f"build it first: {features_run_command(dataset, workdir)}"
    if not workdir:
        raise ConfigValueError(f"config.features_run is empty: sample quality (FD, class coverage) needs a "
                               f"classifier run on {dataset}; {hint.replace(' --workdir=', ' --workdir=DIR')}")
    if not os.path.exists(os.path.join(workdir, "config.json")) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ConfigValueError(f"config.features_run={workdir!r} holds no trained classifier; {hint}")
    try:
        run_config = read_run_config(workdir, "mlp_classifier", needs=("dataset", "model"), what="config.features_run")
    except ConfigValueError as e:
        raise ConfigValueError(f"{e}; {hint}") from None
    trained_on, model = run_config["dataset"], run_config["model"]
    if trained_on != dataset:
        raise ConfigValueError(f"config.features_run={workdir!r} was trained on {trained_on}, this run's "
                               f"dataset is {dataset}: name a {dataset} classifier run ({hint})")
    if not isinstance(model, dict):
        raise ConfigValueError(f"config.features_run={workdir!r} is not a classifier run: {hint}")


def load_feature_network(workdir: str, dataset: str, data_dir: str | None = None) -> FeatureNetwork:
    """Loads the classifier trained in `workdir` (by `experiments.mlp_classifier`) on `dataset`.

    Raises:
      ConfigValueError: no such run, or one trained on another dataset; the message names the
        command that builds it.
    """
    check_features_run(workdir, dataset)
    run_config = read_run_config(workdir, "mlp_classifier")
    num_classes = lab.data.info(dataset, data_dir=data_dir)["num_classes"]
    model = image_classifier(ml_collections.ConfigDict(run_config["model"]), num_classes)
    params, source = checkpoint.load_params(workdir)
    return FeatureNetwork(model, params, num_classes, source)


def image_data(config, latent_dim: int, *, train_noise: bool,
               eval_streams: dict[str, int]) -> tuple[train.Data, dict]:
    """The `Data` of a generative run: train images (with per-step `noise` when `train_noise`), the
    test split as the eval split with a fixed latent per example under each `eval_streams` key.

    Returns:
      (data, info): info is `lab.data.info` plus `test_arrays` (the eval arrays, numpy).
    """
    # Images only: the labels stay out of the batches (the feature network predicts classes).
    train_arrays = {"inputs": lab.data.load(config.dataset, "train", data_dir=config.data_dir)["inputs"]}
    test_arrays = {"inputs": lab.data.load(config.dataset, "test", data_dir=config.data_dir)["inputs"]}
    n = len(test_arrays["inputs"])
    for key, stream in eval_streams.items():
        test_arrays[key] = fixed_latents(n, latent_dim, config.seed, stream)
    data = train.epoch_data(train_arrays, {"test": test_arrays}, config)
    if train_noise:
        data.train = LatentBatcher(data.train, latent_dim, config.seed, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    info = dict(lab.data.info(config.dataset, data_dir=config.data_dir), test_arrays=test_arrays)
    return data, info


# Stream tags: train noise is `default_rng([seed, LATENT_STREAM, step])`, eval latents
# `default_rng([seed, EVAL_LATENT_STREAM, stream])`, apart from the epoch permutations'
# `default_rng([seed, epoch])`.
LATENT_STREAM = 0x6C61
EVAL_LATENT_STREAM = 0x6C62


class LatentBatcher:
    """Another batcher's batches plus `key`: standard normal noise (B/processes, dim) float32.

    The noise of global batch `step` is `default_rng([seed, LATENT_STREAM, step])`'s, and each
    process takes its rows of it, so the generator's input is the same whatever the device or
    process count (a noise drawn from a pmap'd step's per-device key would not be). Resume
    stays exact: the noise, like the batch, is a function of the step.
    """

    def __init__(self, base, dim: int, seed: int, key: str = "noise",
                 process_index: int = 0, process_count: int = 1):
        self.base, self.dim, self.seed, self.key = base, dim, seed, key
        local = base.batch_size // process_count
        self.batch_size = base.batch_size
        self._slice = slice(process_index * local, (process_index + 1) * local)

    def position(self, step: int) -> dict:
        return self.base.position(step)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The base batch of `step` with `key`: float32 (B/processes, dim)."""
        rng = np.random.default_rng([self.seed, LATENT_STREAM, step])
        noise = rng.standard_normal((self.batch_size, self.dim), dtype=np.float32)
        return {**self.base.batch(step), self.key: noise[self._slice]}


def fixed_latents(num: int, dim: int, seed: int, stream: int) -> np.ndarray:
    """A fixed standard normal array (num, dim) float32 for eval examples: row i belongs to
    example i at every eval, so the evals of a run compare."""
    rng = np.random.default_rng([seed, EVAL_LATENT_STREAM, stream])
    return rng.standard_normal((num, dim), dtype=np.float32)
