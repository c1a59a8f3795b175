"""lab's dataset names -> TFDS builders -> canonical numpy splits.

``load`` returns, per dataset family:

* classification (digits, fashion_mnist, mnist, mnist1d):
  ``{'inputs': float32 (N, *input_shape), 'label': int32 (N,)}``; images are
  scaled to [0, 1] (digits /16, 28x28 uint8 /255); mnist1d is the generator's
  standardised float signal, unscaled.
* shakespeare_char: ``{'tokens': uint8 (num_chars,)}``.
* shakespeare_plays: ``{'text': object (N,) of str, 'play': int32 (N,),
  'genre': int32 (N,)}``.
* time series (co2, sunspots): ``{'time': float64 (N,) decimal years,
  'value': float32 (N,)}``, one entry per time step in time order.
* shakespeare_dialogue: ``{'prompt': object (N,) of str, 'reply': object (N,)
  of str, 'play': int32 (N,), 'scene': int32 (N,)}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from lab.data import dialogue, images, shakespeare, storage, timeseries
from lab.data import shakespeare_text as st
from lab.data.errors import DataError

Builder = tfds.core.DatasetBuilder


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How lab serves one dataset.

    Attributes:
      prepare: data_dir -> built TFDS builder.
      keys: TFDS features read by ``load``.
      canonical: raw stacked features -> ``load``'s output.
      describe: builder -> dataset-specific part of ``info``.
    """

    prepare: Callable[[str], Builder]
    keys: tuple[str, ...]
    canonical: Callable[[dict[str, np.ndarray], Builder], dict[str, np.ndarray]]
    describe: Callable[[Builder], dict[str, Any]]


# ------------------------------------------------------------- preparing --


def _own(builder_cls: type[Builder]) -> Callable[[str], Builder]:
    """Prepare function for one of lab's offline builders."""
    return lambda data_dir: storage.prepare(builder_cls(data_dir=data_dir))


def _prepare_stock(name: str, data_dir: str) -> Builder:
    """Downloads and prepares a stock TFDS dataset (needs the network).

    A separate function so tests can replace it (no network there).
    """
    return storage.prepare(tfds.builder(name, data_dir=data_dir))


def _stock(name: str) -> Callable[[str], Builder]:
    def prepare(data_dir: str) -> Builder:
        try:
            return _prepare_stock(name, data_dir)
        except DataError:
            raise
        except Exception as e:  # Download / TFDS failures, of any kind.
            raise DataError(
                f"Cannot download and prepare stock TFDS {name!r} into {data_dir} "
                f"({storage.one_line(e)}): that needs the network (and TensorFlow "
                "to encode its images); or copy a prepared "
                f"{name}/<version> folder into {data_dir}."
            ) from e

    return prepare


def _prepare_fashion(data_dir: str) -> Builder:
    """Local Debian files first, then an earlier local build, then stock TFDS."""
    local = images.FashionMnistLocal(data_dir=data_dir)
    if images.fashion_files_present() or local.is_prepared():
        return storage.prepare(local)
    try:
        return _prepare_stock("fashion_mnist", data_dir)
    except Exception as e:  # No network, no TF download deps, ...: say why.
        raise DataError(
            f"Fashion-MNIST IDX files not found in {images.fashion_source_dir()} "
            f"and the TFDS download failed ({storage.one_line(e)}): "
            f"{images.FASHION_HINT}."
        ) from e


# ------------------------------------------------------------- canonical --


def _classification(key: str, scale: float | None):
    def canonical(raw, builder):
        del builder
        x = raw[key].astype(np.float32)
        if scale is not None:
            x /= np.float32(scale)
        return {"inputs": x, "label": raw["label"].astype(np.int32)}

    return canonical


def _describe_classification(input_shape: tuple[int, ...]):
    def describe(builder):
        names = builder.info.features["label"].names
        return {"num_classes": len(names), "input_shape": input_shape,
                "class_names": {"label": list(names)}}

    return describe


def _char_canonical(raw, builder):
    tokenizer = shakespeare.CharTokenizer(builder.info.metadata["vocab"])
    return {"tokens": tokenizer.encode("".join(raw["text"]))}


def _describe_char(builder):
    meta = builder.info.metadata
    return {
        "vocab": meta["vocab"],
        "vocab_size": len(meta["vocab"]),
        "sha256": meta["sha256"],
        "num_chars": meta["num_chars"],
        "num_speeches": meta["num_speeches"],
        # Characters (= tokens) per split, not TFDS chunks.
        "splits": dict(meta["split_chars"]),
        "class_names": {},  # no labels
    }


def _plays_canonical(raw, builder):
    del builder
    return {
        "text": raw["text"],
        "play": raw["play"].astype(np.int32),
        "genre": raw["genre"].astype(np.int32),
    }


