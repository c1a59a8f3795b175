"""One-step-ahead forecasting: a window of `timesteps` past values -> the next value.

The data side (`forecast_splits`) turns a whole series into windows per chronological split,
scaled by a `Scaler` fitted on the train part only, and attaches to every eval window the
predictions of five classical baselines computed from the same series:

  * last value      y_t = y_{t-1}
  * seasonal naive  y_t = y_{t-season} (co2: 12 months; sunspots: the ~11-year cycle)
  * linear AR       y_t = [y_{t-T}, ..., y_{t-1}, 1] . w, w fitted by least squares on the train
                    windows (the same window length T as the network's)
  * SARIMA          statsmodels' SARIMAX of the series' orders (`SARIMA_ORDERS`), fitted on the
                    train part; its one-step-ahead predictions with those parameters fixed
  * Holt-Winters    additive level, trend and season (statsmodels' ExponentialSmoothing), fitted
                    on the train part, run on with its fitted parameters and initial states

The last two are the statistical anchors for such series; every baseline sees only values
before the one it predicts, as the network does.

`ForecastTask.evaluate` scores the network and the baselines with the same sums, so every RMSE
and MAE in `results.json` (in the series' original units) comes out of one piece of code.

Shape suffixes: B batch, T timesteps (window length), M windows of a split.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from lab import report
from lab.data import timeseries
from lab.task import Task

BASELINES = ("last_value", "seasonal_naive", "linear_ar", "sarima", "holt_winters")
# SARIMA (p, d, q) x (P, D, Q) at the series' season: Box and Jenkins' "airline" model, the
# classic for a trending seasonal series such as co2; for sunspots Yule's AR(2) with a seasonal
# AR term at the ~11-year cycle (not a fixed season: differencing at it would hurt).
SARIMA_ORDERS = {"co2": ((1, 1, 1), (0, 1, 1)), "sunspots": ((2, 0, 0), (1, 0, 0))}
AIRLINE = ((1, 1, 1), (0, 1, 1))  # any other series


def statistical_predictions(values: np.ndarray, train: tuple[int, int], season: int,
                            orders: tuple[tuple, tuple] = AIRLINE) -> dict[str, np.ndarray]:
    """One-step-ahead predictions of SARIMA and Holt-Winters for every value of the series, both
    fitted on values[train[0]:train[1]] only and then run over the whole series with their
    parameters fixed (each prediction uses only the values before it).

    Returns:
      {'sarima', 'holt_winters'} -> float64 (N,), N = len(values).
    """
    import warnings

    from statsmodels.tsa.holtwinters import ExponentialSmoothing
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    values = np.asarray(values, np.float64)
    part = values[train[0]:train[1]]
    with warnings.catch_warnings():  # convergence notes of a fit: the predictions are what is scored
        warnings.simplefilter("ignore")
        fitted = SARIMAX(part, order=orders[0], seasonal_order=(*orders[1], season)).fit(disp=False)
        sarima = fitted.apply(values).get_prediction(start=0, end=len(values) - 1).predicted_mean
        p = ExponentialSmoothing(part, trend="add", seasonal="add", seasonal_periods=season).fit().params
        holt_winters = ExponentialSmoothing(
            values, trend="add", seasonal="add", seasonal_periods=season, initialization_method="known",
            initial_level=p["initial_level"], initial_trend=p["initial_trend"], initial_seasonal=p["initial_seasons"],
        ).fit(smoothing_level=p["smoothing_level"], smoothing_trend=p["smoothing_trend"],
              smoothing_seasonal=p["smoothing_seasonal"], optimized=False).fittedvalues
    return {"sarima": np.asarray(sarima, np.float64), "holt_winters": np.asarray(holt_winters, np.float64)}


@dataclasses.dataclass(frozen=True)
class Scaler:
    """An affine map `scaled = (value - offset) / scale`, fitted on the train part only.

    Attributes:
      offset, scale: floats (scale > 0).
    """

    offset: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray, kind: str) -> "Scaler":
        """'minmax' (to [0, 1] on these values, sklearn's MinMaxScaler) or 'standard' (z-score)."""
        values = np.asarray(values, np.float64)
        if kind == "minmax":
            lo, hi = float(values.min()), float(values.max())
            return cls(lo, max(hi - lo, 1e-12))
        if kind == "standard":
            return cls(float(values.mean()), max(float(values.std()), 1e-12))
        raise ValueError(f"scaling must be 'minmax' or 'standard', not {kind!r}")

    def transform(self, values):
        return (values - self.offset) / self.scale

    def inverse(self, scaled):
        return scaled * self.scale + self.offset


def fit_linear_ar(values: np.ndarray, timesteps: int, start: int, stop: int) -> np.ndarray:
    """Least-squares AR(timesteps) with intercept on the targets values[start:stop].

    Returns:
      w float64 (timesteps + 1,): y_t ~= values[t - T: t] . w[:T] + w[T].
    """
    x, y = timeseries.windows(np.asarray(values, np.float64), timesteps, start, stop, dtype=np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w, *_ = np.linalg.lstsq(design, y, rcond=None)
    return w


def baseline_predictions(values: np.ndarray, timesteps: int, season: int, start: int, stop: int,
                         ar_weights: np.ndarray, statistical: dict[str, np.ndarray] | None = None,
                         ) -> dict[str, np.ndarray]:
    """The baselines' predictions for the targets values[start:stop] (`statistical`: the whole
    series' `statistical_predictions`).

    Returns:
      name -> float64 (stop - start,) in the series' units, for each name in `BASELINES`.
    """
    if start < max(timesteps, season):
        raise ValueError(f"targets from index {start} have no {max(timesteps, season)} past values")
    values = np.asarray(values, np.float64)
    x, _ = timeseries.windows(values, timesteps, start, stop, dtype=np.float64)
    t = np.arange(start, stop)
    return {
        "last_value": values[t - 1],
        "seasonal_naive": values[t - season],
        "linear_ar": x @ ar_weights[:timesteps] + ar_weights[timesteps],
        **{name: pred[start:stop] for name, pred in (statistical or {}).items()},
    }


def forecast_splits(values: np.ndarray, bounds: dict[str, tuple[int, int]], timesteps: int,
                    season: int, scaling: str, sarima_orders: tuple[tuple, tuple] = AIRLINE,
                    ) -> tuple[dict[str, dict[str, np.ndarray]], Scaler]:
    """Windows of each chronological split, scaled on train, with baselines on eval splits.

    Args:
      values: the whole series (N,) in its units, time order.
      bounds: split -> (start, stop) target indices; 'train' starts at 0 (its first `timesteps`
        values are inputs only), the others follow it in time and take their inputs from before
        their start where needed.
      timesteps: window length T.
      season: the seasonal-naive lag.
      scaling: 'minmax' or 'standard', fitted on values[train] only.
      sarima_orders: the SARIMA baseline's ((p, d, q), (P, D, Q)) (`SARIMA_ORDERS`).

    Returns:
      ({split: arrays}, scaler). Every split has `inputs` float32 (M, T, 1) and `target` float32
      (M,), scaled; eval splits (all but 'train') also `truth` (M,) and one (M,) array per
      baseline, in the series' units, and `index` int32 (M,), the target's position in `values`.
    """
    values = np.asarray(values, np.float64)
    train_start, train_stop = bounds["train"]
    scaler = Scaler.fit(values[train_start:train_stop], scaling)
    ar_weights = fit_linear_ar(values, timesteps, train_start + timesteps, train_stop)
    statistical = statistical_predictions(values, (train_start, train_stop), season, sarima_orders)
    scaled = scaler.transform(values)
    out = {}
    for split, (start, stop) in bounds.items():
        first = start + timesteps if split == "train" else start
        x, y = timeseries.windows(scaled, timesteps, first, stop, dtype=np.float64)
        arrays = {"inputs": x[..., None].astype(np.float32), "target": y.astype(np.float32)}
        if split != "train":
            arrays["truth"] = values[first:stop].astype(np.float32)
            arrays["index"] = np.arange(first, stop, dtype=np.int32)
            for name, pred in baseline_predictions(values, timesteps, season, first, stop,
                                                   ar_weights, statistical).items():
                arrays[name] = pred.astype(np.float32)
        out[split] = arrays
    return out, scaler


class ForecastTask(Task):
    """`lab.task.Task` for a one-step regressor on batches {'inputs' (B, T, 1), 'target' (B,)}.

    The loss is the summed squared error in scaled units (Keras' 'mse' up to the mean the loop
    takes). Eval batches also carry `truth` and the baselines' predictions (see
    `forecast_splits`) and, padded, `mask` (B,); eval sums give RMSE and MAE of the network and
    of each baseline in the series' units.

    Args:
      model: a flax module mapping inputs (B, T, 1) -> (B,) (e.g. `lstm.LSTMRegressor`).
      timesteps: the window length T.
      scaler: the train part's `Scaler`, to report errors in the series' units.
      predict_change: the network sees the window relative to its last value and predicts the
        change from it (prediction = last + network(window - last)), not the level itself: a
        series that leaves the train part's range (co2's trend) then looks like the train part.
      plot_split: host-side (eval arrays, times (N,) of the whole series) drawn by `on_eval` into
        `workdir/forecast.png` (and TensorBoard's image 'forecast'); None: no plot.
    """

    # The headline errors: the network's RMSE with each baseline's in one panel.
    curves = ("loss", ("rmse",) + tuple(f"rmse_{name}" for name in BASELINES))

    def __init__(self, model, timesteps: int, scaler: Scaler, *, predict_change: bool = False,
                 plot_split: tuple[dict, np.ndarray] | None = None, title: str = ""):
        self.model = model
        self.timesteps = timesteps
        self.scaler = scaler
        self.predict_change = predict_change
        self.plot_split = plot_split
        self.title = title

    def init(self, rng: jax.Array) -> dict:
        return {"params": self.model.init(rng, jnp.zeros((1, self.timesteps, 1), jnp.float32))["params"]}

    def predict(self, params, inputs_BxTx1: jax.Array) -> jax.Array:
        """Scaled predictions (B,) of the next value."""
        if not self.predict_change:
            return self.model.apply({"params": params}, inputs_BxTx1)
        last_Bx1x1 = inputs_BxTx1[:, -1:, :]
        return last_Bx1x1[:, 0, 0] + self.model.apply({"params": params}, inputs_BxTx1 - last_Bx1x1)

    def loss(self, params, batch: dict, rng: jax.Array):
        del rng  # no dropout
        err_B = self.predict(params, batch["inputs"]) - batch["target"]
        return jnp.sum(err_B**2), {"count": jnp.float32(err_B.shape[0])}

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        del rng
        w_B = batch.get("mask", jnp.ones(batch["target"].shape, jnp.float32)).astype(jnp.float32)
        pred_B = self.predict(variables["params"], batch["inputs"])
        sums = {"loss": jnp.sum((pred_B - batch["target"]) ** 2 * w_B), "count": jnp.sum(w_B)}
        predictions = {"": self.scaler.inverse(pred_B)}
        predictions.update({"_" + name: batch[name] for name in BASELINES})
        for suffix, p_B in predictions.items():
            err_B = (p_B - batch["truth"]) * w_B
            sums["se" + suffix] = jnp.sum(err_B**2)
            sums["ae" + suffix] = jnp.sum(jnp.abs(err_B))
        return sums

    def summarize(self, sums: dict) -> dict:
        """loss (MSE, scaled units); on eval splits also rmse / mae (series' units), and
        rmse_<baseline> / mae_<baseline> for each baseline."""
        count = max(float(sums["count"]), 1.0)
        out = {"loss": float(sums["loss"]) / count}
        for key in sums:
            if key.startswith("se"):
                out["rmse" + key[2:]] = float(np.sqrt(float(sums[key]) / count))
                out["mae" + key[2:]] = float(sums["ae" + key[2:]]) / count
        return out

    def on_eval(self, variables, step: int, workdir: str, rng: jax.Array) -> None:
        """Draws the plot split's forecast against the truth and the baselines."""
        if self.plot_split is None:
            return
        arrays, times = self.plot_split
        pred = np.asarray(self.scaler.inverse(
            jax.jit(self.predict)(variables["params"], jnp.asarray(arrays["inputs"]))))
        figure = forecast_figure(times[arrays["index"]], arrays["truth"], pred,
                                 {name: arrays[name] for name in BASELINES},
                                 title=f"{self.title} (step {step})")
        report.save_figure(figure, os.path.join(workdir, "forecast.png"), tag="forecast")


def forecast_figure(times_M: np.ndarray, truth_M: np.ndarray, pred_M: np.ndarray,
                    baselines: dict[str, np.ndarray], title: str = ""):
    """A Figure: truth, the network's forecast and each baseline over one span (M points)."""
    fig = report.figure(10, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(times_M, truth_M, color="black", linewidth=2, label="truth")
    ax.plot(times_M, pred_M, color="tab:red", linewidth=1.5,
            label=f"LSTM (RMSE {_rmse(pred_M, truth_M):.3g})")
    styles = {"last_value": (":", "tab:blue"), "seasonal_naive": ("--", "tab:orange"), "linear_ar": ("-.", "tab:green"),
              "sarima": ((0, (5, 1)), "tab:purple"), "holt_winters": ((0, (3, 1, 1, 1)), "tab:brown")}
    for name, pred in baselines.items():
        linestyle, color = styles.get(name, (":", "tab:gray"))
        ax.plot(times_M, pred, linestyle=linestyle, color=color, linewidth=1,
                label=f"{name.replace('_', ' ')} (RMSE {_rmse(pred, truth_M):.3g})")
    ax.set_xlabel("time")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _rmse(pred, truth) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - np.asarray(truth, np.float64)) ** 2)))
