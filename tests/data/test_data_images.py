"""Image/signal classification datasets: digits, mnist1d, mnist, fashion_mnist."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lab import data
from lab.data import images, registry


def _check_classification(split, n, input_shape, lo=0.0, hi=1.0):
    x, y = split["inputs"], split["label"]
    assert set(split) == {"inputs", "label"}
    assert x.dtype == np.float32 and x.shape == (n, *input_shape)
    assert y.dtype == np.int32 and y.shape == (n,)
    if lo is not None:
        assert x.min() >= lo and x.max() <= hi
    assert set(np.unique(y)) == set(range(10))


# ------------------------------------------------------------------ digits --


def test_digits_canonical(digits):
    _check_classification(digits["train"], 1437, (8, 8, 1))
    _check_classification(digits["test"], 360, (8, 8, 1))
    # Raw values are 0..16: /16 puts the brightest pixels at exactly 1.
    assert digits["train"]["inputs"].max() == 1.0


def test_digits_info(digits, data_dir):
    info = data.info("digits", data_dir=data_dir)
    assert info["splits"] == {"train": 1437, "test": 360}
    assert info["num_classes"] == 10 and info["input_shape"] == (8, 8, 1)
    assert info["class_names"] == {"label": [str(d) for d in range(10)]}


def test_digits_split_is_stratified_disjoint_and_complete(digits, data_dir):
    train = np.bincount(digits["train"]["label"], minlength=10) / 1437
    test = np.bincount(digits["test"]["label"], minlength=10) / 360
    np.testing.assert_allclose(train, test, atol=0.01)
    index = {
        s: np.array([r["index"] for r in tfds.data_source("digits", split=s, data_dir=data_dir)])
        for s in ("train", "test")
    }
    assert not set(index["train"]) & set(index["test"])
    assert sorted(np.concatenate(list(index.values()))) == list(range(1797))


def test_digits_rebuild_is_identical(digits, tmp_path):
    for split in ("train", "test"):
        again = data.load("digits", split, data_dir=str(tmp_path))
        for k in ("inputs", "label"):
            np.testing.assert_array_equal(again[k], digits[split][k])


# ----------------------------------------------------------------- mnist1d --


def test_mnist1d_matches_generator_and_is_deterministic(data_dir):
    out = {s: data.load("mnist1d", s, data_dir=data_dir) for s in ("train", "test")}
    _check_classification(out["train"], 4000, (40,), lo=None)
    _check_classification(out["test"], 1000, (40,), lo=None)
    # A second, independent generation gives the stored values bit for bit,
    # and leaves the caller's global RNG alone (mnist1d reseeds it).
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    gen = images.generate_mnist1d()
    assert np.random.rand() == expected
    np.testing.assert_array_equal(out["train"]["inputs"], gen["x"].astype(np.float32))
    np.testing.assert_array_equal(out["test"]["label"], gen["y_test"])
    info = data.info("mnist1d", data_dir=data_dir)
    assert info["splits"] == {"train": 4000, "test": 1000}
    assert info["input_shape"] == (40,)
    assert info["class_names"] == {"label": [str(d) for d in range(10)]}


# ------------------------------------------------------------------- mnist --


def test_mnist_via_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        out = data.load("mnist", "train", data_dir=str(tmp_path))
        info = data.info("mnist", data_dir=str(tmp_path))
    x, y = out["inputs"], out["label"]
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5  # Scaled by 255.
    assert y.dtype == np.int32 and ((0 <= y) & (y < 10)).all()
    assert info["num_classes"] == 10 and info["input_shape"] == (28, 28, 1)
    assert info["splits"] == {"train": 60000, "test": 10000}
    assert info["class_names"] == {"label": [str(d) for d in range(10)]}
    # The mock's data_dir is inside the TFDS package: no cache written there.
    assert not list(Path(tfds.__file__).parent.rglob("lab-numpy-cache-*"))


# ----------------------------------------------------------- fashion_mnist --


def _write_idx(path: Path, array: np.ndarray, type_byte: int = 0x08):
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    with gzip.open(path, "wb") as f:
        f.write(header + big_endian.tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST IDX folder: 30 train / 10 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    arrays = {}
    for split, n in (("train", 30), ("test", 10)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        img_name, lbl_name = images.FASHION_FILES[split]
        _write_idx(folder / img_name, x)
        _write_idx(folder / lbl_name, y)
        arrays[split] = (x, y)
    monkeypatch.setenv("LAB_FASHION_MNIST_DIR", str(folder))
    return folder, arrays


def test_fashion_from_idx_files(fake_fashion, tmp_path):
    _, arrays = fake_fashion
    for split, (x, y) in arrays.items():
        out = data.load("fashion_mnist", split, data_dir=str(tmp_path / "tfds"))
        _check_classification(out, len(y), (28, 28, 1))
        np.testing.assert_array_equal(out["inputs"][..., 0], x.astype(np.float32) / 255)
        np.testing.assert_array_equal(out["label"], y)
    info = data.info("fashion_mnist", data_dir=str(tmp_path / "tfds"))
    assert info["tfds_name"] == "fashion_mnist_local"
    assert info["splits"] == {"train": 30, "test": 10}
    assert info["class_names"] == {"label": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]}
    # Second load: served from the numpy cache, same values.
    again = data.load("fashion_mnist", "test", data_dir=str(tmp_path / "tfds"))
    np.testing.assert_array_equal(again["label"], arrays["test"][1])


def test_fashion_corrupt_file_fails_before_building(fake_fashion, tmp_path):
    folder, _ = fake_fashion
    path = folder / images.FASHION_FILES["test"][0]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(data.DataError, match="truncated") as e:
        data.load("fashion_mnist", "train", data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(e.value)
    # Nothing half-built is left behind to be mistaken for a dataset.
    assert not (tmp_path / "tfds" / "fashion_mnist_local" / "1.0.0").exists()


def test_fashion_missing_files_and_no_download(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LAB_FASHION_MNIST_DIR", str(empty))

    def no_network(name, data_dir):
        raise ConnectionError(f"no network to download {name}")

    # The stock TFDS fallback would try the network: simulate its failure.
    monkeypatch.setattr(registry, "_prepare_stock", no_network)
    for call in (
        lambda: data.load("fashion_mnist", "train", data_dir=str(tmp_path / "tfds")),
        lambda: data.info("fashion_mnist", data_dir=str(tmp_path / "tfds")),
    ):
        with pytest.raises(data.DataError) as e:
            call()
        msg = str(e.value)
        assert "apt-get install dataset-fashion-mnist" in msg
        assert str(empty) in msg and "\n" not in msg


def test_read_idx_formats_and_corruption(tmp_path):
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    _write_idx(tmp_path / "f.gz", floats, type_byte=0x0D)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "f.gz"), floats)
    ints = np.arange(-5, 5, dtype=np.int32)
    _write_idx(tmp_path / "i.gz", ints, type_byte=0x0C)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "i.gz"), ints)
    # Truncated payload, bad magic, not gzip: one clear DataError each.
    raw = gzip.decompress((tmp_path / "i.gz").read_bytes())
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-3])
    (tmp_path / "magic").write_bytes(b"\x01\x02\x03\x04")
    (tmp_path / "bad.gz").write_bytes(b"definitely not gzip")
    for name, match in (
        ("short.gz", "truncated"),
        ("magic", "not an IDX"),
        ("bad.gz", "Cannot read"),
    ):
        with pytest.raises(data.DataError, match=match) as e:
            images.read_idx(tmp_path / name)
        assert "dataset-fashion-mnist" in str(e.value)


@pytest.mark.skipif(
    not images.fashion_files_present(Path(images.DEFAULT_FASHION_DIR)),
    reason="dataset-fashion-mnist missing",
)
def test_real_fashion_idx_files():
    # Parsing the real files is fast; building TFDS from them (~20 s) is left
    # to test_real_fashion_build.
    folder = Path(images.DEFAULT_FASHION_DIR)
    for split, n in (("train", 60000), ("test", 10000)):
        img_name, lbl_name = images.FASHION_FILES[split]
        x, y = images.read_idx(folder / img_name), images.read_idx(folder / lbl_name)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(y), [n // 10] * 10)


@pytest.mark.skipif(
    not images.fashion_files_present(Path(images.DEFAULT_FASHION_DIR)) and os.environ.get("LAB_REQUIRE_FASHION") != "1",
    reason="dataset-fashion-mnist missing (CI installs it and sets LAB_REQUIRE_FASHION=1)",
)
def test_real_fashion_build_is_the_one_the_references_stand_on(tmp_path, monkeypatch):
    """The build from the Debian package's files, its splits and its content checksum: the one
    every fashion_mnist row of the reference table recorded."""
    import json

    monkeypatch.delenv("LAB_FASHION_MNIST_DIR", raising=False)
    train = data.load("fashion_mnist", "train", data_dir=str(tmp_path))
    test = data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    _check_classification(train, 60000, (28, 28, 1))
    _check_classification(test, 10000, (28, 28, 1))
    table = json.loads((Path(__file__).parents[2] / "experiments" / "reference_results.json").read_text())
    recorded = {m["environment"]["dataset"]["sha256"] for row in table["rows"] for m in row.get("measured", {}).values()
                if m["environment"].get("dataset", {}).get("name") == "fashion_mnist"}
    assert len(recorded) == 1 and data.checksum("fashion_mnist", data_dir=str(tmp_path)) in recorded
