"""Configs of the LSTM forecaster. Select a variant with `--config=experiments/lstm_forecast/config.py:NAME`.

Measured figures (command, time, test RMSE against the three baselines) are in BUILD_NOTES.md.
  (default)  python -m experiments.lstm_forecast --workdir=runs/forecast_co2
             The article's recipe on co2 (monthly Mauna Loa CO2): windows of 12 months, LSTM(50,
             activation='relu') -> Dense(1), Adam lr 1e-3, MSE, batch 32, 10 epochs; values
             min-max scaled on the train part. `--config.dataset=sunspots` runs it on the yearly
             sunspot numbers.
  tuned      python -m experiments.lstm_forecast --workdir=runs/forecast_co2_tuned --config=experiments/lstm_forecast/config.py:tuned
             See the variant below.
  tiny       a seconds-long run for tests.
"""

import ml_collections


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
    c.parallel = "jit"

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
    c.reference = ml_collections.ConfigDict(dict(
        metric="test_rmse_linear_ar", value=0.0, source="the linear AR baseline of this very run"))

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
        return c
    if variant == "tiny":
        c.num_epochs = 2
        c.timesteps = 6
        c.log_every_steps = 5
        c.eval_every_steps = 11
        c.model.features = 8
        return c
    raise ValueError(f"unknown variant {variant!r}: use tuned or tiny")
