"""Streamed splits give `load`'s rows, and the batchers give the same batches from them as from memory."""

import numpy as np
import pytest

from experiments.mlp_classifier import config as mlp_config
from experiments.mlp_classifier.__main__ import validate
from lab import data, pipeline
from lab.data import streaming
from lab.errors import ConfigValueError


@pytest.fixture(scope="module")
def streamed(data_dir, digits):
    del digits  # built (and loaded) first, so streaming opens a prepared dataset
    return {s: data.stream("digits", s, data_dir=data_dir) for s in ("train", "test")}


def assert_same_batch(got: dict, want: dict, where: str):
    assert sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
    for k in want:
        assert got[k].dtype == want[k].dtype, f"{where}: {k} is {got[k].dtype}, memory gives {want[k].dtype}"
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{where}: {k} differs")


def test_streamed_rows_equal_the_loaded_rows(streamed, digits):
    train = streamed["train"]
    assert len(train) == len(digits["train"]["label"]) == 1437
    idx = np.array([1436, 0, 5, 5, 700])  # unsorted, repeated, both ends
    assert_same_batch(train.gather(idx), {k: v[idx] for k, v in digits["train"].items()}, "gather")
    assert train.gather(idx)["inputs"].max() <= 1.0  # scaled like load (/16), not raw pixels
    empty = train.gather(np.zeros(0, np.int64))
    assert empty["inputs"].shape == (0, 8, 8, 1) and empty["label"].dtype == np.int32


def test_a_sliced_split_streams_its_own_rows(data_dir, digits):
    part = data.stream("digits", "train[100:150]", data_dir=data_dir)
    assert len(part) == 50
    assert_same_batch(part.gather(np.arange(50)), {k: v[100:150] for k, v in digits["train"].items()}, "slice")


def test_the_fast_decoder_agrees_with_tfds_decoding(data_dir, digits, monkeypatch):
    # The records' own decoder replaces TFDS's for fixed-shape numeric features: force TFDS's.
    fast = data.stream("digits", "test", data_dir=data_dir)
    monkeypatch.setattr(streaming._FixedNumeric, "of", classmethod(lambda cls, features, keys: None))
    slow = data.stream("digits", "test", data_dir=data_dir)
    assert fast._decode is not None and slow._decode is None
    idx = np.arange(0, 360, 7)
    assert_same_batch(fast.gather(idx), slow.gather(idx), "fast vs TFDS decoder")


def test_streamed_epoch_batches_equal_in_memory_ones(streamed, digits):
    memory = pipeline.EpochBatcher(digits["train"], 100, seed=7)
    stream = pipeline.EpochBatcher(streamed["train"], 100, seed=7)
    assert stream.steps_per_epoch == memory.steps_per_epoch == 14
    for step in (0, 1, 13, 14, 15, 29):  # across the epoch boundaries at 14 and 28
        assert_same_batch(stream.batch(step), memory.batch(step), f"step {step}")


class CountingRows:
    """A RowSource around another that records every row it is asked for."""

    def __init__(self, rows):
        self.rows, self.read = rows, []

    def __len__(self):
        return len(self.rows)

    def gather(self, indices):
        self.read.extend(np.asarray(indices).tolist())
        return self.rows.gather(indices)


def test_two_processes_read_only_their_rows_and_make_the_one_process_batch(streamed, digits):
    whole = pipeline.EpochBatcher(digits["train"], 100, seed=3)
    sources = [CountingRows(streamed["train"]) for _ in range(2)]
    parts = [pipeline.EpochBatcher(sources[i], 100, seed=3, process_index=i, process_count=2) for i in range(2)]
    for step in (0, 13, 14):
        for source in sources:
            source.read = []
        pieces = [p.batch(step) for p in parts]
        assert all(len(b["label"]) == 50 for b in pieces)
        joined = {k: np.concatenate([b[k] for b in pieces]) for k in pieces[0]}
        assert_same_batch(joined, whole.batch(step), f"step {step}, 2 processes joined")
        assert len(sources[0].read) == len(sources[1].read) == 50, f"step {step}: a process read more than its rows"
        assert not set(sources[0].read) & set(sources[1].read), f"step {step}: the processes read the same rows"


@pytest.mark.parametrize("process_count", [1, 2])
def test_streamed_eval_batches_equal_in_memory_ones(streamed, digits, process_count):
    for i in range(process_count):
        shard = dict(process_index=i, process_count=process_count)
        memory = list(pipeline.padded_batches(digits["test"], 100, **shard))
        stream = list(pipeline.padded_batches(streamed["test"], 100, **shard))
        assert len(stream) == len(memory) == 4  # 360 rows: the last batch padded and masked
        for j, (got, want) in enumerate(zip(stream, memory)):
            assert_same_batch(got, want, f"eval batch {j}, process {i} of {process_count}")
    assert stream[-1]["mask"].sum() < len(stream[-1]["mask"])  # the padding really is there


def test_bad_input_is_refused_clearly(data_dir, digits):
    with pytest.raises(data.DataError, match="Unknown split 'validation'.*choose from test, train"):
        data.stream("digits", "validation", data_dir=data_dir)
    with pytest.raises(data.DataError, match="'co2' cannot stream.*digits, fashion_mnist, mnist1d, mnist"):
        data.stream("co2", "train", data_dir=data_dir)
    with pytest.raises(data.DataError, match="Unknown dataset 'nope'"):
        data.stream("nope", "train", data_dir=data_dir)
    with pytest.raises(IndexError, match="row 1437 is out of range"):
        data.stream("digits", "train", data_dir=data_dir).gather([0, 1437])
    with pytest.raises(TypeError, match="dict of arrays or a RowSource"):
        pipeline.EpochBatcher([np.zeros(10)], 2, seed=0)


def test_unreadable_files_give_a_data_error(tmp_path, data_dir, digits):
    import shutil

    shutil.copytree(f"{data_dir}/digits", tmp_path / "digits")
    for shard in (tmp_path / "digits").glob("*/digits-train.array_record-*"):
        shard.write_bytes(b"not an array_record file")
    with pytest.raises(data.DataError, match="Cannot read rows of split 'train' of 'digits'.*rebuild it"):
        data.stream("digits", "train", data_dir=str(tmp_path))


def test_the_config_key_chooses_memory_or_stream():
    config = mlp_config.get_config("fashion")
    assert config.data_source == "memory"  # every variant has the key, memory by default
    config.data_source = "stream"
    validate(config)
    config.data_source = "disk"
    with pytest.raises(ConfigValueError, match=r"^config.data_source='disk': use one of memory, stream$"):
        validate(config)

