"""Shakespeare: the speech parser, CharTokenizer, shakespeare_char/_plays."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lab import data
from lab.data import shakespeare, storage
from lab.data import shakespeare_text as st

# The documented corpus (lab.data.shakespeare_text rules). A parser change
# changes these: update them and every doc that quotes them together.
NUM_SPEECHES = 30672
NUM_CHARS = 4572472
VOCAB_SIZE = 76
SHA256 = "58f092d7e1a6929a3845f843be7c9a6b9c19a3a0d70fe4f8b2741b58cab3615c"

_PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare

Persons Represented.

HAMLET, a prince.
GHOST.

SCENE: Elsinore.


ACT I.

SCENE I. A platform.

[Enter Hamlet and Ghost.]

HAMLET.
Who's there?

GHOST. [Aside.]
Mark me.
I am thy father's spirit,   [Thunder.]
Doom'd for a certain term.

[Exit Ghost, with a
long procession.]

And then it fades.

HAMLET.
O, all you host of heaven!

HAMLET. So, uncle, there you are.

Ham.
Mixed-case speakers end with a dot.

SCENE II. A room.

EPILOGUE.

[Enter Ghost.]

GHOST.
Remember me.

THE END
"""


def test_parser_rules():
    speeches = st.parse_play(_PLAY, "testing")
    got = [(s.speaker, s.text, s.scene) for s in speeches]
    assert got == [
        ("HAMLET", "Who's there?", 0),
        # Directions are dropped, also inline and across lines; the speech
        # goes on after them.
        (
            "GHOST",
            "Mark me.\nI am thy father's spirit,\nDoom'd for a certain term.\nAnd then it fades.",
            0,
        ),
        ("HAMLET", "O, all you host of heaven!", 0),
        ("HAMLET", "So, uncle, there you are.", 0),  # Name + inline speech.
        ("Ham", "Mixed-case speakers end with a dot.", 0),
        # "EPILOGUE." followed by a direction is a heading, not a speaker.
        ("GHOST", "Remember me.", 1),
    ]
    assert [s.index for s in speeches] == list(range(6))
    assert st.render_speech(speeches[0]) == "HAMLET:\nWho's there?\n\n"


def test_play_table():
    assert len(st.PLAYS) == 37 and list(st.PLAYS) == sorted(st.PLAYS)
    counts = collections.Counter(st.PLAY_GENRE.values())
    assert counts == {"comedy": 15, "history": 10, "tragedy": 12}
    # Every play file exists, and every *_gut.txt that is not a play is a poem.
    files = st.play_files()
    all_gut = {p.name[: -len("_gut.txt")] for p in st.texts_dir().glob("*_gut.txt")}
    assert set(files) == all_gut - st._POEMS


def test_char_tokenizer_roundtrip():
    tok = data.CharTokenizer("\n !abcé€")
    text = "abc é!\n€€"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and ids.shape == (len(text),)
    assert tok.decode(ids) == text and tok.decode(list(ids)) == text
    assert tok.encode("").shape == (0,) and tok.decode([]) == ""
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    assert data.CharTokenizer("".join(map(chr, range(300)))).encode("a").dtype == np.uint16


def test_char_dataset(char_splits, data_dir):
    info = data.info("shakespeare_char", data_dir=data_dir)
    train, val = char_splits["train"]["tokens"], char_splits["validation"]["tokens"]
    assert set(char_splits["train"]) == {"tokens"}
    assert train.dtype == np.uint8 and val.dtype == np.uint8
    assert info["num_chars"] == len(train) + len(val)
    assert len(train) == int(0.9 * info["num_chars"])
    assert info["splits"] == {"train": len(train), "validation": len(val)}
    vocab = info["vocab"]
    assert info["vocab_size"] == len(vocab) and list(vocab) == sorted(set(vocab))
    assert info["class_names"] == {}  # a corpus, no labels
    assert max(train.max(), val.max()) < len(vocab)
    tok = data.char_tokenizer(data_dir)
    text = tok.decode(np.concatenate([train, val]))
    assert set(text) == set(vocab)
    assert np.array_equal(tok.encode(text[:5000]), train[:5000])
    # The stored text is the corpus, whose checksum we recompute from the
    # source files with a fresh parse (deterministic, independent of TFDS).
    fresh = st.corpus_text(st.load_speeches())
    assert st.text_sha256(text) == info["sha256"] == st.text_sha256(fresh)
    assert data.corpus_checksum() == info["sha256"]
    assert text.startswith("COUNTESS:\nIn delivering my son from me")


