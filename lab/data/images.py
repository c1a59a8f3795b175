"""Small classification datasets as TFDS builders: digits, Fashion-MNIST, MNIST-1D.

All build offline (no TensorFlow, no network) into ``array_record`` files, one
TFDS example per image/signal, in the source's order
(``disable_shuffling=True``: the on-disk order is the split's natural order).

* ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 digits, pixel
  values 0..16). The train/test split is part of the dataset, not of a run:
  ``train_test_split(test_size=0.2, stratify=label, random_state=0)`` gives
  1,437 train / 360 test; each split is stored sorted by the original index,
  which is kept as the ``index`` feature.
* ``fashion_mnist_local``: the real Fashion-MNIST 60,000 / 10,000 from the
  Debian package ``dataset-fashion-mnist`` (IDX ``.gz`` files in
  ``/usr/share/datasets/fashion-mnist/``, or ``$LAB_FASHION_MNIST_DIR``).
  Registered under its own name because TFDS ships a stock ``fashion_mnist``.
* ``mnist1d``: ``mnist1d.data.make_dataset(get_dataset_args())``, generated
  (seed 42 in the args, so deterministic): 4,000 train / 1,000 test signals of
  length 40, float64 in the generator, stored as float32.
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lab.data import storage
from lab.data.errors import DataError

FASHION_DIR_ENV = "LAB_FASHION_MNIST_DIR"
DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_HINT = (
    "apt-get install dataset-fashion-mnist, or set LAB_FASHION_MNIST_DIR to "
    "a folder holding the four Fashion-MNIST IDX .gz files"
)

FASHION_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# IDX file names per split, as Zalando (and Debian) ship them.
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type byte -> big-endian numpy dtype (yann.lecun.com/exdb/mnist format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array.

    Args:
      path: ``*.gz`` or raw IDX file.

    Returns:
      Array of the file's shape, e.g. (60000, 28, 28) uint8 for images or
      (60000,) uint8 for labels, in native byte order.

    Raises:
      DataError: unreadable or malformed file.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises both on damaged files.
        raise DataError(
            f"Cannot read IDX file {path} ({e}): reinstall with "
            "`apt-get install --reinstall dataset-fashion-mnist`."
        ) from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number): reinstall "
            "with `apt-get install --reinstall dataset-fashion-mnist`."
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt ({len(data)} bytes, "
            f"header says {expected}): reinstall with `apt-get install "
            "--reinstall dataset-fashion-mnist`."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def fashion_source_dir() -> Path:
    """The folder searched for Fashion-MNIST IDX files ($LAB_FASHION_MNIST_DIR)."""
    return Path(os.environ.get(FASHION_DIR_ENV) or DEFAULT_FASHION_DIR)


def fashion_files_present(directory: Path | None = None) -> bool:
    """True when all four Fashion-MNIST IDX files are in ``directory``."""
    directory = fashion_source_dir() if directory is None else directory
    return all((directory / f).is_file() for pair in FASHION_FILES.values() for f in pair)


def _image_features(shape: tuple[int, ...], names=None, num_classes=10):
    """Features of one labelled image: raw uint8 pixels + class label."""
    # tfds.features.Image needs TensorFlow to encode numpy arrays; a uint8
    # Tensor stores the same pixels without it.
    label = (
        tfds.features.ClassLabel(names=list(names))
        if names
        else tfds.features.ClassLabel(num_classes=num_classes)
    )
    return {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8), "label": label}


class Digits(storage.OfflineBuilder):
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 split."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, stratified 80/20, seed 0."}
    TEST_SIZE = 0.2
    SPLIT_SEED = 0

    def _info(self) -> tfds.core.DatasetInfo:
        features = _image_features((8, 8, 1), names=[str(d) for d in range(10)])
        # Original row in load_digits(): lets tests check the split is disjoint.
        features["index"] = tfds.features.Scalar(dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI ML hand-written digits (sklearn load_digits), 8x8, "
            "pixel values 0..16.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data is inside sklearn.
        from sklearn.datasets import load_digits  # Heavy import; build time only.
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
        labels = digits.target.astype(np.int64)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.TEST_SIZE,
            stratify=labels,
            random_state=self.SPLIT_SEED,
        )
        return {
            "train": self._generate_examples(images, labels, np.sort(train_idx)),
            "test": self._generate_examples(images, labels, np.sort(test_idx)),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i]), "index": int(i)}


class FashionMnistLocal(storage.OfflineBuilder):
    """Fashion-MNIST from local IDX files (Debian's dataset-fashion-mnist)."""

    name = "fashion_mnist_local"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Zalando Fashion-MNIST 60k/10k from IDX files."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST (Zalando, MIT licence): 28x28 grey "
            "clothing images, 10 classes, built from local IDX files.",
            features=tfds.features.FeaturesDict(
                _image_features((28, 28, 1), names=FASHION_CLASS_NAMES)
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The files are local.
        directory = fashion_source_dir()
        if not fashion_files_present(directory):
            raise DataError(f"Fashion-MNIST IDX files not found in {directory}: {FASHION_HINT}.")
        # Read and check all four files before writing anything, so a damaged
        # test file fails in a second, not after the 60k train images are built.
        arrays = {
            split: _read_fashion_pair(directory / images, directory / labels)
            for split, (images, labels) in FASHION_FILES.items()
        }
        return {split: self._generate_examples(*pair) for split, pair in arrays.items()}

    def _generate_examples(self, images, labels):
        for i in range(len(labels)):
            yield i, {"image": images[i][..., None], "label": int(labels[i])}


def _read_fashion_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks one split: (N, 28, 28) uint8 images, (N,) labels."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if (
        images.ndim != 3
        or images.shape[1:] != (28, 28)
        or labels.ndim != 1
        or len(images) != len(labels)
        or images.dtype != np.uint8
        or labels.max(initial=0) > 9
    ):
        raise DataError(
            f"{images_path} / {labels_path} do not hold matching 28x28 uint8 "
            f"images and 0..9 labels (shapes {images.shape}, {labels.shape}): "
            "reinstall with `apt-get install --reinstall dataset-fashion-mnist`."
        )
    return images, labels


class Mnist1d(storage.OfflineBuilder):
    """MNIST-1D (Greydanus 2020), generated offline with the paper's args."""

    name = "mnist1d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "make_dataset(get_dataset_args()), seed 42."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST-1D: 1D signals of length 40 made from 10 digit "
            "templates; 4000 train / 1000 test.",
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(40,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        data = generate_mnist1d()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, x, y):
        for i in range(len(y)):
            yield i, {"signal": x[i].astype(np.float32), "label": int(y[i])}


def generate_mnist1d() -> dict[str, np.ndarray]:
    """Runs the MNIST-1D generator without touching the caller's RNG state.

    Returns:
      ``{'x': (4000, 40) float64, 'y': (4000,) int64, 'x_test': (1000, 40),
      'y_test': (1000,)}``.
    """
    # make_dataset() reseeds the global numpy and python RNGs (seed 42); put
    # them back so building a dataset cannot change an experiment's randomness.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        import mnist1d.data  # Imported lazily: only needed to build.

        # get_dataset() would try a download first; make_dataset is offline.
        data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}
