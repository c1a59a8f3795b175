"""The one train loop end to end, on the MLP digit classifier: files, reproducibility, resume."""

import json
import os

import numpy as np
import pytest

from experiments.mlp_classifier.__main__ import main
from lab.errors import NonFiniteLossError, WorkdirConfigError
from experiments.mlp_classifier.config import get_config
from tests.helpers import final_params, math_records, override, trees_equal


def small_config(**overrides):
    c = get_config()
    c.num_train_steps = 20
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.optimizer.learning_rate = 0.05  # large enough that 20 steps move the metrics
    return override(c, **overrides)


def test_eval_batches_reads_only_the_first_batches_of_each_split(tmp_path, capsys):
    """A quick look: `eval_batches=2` of 50 examples scores the first 100 of the 360 test images."""
    main(small_config(num_train_steps=5, eval_every_steps=5, eval_batch_size=50, eval_batches=2), str(tmp_path))
    cm = np.array(json.loads((tmp_path / "results.json").read_text())["confusion_matrix"])
    assert cm.sum() == 100
    assert "test 100 examples" in capsys.readouterr().out  # the start-up block says what an eval reads


def test_end_to_end_writes_every_file(tmp_path):
    results = main(small_config(), str(tmp_path))
    for name in ("config.json", "metrics.jsonl", "results.json", "curves.png", "test_confusion_matrix.png"):
        assert (tmp_path / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("step", "test_accuracy", "test_loss", "precision", "recall", "f1", "confusion_matrix"):
        assert key in saved, key
    assert saved["step"] == 20
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 360  # every digits test image exactly once
    assert saved["test_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert results["test_accuracy"] == saved["test_accuracy"]
    records = math_records(str(tmp_path))
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "eval_test/accuracy" in r] == [10, 20]
    # 20 steps of SGD at lr 0.05 must learn something: loss falls, accuracy beats chance.
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert saved["test_accuracy"] > 0.3


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    main(small_config(), str(tmp_path / "a"))
    main(small_config(), str(tmp_path / "b"))
    main(small_config(seed=1), str(tmp_path / "c"))
    a, b, c = (math_records(str(tmp_path / x)) for x in "abc")
    assert a == b, "same seed gave different logged metrics"
    assert trees_equal(final_params(str(tmp_path / "a")), final_params(str(tmp_path / "b")))
    assert a != c, "another seed gave the same metrics"
    assert not trees_equal(final_params(str(tmp_path / "a")), final_params(str(tmp_path / "c")))


# Dropout and a warmup + cosine schedule: what a resume could get wrong (rng, schedule position).
RESUME_FEATURES = {"model.dropout_rate": 0.2, "optimizer.schedule": "warmup_cosine",
                   "optimizer.warmup_steps": 5, "optimizer.decay_steps": 20}


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    main(small_config(num_train_steps=20, **RESUME_FEATURES), straight)
    main(small_config(num_train_steps=10, **RESUME_FEATURES), resumed)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["10"]
    main(small_config(num_train_steps=20, **RESUME_FEATURES), resumed)  # longer: resumes at 10
    assert math_records(resumed) == math_records(straight)
    assert trees_equal(final_params(resumed), final_params(straight))


def test_several_steps_per_call_give_the_numbers_of_one(tmp_path, parallel="jit"):
    """steps_per_call=4 (calls of 4 and 1 steps between the syncs every 5) and 64 (one call per
    sync window): the logged metrics and the params of steps_per_call=1, bit for bit, with
    dropout and a schedule; a run stopped at 10 and resumed with another K equals them too.
    (pmap, and 4 devices: tests/test_parallel.py.)"""
    one, resumed = str(tmp_path / "k1"), str(tmp_path / "resumed")
    main(small_config(parallel=parallel, **RESUME_FEATURES), one)
    for k in (4, 64):
        main(small_config(parallel=parallel, steps_per_call=k, **RESUME_FEATURES), str(tmp_path / f"k{k}"))
        assert math_records(str(tmp_path / f"k{k}")) == math_records(one)
        assert trees_equal(final_params(str(tmp_path / f"k{k}")), final_params(one))
    main(small_config(parallel=parallel, num_train_steps=10, steps_per_call=3, **RESUME_FEATURES), resumed)
    main(small_config(parallel=parallel, steps_per_call=7, **RESUME_FEATURES), resumed)
    assert math_records(resumed) == math_records(one)
    assert trees_equal(final_params(resumed), final_params(one))


def test_extending_a_run_must_keep_its_schedule(tmp_path):
    """A cosine shaped over num_train_steps would silently change shape on an extended resume."""
    cosine = {"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 2}
    main(small_config(num_train_steps=10, **cosine), str(tmp_path))
    with pytest.raises(WorkdirConfigError, match="decay_steps=10"):
        main(small_config(num_train_steps=20, **cosine), str(tmp_path))
    results = main(small_config(num_train_steps=20, **cosine, **{"optimizer.decay_steps": 10}), str(tmp_path))
    assert results["step"] == 20
    main(small_config(num_train_steps=30), str(tmp_path / "constant"))  # no schedule: free to extend
    assert main(small_config(num_train_steps=40), str(tmp_path / "constant"))["step"] == 40


def test_non_finite_parameters_never_reach_a_checkpoint(tmp_path):
    """Step 1's loss and gradient are finite, but its update makes the params infinite."""
    with pytest.raises(NonFiniteLossError, match="param_norm.*no checkpoint was written yet"):
        main(small_config(num_train_steps=4, log_every_steps=1, checkpoint_every_steps=1,
                          **{"optimizer.learning_rate": 1e39, "optimizer.momentum": 0.0}), str(tmp_path))
    assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    main(small_config(), straight)
    main(small_config(num_train_steps=10), resumed)
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
        f.write('{"step": 15, "train/lo')  # killed mid-write
    main(small_config(), resumed)
    assert math_records(resumed) == math_records(straight)


def test_rerunning_a_finished_workdir_changes_nothing(tmp_path, capsys):
    main(small_config(), str(tmp_path))
    files = {name: (tmp_path / name).read_text() for name in ("metrics.jsonl", "results.json")}
    again = main(small_config(), str(tmp_path))
    assert "is finished" in capsys.readouterr().out
    assert {name: (tmp_path / name).read_text() for name in files} == files
    assert again == json.loads(files["results.json"])
    # Killed after the last checkpoint but before results.json: evaluated again, logged once.
    os.remove(tmp_path / "results.json")
    results = main(small_config(), str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == files["metrics.jsonl"]
    assert results["test_accuracy"] == json.loads(files["results.json"])["test_accuracy"]


def test_progress_lines_and_the_closing_summary(tmp_path, capsys):
    config = small_config()
    config.reference = {"metric": "test_accuracy", "value": 0.5, "source": "a made-up baseline"}
    main(config, str(tmp_path))
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    # The first call's line (no rate yet), then one per log step.
    assert len(progress) == 5 and progress[0].startswith("step 1/20 | loss ") and "steps/s" not in progress[0]
    assert progress[1].startswith("step 5/20 | loss ") and "lr 0.05" in progress[1]
    assert all(line.count("steps/s") == 1 and "grad_norm" not in line for line in progress[1:])
    assert "ETA" in progress[1] and "elapsed" in progress[-1]
    assert "eval test at step 10: loss" in out
    summary = out[out.index("done: step 20"):]
    assert "test_accuracy" in summary and "reference: test_accuracy 0.5 from a made-up baseline" in summary
    assert f"files in {tmp_path}" in summary and "results.json" in summary


def test_resume_discards_records_written_after_the_checkpoint(tmp_path):
    """A run killed between checkpoints logged steps the resumed run logs again: no duplicates."""
    workdir = str(tmp_path)
    main(small_config(num_train_steps=20), workdir)
    straight = math_records(workdir)
    # Simulate a kill after step 15: drop the step-20 checkpoint, keep the records up to 20.
    import shutil
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
    main(small_config(num_train_steps=20), workdir)
    assert math_records(workdir) == straight
