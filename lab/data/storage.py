"""Building TFDS datasets and reading whole splits back as numpy arrays.

Everything goes through TFDS ``array_record`` files and ``as_data_source``
(random access, no TensorFlow). Decoding records one by one through the TFDS
decoder costs Python time per record, which adds up to seconds for a split of
tens of thousands of examples even with the bulk ``__getitems__`` read. So the
first read of a split also writes all its features to an uncompressed ``.npz``
cache next to the ``array_record`` files (``lab-numpy-cache-<split>.npz``);
later reads load that at the speed of reading one file.
The cache records the size and mtime of the shard files it was made from
and is ignored (and rewritten) when they change, damaged or unreadable; it
is never required (read-only data dirs just skip it).
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import io
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source
from etils import epath
from tensorflow_datasets.core.utils import py_utils, tqdm_utils

from lab import progress
from lab.data.errors import DataError
from lab.files import write_json

DATA_DIR_ENV = "LAB_DATA_DIR"
_CACHE_VERSION = 1
# The first read of a split of this many examples or more (decoded record by record, then cached)
# prints a progress line before and after it; smaller ones are read without a word.
_ANNOUNCE_EXAMPLES = 10_000


def one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, shortened, for DataError texts."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Resolves the TFDS data directory.

    Args:
      data_dir: explicit directory; wins when given.

    Returns:
      ``data_dir``, else ``$LAB_DATA_DIR``, else ``~/tensorflow_datasets``.
    """
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of lab's builders: builds from local sources only.

    TFDS 4.9.10 locates an in-package builder's source file (to look for a
    ``checksums.tsv`` of download URLs) through ``importlib_resources``, which
    it does not install; that lookup fails before anything is built. Our
    builders download nothing, so we point TFDS at the file directly.
    """

    @py_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        return epath.Path(inspect.getfile(cls))


@contextlib.contextmanager
def build_lock(data_dir: str, name: str):
    """Holds an exclusive lock on building dataset `name` in `data_dir`, across processes.

    Two processes preparing the same dataset at once (two runs started together on a fresh
    machine, test workers) would both write it and one would fail renaming its finished folder
    onto the other's. Under the lock the second one waits, then finds the dataset built. A
    data dir where the lock file cannot be created (read-only) is used without a lock: nothing
    can be built there anyway.
    """
    lock = None
    with contextlib.suppress(OSError):
        os.makedirs(data_dir, exist_ok=True)
        lock = open(os.path.join(data_dir, f".lab-build-{name}.lock"), "a")
    if lock is None:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def _quiet_tfds():
    """Silences TFDS's console output inside the block and restores it after.

    A first build would otherwise print a size banner of "Unknown size"s, nested tqdm bars
    ("Generating splits...", "Shuffling .../incomplete.*") and absl warnings about the
    half-made folder; ``prepare`` prints two short lines of its own instead. Errors still
    propagate.
    """
    # TFDS offers a setter for its progress bars but no getter.
    bars = getattr(tqdm_utils, "_active", True)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        # The size banner and the "downloaded and prepared" line are prints to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)
        absl_logger.setLevel(level)


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """Builds ``builder`` as array_record files unless already built.

    A build prints ``building dataset NAME once into DIR ...`` and ``dataset NAME ready (T s)``
    to stdout instead of TFDS's banners and progress bars. A second call is a no-op (TFDS sees
    the finished version folder).

    Returns:
      The same builder, ready for ``as_data_source``.
    """
    with _quiet_tfds():  # is_prepared warns about the empty folder of a dataset not built yet
        if builder.is_prepared():
            return builder
    print(f"building dataset {builder.name} once into {builder.data_dir} ...", flush=True)
    start = time.perf_counter()
    with _quiet_tfds():
        builder.download_and_prepare(file_format="array_record")
    print(f"dataset {builder.name} ready ({time.perf_counter() - start:.1f} s)", flush=True)
    return builder


def split_names(split: str) -> list[str]:
    """Base split names in a TFDS split expression ('train[:10%]+test')."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


def check_split(builder: tfds.core.DatasetBuilder, split: str, dataset: str) -> None:
    """Raises DataError naming the valid splits when ``split`` is unknown."""
    known = sorted(builder.info.splits.keys())
    if not known:  # Unknown before download (stock datasets): let TFDS decide.
        return
    bad = [s for s in split_names(split) if s not in known]
    if bad:
        raise DataError(
            f"Unknown split {split!r} for dataset {dataset!r}: choose from "
            f'{", ".join(known)} (TFDS slicing like "train[:10%]" also works).'
        )


def _read_records(source: Sequence[Any]) -> list[dict[str, Any]]:
    """Decodes every record of a TFDS data source, in order."""
    n = len(source)
    inner = getattr(source, "data_source", None)
    if isinstance(inner, array_record_data_source.ArrayRecordDataSource):
        # One bulk read of the raw records (array_record reads them in parallel),
        # then TFDS decodes each.
        return source.__getitems__(list(range(n)))
    # tfds.testing.mock_data's source has no working bulk read.
    return [source[i] for i in range(n)]


