"""The Transformer family on the one loop: LM, masked-LM pretraining, fine-tuning from it."""

import json
import os

import jax
import numpy as np
import pytest

import lab.data
from lab import checkpoint, configs
from lab.errors import ConfigValueError
from tests.helpers import final_params, math_records, trees_equal

import experiments.transformer_classifier.__main__ as classifier
import experiments.transformer_lm.__main__ as lm
import experiments.transformer_mlm.__main__ as mlm
from experiments.transformer_classifier.config import get_config as classifier_config
from experiments.transformer_lm.config import get_config as lm_config
from experiments.transformer_mlm.config import get_config as mlm_config


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mlm"))
    mlm.main(mlm_config("tiny"), workdir)
    return workdir


def test_lm_end_to_end_writes_samples_and_tokens_per_sec(tmp_path, run_cli):
    results = lm.main(lm_config("tiny"), str(tmp_path))
    assert results["step"] == 6 and np.isfinite(results["val_loss"])
    assert results["val_perplexity"] == pytest.approx(np.exp(results["val_loss"]), rel=1e-6)
    assert results["val_bits_per_char"] == pytest.approx(results["val_loss"] / np.log(2), rel=1e-6)  # chars: the loss in bits
    samples = sorted(os.listdir(tmp_path / "samples"))
    assert samples == ["step_3.txt", "step_6.txt"]
    text = (tmp_path / "samples" / "step_6.txt").read_text()
    assert text.startswith("ROMEO:\n") and len(text) == len("ROMEO:\n") + 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_sec" in r for r in records)
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}", "--prompt=JULIET:",
                   "--num_tokens=40", "--temperature=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("JULIET:") and len(proc.stdout.rstrip("\n")) >= len("JULIET:") + 30


def test_a_subword_lm_keeps_its_tokenizer_in_the_workdir_and_reports_bits_per_char(tmp_path, run_cli):
    """tokenizer.name=bpe: trained on the train split at the first start, saved in the workdir, read
    back on a resume and by the sample CLI; bits_per_char is the loss spread over characters."""
    from lab.data.subword import SubwordTokenizer, encode_text

    config = lm_config("tiny")
    config.tokenizer.name, config.tokenizer.vocab_size = "bpe", 300
    config.optimizer.decay_steps = 6  # kept when the run is extended below
    results = lm.main(config, str(tmp_path))
    tokenizer = SubwordTokenizer.load(str(tmp_path))
    assert tokenizer.vocab_size == 300
    chars = lab.data.char_tokenizer()
    val_text = chars.decode(lab.data.load("shakespeare_char", "validation")["tokens"])
    np.testing.assert_array_equal(encode_text(tokenizer, val_text[:5000]), tokenizer.encode(val_text[:5000]))
    chars_per_token = len(val_text) / len(encode_text(tokenizer, val_text))
    assert 1.3 < chars_per_token < 3
    assert results["val_bits_per_char"] == pytest.approx(results["val_loss"] / np.log(2) / chars_per_token, rel=1e-6)

    # A resume reads the saved tokenizer (a changed file would show: the run must use the saved one).
    config.num_train_steps = 9
    assert lm.main(config, str(tmp_path))["step"] == 9
    assert SubwordTokenizer.load(str(tmp_path)).sha256 == tokenizer.sha256
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}", "--prompt=JULIET:",
                   "--num_tokens=10", "--temperature=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("JULIET:") and len(tokenizer.encode(proc.stdout.rstrip("\n"))) >= 10
    (tmp_path / "tokenizer.json").write_text("{")
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}")
    assert proc.returncode == 1 and "not a readable tokenizer" in proc.stderr


