"""The model is part of a run's identity: the same workdir with a changed model (same config) is
one clear error naming the first differing parameter, never the old model's results or a
"corrupt checkpoint" message."""

import json
import os

import flax.linen as nn
import numpy as np
import pytest

import lab.data
from lab import train
from lab.errors import WorkdirConfigError
from lab.tasks.classification import ClassificationTask
from tests.test_train import small_config


class Net(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(self.width, name="hidden")(x.reshape((x.shape[0], -1))))
        return nn.Dense(10, name="logits")(x)


def _run(workdir, width, **kwargs):
    config = small_config()
    digits = {split: lab.data.load("digits", split) for split in ("train", "test")}
    task = ClassificationTask(Net(width), example_inputs={"inputs": digits["train"]["inputs"][:1]})
    data = train.epoch_data(digits["train"], {"test": digits["test"]}, config)
    return train.train_and_evaluate(config, str(workdir), task, data, **kwargs)


def test_a_changed_model_on_the_same_workdir_is_one_clear_error(tmp_path):
    first = _run(tmp_path, 16)
    recorded = json.loads((tmp_path / "param_tree.json").read_text())
    assert recorded["['hidden']['kernel']"] == "(64, 16) float32"
    for attempt in range(2):  # a finished run, then (checkpoints kept, results gone) a resumable one
        with pytest.raises(WorkdirConfigError) as e:
            _run(tmp_path, 32)
        message = str(e.value)
        assert "holds a run of another model" in message and "new --workdir" in message
        assert "parameter ['hidden']['bias'] is (16,) float32 there and (32,) float32 in this model" in message
        assert "(3 parameters differ)" in message  # hidden bias and kernel, logits kernel
        if attempt == 0:
            os.remove(tmp_path / "results.json")
    # The same model resumes (the record is unchanged), and gives the same results.
    again = _run(tmp_path, 16)
    assert np.isclose(again["test_accuracy"], first["test_accuracy"])
    assert json.loads((tmp_path / "param_tree.json").read_text()) == recorded
