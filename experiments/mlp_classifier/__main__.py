"""python -m experiments.mlp_classifier --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import lab.data
from lab import train
from lab.models.mlp import MLP
from lab.tasks.classification import ClassificationTask


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains and evaluates the MLP classifier of `config` in `workdir`; returns the results."""
    train_arrays = lab.data.load(config.dataset, "train", data_dir=config.data_dir)
    test_arrays = lab.data.load(config.dataset, "test", data_dir=config.data_dir)
    num_classes = lab.data.info(config.dataset, data_dir=config.data_dir)["num_classes"]
    model = MLP(features=tuple(config.model.features), num_classes=num_classes,
                dropout_rate=config.model.dropout_rate)
    task = ClassificationTask(model, example_inputs={"inputs": train_arrays["inputs"][:1]})
    data = train.epoch_data(train_arrays, {"test": test_arrays}, config)
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main)
