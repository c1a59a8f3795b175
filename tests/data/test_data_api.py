"""lab.data public API: names, errors, data_dir, TFDS registration, caching."""

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from lab import data
from lab.data import images, storage


def test_datasets_names():
    assert data.DATASETS == (
        "digits",
        "fashion_mnist",
        "mnist1d",
        "mnist",
        "shakespeare_char",
        "shakespeare_plays",
        "co2",
        "sunspots",
        "shakespeare_dialogue",
    )


@pytest.mark.parametrize("call", [data.load, data.info])
def test_unknown_dataset_is_one_line_data_error(call, tmp_path):
    args = ("cifar10", "train") if call is data.load else ("cifar10",)
    with pytest.raises(data.DataError) as e:
        call(*args, data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "cifar10" in msg
    for name in data.DATASETS:
        assert name in msg
    assert isinstance(e.value, ValueError)  # Callers may catch ValueError.


def test_unknown_split(digits, data_dir):
    with pytest.raises(data.DataError, match="choose from test, train"):
        data.load("digits", "validation", data_dir=data_dir)


def test_split_expressions(digits, data_dir):
    head = data.load("digits", "train[:100]", data_dir=data_dir)
    np.testing.assert_array_equal(head["inputs"], digits["train"]["inputs"][:100])
    both = data.load("digits", "train+test", data_dir=data_dir)
    assert len(both["label"]) == 1797


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    assert data.default_data_dir("/x") == "/x"
    monkeypatch.delenv("LAB_DATA_DIR")
    assert data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_registered_with_tfds(digits, data_dir):
    # Importing lab.data registers the builders under their names.
    assert tfds.builder("digits", data_dir=data_dir).info.splits["train"].num_examples == 1437
    source = tfds.data_source("digits", split="test", data_dir=data_dir)
    assert len(source) == 360 and source[0]["image"].shape == (8, 8, 1)


def test_second_load_does_not_rebuild(digits, data_dir):
    version_dir = Path(data_dir) / "digits" / "1.0.0"
    before = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
    data.load("digits", "train", data_dir=data_dir)
    after = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
    assert before == after


def test_missing_shard_is_data_error(digits, data_dir, tmp_path):
    copy = tmp_path / "copy"
    (copy / "digits").mkdir(parents=True)
    src = Path(data_dir) / "digits" / "1.0.0"
    dst = copy / "digits" / "1.0.0"
    dst.mkdir()
    for f in src.iterdir():
        if "train.array_record" not in f.name:
            (dst / f.name).write_bytes(f.read_bytes())
    with pytest.raises(data.DataError, match="delete that folder") as e:
        data.load("digits", "train", data_dir=str(copy))
    assert "\n" not in str(e.value)


def test_numpy_cache_roundtrip_and_invalidation(digits, data_dir):
    builder = tfds.builder("digits", data_dir=data_dir)
    keys = ("image", "label")
    cache = Path(os.fspath(builder.data_path)) / "lab-numpy-cache-train.npz"
    cache.unlink(missing_ok=True)
    fresh = storage.read_split(builder, "train", dataset="digits", keys=keys)
    assert cache.is_file()
    cached = storage.read_split(builder, "train", dataset="digits", keys=keys)
    for k in keys:
        np.testing.assert_array_equal(fresh[k], cached[k])
    # A damaged cache is ignored and rewritten, never trusted.
    cache.write_bytes(b"not a zip file")
    again = storage.read_split(builder, "train", dataset="digits", keys=keys)
    np.testing.assert_array_equal(again["image"], fresh["image"])
    assert cache.stat().st_size > 1000


def test_numpy_cache_of_strings(tmp_path):
    arrays = {
        "text": np.array(["a\nb", "", "é€ x"], dtype=object),
        "n": np.arange(3, dtype=np.int32),
    }
    storage._write_cache(tmp_path / "c.npz", "fp", arrays)
    back = storage._load_cache(tmp_path / "c.npz", "fp")
    assert back["text"].dtype == object and list(back["text"]) == list(arrays["text"])
    np.testing.assert_array_equal(back["n"], arrays["n"])
    assert storage._load_cache(tmp_path / "c.npz", "other") is None


def test_stock_download_failure_is_one_line(monkeypatch, tmp_path):
    from lab.data import registry

    def fails(name, data_dir):
        raise OSError("connection refused\nretry 2\nretry 3")

    monkeypatch.setattr(registry, "_prepare_stock", fails)
    with pytest.raises(data.DataError, match="needs the network") as e:
        data.load("mnist", "train", data_dir=str(tmp_path))
    assert "\n" not in str(e.value) and "connection refused" in str(e.value)


def test_a_second_process_waits_for_the_build_and_then_reads_it(tmp_path):
    # Two processes building one dataset at once used to collide on TFDS's final rename.
    root = str(Path(__file__).resolve().parents[2])
    code = ("import sys, lab.data; print('imported', flush=True); "
            "print(len(lab.data.load('digits', 'train', data_dir=sys.argv[1])['label']))")
    with storage.build_lock(str(tmp_path), "digits"):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "imported"
        time.sleep(5)  # unlocked, digits builds in ~1-2 s here
        assert proc.poll() is None and not list(tmp_path.glob("digits/*/dataset_info.json"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == "1437"


def test_first_build_prints_one_lab_line_instead_of_tfds_output(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import logging, sys, lab.data\n"
        "from tensorflow_datasets.core.utils import tqdm_utils\n"
        "state = lambda: (tqdm_utils._active, logging.getLogger('absl').level)\n"
        "before = state()\n"
        "lab.data.load('digits', 'train', data_dir=sys.argv[1])\n"
        "print('second load', flush=True)\n"
        "lab.data.load('digits', 'test', data_dir=sys.argv[1])\n"
        # TFDS's progress bars and the absl log level are back as they were.
        "print('restored', state() == before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0] == f"building dataset digits once into {tmp_path}/digits/1.0.0 ...", lines
    assert re.fullmatch(r"dataset digits ready \(\d+\.\d s\)", lines[1]), lines
    assert lines[2:] == ["second load", "restored True"], lines
    for noise in ("Downloading and preparing", "incomplete", "Generating splits", "Variant folder"):
        assert noise not in proc.stdout


def test_a_failed_build_still_raises_and_restores_tfds_output(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise OSError("disk full")

    absl_level = logging.getLogger("absl").level
    builder = images.Digits(data_dir=str(tmp_path))
    monkeypatch.setattr(builder, "download_and_prepare", fails)
    with pytest.raises(OSError, match="disk full"):
        storage.prepare(builder)
    assert tqdm_utils._active and logging.getLogger("absl").level == absl_level
