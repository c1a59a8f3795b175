"""The chatbot's encoding: source/target rows, special ids, unknown characters."""

import numpy as np

from lab.data.shakespeare import CharTokenizer
from lab.tasks import seq2seq

TOK = CharTokenizer("abc ")
IDS = seq2seq.Seq2SeqIds(TOK.vocab_size)  # a=0 b=1 c=2 ' '=3, PAD 4, BOS 5, EOS 6


def test_rows_keep_the_prompt_end_and_the_reply_start():
    rows = seq2seq.encode_pairs(TOK.encode, ["abcab", ""], ["ba", "abcabc"], max_src=4, max_tgt=4, ids=IDS)
    np.testing.assert_array_equal(rows["src"], [[2, 0, 1, 6], [6, 4, 4, 4]])  # last 3 chars + EOS; empty: EOS
    np.testing.assert_array_equal(rows["src_len"], [4, 1])
    np.testing.assert_array_equal(rows["tgt_out"], [[1, 0, 6, 4], [0, 1, 2, 0]])  # fits: + EOS; cut: no EOS
    np.testing.assert_array_equal(rows["tgt_in"], [[5, 1, 0, 4], [5, 0, 1, 2]])  # BOS + reply shifted
    np.testing.assert_array_equal(rows["tgt_mask"], [[1, 1, 1, 0], [1, 1, 1, 1]])
    assert IDS.vocab_size == 7


def test_unknown_characters_are_mapped_or_dropped():
    assert seq2seq.clean_text("ábc", "abc") == ("abc", "")  # NFKD: á -> a + combining accent
    assert seq2seq.clean_text("a€b€", "ab") == ("ab", "€")
    assert seq2seq.clean_text("\u2019tis", "'tis") == ("'tis", "")
