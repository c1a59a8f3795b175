"""Shared fixtures for lab.data tests: one scratch TFDS data_dir per session.

Every test passes ``data_dir`` explicitly, so nothing is read from or written
to ``~/tensorflow_datasets``; datasets are built once per session.
"""

import pytest

from lab import data


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def digits(data_dir):
    return {s: data.load("digits", s, data_dir=data_dir) for s in ("train", "test")}


@pytest.fixture(scope="session")
def char_splits(data_dir):
    return {s: data.load("shakespeare_char", s, data_dir=data_dir) for s in ("train", "validation")}


@pytest.fixture(scope="session")
def plays(data_dir):
    return {
        s: data.load("shakespeare_plays", s, data_dir=data_dir)
        for s in ("train", "validation", "test")
    }


@pytest.fixture(scope="session")
def dialogue(data_dir):
    return {
        s: data.load("shakespeare_dialogue", s, data_dir=data_dir)
        for s in ("train", "validation", "test")
    }
