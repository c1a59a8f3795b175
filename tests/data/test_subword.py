"""The subword tokenizer: exact round trips, the same tokenizer from the same text, and a saved
tokenizer that comes back equal (or fails in one line)."""

import numpy as np
import pytest

from lab.data.errors import DataError
from lab.data.subword import SubwordTokenizer

TEXT = ("ROMEO:\nBut soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n") * 20


def test_any_text_round_trips_exactly():
    tokenizer = SubwordTokenizer.train(TEXT, vocab_size=320)
    assert tokenizer.vocab_size == 320
    for text in (TEXT, "  two  spaces\n\n\ttab", "Ω unseen characters ü 日本", "", "a"):
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int32 and (ids < tokenizer.vocab_size).all()
        assert tokenizer.decode(ids) == text
    # Merges learnt from the text: its words take fewer tokens than its bytes (64 merges: 0.42).
    assert len(tokenizer.encode(TEXT)) < 0.5 * len(TEXT.encode())
    assert [len(x) for x in tokenizer.encode_batch(["Romeo", "Juliet is"])] == \
        [len(tokenizer.encode("Romeo")), len(tokenizer.encode("Juliet is"))]


def test_the_same_text_gives_the_same_tokenizer_and_another_text_another():
    a, b = SubwordTokenizer.train(TEXT, 300), SubwordTokenizer.train(TEXT, 300)
    assert a.sha256 == b.sha256 and a.to_json() == b.to_json()
    assert SubwordTokenizer.train(TEXT.upper(), 300).sha256 != a.sha256
    with pytest.raises(ValueError, match="at least 257"):
        SubwordTokenizer.train(TEXT, 100)


def test_a_saved_tokenizer_loads_equal_and_a_bad_file_is_one_clear_error(tmp_path):
    tokenizer = SubwordTokenizer.train(TEXT, 300)
    tokenizer.save(str(tmp_path))
    loaded = SubwordTokenizer.load(str(tmp_path))
    assert loaded.sha256 == tokenizer.sha256
    np.testing.assert_array_equal(loaded.encode(TEXT), tokenizer.encode(TEXT))
    with pytest.raises(DataError, match="no subword tokenizer"):
        SubwordTokenizer.load(str(tmp_path / "missing"))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer"):
        SubwordTokenizer.load(str(tmp_path))


def test_the_tfidf_baseline_sees_the_first_tokens_a_subword_classifier_sees():
    """`tfidf_baseline.first_tokens`: each text becomes the text of its first N tokens."""
    from lab.baselines.tfidf import first_tokens

    tokenizer = SubwordTokenizer.train(TEXT, vocab_size=320)
    texts = np.asarray([TEXT[:400], "Romeo", ""], dtype=object)
    cut = first_tokens({"text": texts, "play": np.arange(3)}, tokenizer, 10)
    np.testing.assert_array_equal(cut["play"], np.arange(3))
    assert [str(t) for t in cut["text"][1:]] == ["Romeo", ""]
    np.testing.assert_array_equal(tokenizer.encode(cut["text"][0]), tokenizer.encode(TEXT[:400])[:10])
    assert TEXT.startswith(cut["text"][0]) and len(cut["text"][0]) < 100
