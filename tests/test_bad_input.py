"""Bad input found by trying the experiments as a new user: each is one `error:` line and a
non-zero exit, never a traceback."""

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
