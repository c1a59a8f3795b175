"""Random access to a split's rows straight from its array_record files, for data larger than memory.

``load`` reads a whole split into numpy; ``stream`` opens it instead and reads only the rows asked
for, in bulk, giving them in ``load``'s canonical form (same keys, dtypes and scaling):

    >>> from lab import data
    >>> train = data.stream('digits', 'train')
    >>> len(train)
    1437
    >>> rows = train.gather([5, 0, 9])   # == data.load('digits', 'train')[k][[5, 0, 9]]
    >>> rows['inputs'].shape, rows['label'].dtype
    ((3, 8, 8, 1), dtype('int32'))

A ``StreamedSplit`` is a ``lab.pipeline.RowSource``: ``EpochBatcher`` and ``padded_batches`` take it
in place of a dict of arrays and give the same batches, each process reading only its own rows.

How a gather reads: one bulk read of the raw records (array_record reads them on its own threads),
then each record is parsed once. TFDS's own decoder (``source.__getitems__``) spends its time per
example in Python on its generic feature machinery; for the fixed-shape numeric features the
classification datasets are made of (``tfds.features.Tensor`` without byte encoding, ``ClassLabel``,
``Scalar``), TFDS decodes to exactly ``np.array(values, dtype).reshape(shape)``, so this module does
that itself straight from the parsed ``tf.train.Example``, a fraction of that cost. Any other feature
(encoded images, text) goes through TFDS's decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source
from tensorflow_datasets.proto import tf_example_pb2

from lab.data import registry, storage
from lab.data.errors import DataError

# The datasets whose `canonical` function maps each row on its own (a cast and a scale), so the
# canonical form of gathered rows equals the same rows of the canonical whole split. The text and
# time-series datasets are consumed whole (a token stream, a series cut into windows): load them.
STREAMABLE: tuple[str, ...] = ("digits", "fashion_mnist", "mnist1d", "mnist")


class _FixedNumeric:
    """Decodes the serialized records of features that are fixed-shape numeric tensors.

    TFDS serializes such a feature (encoding NONE) as a `tf.train.Example` int64_list (integers)
    or float_list (floats) of its flattened values, and decodes it back with
    `np.array(values, dtype).reshape(shape)`: this does the same, into one preallocated array
    per key.
    """

    def __init__(self, specs: dict[str, tfds.features.TensorInfo]):
        self.specs = specs

    def __call__(self, records: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Records (K serialized examples) -> {key: array (K, *shape) of the feature's dtype}."""
        out, lists = {}, {}
        for key, info in self.specs.items():
            out[key] = np.empty((len(records), int(np.prod(info.shape, dtype=int))), info.np_dtype)
            lists[key] = "float_list" if np.issubdtype(info.np_dtype, np.floating) else "int64_list"
        for i, record in enumerate(records):
            feature = tf_example_pb2.Example.FromString(record).features.feature
            for key, flat in out.items():
                # A damaged record (a feature missing, so read as empty, or of another length)
                # does not fit its row: ValueError.
                flat[i] = getattr(feature[key], lists[key]).value
        return {key: flat.reshape((len(records), *self.specs[key].shape)) for key, flat in out.items()}

    @classmethod
    def of(cls, features: tfds.features.FeaturesDict, keys: Sequence[str]) -> _FixedNumeric | None:
        """The decoder of `keys`, or None when one of them is not a fixed-shape numeric tensor."""
        specs = {}
        for key in keys:
            feature = features[key]
            info = feature.get_tensor_info() if isinstance(feature, tfds.features.Tensor) else None
            if (info is None or feature.get_serialized_info() != info  # byte-encoded or nested
                    or any(d is None for d in info.shape)
                    or not np.issubdtype(info.np_dtype, np.number)):
                return None
            specs[key] = info
        return cls(specs)


