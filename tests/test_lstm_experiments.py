"""The LSTM family on the one loop: the forecaster, the chatbot and its chat CLI."""

import os

import numpy as np
import pytest

import lab.data
from lab.errors import ConfigValueError
from lab.tasks import forecast

import experiments.lstm_chatbot.__main__ as chatbot
import experiments.lstm_forecast.__main__ as forecaster
from experiments.lstm_chatbot.config import get_config as chatbot_config
from experiments.lstm_forecast.config import get_config as forecast_config


@pytest.mark.parametrize("dataset", ["co2", "sunspots"])
def test_forecast_end_to_end_reports_the_network_beside_three_baselines(tmp_path, dataset):
    config = forecast_config("tiny")
    config.dataset = dataset
    results = forecaster.main(config, str(tmp_path))
    series = lab.data.series(dataset)
    windows = len(range(config.timesteps, series["bounds"]["train"][1]))
    assert results["step"] == config.num_epochs * (windows // config.batch_size)
    for split in ("test", "val"):
        for metric in ("rmse", "mae"):
            for suffix in ("", *("_" + b for b in forecast.BASELINES)):
                assert np.isfinite(results[f"{split}_{metric}{suffix}"]), (split, metric, suffix)
    # The baselines' errors are those of the series itself, in its units.
    start, stop = series["bounds"]["test"]
    truth = series["value"][start:stop].astype(np.float64)
    last = series["value"][start - 1:stop - 1].astype(np.float64)
    assert results["test_rmse_last_value"] == pytest.approx(np.sqrt(np.mean((truth - last) ** 2)), rel=1e-4)
    assert (tmp_path / "forecast.png").stat().st_size > 10_000


def test_forecast_rejects_bad_keys_before_training(tmp_path):
    for key, value, words in (("dataset", "digits", "time series"), ("scaling", "log", "minmax"),
                              ("timesteps", 0, "positive integer")):
        config = forecast_config()
        setattr(config, key, value)
        with pytest.raises(ConfigValueError, match=words):
            forecaster.validate(config)
    config = forecast_config()
    config.model.activation = "sigmoid"
    with pytest.raises(ConfigValueError, match="relu"):
        forecaster.validate(config)
    config = forecast_config()
    config.timesteps = 400  # co2 has 379 train values
    with pytest.raises(ConfigValueError, match="timesteps=400"):
        forecaster.main(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_chatbot_end_to_end_then_chat_answers_every_line(tmp_path, run_cli):
    results = chatbot.main(chatbot_config("tiny"), str(tmp_path))
    assert results["step"] == 4
    assert results["val_perplexity"] == pytest.approx(np.exp(results["val_loss"]), rel=1e-6)
    sample = (tmp_path / "samples" / "step_4.txt").read_text()
    assert sample.count("PROMPT: ") == 2 and "GREEDY: " in sample
    assert (tmp_path / "attention.png").stat().st_size > 5_000
    lines = "Good morrow, my lord.\n\nWhat say\u2019st thou, \u20ac?\n"
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", "--seed=3", input=lines)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 3  # one reply per line, the empty one included
    assert "\u20ac" in proc.stderr and "\u2019" not in proc.stderr  # dropped vs mapped to '


def test_decoder_only_variant_trains(tmp_path):
    config = chatbot_config("tiny")
    config.model.use_encoder = False
    config.model.attention = "none"
    results = chatbot.main(config, str(tmp_path))
    assert np.isfinite(results["val_loss"]) and not (tmp_path / "attention.png").exists()


def test_chatbot_rejects_bad_keys():
    for block, key, value in ((None, "dataset", "shakespeare_plays"), ("model", "attention", "bahdanau"),
                              ("model", "activation", "gelu"), ("sample", "temperature", -1.0)):
        config = chatbot_config()
        setattr(config if block is None else config[block], key, value)
        with pytest.raises(ConfigValueError, match=key):
            chatbot.validate(config)


def test_chat_refuses_a_workdir_without_a_chatbot_run(tmp_path, run_cli):
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", input="hello\n")
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_cli_bad_model_key_is_one_line_before_any_data(run_cli, tmp_path):
    data_dir = tmp_path / "data"
    proc = run_cli("experiments.lstm_forecast", f"--workdir={tmp_path / 'run'}",
                   "--config.model.activation=sigmoid", env={"LAB_DATA_DIR": str(data_dir)})
    assert proc.returncode == 2 and "config.model.activation" in proc.stderr
    assert "Traceback" not in proc.stderr and not data_dir.exists() and not os.path.exists(tmp_path / "run")
