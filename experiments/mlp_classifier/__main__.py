"""python -m experiments.mlp_classifier --workdir=DIR [--config=...:variant] [--config.key=value]

`model.name` picks the MLP (default) or the CNN (`lab.models.cnn`); the CNN runs (`cnn_fashion`,
`cnn_digits`) are also the feature networks of the generative family's sample-quality metrics.
`data_source` reads the splits whole into memory (default) or streams their rows from disk
(`--config.data_source=stream`): the same batches, so the same run.
"""

import os

import numpy as np

import lab.data
from lab import configs, pipeline, train
from lab.errors import ConfigValueError
from lab.tasks.classification import IMAGE_CLASSIFIERS, ClassificationTask, image_classifier

DATA_SOURCES = ("memory", "stream")


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    if config.data_source not in DATA_SOURCES:
        raise ConfigValueError(f"config.data_source={config.data_source!r}: use one of {', '.join(DATA_SOURCES)}")
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
    # Streamed splits are never read whole: the batchers gather each batch's rows from disk.
    read = lab.data.stream if config.data_source == "stream" else lab.data.load
    train_rows = read(config.dataset, "train", data_dir=config.data_dir)
    test_rows = read(config.dataset, "test", data_dir=config.data_dir)
    info = lab.data.info(config.dataset, data_dir=config.data_dir)
    model = image_classifier(config.model, info["num_classes"])
    example = pipeline.as_rows(train_rows).gather(np.zeros(1, np.int64))["inputs"]  # (1, *input_shape)
    task = ClassificationTask(model, example_inputs={"inputs": example})
    data = train.epoch_data(train_rows, {"test": test_rows}, config, class_names=info.get("class_names"))
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


def export_spec(config):
    """The serving function of a run of `config` for `lab.export`: images -> logits per class
    (the classifier task's own `export_spec`, with the dataset's class names)."""
    info = lab.data.info(config.dataset, data_dir=config.data_dir)
    shape = list(info["input_shape"])
    task = ClassificationTask(image_classifier(config.model, info["num_classes"]),
                              example_inputs={"inputs": np.zeros((1, *shape), np.float32)})
    return task.export_spec({
        "dataset": config.dataset,
        "class_names": {"label": list(info["class_names"]["label"])},
        "preprocessing": (f"images {shape}, float32 in [0, 1], ink high (the dataset's own scale)"
                          if len(shape) == 3 else f"the {config.dataset} signal, float32 {shape} as the dataset stores it"),
    })


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate, export_spec=export_spec)
