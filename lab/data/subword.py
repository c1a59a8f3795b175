"""Subword tokenizer: byte-level BPE (Hugging Face `tokenizers`), trained offline on a text.

    tokenizer = SubwordTokenizer.train(texts, vocab_size=1024)
    ids = tokenizer.encode("ROMEO:\\nBut soft!")        # (T,) int32 in [0, vocab_size)
    assert tokenizer.decode(ids) == "ROMEO:\\nBut soft!"
    tokenizer.save(path); SubwordTokenizer.load(path)   # one JSON file

Byte-level BPE (GPT-2's scheme) rather than sentencepiece: every string encodes (the base
alphabet is the 256 bytes, so no character is unknown, which the char tokenizer cannot say),
newlines and runs of spaces round-trip exactly (sentencepiece reads its training text line by line
and normalises whitespace unless each of those is turned off), the whole tokenizer is one JSON
file that a run keeps in its workdir, and the trainer gives the same merges for the same text and
vocabulary size (tested). No special tokens live here: a model that needs padding, a mask or a
class token adds its ids after the vocabulary (`lab.models.encoder.encoder_token_ids`), as it does for
characters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lab import progress
from lab.data.errors import DataError
from lab.files import write_whole

FILENAME = "tokenizer.json"  # the name a run's workdir keeps its tokenizer under
MIN_VOCAB = 257  # the 256 byte symbols and at least one merge


class SubwordTokenizer:
    """A trained byte-level BPE tokenizer with the char tokenizer's interface (encode, decode,
    vocab_size), so the GPT, the masked LM and the classifier take either.

    Args:
      tokenizer: a `tokenizers.Tokenizer` (byte-level BPE, as `train` builds it).
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "SubwordTokenizer":
        """Learns `vocab_size - 256` merges from `texts` (strings; a whole corpus may be one).

        Deterministic: the same texts and settings give the same tokenizer, byte for byte.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {MIN_VOCAB}")
        tokenizer = Tokenizer(models.BPE())
        # GPT-2's split into words (each with its leading space), numbers and punctuation runs, then
        # bytes; no prefix space, so encode(a + b) is encode(a) + encode(b) at word boundaries.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        tokenizer.train_from_iterator(list(texts) if not isinstance(texts, str) else [texts], trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str) -> "SubwordTokenizer":
        """The tokenizer saved at `path` (a tokenizer.json, or a directory holding one).

        Raises:
          DataError: the file is missing or is not a tokenizer.
        """
        from tokenizers import Tokenizer

        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        try:
            return cls(Tokenizer.from_file(path))
        except Exception as e:  # tokenizers raises its own Exception type for a bad file
            if not os.path.isfile(path):
                raise DataError(f"no subword tokenizer at {path}: the run that trained it saves one there") from None
            raise DataError(f"{path} is not a readable tokenizer ({str(e).splitlines()[0][:120]}): "
                            f"delete it to train it again from the text") from None

    def save(self, path: str) -> None:
        """Writes the tokenizer as one JSON file (`path`, or `path/tokenizer.json` for a directory);
        written to a temporary name and renamed, so a crash never leaves half a file."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        write_whole(path, self.to_json())

    def to_json(self) -> str:
        """The tokenizer's whole definition (vocabulary, merges, pre-tokenizer) as canonical JSON."""
        return json.dumps(json.loads(self._tokenizer.to_str()), sort_keys=True)

    @property
    def sha256(self) -> str:
        """Fingerprint of the definition: equal for equal tokenizers."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Number of tokens V (ids 0..V-1)."""
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        """`text` as ids, shape (T,) int32; any string encodes."""
        return np.asarray(self._tokenizer.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text as ids (as `encode`), encoded in parallel."""
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids (T,) back to the string (exact for ids from `encode`)."""
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=False)


def encode_text(tokenizer, text: str) -> np.ndarray:
    """A long text (a corpus) as one id stream, (T,) int32 for subwords.

    A subword tokenizer encodes it piece by piece, cut after each blank line (where no subword
    spans the cut, so the ids equal encoding the whole), on the tokenizer's threads; any other
    tokenizer (characters) encodes it whole.
    """
    if not isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.encode(text)
    pieces = text.split("\n\n")
    pieces = [p + "\n\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return np.concatenate(tokenizer.encode_batch(pieces)) if pieces else np.zeros(0, np.int32)


def encode_splits(tokenizer, texts: Mapping[str, str]) -> dict[str, np.ndarray]:
    """`encode_text` of each split's text (split name -> text), in order. A subword tokenizer
    (seconds for a corpus) prints a progress line before and one with the time and each split's
    token count after (`lab.progress.phase`); characters encode at once, without a word."""
    if not isinstance(tokenizer, SubwordTokenizer):
        return {name: encode_text(tokenizer, text) for name, text in texts.items()}
    names = list(texts)
    which = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    with progress.phase(f"encoding the {which} text as BPE tokens", "encoded the text") as p:
        out = {name: encode_text(tokenizer, text) for name, text in texts.items()}
        p.note = ", ".join(f"{name} {len(ids):,} tokens" for name, ids in out.items())
    return out
