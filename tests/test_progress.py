"""Progress lines of slow start-up phases: a line before the work, one with its duration after
(lab.progress), for a tokenizer's training, a corpus's encoding and a big split's first read."""

import re

import ml_collections
import pytest

from lab import progress
from lab.data import storage, subword
from lab.tasks import language_model

DONE = r"in \d+\.\d s"


def test_a_phase_prints_before_its_work_and_its_duration_after(capsys):
    with progress.phase("building the thing", "built the thing") as p:
        print("work")
        p.note = "3 parts"
    assert capsys.readouterr().out.splitlines() == ["building the thing ...", "work",
                                                    f"built the thing in {progress.duration(p.seconds)} (3 parts)"]
    assert p.seconds >= 0 and re.fullmatch(r"\d+\.\d s", progress.duration(p.seconds))
    assert progress.duration(125.4) == "2 min 05 s"


def test_a_failed_phase_prints_no_closing_line(capsys):
    with pytest.raises(ValueError), progress.phase("reading"):
        raise ValueError("bad")
    assert capsys.readouterr().out == "reading ...\n"


def test_training_a_bpe_tokenizer_says_so_first_then_how_long_it_took(tmp_path, capsys, monkeypatch):
    trained = subword.SubwordTokenizer.train

    def train(texts, vocab_size):
        print("TRAINING")  # the slow work: the phase line must come before it
        return trained(texts, vocab_size)

    monkeypatch.setattr(subword.SubwordTokenizer, "train", staticmethod(train))
    config = ml_collections.ConfigDict({"tokenizer": {"name": "bpe", "vocab_size": 300}})
    words = ["".join("etaoinshrdlucmfwyp"[(i * 7 + j * 3) % 18] for j in range(2 + i % 6)) for i in range(400)]
    text = "\n\n".join(" ".join(words[(k * 13 + i) % 400] for i in range(30)) for k in range(60))
    tokenizer = language_model.run_tokenizer(config, str(tmp_path), train_text=lambda: text)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"training a byte-level BPE tokenizer of 300 tokens on the train text ({len(text):,} "
                        f"characters) ...")
    assert lines[1] == "TRAINING"
    assert re.fullmatch(rf"trained the BPE tokenizer {DONE} \(kept in {re.escape(str(tmp_path))}/tokenizer.json: "
                        r"later starts read it\)", lines[2]), lines
    assert len(lines) == 3
    # A later start reads the kept tokenizer: quick, and without a word.
    assert language_model.run_tokenizer(config, str(tmp_path), train_text=lambda: text).sha256 == tokenizer.sha256
    assert capsys.readouterr().out == ""
    # Encoding a corpus in subwords is a phase too; characters encode at once, silently.
    ids = subword.encode_splits(tokenizer, {"train": text, "validation": text[:100]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "encoding the train and validation text as BPE tokens ..."
    assert re.fullmatch(rf"encoded the text {DONE} \(train {len(ids['train']):,} tokens, validation "
                        rf"{len(ids['validation'])} tokens\)", lines[1]), lines


def test_a_big_splits_first_read_is_announced_and_later_reads_are_silent(tmp_path, capsys, monkeypatch):
    import lab.data

    lab.data.load("digits", "test", data_dir=str(tmp_path))  # builds it (its own two lines)
    capsys.readouterr()
    monkeypatch.setattr(storage, "_ANNOUNCE_EXAMPLES", 1000)  # digits train has 1,437
    lab.data.load("digits", "train", data_dir=str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("reading digits train (1,437 examples) from its TFDS files, once: later reads use a "
                        "numpy cache ...")
    assert re.fullmatch(rf"read digits train {DONE}", lines[1]) and len(lines) == 2, lines
    lab.data.load("digits", "train", data_dir=str(tmp_path))
    assert capsys.readouterr().out == ""
