"""Batches from in-memory numpy arrays or streamed rows: the boundary between data and the train step.

Every batch is a pure function of (seed, step), so the data position of a run IS its step: a run
resumed at step k reads exactly the batches an uninterrupted run reads from step k on, with no
iterator state to lose. Batches are gathered in bulk (one fancy-index per array), never example
by example: a per-example Python loop would cost more than a small model's whole step.

Where the rows come from is one small protocol, `RowSource` (`len()` and `gather(indices)`): a dict
of in-memory arrays is one (`ArrayRows`), a split streamed from its files (`lab.data.stream`)
another. The batchers choose indices the same way for both, so the same (seed, step) gives the
same batch from memory or from disk.

Multi-host: each process gathers only its own contiguous slice of the global batch
(`process_index`, `process_count`), so no two processes ever read the same example in a step.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from lab.errors import ConfigValueError


def _check_arrays(arrays: dict[str, np.ndarray]) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays differ in length: {sizes}")
    return next(iter(sizes.values()))


@runtime_checkable
class RowSource(Protocol):
    """N examples as rows of named arrays, read in bulk by index: what the batchers read from.

    `len(source)` is N. `source.gather(indices)` takes int (K,) row indices in [0, N) (sorted or
    not, repeats allowed) and returns `{key: array (K, ...)}` whose row i is example
    `indices[i]`: the rows a dict of arrays would give for `{k: v[indices]}`.
    """

    def __len__(self) -> int: ...

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class ArrayRows:
    """A dict of in-memory arrays of equal length N as a `RowSource`: one fancy-index per array."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self._len = _check_arrays(arrays)

    def __len__(self) -> int:
        return self._len

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` (int (K,)) of every array: {key: (K, ...)}."""
        return {k: v[indices] for k, v in self.arrays.items()}


def as_rows(data: Mapping[str, np.ndarray] | RowSource) -> RowSource:
    """`data` as a `RowSource`: a dict of arrays (all of one length N) wrapped in `ArrayRows`, a
    `RowSource` (e.g. `lab.data.stream(...)`) as it is."""
    if isinstance(data, Mapping):
        return ArrayRows(data)
    if isinstance(data, RowSource):
        return data
    raise TypeError(f"batches come from a dict of arrays or a RowSource (len() and gather()), "
                    f"not {type(data).__name__}")


class EpochBatcher:
    """Shuffled fixed-size batches over epochs, without replacement within an epoch.

    Epoch e uses the permutation `default_rng([seed, e]).permutation(n)`; the last
    `n % batch_size` examples of each permutation are dropped so every train batch has the same
    shape (the step compiles once). Examples dropped in one epoch are seen in others.

    `data` is a dict of arrays of equal length n, or any `RowSource` (a streamed split): the
    indices of a step depend only on (seed, step, n), so both give the same batches.
    """

    def __init__(self, data: Mapping[str, np.ndarray] | RowSource, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        self.rows = as_rows(data)
        self.num_examples = len(self.rows)
        if batch_size > self.num_examples:
            raise ConfigValueError(f"config.batch_size={batch_size} exceeds the {self.num_examples} training examples: "
                                   f"use a batch_size of at most {self.num_examples}")
        if batch_size % process_count:
            raise ConfigValueError(f"config.batch_size={batch_size} is not divisible by the {process_count} processes: "
                                   f"use a multiple of {process_count}")
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = self.num_examples // batch_size
        local = batch_size // process_count
        self._slice = slice(process_index * local, (process_index + 1) * local)
        self._epoch, self._perm = -1, None

    def position(self, step: int) -> dict:
        """Where batch `step` lies in the data: its epoch and index within the epoch."""
        return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch}

    def indices(self, step: int) -> np.ndarray:
        """Example indices of this process's part of global batch `step`: int (B/processes,).

        The global batch is sorted before it is split, so the global batch and its example
        order are the same whatever the process count.
        """
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        # Sorted within the batch: part of the published recipe (the sum order fixes the numbers);
        # cheap, and the sorted gather is no faster than an unsorted one.
        return np.sort(self._perm[i * self.batch_size:(i + 1) * self.batch_size])[self._slice]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch `step`: each array (B/processes, ...); only these
        rows are read."""
        return self.rows.gather(self.indices(step))

    def batches(self, step: int, num: int) -> dict[str, np.ndarray]:
        """Batches `step` .. `step + num - 1` stacked: each array (num, B/processes, ...), equal
        to stacking `batch(s)`, read in one gather (no second copy to stack them)."""
        rows = self.rows.gather(np.concatenate([self.indices(s) for s in range(step, step + num)]))
        return {k: v.reshape(num, -1, *v.shape[1:]) for k, v in rows.items()}


def stacked_batches(batcher, step: int, num: int) -> dict[str, np.ndarray]:
    """`num` consecutive batches of any batcher stacked on a new leading axis (num, B, ...): its
    own `batches` where it has one (a single gather), else its `batch(s)` stacked."""
    if hasattr(batcher, "batches"):
        return batcher.batches(step, num)
    batches = [batcher.batch(s) for s in range(step, step + num)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Prefetcher:
    """Another batcher's batches, read ahead on one background thread while the step runs.

    For rows that come from disk (a streamed split): batch `step` is a pure function of the
    step, so the next `depth` batches can be read before they are asked for and nothing about
    the run changes (the same batches, the same resume). Every read happens on the one worker
    thread (the base batcher's caches see one caller); a step asked for out of order (a resume)
    is read then, and reading ahead starts again from it.
    """

    def __init__(self, base, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.base, self.depth = base, depth
        self.batch_size = base.batch_size
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-prefetch")
        self._pending: dict[int, concurrent.futures.Future] = {}

    def position(self, step: int) -> dict:
        return self.base.position(step)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The base batcher's batch `step` (read ahead when the steps come in order)."""
        for stale in [s for s in self._pending if s < step or s > step + self.depth]:
            self._pending.pop(stale).cancel()
        for s in range(step, step + self.depth + 1):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(self.base.batch, s)
        return self._pending.pop(step).result()


class WindowBatcher:
    """Random contiguous windows of a token stream, for language modelling.

    Batch `step` holds `batch_size` windows starting at offsets drawn from
    `default_rng([seed, step])`: `inputs` = tokens[o : o+L], `targets` = tokens[o+1 : o+L+1], for
    every o from 0 to len - L - 1 (the last window ends at the stream's last token).
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, inputs_only: bool = False):
        if len(tokens) < block_size + 1:  # a window is block_size inputs and the next token
            raise ConfigValueError(f"a token stream of {len(tokens)} tokens is too short for windows of {block_size} "
                                   f"(+1 target): use a block size of at most {len(tokens) - 1}, or more text")
        if batch_size % process_count:
            raise ConfigValueError(f"config.batch_size={batch_size} is not divisible by the {process_count} processes: "
                                   f"use a multiple of {process_count}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        local = batch_size // process_count
        self._slice = slice(process_index * local, (process_index + 1) * local)
        self.inputs_only = inputs_only  # e.g. masked-LM windows: no next-token targets
        self._window = np.arange(block_size + 1)

    def position(self, step: int) -> dict:
        return {"step": step}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """`inputs`, `targets` (unless inputs_only): int32 (B/processes, L)."""
        rng = np.random.default_rng([self.seed, step])
        offsets = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)  # high is exclusive
        win = self.tokens[offsets[self._slice, None] + self._window].astype(np.int32)
        if self.inputs_only:
            return {"inputs": win[:, :-1]}
        return {"inputs": win[:, :-1], "targets": win[:, 1:]}


def padded_batches(data: Mapping[str, np.ndarray] | RowSource, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order, in fixed-size batches, for evaluation.

    The last batch is padded with copies of example 0 up to `batch_size`; a `mask` array
    (float32 (B,), 1 = real example, 0 = padding) lets metrics ignore the padding, so the step
    keeps one static shape and no example is dropped.

    Args:
      data: a dict of arrays of equal length N, or a `RowSource` (a streamed split).
      batch_size: B, the global batch; each process yields its B/processes rows.
    Yields:
      ceil(N / B) batches: each array (B/processes, ...) plus `mask` float32 (B/processes,);
      only this process's rows are read.
    """
    rows = as_rows(data)
    n = len(rows)
    local = batch_size // process_count
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)
        part = slice(process_index * local, (process_index + 1) * local)
        yield {**rows.gather(idx[part]), "mask": mask[part]}


def encode_padded(encode, texts, max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Encodes texts to fixed-length id rows: the first `max_len` tokens, then `pad_id`.

    Args:
      encode: `str -> int array` (e.g. a CharTokenizer's encode).
      texts: N strings.
      max_len: L, the row length; longer texts are cut.
      pad_id: the id that fills the rest of a row.
    Returns:
      (ids int32 (N, L), token_mask int32 (N, L): 1 = real token, 0 = padding).
    """
    ids = np.full((len(texts), max_len), pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        row = encode(text)[:max_len]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask
