"""Univariate time series as TFDS datasets: ``co2`` and ``sunspots``.

Both build offline from data bundled with statsmodels, one TFDS example per
time step (``time`` float64 decimal year, ``value`` float32), stored in time
order (``disable_shuffling=True``).

``co2``
  Mauna Loa atmospheric CO2 (ppm), weekly 1958-2001 with gaps
  (``statsmodels.datasets.co2``), averaged over calendar months; the months
  with no weekly reading left are filled by linear interpolation in time
  (their count is ``num_interpolated`` in the metadata). March 1958 to
  December 2001: 526 months. Month m (1-12) of year y has time
  ``y + (m - 1) / 12``.
``sunspots``
  Yearly sunspot numbers 1700-2008 (``statsmodels.datasets.sunspots``,
  column ``SUNACTIVITY``): 309 years; time is the year.

Splits are chronological: of n steps the last ``round(TEST_FRACTION * n)``
are ``test``; of the rest, the last ``round(VALIDATION_FRACTION * rest)``
are ``validation``; the beginning is ``train``. co2: 379 / 42 / 105 months,
sunspots: 222 / 25 / 62 years.

The metadata (``builder.info.metadata``, returned by ``lab.data.info``) also
holds the ``unit``, the ``frequency``, the ``season`` (seasonal-naive period in
steps: 12 months for co2, 11 years, the solar cycle, for sunspots) and a
``source`` description.

``series`` reads a whole series back through ``lab.data.load`` with the split
bounds; ``windows`` cuts (inputs, target) pairs for one-step forecasting.
"""

from __future__ import annotations


import numpy as np
import tensorflow_datasets as tfds

from lab.data import storage
from lab.data.errors import DataError

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1  # of what remains after the test part
SPLITS = ("train", "validation", "test")
DATASETS = ("co2", "sunspots")


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """Chronological split of ``n`` time steps.

    Returns:
      ``{'train': (0, a), 'validation': (a, b), 'test': (b, n)}``: half-open
      index ranges, with ``n - b = round(TEST_FRACTION * n)`` and ``b - a =
      round(VALIDATION_FRACTION * b)``.
    """
    b = n - round(TEST_FRACTION * n)
    a = b - round(VALIDATION_FRACTION * b)
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def co2_monthly() -> tuple[np.ndarray, np.ndarray, int]:
    """statsmodels' weekly Mauna Loa CO2 as calendar-month means, gaps filled.

    Returns:
      ``(time, value, num_interpolated)``: time float64 (526,) decimal years
      (``y + (m - 1) / 12``), value float64 (526,) ppm, and how many months had
      no reading and were interpolated linearly in time.
    """
    import statsmodels.api as sm  # Slow import; build time only.

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean()
    missing = int(monthly.isna().sum())
    monthly = monthly.interpolate(method="time", limit_area="inside")
    if monthly.isna().any():  # A gap at either end cannot be interpolated.
        raise DataError(
            "statsmodels' co2 data starts or ends with a month without readings: "
            "reinstall statsmodels."
        )
    index = monthly.index
    time = index.year.to_numpy(np.float64) + (index.month.to_numpy(np.float64) - 1) / 12
    return time, monthly.to_numpy(np.float64), missing


def sunspots_yearly() -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' yearly sunspot numbers.

    Returns:
      ``(time, value)``: years float64 (309,) 1700..2008 and sunspot numbers
      float64 (309,).
    """
    import statsmodels.api as sm  # Slow import; build time only.

    frame = sm.datasets.sunspots.load_pandas().data
    return frame["YEAR"].to_numpy(np.float64), frame["SUNACTIVITY"].to_numpy(np.float64)


class _TimeSeries(storage.OfflineBuilder, skip_registration=True):
    """One example per time step, chronological splits (see ``split_bounds``).

    Subclasses set ``UNIT``, ``FREQUENCY``, ``SEASON``, ``SOURCE`` and implement
    ``_series() -> (time (N,), value (N,), num_interpolated)``.
    """

    UNIT: str
    FREQUENCY: str
    SEASON: int
    SOURCE: str

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.SOURCE,
            features=tfds.features.FeaturesDict(
                {
                    # Raw bytes: TFDS would store a float64 scalar as a float32
                    # (tf.train.Example float_list) and lose the month (1958.1666...).
                    "time": tfds.features.Tensor(
                        shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                    ),
                    "value": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("time", "value"),
            homepage="https://www.statsmodels.org/stable/datasets/index.html",
            disable_shuffling=True,  # Time order.
            metadata=tfds.core.MetadataDict(),
        )

    def _series(self) -> tuple[np.ndarray, np.ndarray, int]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with statsmodels.
        time, value, num_interpolated = self._series()
        if not (np.all(np.isfinite(value)) and np.all(np.diff(time) > 0)):
            raise DataError(f"{self.name}: statsmodels' data has gaps or is out of order.")
        # Saved with the dataset (metadata.json), read back by lab.data.info.
        self.info.metadata.update(
            {
                "unit": self.UNIT,
                "frequency": self.FREQUENCY,
                "season": self.SEASON,
                "source": self.SOURCE,
                "num_interpolated": num_interpolated,
                "num_steps": len(time),
            }
        )
        return {
            split: self._generate_examples(time[a:b], value[a:b], a)
            for split, (a, b) in split_bounds(len(time)).items()
        }

    def _generate_examples(self, time, value, offset):
        for k in range(len(time)):
            yield offset + k, {"time": np.float64(time[k]), "value": np.float32(value[k])}


class Co2(_TimeSeries):
    """Mauna Loa CO2, monthly means 1958-03..2001-12, 526 months."""

    name = "co2"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Monthly means of statsmodels' weekly co2, gaps interpolated."}
    UNIT = "ppm"
    FREQUENCY = "monthly"
    SEASON = 12
    SOURCE = (
        "Atmospheric CO2 at Mauna Loa (Scripps), weekly 1958-2001 as bundled with "
        "statsmodels (datasets.co2); calendar-month means, months without a reading "
        "interpolated linearly in time."
    )

    def _series(self):
        return co2_monthly()


class Sunspots(_TimeSeries):
    """Yearly sunspot numbers 1700-2008, 309 years."""

    name = "sunspots"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "statsmodels' sunspots, 1700-2008."}
    UNIT = "sunspot number"
    FREQUENCY = "yearly"
    SEASON = 11
    SOURCE = (
        "Yearly mean sunspot numbers 1700-2008 as bundled with statsmodels "
        "(datasets.sunspots, column SUNACTIVITY)."
    )

    def _series(self):
        time, value = sunspots_yearly()
        return time, value, 0


def windows(
    values: np.ndarray, timesteps: int, start: int, stop: int, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows for one-step-ahead forecasting.

    Args:
      values: the series, shape (N,).
      timesteps: window length T >= 1.
      start, stop: the target indices are ``start <= t < stop``; the inputs may
        reach back before ``start`` (test windows read the end of validation).
      dtype: of both outputs (float64 for least-squares fits).

    Returns:
      ``(inputs, targets)``: dtype (M, T) with ``inputs[i] = values[t - T : t]``
      and dtype (M,) with ``targets[i] = values[t]``, for ``t = start + i``,
      ``M = stop - start``.

    Raises:
      ValueError: ``start < timesteps`` (the first window would start before
        the series), ``stop > N``, ``stop < start`` or ``timesteps < 1``.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must have shape (N,), got {values.shape}.")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}.")
    if start < timesteps:
        raise ValueError(
            f"start={start} < timesteps={timesteps}: the window of target {start} would "
            f"begin before the series; start at index {timesteps} or later."
        )
    if not start <= stop <= len(values):
        raise ValueError(f"need start <= stop <= len(values)={len(values)}, got {start}, {stop}.")
    view = np.lib.stride_tricks.sliding_window_view(values, timesteps)  # (N - T + 1, T)
    inputs = view[start - timesteps : stop - timesteps].astype(dtype)
    return inputs, values[start:stop].astype(dtype)