def test_a_subword_pretraining_hands_its_tokenizer_to_the_classifier(tmp_path):
    """MLM on the train speeches in subwords, then the classifier from it with attention pooling:
    the classifier's workdir keeps the pretraining run's tokenizer (the same ids), the encoder
    loads, and the pretraining text holds no validation or test speech."""
    from lab.data.subword import SubwordTokenizer

    pre = mlm_config("tiny")
    pre.dataset = "shakespeare_plays"
    pre.tokenizer.name, pre.tokenizer.vocab_size = "bpe", 400
    mlm.main(pre, str(tmp_path / "mlm"))
    text = mlm.pretraining_text(pre, "train")
    held_out = [str(t) for split in ("validation", "test") for t in lab.data.load("shakespeare_plays", split)["text"]]
    long_ones = [t for t in held_out if len(t) > 200]  # short lines ("My lord.") recur in any text
    assert long_ones and not any(t in text for t in long_ones)
    config = classifier_config("tiny")
    config.init_from = str(tmp_path / "mlm")
    config.tokenizer.name, config.tokenizer.vocab_size = "bpe", 400
    config.model.pooling = "attention"
    # tuned_bpe's regularisation and model selection: the step of the best validation eval.
    config.label_smoothing, config.keep_best = 0.1, "validation_play_accuracy"
    classifier.validate(config)
    results = classifier.main(config, str(tmp_path / "cls"))
    assert np.isfinite(results["test_loss"]) and np.isfinite(results["validation_loss"])
    assert results["selected_by"] == "validation_play_accuracy" and results["selected_step"] in (2, 4)
    evals: dict[int, dict] = {}  # step -> every split's eval record at it
    for r in math_records(str(tmp_path / "cls")):
        if any(k.startswith("eval_") for k in r):
            evals.setdefault(r["step"], {}).update(r)
    best = max(sorted(evals), key=lambda step: evals[step]["eval_validation/play_accuracy"])  # the first of ties
    assert results["selected_step"] == best
    assert results["selected_test_play_accuracy"] == pytest.approx(evals[best]["eval_test/play_accuracy"])
    assert SubwordTokenizer.load(str(tmp_path / "cls")).sha256 == SubwordTokenizer.load(str(tmp_path / "mlm")).sha256
    assert "head_pool_query" in final_params(str(tmp_path / "cls"))
    # Another vocabulary than the pretraining run's is refused in one line.
    config.tokenizer.vocab_size = 500
    with pytest.raises(ConfigValueError, match="has 400 tokens"):
        classifier.main(config, str(tmp_path / "cls_other"))
    config.model.pooling = "cls"
    with pytest.raises(ConfigValueError, match="pooling='cls'"):
        classifier.validate(config)


def test_next_token_pretraining_of_a_causal_encoder_feeds_the_classifier(tmp_path):
    """transformer_mlm with model.causal: next-token loss on the windows (it learns: the loss falls
    well below the uniform log V within 30 steps); the classifier with the same causal encoder and
    'last' pooling loads it; one that disagrees on model.causal or num_heads is refused in one line."""
    pre = mlm_config("tiny")
    pre.dataset = "shakespeare_plays"
    pre.tokenizer.name, pre.tokenizer.vocab_size = "bpe", 300
    pre.model.causal = True
    pre.num_train_steps, pre.eval_every_steps, pre.checkpoint_every_steps = 30, 30, 30
    pre.optimizer.warmup_steps, pre.optimizer.learning_rate = 5, 1e-2
    results = mlm.main(pre, str(tmp_path / "pre"))
    assert results["val_loss"] < np.log(300) - 1.0
    config = classifier_config("tiny")
    config.init_from = str(tmp_path / "pre")
    config.tokenizer.name, config.tokenizer.vocab_size = "bpe", 300
    config.model.causal, config.model.pooling = True, "last"
    config.optimizer.frozen = ("encoder",)  # so the loaded encoder must come out unchanged
    classifier.validate(config)
    results = classifier.main(config, str(tmp_path / "cls"))
    assert np.isfinite(results["test_loss"])
    assert trees_equal(final_params(str(tmp_path / "cls"))["encoder"], final_params(str(tmp_path / "pre"))["encoder"])
    for key, value, theirs in (("causal", False, "True"), ("num_heads", 1, "2")):
        wrong = classifier_config("tiny")
        wrong.init_from, wrong.tokenizer.name, wrong.tokenizer.vocab_size = str(tmp_path / "pre"), "bpe", 300
        wrong.model.causal = True
        wrong.model[key] = value
        with pytest.raises(ConfigValueError, match=f"config.model.{key}={value!r} but the pretraining run .* has {theirs}"):
            classifier.validate(wrong)