def test_char_corpus_documented_numbers(char_splits, data_dir):
    info = data.info("shakespeare_char", data_dir=data_dir)
    assert (info["num_speeches"], info["num_chars"], info["vocab_size"], info["sha256"]) == (
        NUM_SPEECHES,
        NUM_CHARS,
        VOCAB_SIZE,
        SHA256,
    )


def test_plays_dataset(plays, data_dir):
    info = data.info("shakespeare_plays", data_dir=data_dir)
    assert info["plays"] == list(st.PLAYS) and info["num_classes"] == 37
    assert info["genres"] == ["comedy", "history", "tragedy"]
    assert len(info["play_genre"]) == 37
    names = info["class_names"]
    assert set(names) == {"play", "genre"} and names["genre"] == info["genres"]
    # Titles in label-id order: id i of the `play` label is titled names['play'][i].
    assert len(names["play"]) == len(set(names["play"])) == 37
    assert names["play"][st.PLAYS.index("hamlet")] == "Hamlet"
    assert names["play"][st.PLAYS.index("midsummer_nights_dream")] == "Midsummer Night's Dream"
    assert names["play"][st.PLAYS.index("tragedy_of_titus_andronicus")] == "Titus Andronicus"
    play_genre = np.array(info["play_genre"])
    sizes = {s: len(v["play"]) for s, v in plays.items()}
    assert info["splits"] == sizes and sum(sizes.values()) == NUM_SPEECHES
    # ~80/20 by speeches (test), ~10% validation.
    assert 0.18 < sizes["test"] / NUM_SPEECHES < 0.22
    assert 0.08 < sizes["validation"] / NUM_SPEECHES < 0.12
    for split, out in plays.items():
        assert set(out) == {"text", "play", "genre"}
        assert out["text"].dtype == object and isinstance(out["text"][0], str)
        assert out["play"].dtype == np.int32 and out["genre"].dtype == np.int32
        assert set(out["play"]) == set(range(37)), split  # Every play, every split.
        np.testing.assert_array_equal(out["genre"], play_genre[out["play"]])


def test_plays_no_leaks(plays, data_dir):
    by_key = {(s.play, s.index): s for s in shakespeare.speeches()}
    seen = {}
    for split in ("train", "validation", "test"):
        builder = tfds.builder("shakespeare_plays", data_dir=data_dir)
        indices = storage.read_split(builder, split, dataset="shakespeare_plays", keys=("index",))[
            "index"
        ]
        for text, play, index in zip(
            plays[split]["text"], plays[split]["play"], indices, strict=True
        ):
            key = (st.PLAYS[play], int(index))
            assert key not in seen, f"{key} in {seen.get(key)} and {split}"
            seen[key] = split
            speech = by_key[key]
            # The classifier sees the speech only: no "NAME:" header, no name line.
            assert text == speech.text
            first = text.split("\n", 1)[0]
            assert first not in (speech.speaker, speech.speaker + ".")
            assert not text.startswith(speech.speaker + ":")
    assert len(seen) == len(by_key)  # Every speech in exactly one split.


def test_plays_split_is_blocks_of_consecutive_speeches(data_dir, plays):
    splits = shakespeare.assign_splits(shakespeare.speeches())
    assert splits == shakespeare.assign_splits(shakespeare.speeches())
    # Within a play, the split only changes at multiples of the block size.
    items = shakespeare.speeches()
    for i in range(1, len(items)):
        if items[i].play == items[i - 1].play and splits[i] != splits[i - 1]:
            assert items[i].index % shakespeare.BLOCK_SPEECHES == 0
