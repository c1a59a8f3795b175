"""python -m experiments.mlp_classifier --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import lab.data
from lab import configs, train
from lab.models.mlp import MLP
from lab.tasks.classification import ClassificationTask


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config.model, "model", positive_ints=("features",), fractions=("dropout_rate",))


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains and evaluates the MLP classifier of `config` in `workdir`; returns the results."""
    train_arrays = lab.data.load(config.dataset, "train", data_dir=config.data_dir)
    test_arrays = lab.data.load(config.dataset, "test", data_dir=config.data_dir)
    info = lab.data.info(config.dataset, data_dir=config.data_dir)
    model = MLP(features=tuple(config.model.features), num_classes=info["num_classes"],
                dropout_rate=config.model.dropout_rate)
    task = ClassificationTask(model, example_inputs={"inputs": train_arrays["inputs"][:1]})
    data = train.epoch_data(train_arrays, {"test": test_arrays}, config, class_names=info.get("class_names"))
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate)