def test_the_articles_binary_head_runs_on_comedy_vs_tragedy(tmp_path):
    """One sigmoid output, binary cross-entropy, Adam 3e-5: accuracy, F1 and ROC AUC on the
    comedies' and tragedies' test speeches (no history among them)."""
    from experiments.transformer_classifier.config import get_config

    config = get_config("binary")
    assert (config.task, config.optimizer.learning_rate, config.optimizer.schedule, config.num_epochs,
            config.model.head_hidden, config.model.head_dropout) == ("comedy_tragedy", 3e-5, "constant", 3, 512, 0.1)
    tiny = classifier_config("tiny")
    tiny.task = "comedy_tragedy"
    classifier.validate(tiny)
    results = classifier.main(tiny, str(tmp_path))
    for key in ("test_accuracy", "test_f1", "test_precision", "test_recall", "test_roc_auc"):
        assert 0 <= results[key] <= 1, key
    params = final_params(str(tmp_path))
    assert params["head_tragedy"]["kernel"].shape == (16, 1)
    model, tokenizer, ids, _ = classifier.build_model(tiny)
    test = classifier.load_split(tiny, "test", tokenizer, ids)
    assert set(np.unique(test["tragedy"])) == {0, 1} and "history" not in {
        lab.data.info("shakespeare_plays")["genres"][g] for g in np.unique(test["genre"])}
    tiny.task = "sentiment"
    with pytest.raises(ConfigValueError, match="config.task='sentiment'"):
        classifier.validate(tiny)


def test_the_tuned_recipe_selects_on_validation_and_bad_smoothing_is_refused():
    config = classifier_config("tuned_bpe")
    assert (config.keep_best, config.keep_best_mode, config.init_from, config.tokenizer.name) == (
        "validation_play_accuracy", "max", "pretrain_bpe", "bpe")
    assert config.reference.metric == "selected_test_play_accuracy"
    tiny = classifier_config("tiny")
    tiny.label_smoothing = 1.5
    with pytest.raises(ConfigValueError, match="config.label_smoothing=1.5 is invalid"):
        classifier.validate(tiny)


def test_bad_tokenizer_keys_are_refused_before_any_work():
    for key, value, message in (("name", "wordpiece", "tokenizer.name='wordpiece'"),
                                ("vocab_size", 100, "tokenizer.vocab_size=100")):
        config = lm_config("tiny")
        config.tokenizer.name = "bpe"
        config.tokenizer[key] = value
        with pytest.raises(ConfigValueError, match=message):
            lm.validate(config)


