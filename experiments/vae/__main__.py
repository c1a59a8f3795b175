"""python -m experiments.vae --workdir=DIR [--config=...:variant] [--config.key=value]

A VAE (`lab.models.vae`) on one-channel images (`lab.tasks.generative.VAETask`): test ELBO in nats
per image with its reconstruction and KL parts, FD and class coverage of its samples.
"""

import os

from lab import configs, generative_setup, train
from lab.errors import ConfigValueError
from lab.models import vae
from lab.tasks import generative

SHOWN = 16  # test images in the reconstruction grid and the interpolation strip


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model", positive_ints=("latent_dim", "channels", "hidden"))
    if config.model.architecture not in vae.ARCHITECTURES:
        raise ConfigValueError(f"config.model.architecture={config.model.architecture!r}: use one of "
                               f"{', '.join(vae.ARCHITECTURES)}")
    if config.model.likelihood not in vae.LIKELIHOODS:
        raise ConfigValueError(f"config.model.likelihood={config.model.likelihood!r}: use one of "
                               f"{', '.join(vae.LIKELIHOODS)}")
    conv_blocks = len(config.model.channels) if config.model.architecture == "conv" else 0
    generative.check_image_dataset(config.dataset, conv_blocks)
    generative_setup.check_features_run(config.features_run, config.dataset)


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the VAE of `config` in `workdir`; returns the results (ELBO, FD, coverage)."""
    features = generative_setup.load_feature_network(config.features_run, config.dataset, config.data_dir)
    data, info = generative_setup.image_data(config, config.model.latent_dim, train_noise=False,
                                       eval_streams={"noise": generative.PRIOR_STREAM,
                                                     "posterior_noise": generative.POSTERIOR_STREAM})
    test = info["test_arrays"]
    model = vae.VAE(image_shape=test["inputs"].shape[1:], latent_dim=config.model.latent_dim,
                    architecture=config.model.architecture, channels=tuple(config.model.channels),
                    hidden=config.model.hidden, likelihood=config.model.likelihood)
    task = generative.VAETask(model, features, grid_noise=test["noise"][:generative.GRID_SIZE],
                              shown_images=test["inputs"][:SHOWN])
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate)
