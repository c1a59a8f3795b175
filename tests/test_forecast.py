"""The forecasting task's data side: windows, train-only scaling, the five baselines."""

import numpy as np
import pytest

from lab.tasks import forecast


def test_baselines_on_a_hand_made_series():
    # y_t = t^2: last value = (t-1)^2, seasonal (lag 3) = (t-3)^2, and an AR(2) with intercept
    # fits a quadratic exactly (y_t = 2 y_{t-1} - y_{t-2} + 2).
    values = np.arange(20, dtype=np.float64) ** 2
    w = forecast.fit_linear_ar(values, 2, 2, 12)
    np.testing.assert_allclose(w, [-1.0, 2.0, 2.0], atol=1e-8)
    preds = forecast.baseline_predictions(values, 2, 3, 12, 20, w)
    t = np.arange(12, 20)
    np.testing.assert_array_equal(preds["last_value"], (t - 1) ** 2)
    np.testing.assert_array_equal(preds["seasonal_naive"], (t - 3) ** 2)
    np.testing.assert_allclose(preds["linear_ar"], t ** 2, atol=1e-6)


def test_baselines_need_their_history():
    with pytest.raises(ValueError, match="past values"):
        forecast.baseline_predictions(np.zeros(10), 2, 5, 4, 10, np.zeros(3))


def test_splits_scale_on_train_only_and_windows_cross_split_boundaries():
    values = np.arange(30, dtype=np.float64) * 2.0 + 100.0
    bounds = {"train": (0, 20), "validation": (20, 25), "test": (25, 30)}
    splits, scaler = forecast.forecast_splits(values, bounds, timesteps=4, season=3, scaling="minmax")
    assert (scaler.offset, scaler.scale) == (100.0, 38.0)  # train values 100..138 only
    assert splits["train"]["inputs"].shape == (16, 4, 1) and splits["test"]["inputs"].shape == (5, 4, 1)
    # The first test window reads the last 4 validation values and predicts index 25.
    np.testing.assert_allclose(scaler.inverse(splits["test"]["inputs"][0, :, 0]), values[21:25], rtol=1e-6)
    np.testing.assert_allclose(splits["test"]["truth"], values[25:30])
    np.testing.assert_allclose(scaler.inverse(splits["test"]["target"]), values[25:30], rtol=1e-6)
    np.testing.assert_array_equal(splits["test"]["index"], np.arange(25, 30))
    np.testing.assert_allclose(splits["test"]["last_value"], values[24:29])
    assert "truth" not in splits["train"]
    standard = forecast.Scaler.fit(values[:20], "standard")
    assert standard.offset == pytest.approx(values[:20].mean())


def test_summary_reports_every_baseline_in_series_units():
    sums = {"loss": np.float32(2.0), "count": np.float32(4.0), "se": np.float32(16.0), "ae": np.float32(8.0),
            "se_last_value": np.float32(4.0), "ae_last_value": np.float32(4.0)}
    task = forecast.ForecastTask(None, 3, forecast.Scaler(0.0, 1.0))
    out = task.summarize(sums)
    assert out == {"loss": 0.5, "rmse": 2.0, "mae": 2.0, "rmse_last_value": 1.0, "mae_last_value": 1.0}


def test_sarima_and_holt_winters_fit_on_train_and_never_see_what_they_predict():
    """On a trend plus a season plus noise: both track the series on the held-out part far
    better than the seasonal swing; changing the values after index k changes no prediction
    up to k (each uses only earlier values, and the parameters come from the train part alone:
    a fit that read the changed values would move every prediction)."""
    rng = np.random.default_rng(0)
    t = np.arange(120, dtype=np.float64)
    values = 300 + 0.1 * t + 3 * np.sin(2 * np.pi * t / 12) + 0.2 * rng.standard_normal(120)
    preds = forecast.statistical_predictions(values, (0, 84), 12)
    for name, pred in preds.items():
        assert pred.shape == (120,)
        rmse = np.sqrt(np.mean((pred[84:] - values[84:]) ** 2))
        assert rmse < 0.5, (name, rmse)  # the season alone swings +-3
    changed = values.copy()
    changed[100:] += 50.0
    again = forecast.statistical_predictions(changed, (0, 84), 12)
    for name in preds:
        np.testing.assert_array_equal(again[name][:101], preds[name][:101])
        assert np.all(np.abs(again[name][101:] - preds[name][101:]) > 0)
