"""Configs of the LSTM forecaster. Select a variant with `--config=experiments/lstm_forecast/config.py:NAME`.

What they are for: one-step forecasts of a time series by an LSTM, scored by test RMSE in the
series' units beside five baselines the same run computes (last value, seasonal naive, a linear
AR over the same window, and the statistical anchors SARIMA and Holt-Winters, fitted on the train
part only: lab.tasks.forecast). The measured numbers live in experiments/reference_results.json
(README's results table is generated from it); each variant names its row, and the closing
summary quotes that row.

  (default)  python -m experiments.lstm_forecast --workdir=runs/forecast_co2
             The article's recipe on co2 (monthly Mauna Loa CO2, ppm): windows of 12 months,
             LSTM(50, activation='relu') -> Dense(1), Adam lr 1e-3, MSE, batch 32, 10 epochs
             (110 steps); values min-max scaled on the train part; the network sees each window
             relative to its last value and predicts the change (`model.predict_change`; the
             literal level-in, level-out recipe cannot fit the trend in 110 steps).
             Row: forecast_co2. `--config.dataset=sunspots` runs the same recipe on the yearly
             sunspot numbers; no row (its summary still quotes the co2 row).
  tuned      python -m experiments.lstm_forecast --workdir=runs/forecast_co2_tuned --config=experiments/lstm_forecast/config.py:tuned
             24-month windows, z-scored, LSTM(64, tanh), Adam 3e-3 with warmup + cosine, 200
             epochs (2,200 steps): the recipe tuned to beat the naive and AR baselines on co2.
             Row: forecast_co2_tuned.
  tiny       python -m experiments.lstm_forecast --workdir=DIR --config=experiments/lstm_forecast/config.py:tiny
             a seconds-long run for tests; no row, no reference in its summary.
"""

import ml_collections

from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The article's LSTM regressor recipe on co2, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # init, data order: every random number of the run derives from it
    c.dataset = "co2"  # co2 | sunspots (lab.data; statsmodels' bundled series)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $LAB_DATA_DIR or ~/tensorflow_datasets
    c.timesteps = 12  # window length: past values per prediction
    c.scaling = "minmax"  # minmax | standard, fitted on the train part only
    c.num_epochs = 10  # sets num_train_steps = num_epochs * (train windows // batch_size)
    c.batch_size = 32  # Keras' default
    c.eval_batch_size = 256
    c.num_train_steps = 1  # derived from num_epochs when that is set (> 0)
    c.log_every_steps = 11
    c.eval_every_steps = 55
    c.checkpoint_every_steps = 0  # only at the end: a run takes seconds
    c.max_checkpoints_to_keep = 1
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)

    c.model = ml_collections.ConfigDict()
    c.model.features = 50  # LSTM units
    c.model.num_layers = 1
    c.model.activation = "relu"  # relu (the article) | tanh (Keras' default)
    c.model.predict_change = True  # the window relative to its last value -> the change (False: levels)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps
    c.optimizer.grad_clip_norm = 0.0

    # Shown beside the result in the closing summary; no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "forecast_co2", "test_rmse")

    if variant in (None, ""):
        return c
    if variant == "tuned":
        c.timesteps = 24
        c.scaling = "standard"
        c.num_epochs = 200
        c.log_every_steps = 100
        c.eval_every_steps = 500
        c.model.features = 64
        c.model.activation = "tanh"
        c.model.predict_change = True
        c.optimizer.learning_rate = 3e-3
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 50
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "forecast_co2_tuned", "test_rmse")
        return c
    if variant == "tiny":
        c.num_epochs = 2
        c.timesteps = 6
        c.log_every_steps = 5
        c.eval_every_steps = 11
        c.model.features = 8
        del c.reference  # no row: a test run
        return c
    raise ValueError(f"unknown variant {variant!r}: use tuned or tiny")