def test_sample_refuses_a_workdir_without_a_run(tmp_path, run_cli):
    proc = run_cli("experiments.transformer_lm.sample", f"--workdir={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.startswith("error:")


def test_finetuning_restores_exactly_the_encoder(mlm_run, tmp_path):
    config = classifier_config("tiny")
    config.init_from = mlm_run
    config.num_train_steps = 2
    config.optimizer.frozen = ("encoder",)
    results = classifier.main(config, str(tmp_path))
    for key in ("test_play_accuracy", "test_genre_accuracy", "test_play_f1", "test_genre_precision"):
        assert key in results
    pretrained, tuned = final_params(mlm_run), final_params(str(tmp_path))
    # Frozen: after training, the classifier's encoder still equals the MLM run's encoder.
    assert trees_equal(tuned["encoder"], pretrained["encoder"])
    assert set(tuned) == {"encoder", "head_hidden", "head_play", "head_genre"}


def test_pretrained_then_trained_encoder_moves(mlm_run, tmp_path):
    config = classifier_config("tiny")
    config.init_from = mlm_run
    classifier.main(config, str(tmp_path))
    assert not trees_equal(final_params(str(tmp_path))["encoder"], final_params(mlm_run)["encoder"])


def test_mismatched_checkpoint_is_refused(mlm_run, tmp_path):
    config = classifier_config("tiny")
    config.init_from = mlm_run
    config.model.width = 64  # the MLM run's encoder is 32 wide
    config.model.num_heads = 2
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        classifier.main(config, str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError, match="no params\\[decoder\\]"):
        checkpoint.load_pretrained(mlm_run, ("decoder",), {"decoder": {"x": jax.ShapeDtypeStruct((1,), np.float32)}})
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints"):
        checkpoint.load_pretrained(str(tmp_path / "nowhere"), ("encoder",), {"encoder": {}})


def test_mlm_pretraining_text_is_the_classifiers_train_speeches_only():
    config = mlm_config("tiny")
    config.dataset = "shakespeare_plays"
    train_texts = lab.data.load("shakespeare_plays", "train")["text"]
    assert mlm.pretraining_text(config, "train") == "\n\n".join(str(t) for t in train_texts)
    config.dataset = "digits"
    with pytest.raises(ConfigValueError, match="not a pretraining text"):
        mlm.validate(config)
    config.dataset, config.mask_rate = "shakespeare_char", 1.5
    with pytest.raises(ConfigValueError, match=r"^config\.mask_rate=1\.5 is invalid"):
        mlm.validate(config)


def test_init_from_is_read_at_the_first_start_only_and_recorded(tmp_path):
    """A resumed fine-tuning run no longer needs its pretraining run; the step it read is recorded."""
    source = str(tmp_path / "mlm")
    mlm.main(mlm_config("tiny"), source)  # 4 steps: checkpoints 2 and 4
    config = classifier_config("tiny")
    config.init_from = source
    config.num_train_steps = 2
    config.optimizer.decay_steps, config.optimizer.warmup_steps = 4, 1  # the schedule of all 4 steps
    workdir = str(tmp_path / "cls")
    first = classifier.main(config, workdir)
    where = f"{source}/checkpoints/4"
    assert first["init_from"] == where
    import shutil
    shutil.rmtree(source)  # the pretraining run is gone
    config.num_train_steps = 4
    resumed = classifier.main(config, workdir)
    assert resumed["step"] == 4 and resumed["init_from"] == where
    meta = json.loads((tmp_path / "cls" / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["init_from"] == where


def test_bfloat16_compute_trains_the_same_model_with_float32_state(tmp_path):
    """model.compute_dtype=bfloat16: parameters and optimizer state stay float32, the loss is
    float32 and close to the float32 run's at the same steps; an unknown dtype is refused."""
    f32 = lm.main(lm_config("tiny"), str(tmp_path / "f32"))
    config = lm_config("tiny")
    config.model.compute_dtype = "bfloat16"
    lm.validate(config)
    bf16 = lm.main(config, str(tmp_path / "bf16"))
    assert abs(bf16["val_loss"] - f32["val_loss"]) < 0.05
    assert bf16["val_loss"] != f32["val_loss"]  # the matmuls did run in bfloat16
    assert {np.asarray(x).dtype for x in jax.tree.leaves(final_params(str(tmp_path / "bf16")))} == {np.dtype("float32")}
    config.model.compute_dtype = "float16"
    with pytest.raises(ConfigValueError, match="compute_dtype='float16'"):
        lm.validate(config)


def test_eval_batches_caps_each_eval_split_and_refuses_a_count_below_one():
    """The loop's `eval_batches` (a quick look): the classifier encodes only the speeches an
    eval reads; zero is refused before any data is read."""
    config = classifier_config("tiny")
    config.eval_batches = 0
    with pytest.raises(ConfigValueError, match="eval_batches=0"):
        configs.validate(config)
    config.eval_batches, config.eval_batch_size = 3, 5
    configs.validate(config)
    _, tokenizer, ids, _ = classifier.build_model(config)
    read = config.eval_batches * config.eval_batch_size
    for split in ("test", "validation"):
        arrays = classifier.load_split(config, split, tokenizer, ids, read)
        assert {len(v) for v in arrays.values()} == {15}, split
