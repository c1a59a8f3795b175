"""Batches are pure functions of (seed, step); shards are disjoint; eval sees every example once."""

import numpy as np
import pytest

from lab import generative_setup, pipeline


def arrays(n=103):
    return {"inputs": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
            "label": np.arange(n, dtype=np.int32)}


def test_epoch_batcher_is_a_function_of_seed_and_step():
    a, b = pipeline.EpochBatcher(arrays(), 10, seed=3), pipeline.EpochBatcher(arrays(), 10, seed=3)
    order = [a.batch(s)["label"] for s in range(25)]
    # b visits the steps out of order (as a resumed run does): same batches.
    for s in (24, 3, 11, 0, 10):
        np.testing.assert_array_equal(b.batch(s)["label"], order[s])
    other = pipeline.EpochBatcher(arrays(), 10, seed=4)
    assert not np.array_equal(other.batch(0)["label"], order[0])


def test_epoch_batcher_covers_an_epoch_without_repeats():
    b = pipeline.EpochBatcher(arrays(103), 10, seed=0)
    assert b.steps_per_epoch == 10
    epoch0 = np.concatenate([b.batch(s)["label"] for s in range(10)])
    assert len(set(epoch0.tolist())) == 100  # 3 dropped this epoch, none repeated
    epoch1 = np.concatenate([b.batch(s)["label"] for s in range(10, 20)])
    assert not np.array_equal(epoch0, epoch1), "epoch 1 repeated epoch 0's order"
    assert b.position(13) == {"epoch": 1, "batch_in_epoch": 3}


def test_process_shards_are_disjoint_and_make_the_global_batch():
    whole = pipeline.EpochBatcher(arrays(), 12, seed=0)
    parts = [pipeline.EpochBatcher(arrays(), 12, seed=0, process_index=i, process_count=3) for i in range(3)]
    for step in (0, 7, 9):
        pieces = [p.indices(step) for p in parts]
        assert all(len(x) == 4 for x in pieces)
        np.testing.assert_array_equal(np.concatenate(pieces), whole.indices(step))


def test_stacked_batches_equal_the_batches_stacked():
    """Several steps' batches in one gather (a steps_per_call > 1 call): the same rows, across an
    epoch boundary, for a process's part too; a batcher without `batches` is stacked."""
    for batcher, local in ((pipeline.EpochBatcher(arrays(), 10, seed=1), 10),
                           (pipeline.EpochBatcher(arrays(), 12, seed=1, process_index=1, process_count=3), 4)):
        stacked = pipeline.stacked_batches(batcher, 7, 6)  # steps 7-12 cross the end of epoch 0
        assert stacked["inputs"].shape == (6, local, 3)
        for k, v in stacked.items():
            np.testing.assert_array_equal(v, np.stack([batcher.batch(s)[k] for s in range(7, 13)]))
    windows = pipeline.WindowBatcher(np.arange(500, dtype=np.int32), block_size=8, batch_size=4, seed=0)
    stacked = pipeline.stacked_batches(windows, 3, 2)
    np.testing.assert_array_equal(stacked["inputs"], np.stack([windows.batch(3)["inputs"], windows.batch(4)["inputs"]]))


def test_padded_batches_see_each_example_once_with_a_mask():
    batches = list(pipeline.padded_batches(arrays(23), 10))
    assert [len(b["label"]) for b in batches] == [10, 10, 10]
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 23
    np.testing.assert_array_equal(labels[mask == 1], np.arange(23))


def test_window_batcher_targets_are_inputs_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    b = pipeline.WindowBatcher(tokens, block_size=16, batch_size=4, seed=0)
    batch = b.batch(5)
    assert batch["inputs"].shape == (4, 16) and batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(b.batch(5)["inputs"], batch["inputs"])


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        pipeline.EpochBatcher(arrays(5), 10, seed=0)


