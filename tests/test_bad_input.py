"""Bad input found by trying the experiments as a new user: each is one `error:` line and a
non-zero exit, never a traceback."""

import json
import os

from tests.test_cli_errors import FAST, error_line


def test_batch_larger_than_the_dataset(run_cli, tmp_path):
    proc = run_cli("experiments.mlp_classifier", f"--workdir={tmp_path}", "--config.batch_size=4000", *FAST)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "batch_size=4000 exceeds the 1437 training examples" in error_line(proc)


def test_windows_longer_than_the_token_stream(run_cli, tmp_path):
    """A block longer than the whole text: refused before any model is built."""
    proc = run_cli("experiments.transformer_lm", f"--workdir={tmp_path}", "--config.model.block_size=100000000",
                   *FAST)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "too short for windows of 100000000" in error_line(proc)


def test_a_changed_dataset_never_resumes_silently(run_cli, tmp_path):
    """The first start records the dataset's content sha256; a resume on other content is one
    line naming --allow_config_change, which goes on anyway."""
    import json

    assert run_cli("experiments.mlp_classifier", f"--workdir={tmp_path}", *FAST).returncode == 0
    path = tmp_path / "environment.json"
    record = json.loads(path.read_text())
    record["starts"][0]["dataset"]["sha256"] = "0" * 64  # as if the dataset had been rebuilt differently
    path.write_text(json.dumps(record))
    longer = [f for f in FAST if "num_train_steps" not in f] + ["--config.num_train_steps=6"]
    proc = run_cli("experiments.mlp_classifier", f"--workdir={tmp_path}", *longer)
    assert proc.returncode != 0 and "the dataset digits changed" in error_line(proc)
    assert "--allow_config_change" in error_line(proc)
    assert run_cli("experiments.mlp_classifier", f"--workdir={tmp_path}", *longer, "--allow_config_change").returncode == 0


def test_every_command_answers_a_bad_flag_with_one_line(run_cli, tmp_path):
    for module in ("experiments.lstm_chatbot.chat", "experiments.transformer_lm.sample", "experiments.reproduce"):
        proc = run_cli(module, f"--workdir={tmp_path}", "--temperatur=0.5")
        assert proc.returncode == 2 and "FATAL" not in proc.stderr, (module, proc.stderr[-1000:])
        assert "temperatur" in error_line(proc), module


def test_a_prompt_that_is_not_utf8_is_one_line(run_cli, tmp_path):
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}", "--prompt=\udcff\udcfe")
    assert proc.returncode == 1 and "--prompt is not UTF-8" in error_line(proc) and "Traceback" not in proc.stderr


def test_another_experiments_run_is_one_line_in_every_command_that_opens_a_run(run_cli, tmp_path):
    """sample, chat and a second experiment given an MLP run (its `run.json` written at the first
    start) answer with one line naming both experiments; the run is untouched. A config.json of
    random bytes, or one that is not an object, is one line too."""
    run = tmp_path / "mlp"
    assert run_cli("experiments.mlp_classifier", f"--workdir={run}", *FAST).returncode == 0
    assert json.loads((run / "run.json").read_text())["experiment"] == "mlp_classifier"
    before = sorted(p.name for p in run.iterdir())
    for module, args in (("experiments.transformer_lm.sample", ()), ("experiments.lstm_chatbot.chat", ()),
                         ("experiments.transformer_lm", ("--config=:tiny",))):
        proc = run_cli(module, f"--workdir={run}", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (module, proc.stderr[-1500:])
        assert "run of mlp_classifier, not of" in error_line(proc), module
    assert sorted(p.name for p in run.iterdir()) == before
    assert json.loads((run / "run.json").read_text())["experiment"] == "mlp_classifier"
    for damage in (os.urandom(64), b"[1, 2]"):
        (run / "config.json").write_bytes(damage)
        proc = run_cli("experiments.transformer_lm.sample", f"--workdir={run}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert "config.json is" in error_line(proc) and "run of transformer_lm" in error_line(proc)


def test_a_run_without_a_record_is_checked_by_its_config(tmp_path):
    """A run from before `run.json` existed: the config must have the keys the command reads."""
    import pytest

    from lab.errors import ConfigValueError
    from lab.provenance import read_run_config

    (tmp_path / "config.json").write_text(json.dumps({"model": {"hidden": [8]}, "dataset": "digits"}))
    with pytest.raises(ConfigValueError, match="is not a run of transformer_lm .its config has no model.num_layers"):
        read_run_config(str(tmp_path), "transformer_lm", needs=("model.num_layers",))
    assert read_run_config(str(tmp_path), "mlp_classifier", needs=("model.hidden",))["dataset"] == "digits"


def test_a_bug_in_get_config_keeps_its_traceback_an_unknown_key_is_one_line(run_cli, tmp_path):
    buggy = tmp_path / "buggy_config.py"
    buggy.write_text("from experiments.mlp_classifier.config import get_config as base\n\n\n"
                     "def get_config(arg=None):\n    return base().a_misspelt_attribute\n")
    proc = run_cli("experiments.mlp_classifier", f"--workdir={tmp_path / 'run'}", f"--config={buggy}")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "a_misspelt_attribute" in proc.stderr
    assert "unknown config key" not in proc.stderr
    proc = run_cli("experiments.mlp_classifier", f"--workdir={tmp_path / 'run'}", "--config.model.no_such_key=1")
    assert proc.returncode == 2 and "unknown config key 'no_such_key'" in error_line(proc)


def test_reproduce_refuses_a_workdir_it_cannot_write_and_a_table_that_is_no_table(run_cli, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("notes")
    proc = run_cli("experiments.reproduce", f"--workdir={a_file}", "--only=mlp_digits_tuned")
    assert proc.returncode == 2 and "give a folder you can write to" in error_line(proc)
    assert a_file.read_text() == "notes"
    for content in ("[1, 2]", '{"rows": [1]}', "\udcff"):
        table = tmp_path / "table.json"
        table.write_bytes(content.encode("utf-8", "surrogateescape"))
        proc = run_cli("experiments.reproduce", f"--workdir={tmp_path / 'r'}", f"--reference={table}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert "the reference table" in error_line(proc)
