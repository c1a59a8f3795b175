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