class StreamedSplit:
    """One split of a prepared dataset, read row by row from its array_record files on demand.

    A `lab.pipeline.RowSource`: `len()` and `gather(indices)`. Nothing of the split is held in
    memory beyond the records of the current gather.

    Attributes:
      name: lab's dataset name.
      split: the split expression it was opened with ('train', 'test[:1000]', ...).
    """

    def __init__(self, name: str, split: str, builder: tfds.core.DatasetBuilder):
        self.name, self.split = name, split
        self._spec = registry._spec(name)
        self._builder = builder
        self._source = builder.as_data_source(split=split)  # TFDS's: decodes with TFDS
        raw = getattr(self._source, "data_source", None)
        if isinstance(raw, array_record_data_source.ArrayRecordDataSource):
            self._raw = raw  # raw serialized records, bulk reads
            self._decode = _FixedNumeric.of(builder.info.features, self._spec.keys)
        else:  # tfds.testing.mock_data's source: TFDS decodes, row by row (no working bulk read)
            self._raw, self._decode = None, None
        self._len = len(self._source)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"StreamedSplit({self.name!r}, {self.split!r}, {self._len} rows)"

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The rows at `indices`, in that order, in `lab.data.load`'s canonical form.

        Args:
          indices: int (K,), each in [0, len(self)); repeats allowed.
        Returns:
          {key: array (K, ...)}: the same keys, dtypes and values as
          `{k: v[indices] for k, v in lab.data.load(name, split).items()}`.
        Raises:
          IndexError: an index out of range.
          DataError: the files cannot be read (damaged or removed since `stream`).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError(f"gather takes a 1-D array of row indices, got shape {idx.shape}")
        if idx.size == 0:  # The shapes and dtypes of an empty gather are those of any row.
            return {k: v[:0] for k, v in self.gather(np.zeros(1, np.int64)).items()}
        if idx.min() < 0 or idx.max() >= self._len:
            bad = idx[(idx < 0) | (idx >= self._len)][0]
            raise IndexError(f"row {bad} is out of range for {self!r}")
        rows = idx.tolist()
        try:
            if self._decode is not None:
                raw = self._decode(self._raw.__getitems__(rows))
            elif self._raw is not None:
                raw = storage._stack(self._source.__getitems__(rows))  # TFDS decodes each record
            else:
                raw = storage._stack([self._source[i] for i in rows])
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise DataError(
                f"Cannot read rows of split {self.split!r} of {self.name!r} from "
                f"{self._builder.data_dir} ({storage.one_line(e)}); delete that folder and "
                "load again to rebuild it.") from e
        return self._spec.canonical({k: raw[k] for k in self._spec.keys}, self._builder)


def stream(name: str, split: str, *, data_dir: str | None = None) -> StreamedSplit:
    """Opens a split for random access from its array_record files, building the dataset first
    if needed (as `load` does), without reading it into memory.

    Args:
      name: one of `STREAMABLE` (digits, fashion_mnist, mnist1d, mnist).
      split: 'train', 'test', or a TFDS split expression such as 'train[:1000]'.
      data_dir: TFDS data directory; default `$LAB_DATA_DIR`, else `~/tensorflow_datasets`.
    Returns:
      A `StreamedSplit` of the split's N rows (e.g. fashion_mnist train: 60,000 rows;
      `gather` gives inputs float32 (K, 28, 28, 1) in [0, 1], label int32 (K,)).
    Raises:
      DataError: unknown dataset or split, a dataset that cannot stream, unreadable files.
    """
    registry._spec(name)  # an unknown name: DataError listing the known ones
    if name not in STREAMABLE:
        raise DataError(
            f"Dataset {name!r} cannot stream: only the record-per-example classification datasets "
            f"do ({', '.join(STREAMABLE)}); read {name!r} whole with lab.data.load.")
    builder = registry._prepared(name, storage.default_data_dir(data_dir))
    storage.check_split(builder, split, name)
    try:
        rows = StreamedSplit(name, split, builder)
        if len(rows) == 0:
            raise DataError(f"Split {split!r} of {name!r} has no rows to stream.")
        rows.gather(np.zeros(1, np.int64))  # reads one record now: damaged files fail here, not mid-run
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise DataError(
            f"Cannot open split {split!r} of {name!r} from {builder.data_dir} "
            f"({storage.one_line(e)}); delete that folder and load again to rebuild it.") from e
    return rows
