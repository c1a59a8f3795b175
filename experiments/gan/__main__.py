"""python -m experiments.gan --workdir=DIR [--config=...:variant] [--config.key=value]

A DCGAN (`lab.models.gan`) on one-channel images, trained by lab's loop with two optimizers
(`lab.tasks.generative.GANTask`); FD and class coverage of its samples at every eval.
"""

import os

from lab import configs, generative_setup, train
from lab.models import gan
from lab.tasks import generative


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model",
                        positive_ints=("latent_dim", "generator_channels", "discriminator_channels"))
    generative.check_image_dataset(config.dataset, len(config.model.generator_channels))
    generative_setup.check_features_run(config.features_run, config.dataset)


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the GAN of `config` in `workdir`; returns the results (FD, coverage, losses)."""
    features = generative_setup.load_feature_network(config.features_run, config.dataset, config.data_dir)
    data, info = generative_setup.image_data(config, config.model.latent_dim, train_noise=True,
                                       eval_streams={"noise": generative.PRIOR_STREAM})
    image_shape = info["test_arrays"]["inputs"].shape[1:]
    task = generative.GANTask(
        gan.Generator(image_shape=image_shape, channels=tuple(config.model.generator_channels)),
        gan.Discriminator(channels=tuple(config.model.discriminator_channels)),
        config.model.latent_dim, image_shape, features,
        grid_noise=info["test_arrays"]["noise"][:generative.GRID_SIZE])
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate)