def _stack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks per-record features; bytes/str become an object array of str."""
    if not records:
        return {}
    out = {}
    for key in records[0]:
        values = [r[key] for r in records]
        if isinstance(values[0], (bytes, str)):
            out[key] = np.array(
                [v.decode("utf-8") if isinstance(v, bytes) else v for v in values], dtype=object
            )
        else:
            out[key] = np.stack([np.asarray(v) for v in values])
    return out


def _cache_file(builder: tfds.core.DatasetBuilder, split: str) -> Path | None:
    """Where the numpy cache of ``split`` lives, or None if it must not exist.

    Only plain split names of datasets actually built on disk are cached (not
    slices, not ``tfds.testing.mock_data``, whose data_dir holds no data).
    """
    if not re.fullmatch(r"\w+", split) or split not in builder.info.splits:
        return None
    data_path = Path(os.fspath(builder.data_path))
    if not (data_path / "dataset_info.json").is_file():
        return None
    return data_path / f"lab-numpy-cache-{split}.npz"


def _fingerprint(builder: tfds.core.DatasetBuilder, split: str) -> str:
    """Identifies the shard files a cache was made from."""
    stats = []
    for path in builder.info.splits[split].filepaths:
        st = os.stat(os.fspath(path))
        stats.append([Path(os.fspath(path)).name, st.st_size, st.st_mtime_ns])
    return json.dumps({"version": _CACHE_VERSION, "files": stats})


# npz entries of a string feature KEY: all strings joined, and their lengths
# (object arrays would need pickle, which we never load).
_TEXT, _LENGTHS = "__text__", "__lengths__"


def _load_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__fingerprint__"]) != fingerprint:
                return None
            out = {}
            for name in z.files:
                if name.startswith(_TEXT):
                    key = name[len(_TEXT) :]
                    joined, ends = str(z[name]), np.cumsum(z[_LENGTHS + key])
                    starts = ends - z[_LENGTHS + key]
                    out[key] = np.array(
                        [joined[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
                        dtype=object,
                    )
                elif not name.startswith(("__fingerprint__", _LENGTHS)):
                    out[name] = z[name]
            return out
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # Missing, stale or damaged cache: rebuild it.


def _write_cache(path: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> None:
    entries = {"__fingerprint__": np.array(fingerprint)}
    for key, arr in arrays.items():
        if arr.dtype == object:
            joined = "".join(arr)
            if "\0" in joined:  # numpy unicode arrays drop trailing NULs.
                return
            entries[_TEXT + key] = np.array(joined)
            entries[_LENGTHS + key] = np.array([len(v) for v in arr], np.int64)
        else:
            entries[key] = arr
    try:
        # Write then rename so a crash or a concurrent reader never sees half a
        # file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; match TFDS's files.
        os.replace(tmp, path)
    except OSError:
        pass  # Read-only data dir: the cache is an optimisation only.


def cached_checksum(builder: tfds.core.DatasetBuilder, compute: Callable[[], str]) -> str:
    """`compute()`, kept in the built dataset's ``lab-checksum.json`` under the fingerprint of
    its shard files (computed again when they change; not kept in a read-only data dir)."""
    data_path = Path(os.fspath(builder.data_path))
    if not (data_path / "dataset_info.json").is_file():
        return compute()
    path = data_path / "lab-checksum.json"
    fingerprint = json.dumps({s: _fingerprint(builder, s) for s in sorted(builder.info.splits)})
    try:
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return saved["sha256"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    value = compute()
    with contextlib.suppress(OSError):
        write_json(str(path), {"fingerprint": fingerprint, "sha256": value})
    return value


def read_split(
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    dataset: str,
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Reads a whole split of a prepared builder into memory.

    Args:
      builder: a prepared TFDS builder.
      split: split name or TFDS split expression ('train[:10%]').
      dataset: lab's dataset name (for error messages).
      keys: the features to return; all when None.

    Returns:
      ``{key: array of shape (N, *feature_shape)}``; string features come back
      as object arrays of ``str``.

    Raises:
      DataError: unknown split, or files that cannot be read.
    """
    check_split(builder, split, dataset)
    path = _cache_file(builder, split)
    arrays = fingerprint = None
    try:
        if path is not None:
            fingerprint = _fingerprint(builder, split)
            arrays = _load_cache(path, fingerprint)
        if arrays is None:
            count = builder.info.splits[split].num_examples if path is not None else 0
            announce = progress.phase(
                f"reading {dataset} {split} ({count:,} examples) from its TFDS files, once: later reads "
                f"use a numpy cache", f"read {dataset} {split}") \
                if count >= _ANNOUNCE_EXAMPLES else contextlib.nullcontext()
            with announce:
                arrays = _stack(_read_records(builder.as_data_source(split=split)))
                if path is not None:
                    _write_cache(path, fingerprint, arrays)
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise DataError(
            f"Cannot read split {split!r} of {dataset!r} from {builder.data_dir} "
            f"({one_line(e)}); delete that folder and load again to rebuild it."
        ) from e
    return arrays if keys is None else {k: arrays[k] for k in keys}
