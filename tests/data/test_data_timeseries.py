"""Time series datasets (co2, sunspots): sizes, splits, metadata, series, windows."""

import numpy as np
import pytest

from lab import data
from lab.data import timeseries

SPLITS = ("train", "validation", "test")
# Documented sizes (lab.data.timeseries): co2 1958-03..2001-12, sunspots 1700-2008.
SIZES = {"co2": 526, "sunspots": 309}
SPLIT_SIZES = {"co2": (379, 42, 105), "sunspots": (222, 25, 62)}
FIRST_LAST = {"co2": (1958 + 2 / 12, 2001 + 11 / 12), "sunspots": (1700.0, 2008.0)}
STEP = {"co2": 1 / 12, "sunspots": 1.0}


@pytest.fixture(scope="module")
def splits(data_dir):
    return {
        name: {s: data.load(name, s, data_dir=data_dir) for s in SPLITS}
        for name in timeseries.DATASETS
    }


@pytest.mark.parametrize("name", timeseries.DATASETS)
def test_sizes_dtypes_and_time(splits, name):
    parts = splits[name]
    for part in parts.values():
        assert set(part) == {"time", "value"}
        assert part["time"].dtype == np.float64 and part["value"].dtype == np.float32
        assert part["time"].shape == part["value"].shape and part["time"].ndim == 1
    time = np.concatenate([parts[s]["time"] for s in SPLITS])
    value = np.concatenate([parts[s]["value"] for s in SPLITS])
    assert len(time) == SIZES[name]
    assert tuple(len(parts[s]["value"]) for s in SPLITS) == SPLIT_SIZES[name]
    assert np.isfinite(value).all() and (value > 0).any()
    # Contiguous and chronological: one step between neighbours, across splits too
    # (time is float64, so the month fractions are exact to ~1e-12).
    np.testing.assert_allclose(np.diff(time), STEP[name], rtol=0, atol=1e-9)
    np.testing.assert_allclose((time[0], time[-1]), FIRST_LAST[name], rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [309, 526, 10, 101])
def test_split_fractions(n):
    bounds = timeseries.split_bounds(n)
    n_test = round(0.2 * n)
    n_val = round(0.1 * (n - n_test))
    assert bounds == {
        "train": (0, n - n_test - n_val),
        "validation": (n - n_test - n_val, n - n_test),
        "test": (n - n_test, n),
    }
    assert (timeseries.TEST_FRACTION, timeseries.VALIDATION_FRACTION) == (0.2, 0.1)


def test_metadata(data_dir, splits):
    co2 = data.info("co2", data_dir=data_dir)
    sun = data.info("sunspots", data_dir=data_dir)
    assert (co2["unit"], co2["frequency"], co2["season"]) == ("ppm", "monthly", 12)
    assert (sun["unit"], sun["frequency"], sun["season"]) == ("sunspot number", "yearly", 11)
    assert co2["num_interpolated"] > 0 and sun["num_interpolated"] == 0
    assert "statsmodels" in co2["source"] and "statsmodels" in sun["source"]
    assert co2["class_names"] == {} == sun["class_names"]
    assert co2["splits"] == dict(zip(SPLITS, SPLIT_SIZES["co2"], strict=True))


def test_co2_monthly_means_and_interpolation(data_dir):
    import statsmodels.api as sm  # Already imported by the build.

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    s = data.series("co2", data_dir=data_dir)
    value, time = s["value"], s["time"]
    # A month with readings is their mean: April 1958 (4 weekly readings).
    april = weekly.loc["1958-04"].dropna()
    assert len(april) >= 3
    k = int(np.argmin(np.abs(time - (1958 + 3 / 12))))
    np.testing.assert_allclose(value[k], april.mean(), rtol=1e-6)
    # Each month without readings was filled between its neighbours' values.
    counts = weekly.resample("MS").count().to_numpy()
    empty = np.flatnonzero(counts == 0)
    assert len(empty) == data.info("co2", data_dir=data_dir)["num_interpolated"] > 0
    for k in empty:
        prev = k - 1
        while prev in empty:
            prev -= 1
        after = k + 1
        while after in empty:
            after += 1
        lo, hi = sorted((value[prev], value[after]))
        assert lo - 1e-4 <= value[k] <= hi + 1e-4, (k, value[prev], value[k], value[after])


@pytest.mark.parametrize("name", timeseries.DATASETS)
def test_series_matches_load(splits, data_dir, name):
    s = data.series(name, data_dir=data_dir)
    assert s["time"].dtype == np.float64 and s["value"].dtype == np.float32
    assert s["value"].shape == (SIZES[name],)
    assert s["season"] == {"co2": 12, "sunspots": 11}[name]
    assert s["unit"] == data.info(name, data_dir=data_dir)["unit"]
    assert s["bounds"] == timeseries.split_bounds(SIZES[name])
    for split, (a, b) in s["bounds"].items():
        assert type(a) is int and type(b) is int
        np.testing.assert_array_equal(s["value"][a:b], splits[name][split]["value"])
        np.testing.assert_array_equal(s["time"][a:b], splits[name][split]["time"])


def test_series_rejects_other_datasets(data_dir):
    with pytest.raises(data.DataError, match="not a time series dataset"):
        data.series("digits", data_dir=data_dir)


def test_windows_exact_values():
    values = np.arange(10, dtype=np.float64) * 10  # 0, 10, ..., 90
    inputs, targets = timeseries.windows(values, 3, 3, 6)
    assert inputs.dtype == np.float32 and targets.dtype == np.float32
    np.testing.assert_array_equal(inputs, [[0, 10, 20], [10, 20, 30], [20, 30, 40]])
    np.testing.assert_array_equal(targets, [30, 40, 50])
    # Up to the last value; the inputs reach back before `start`.
    inputs, targets = timeseries.windows(values, 4, 8, 10)
    np.testing.assert_array_equal(inputs, [[40, 50, 60, 70], [50, 60, 70, 80]])
    np.testing.assert_array_equal(targets, [80, 90])
    inputs, targets = timeseries.windows(values, 2, 5, 5)
    assert inputs.shape == (0, 2) and targets.shape == (0,)


def test_windows_errors():
    values = np.arange(10.0)
    with pytest.raises(ValueError, match="start=2 < timesteps=3"):
        timeseries.windows(values, 3, 2, 5)
    with pytest.raises(ValueError, match="stop"):
        timeseries.windows(values, 3, 5, 11)
    with pytest.raises(ValueError, match="stop"):
        timeseries.windows(values, 3, 5, 4)


def test_test_windows_read_the_end_of_validation(data_dir):
    s = data.series("sunspots", data_dir=data_dir)
    a, b = s["bounds"]["test"]
    inputs, targets = data.windows(s["value"], s["season"], a, b)
    assert inputs.shape == (b - a, 11) and targets.shape == (b - a,)
    np.testing.assert_array_equal(inputs[0], s["value"][a - 11 : a])  # validation's last 11
    np.testing.assert_array_equal(targets, s["value"][a:b])