def test_latent_noise_is_a_function_of_the_step_and_split_over_processes():
    arrays = {"inputs": np.arange(40, dtype=np.float32).reshape(20, 2)}
    whole = generative_setup.LatentBatcher(pipeline.EpochBatcher(arrays, 8, seed=3), dim=5, seed=3)
    parts = [generative_setup.LatentBatcher(pipeline.EpochBatcher(arrays, 8, seed=3, process_index=i, process_count=2),
                                    dim=5, seed=3, process_index=i, process_count=2) for i in range(2)]
    first = whole.batch(4)
    assert first["noise"].shape == (8, 5) and first["noise"].dtype == np.float32
    np.testing.assert_array_equal(first["noise"], whole.batch(4)["noise"])  # resume reads the same
    assert not np.array_equal(first["noise"], whole.batch(5)["noise"])
    np.testing.assert_array_equal(np.concatenate([p.batch(4)["noise"] for p in parts]), first["noise"])
    assert whole.position(4) == whole.base.position(4)
    eval_noise = generative_setup.fixed_latents(6, 5, seed=3, stream=0)
    np.testing.assert_array_equal(eval_noise, generative_setup.fixed_latents(6, 5, seed=3, stream=0))
    assert not np.array_equal(eval_noise, generative_setup.fixed_latents(6, 5, seed=3, stream=1))


def test_prefetcher_gives_the_base_batches_and_reads_ahead_on_its_thread():
    import threading
    import time

    class Recording:
        """An EpochBatcher that notes which steps were read, and on which thread."""

        def __init__(self):
            self.base = pipeline.EpochBatcher(arrays(), 10, seed=4)
            self.batch_size, self.calls = 10, []

        def position(self, step):
            return self.base.position(step)

        def batch(self, step):
            self.calls.append((step, threading.current_thread().name))
            return self.base.batch(step)

    base = Recording()
    ahead = pipeline.Prefetcher(base, depth=2)
    reference = pipeline.EpochBatcher(arrays(), 10, seed=4)
    for step in [0, 1, 2, 3]:
        np.testing.assert_array_equal(ahead.batch(step)["label"], reference.batch(step)["label"])
    deadline = time.monotonic() + 5
    while len(base.calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s for s, _ in base.calls] == [0, 1, 2, 3, 4, 5]  # 4 and 5 read before they are asked for
    for step in [9, 10, 4]:  # a jump (a resume), then back: read when asked
        np.testing.assert_array_equal(ahead.batch(step)["label"], reference.batch(step)["label"])
    assert {name for _, name in base.calls} == {"lab-prefetch_0"}, base.calls
    assert ahead.position(13) == reference.position(13)


def test_window_batcher_draws_every_window_including_the_last():
    """Offsets run over 0 .. len - L - 1: with 12 tokens and L = 8 the windows start at 0..3, and
    the last one ends at the stream's last token (its target)."""
    tokens = np.arange(12, dtype=np.int32)
    b = pipeline.WindowBatcher(tokens, block_size=8, batch_size=16, seed=0)
    starts = {int(x) for step in range(20) for x in b.batch(step)["inputs"][:, 0]}
    assert starts == {0, 1, 2, 3}
    assert max(int(t) for step in range(20) for t in b.batch(step)["targets"][:, -1]) == 11
    assert pipeline.WindowBatcher(np.arange(9), block_size=8, batch_size=2, seed=0).batch(0)["inputs"].shape == (2, 8)


def test_batches_a_user_cannot_have_are_config_errors():
    from lab.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="at most 5"):
        pipeline.EpochBatcher(arrays(5), 10, seed=0)
    with pytest.raises(ConfigValueError, match="block size of at most 8"):
        pipeline.WindowBatcher(np.arange(9), block_size=9, batch_size=2, seed=0)
    with pytest.raises(ConfigValueError, match="multiple of 3"):
        pipeline.WindowBatcher(np.arange(100), block_size=8, batch_size=4, seed=0, process_count=3)