def _describe_plays(builder):
    del builder
    return {
        "plays": list(st.PLAYS),
        "genres": list(st.GENRES),
        "play_genre": [st.GENRES.index(st.PLAY_GENRE[p]) for p in st.PLAYS],
        "num_classes": len(st.PLAYS),
        "num_genres": len(st.GENRES),
        "class_names": {"play": [st.PLAY_TITLES[p] for p in st.PLAYS], "genre": list(st.GENRES)},
    }


def _timeseries_canonical(raw, builder):
    del builder
    return {"time": raw["time"].astype(np.float64), "value": raw["value"].astype(np.float32)}


def _describe_timeseries(builder):
    meta = builder.info.metadata
    return {
        "unit": meta["unit"],
        "frequency": meta["frequency"],
        "season": int(meta["season"]),
        "source": meta["source"],
        "num_interpolated": int(meta["num_interpolated"]),
        "class_names": {},  # no labels
    }


def _dialogue_canonical(raw, builder):
    del builder
    return {
        "prompt": raw["prompt"],
        "reply": raw["reply"],
        "play": raw["play"].astype(np.int32),
        "scene": raw["scene"].astype(np.int32),
    }


def _describe_dialogue(builder):
    return {
        "plays": list(st.PLAYS),
        "num_pairs": {k: v.num_examples for k, v in builder.info.splits.items()},
        "num_scenes": dict(builder.info.metadata["split_scenes"]),
        "class_names": {},  # 'play' is a feature here, not a target
    }


_SPECS: dict[str, _Spec] = {
    "digits": _Spec(
        _own(images.Digits),
        ("image", "label"),
        _classification("image", 16.0),
        _describe_classification((8, 8, 1)),
    ),
    "fashion_mnist": _Spec(
        _prepare_fashion,
        ("image", "label"),
        _classification("image", 255.0),
        _describe_classification((28, 28, 1)),
    ),
    "mnist1d": _Spec(
        _own(images.Mnist1d),
        ("signal", "label"),
        _classification("signal", None),
        _describe_classification((40,)),
    ),
    "mnist": _Spec(
        _stock("mnist"),
        ("image", "label"),
        _classification("image", 255.0),
        _describe_classification((28, 28, 1)),
    ),
    "shakespeare_char": _Spec(
        _own(shakespeare.ShakespeareChar), ("text",), _char_canonical, _describe_char
    ),
    "shakespeare_plays": _Spec(
        _own(shakespeare.ShakespearePlays),
        ("text", "play", "genre"),
        _plays_canonical,
        _describe_plays,
    ),
    "co2": _Spec(
        _own(timeseries.Co2), ("time", "value"), _timeseries_canonical, _describe_timeseries
    ),
    "sunspots": _Spec(
        _own(timeseries.Sunspots), ("time", "value"), _timeseries_canonical, _describe_timeseries
    ),
    "shakespeare_dialogue": _Spec(
        _own(dialogue.ShakespeareDialogue),
        ("prompt", "reply", "play", "scene"),
        _dialogue_canonical,
        _describe_dialogue,
    ),
}

DATASETS: tuple[str, ...] = tuple(_SPECS)

# Split sizes of stock datasets, for info() before (or without) a download.
_STOCK_SPLITS = {"mnist": {"train": 60000, "test": 10000}}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise DataError(f"Unknown dataset {name!r}; lab knows: {', '.join(DATASETS)}.")
    return _SPECS[name]


def _prepared(name: str, data_dir: str) -> Builder:
    """The built dataset's builder; one process at a time builds (the builder is made under the
    lock, so one that waited reads the finished dataset's info from disk)."""
    with storage.build_lock(data_dir, name):
        return _spec(name).prepare(data_dir)


