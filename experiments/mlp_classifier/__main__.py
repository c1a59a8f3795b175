"""python -m experiments.mlp_classifier --workdir=DIR [--config=...:variant] [--config.key=value]

`model.name` picks the MLP (default) or the CNN (`lab.models.cnn`); the CNN runs (`cnn_fashion`,
`cnn_digits`) are also the feature networks of the generative family's sample-quality metrics.
"""

import os

import lab.data
from lab import configs, train
from lab.errors import ConfigValueError
from lab.models.cnn import IMAGE_CLASSIFIERS, image_classifier
from lab.tasks.classification import ClassificationTask


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model", positive_ints=("features",), fractions=("dropout_rate",))
    name = config.model.get("name", "mlp")
    if name not in IMAGE_CLASSIFIERS:
        raise ConfigValueError(f"config.model.name={name!r}: use one of {', '.join(IMAGE_CLASSIFIERS)}")
    if name == "cnn":
        configs.check_block(config.model, "model", positive_ints=("channels", "kernel_size"))
        if config.dataset == "mnist1d":
            raise ConfigValueError("config.model.name='cnn' takes images; mnist1d is a 1-D signal: use the mlp")


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains and evaluates the MLP classifier of `config` in `workdir`; returns the results."""
    train_arrays = lab.data.load(config.dataset, "train", data_dir=config.data_dir)
    test_arrays = lab.data.load(config.dataset, "test", data_dir=config.data_dir)
    info = lab.data.info(config.dataset, data_dir=config.data_dir)
    model = image_classifier(config.model, info["num_classes"])
    task = ClassificationTask(model, example_inputs={"inputs": train_arrays["inputs"][:1]})
    data = train.epoch_data(train_arrays, {"test": test_arrays}, config, class_names=info.get("class_names"))
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate)
