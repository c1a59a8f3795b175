"""The LSTM family on the one loop: the forecaster, the chatbot and its chat CLI."""

import os
import re

import numpy as np
import pytest

import lab.data
from lab.errors import ConfigValueError
from lab.tasks import forecast, seq2seq

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


def test_chatbot_end_to_end_then_chat_answers_every_line(tmp_path, run_cli, capsys):
    results = chatbot.main(chatbot_config("tiny"), str(tmp_path))
    # Reading and encoding the pairs is announced before the work, and timed after it, before the loop's block.
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("reading the dialogue pairs (shakespeare_dialogue train and validation) and encoding them "
                      "as characters ...")
    done = next(i for i, line in enumerate(out) if line.startswith("read and encoded"))  # after a first build's lines
    assert re.fullmatch(r"read and encoded the dialogue pairs in \d+\.\d s \(train 24,328 pairs, "
                        r"validation 2,590 pairs\)", out[done]), out[:5]
    assert out[done + 1].startswith("run: ")
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
    # The banner (stderr, so that stdout holds the replies alone): the run, its model, how to quit.
    banner = proc.stderr.splitlines()
    assert banner[0].startswith(f"lstm_chatbot run {tmp_path}: checkpoint step 4 of 4; LSTM encoder-decoder, "
                                f"additive attention, ") and "validation perplexity" in banner[0]
    assert banner[1] == "replies: up to 12 characters, sampled at temperature 0.8 from all characters, seed 3"
    assert "Ctrl-D" in banner[2] and "/quit" in banner[2]
    # With a prompt (at a terminal, or --prompt=on): 'you> ' asks, 'bot> ' answers; /quit ends it.
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", "--prompt=on", "--temperature=0",
                   input="Good morrow.\n/quit\nnever answered\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.fullmatch(r"you> bot> [^\n]*\nyou> ", proc.stdout), proc.stdout


def test_a_reply_the_length_limit_stopped_ends_at_a_sentence_or_a_whole_word():
    trim = seq2seq.trim_reply
    assert trim("I know not what thou mean'st, and I will no", complete=True) == \
        "I know not what thou mean'st, and I will no"  # the model ended it: shown as it is
    assert trim("I know not what thou mean'st, and I will no", complete=False) == \
        "I know not what thou mean'st, and I will..."
    assert trim("Ay, my lord; what of that? Nay, I sa", complete=False) == "Ay, my lord; what of that?"
    assert trim('Stay! "Away," quoth he. And so the', complete=False) == 'Stay! "Away," quoth he.'
    assert trim("O, that I were a glove upon that hand,", complete=False) == "O, that I were a glove upon that..."
    assert trim("He is gone, my lord. And the king, the qu", complete=False) == \
        "He is gone, my lord. And the king, the..."  # the sentence end would drop over half
    assert trim("What, ho!\nNurse", complete=False) == "What, ho!"
    assert trim("good my lord, ", complete=False) == "good my lord..."  # the limit fell between words
    assert trim("Farewell.", complete=False) == "Farewell."
    assert trim("Anticipatingly", complete=False) == "Anticipatingly..."  # one word: whole, marked
    assert trim("", complete=False) == ""
    for text in ("Sir, I will tell you all the news of th", "a bc def ghij klmno"):
        kept = trim(text, complete=False).removesuffix(seq2seq.CUT_MARK)
        assert text.startswith(kept) and text[len(kept)] in " ,", (text, kept)  # never inside a word


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


def test_chat_and_sample_bound_what_they_generate_and_read(tmp_path, run_cli):
    """A reply longer than 4 x the run's max_tgt, a NaN temperature, a huge sample: one line each;
    a 1 MB input line is read in pieces (its last characters kept) and answered."""
    chatbot.main(chatbot_config("tiny"), str(tmp_path))
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", "--max_new_tokens=100000000", input="hi\n")
    assert proc.returncode == 1 and "use at most" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", "--temperature=nan", input="hi\n")
    assert proc.returncode == 1 and "finite number" in proc.stderr
    proc = run_cli("experiments.lstm_chatbot.chat", f"--workdir={tmp_path}", input="a" * 1_000_000 + "\nhello\n")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2, proc.stderr[-2000:]
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}", "--num_tokens=100000000")
    assert proc.returncode == 1 and "--num_tokens must be in 1..100,000" in proc.stderr
