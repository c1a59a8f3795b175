"""python -m experiments.lstm_forecast --workdir=DIR [--config=...:variant] [--config.key=value]"""

import os

import lab.data
from lab import configs, train
from lab.data import timeseries
from lab.errors import ConfigValueError
from lab.models.lstm import ACTIVATIONS, LSTMRegressor
from lab.tasks import forecast


def validate(config) -> None:
    """This experiment's own keys; the CLI checks them (and lab's) before `main` reads any data."""
    configs.check_block(config, "", positive_ints=("timesteps",))
    configs.check_block(config.model, "model", positive_ints=("features", "num_layers"))
    if config.dataset not in timeseries.DATASETS:
        raise ConfigValueError(f"config.dataset={config.dataset!r} is not a time series: use one of "
                               f"{', '.join(timeseries.DATASETS)}")
    if config.scaling not in ("minmax", "standard"):
        raise ConfigValueError(f"config.scaling={config.scaling!r}: use minmax or standard")
    if config.model.activation not in ACTIVATIONS:
        raise ConfigValueError(f"config.model.activation={config.model.activation!r}: use one of "
                               f"{', '.join(ACTIVATIONS)}")
    if config.num_epochs is not None and config.num_epochs < 0:
        raise ConfigValueError(f"config.num_epochs={config.num_epochs}: use >= 1, or 0 to set num_train_steps")


def main(config, workdir: str, allow_config_change: bool = False) -> dict:
    """Trains the forecaster of `config` on its series in `workdir`; returns the results."""
    series = lab.data.series(config.dataset, data_dir=config.data_dir)
    train_start, train_stop = series["bounds"]["train"]
    first_eval = series["bounds"]["validation"][0]
    need = max(config.timesteps, series["season"])
    if train_stop - train_start - config.timesteps < config.batch_size or first_eval < need:
        raise ConfigValueError(
            f"config.timesteps={config.timesteps} leaves fewer than config.batch_size="
            f"{config.batch_size} train windows of {config.dataset} ({train_stop - train_start} values): "
            "use a shorter window or a smaller batch")
    splits, scaler = forecast.forecast_splits(series["value"], series["bounds"], config.timesteps,
                                              series["season"], config.scaling,
                                              forecast.SARIMA_ORDERS.get(config.dataset, forecast.AIRLINE))
    if config.num_epochs:
        with config.unlocked():
            config.num_train_steps = config.num_epochs * (len(splits["train"]["target"]) // config.batch_size)
    model = LSTMRegressor(features=config.model.features, num_layers=config.model.num_layers,
                          activation=config.model.activation)
    task = forecast.ForecastTask(model, config.timesteps, scaler, predict_change=config.model.predict_change,
                                 plot_split=(splits["test"], series["time"]),
                                 title=f"{config.dataset} ({series['unit']}), test span")
    evals = {name: {k: v for k, v in splits[split].items() if k != "index"}
             for name, split in (("test", "test"), ("val", "validation"))}
    data = train.epoch_data(splits["train"], evals, config)
    return train.train_and_evaluate(config, workdir, task, data, allow_config_change=allow_config_change)


if __name__ == "__main__":
    from experiments import cli
    cli.run(os.path.join(os.path.dirname(__file__), "config.py"), main, validate=validate)