def load(name: str, split: str, *, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """Builds ``name`` once (offline, cached in data_dir) and reads a split.

    Args:
      name: one of ``DATASETS``.
      split: 'train', 'test', 'validation' (where it exists), or any TFDS split
        expression such as 'train[:1000]' or 'train+validation'.
      data_dir: TFDS data directory; default ``$LAB_DATA_DIR``, else
        ``~/tensorflow_datasets``.

    Returns:
      The whole split in memory as numpy arrays, keyed as described in the
      module docstring (e.g. digits train: inputs (1437, 8, 8, 1) float32 in
      [0, 1], label (1437,) int32).

    Raises:
      DataError: unknown dataset/split, missing sources, unreadable files.
    """
    spec = _spec(name)
    builder = _prepared(name, storage.default_data_dir(data_dir))
    raw = storage.read_split(builder, split, dataset=name, keys=spec.keys)
    return spec.canonical(raw, builder)


def info(name: str, *, data_dir: str | None = None) -> dict[str, Any]:
    """Static facts about a dataset, building it first if needed.

    Returns:
      For classification: ``{'num_classes', 'input_shape', 'splits': {split:
      num_examples}}``. For shakespeare_char: ``{'vocab', 'vocab_size',
      'sha256', 'num_chars', 'num_speeches', 'splits': {split: num_chars}}``.
      For shakespeare_plays: ``{'plays' (ids), 'genres', 'play_genre' (genre
      id per play), 'num_classes', 'num_genres', 'splits'}``. For co2 and
      sunspots: ``{'unit', 'frequency', 'season' (seasonal-naive period in
      steps), 'source', 'num_interpolated', 'splits'}``. For
      shakespeare_dialogue: ``{'plays', 'num_pairs' (per split), 'num_scenes'
      (per split), 'splits'}``. Always also
      ``'name'``, ``'tfds_name'`` (the TFDS builder used) and
      ``'class_names'``: label key -> readable class names in label-id order
      (``{'label': ['0', ..., '9']}``; ``{'play': [37 titles such as
      'Hamlet'], 'genre': ['comedy', 'history', 'tragedy']}``; ``{}`` for
      shakespeare_char, the time series and shakespeare_dialogue), the form ``lab.report.plot_run`` takes.

    Raises:
      DataError: as for ``load``.
    """
    spec = _spec(name)
    data_dir = storage.default_data_dir(data_dir)
    if name in _STOCK_SPLITS:
        # Stock TFDS builders know their features without a download.
        builder = tfds.builder(name, data_dir=data_dir)
    else:
        builder = _prepared(name, data_dir)
    facts = {
        "name": name,
        "tfds_name": builder.name,
        "splits": {k: v.num_examples for k, v in builder.info.splits.items()}
        or dict(_STOCK_SPLITS.get(name, {})),
    }
    facts.update(spec.describe(builder))
    return facts


def checksum(name: str, *, data_dir: str | None = None) -> str:
    """sha256 (hex) of the dataset's content: every split as ``load`` returns it (split names,
    array keys, dtypes, shapes and bytes, in name order). The same data gives the same checksum
    wherever it was built (the TFDS files' bytes differ from build to build).

    Raises:
      DataError: as for ``load``.
    """
    data_dir = storage.default_data_dir(data_dir)
    builder = _prepared(name, data_dir) if name not in _STOCK_SPLITS else tfds.builder(name, data_dir=data_dir)
    return storage.cached_checksum(builder, lambda: _content_checksum(name, data_dir))


def _content_checksum(name: str, data_dir: str) -> str:
    digest = hashlib.sha256()
    for split in sorted(info(name, data_dir=data_dir)["splits"]):
        arrays = load(name, split, data_dir=data_dir)
        for key in sorted(arrays):
            array = arrays[key]
            digest.update(f"{split}/{key}/{array.dtype.str}/{array.shape}\0".encode())
            if array.dtype == object:  # strings: their UTF-8, each ended by a NUL
                digest.update("".join(f"{x}\0" for x in array.ravel()).encode())
            else:
                digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def char_tokenizer(data_dir: str | None = None) -> shakespeare.CharTokenizer:
    """The ``CharTokenizer`` of the built ``shakespeare_char`` vocabulary."""
    return shakespeare.CharTokenizer(info("shakespeare_char", data_dir=data_dir)["vocab"])


def series(name: str, data_dir: str | None = None) -> dict[str, Any]:
    """A whole time series, read through ``lab.data.load``, with its split bounds.

    Args:
      name: 'co2' or 'sunspots'.
      data_dir: TFDS data directory (see ``lab.data.load``).

    Returns:
      ``{'time': float64 (N,), 'value': float32 (N,)}`` (train, validation and
      test concatenated, in time order), ``'bounds'``: ``{'train': (0, a),
      'validation': (a, b), 'test': (b, N)}`` (python ints, half-open), and the
      dataset's ``'season'`` (int, steps) and ``'unit'``.

    Raises:
      DataError: ``name`` is not a time series dataset, or as for ``load``.
    """
    if name not in timeseries.DATASETS:
        raise DataError(
            f"{name!r} is not a time series dataset; choose from {', '.join(timeseries.DATASETS)}."
        )
    parts = [load(name, split, data_dir=data_dir) for split in timeseries.SPLITS]
    bounds, start = {}, 0
    for split, part in zip(timeseries.SPLITS, parts, strict=True):
        bounds[split] = (start, start + len(part["value"]))
        start += len(part["value"])
    facts = info(name, data_dir=data_dir)
    return {
        "time": np.concatenate([p["time"] for p in parts]).astype(np.float64),
        "value": np.concatenate([p["value"] for p in parts]).astype(np.float32),
        "bounds": bounds,
        "season": int(facts["season"]),
        "unit": facts["unit"],
    }
