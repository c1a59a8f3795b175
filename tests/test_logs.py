"""Logs and pictures: one tag scheme in metrics.jsonl and TensorBoard (running train means vs
evaluations), the learning rate, pictures / text / config in the event file, captioned and
enlarged grids, untrimmed titles, and a progress line right after the first step."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from PIL import Image

import lab.data
from lab import logbook, report, train
from lab.models.mlp import MLP
from lab.tasks.classification import ClassificationTask
from tests.helpers import final_params, math_records, read_jsonl, trees_equal
from tests.test_train import small_config


class _PicturingClassifier(ClassificationTask):
    """A digits MLP whose `on_eval` saves a captioned, tagged image and a tagged text."""

    def on_eval(self, variables, step, workdir, rng):
        image = np.zeros((8, 8))
        image[2:6, 3] = 1.0
        caption = report.caption(workdir, step, ("accuracy",))
        report.save_image(os.path.join(workdir, "digit.png"), image, caption, tag="digit")
        report.save_text(os.path.join(workdir, "samples", f"step_{step}.txt"), f"line one\nstep {step}", tag="samples")


def _digits_run(workdir, config, eval_on_train=True):
    """A small digits MLP run through `train.train_and_evaluate`, evaluated on test and (as
    transformer_lm does) on its own train split."""
    digits = {split: lab.data.load("digits", split) for split in ("train", "test")}
    task = _PicturingClassifier(MLP(features=(32,), num_classes=10), {"inputs": digits["train"]["inputs"][:1]})
    evals = {"test": digits["test"], **({"train": digits["train"]} if eval_on_train else {})}
    return train.train_and_evaluate(config, workdir, task, train.epoch_data(digits["train"], evals, config))


def _events(workdir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(os.path.join(workdir, "tensorboard"),
                              size_guidance={ea.IMAGES: 0, ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    return acc


COSINE = {"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 5, "optimizer.decay_steps": 20}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("logs") / "digits_logs")
    results = _digits_run(workdir, small_config(**COSINE))
    return workdir, results


def test_running_train_means_and_evaluations_have_their_own_tags(run):
    workdir, results = run
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    for r in records:  # a record holds either the running means or one split's evaluation
        prefixes = {k.split("/")[0] for k in r if "/" in k}
        assert prefixes in ({"train"}, {"eval_test"}, {"eval_train"}), r
    steps = lambda key: [r["step"] for r in records if key in r]
    assert steps("train/loss") == [5, 10, 15, 20]  # the running mean over the steps
    assert steps("eval_train/loss") == steps("eval_test/accuracy") == [10, 20]  # passes over a split
    for step in (10, 20):  # the two "train losses" of a step are two different numbers, apart
        running = next(r["train/loss"] for r in records if r["step"] == step and "train/loss" in r)
        evaluated = next(r["eval_train/loss"] for r in records if r["step"] == step and "eval_train/loss" in r)
        assert running != evaluated
    # results.json keeps its names: what reproduce and the reference table compare.
    saved = json.loads(open(os.path.join(workdir, "results.json")).read())
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "confusion_matrix"):
        assert key in saved and key in results
    assert saved["test_accuracy"] == [r for r in records if "eval_test/accuracy" in r][-1]["eval_test/accuracy"]


def test_the_learning_rate_is_logged_as_the_schedule_gave_it(run):
    workdir, _ = run
    config = small_config(**COSINE)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.optimizer.learning_rate, 5, 20, 0.0)
    logged = {r["step"]: r["train/learning_rate"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "train/learning_rate" in r}
    assert sorted(logged) == [5, 10, 15, 20]
    for step, lr in logged.items():  # the rate of the record's last update (optax's count: step - 1)
        assert lr == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    assert logged[5] > logged[20]
    scalars = _events(workdir).Scalars("train/learning_rate")
    assert [e.step for e in scalars] == [5, 10, 15, 20]


def test_named_optimizers_each_log_their_rate(tmp_path):
    import ml_collections

    from lab.optim import learning_rate_schedules

    config = ml_collections.ConfigDict({"optimizers": {
        "generator": {"name": "adam", "learning_rate": 2e-4},
        "discriminator": {"name": "adam", "learning_rate": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 4}}})
    logger = logbook.MetricLogger(str(tmp_path), 10, learning_rates=learning_rate_schedules(config, 10))
    try:
        rates = logger.learning_rates(3)
    finally:
        logger.close()
    assert rates == {"train/learning_rate_generator": pytest.approx(2e-4),
                     "train/learning_rate_discriminator": pytest.approx(1e-3 * 2 / 4)}
    assert logbook.headline({"train/loss": 1.0, "train/learning_rate_generator": 2e-4, "train/grad_norm": 3.0}) \
        == {"loss": 1.0, "lr_generator": 2e-4}


def test_the_event_file_holds_pictures_text_the_config_and_its_hparams(run):
    workdir, _ = run
    acc = _events(workdir)
    tags = acc.Tags()
    # The task's tagged picture at every eval; the run's PNGs at the end.
    assert [e.step for e in acc.Images("digit")] == [10, 20]
    assert {"curves", "test_confusion_matrix", "digit"} <= set(tags["images"])
    curves = acc.Images("curves")[-1]
    assert curves.step == 20 and (curves.width, curves.height) == Image.open(os.path.join(workdir, "curves.png")).size
    # Text: the task's samples at each eval, the config once.
    samples = acc.Tensors("samples/text_summary")
    assert [e.step for e in samples] == [10, 20]
    assert b"step 20" in samples[-1].tensor_proto.string_val[0]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"num_train_steps": 20' in config_text
    # The hparams plugin's session start, with the config's flattened keys.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["num_train_steps"].number_value == 20
    assert hparams["optimizer.schedule"].string_value == "warmup_cosine"
    assert {"train/loss", "eval_test/accuracy", "eval_train/loss", "train/learning_rate"} <= set(tags["scalars"])


def test_a_tagged_picture_is_captioned_with_the_run_step_and_metric(run):
    workdir, _ = run
    png = Image.open(os.path.join(workdir, "digit.png"))
    title = png.text["Title"]
    assert title.startswith("digits_logs | step 20 | test accuracy ")
    assert float(title.rsplit(" ", 1)[1]) == pytest.approx(json.load(open(os.path.join(workdir, "results.json")))
                                                           ["test_accuracy"], abs=1e-4)
    assert png.size[1] == 8 + report.CAPTION_PX


def test_the_first_progress_line_follows_the_first_step_and_time_lines_change_no_number(tmp_path, capsys,
                                                                                         monkeypatch):
    config = dict(num_train_steps=12, log_every_steps=12, eval_every_steps=12, checkpoint_every_steps=12)
    _digits_run(str(tmp_path / "plain"), small_config(**config), eval_on_train=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 1/12 | loss ") and "lr 0.05" in lines[0]
    assert lines[-1].startswith("step 12/12 |")
    # A line at every call (the time interval at 0): reads of the accumulator, never a reset.
    monkeypatch.setattr(logbook, "PROGRESS_EVERY_SECONDS", 0.0)
    _digits_run(str(tmp_path / "chatty"), small_config(**config), eval_on_train=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(1, 13))
    assert math_records(str(tmp_path / "chatty")) == math_records(str(tmp_path / "plain"))
    assert trees_equal(final_params(str(tmp_path / "chatty")), final_params(str(tmp_path / "plain")))


class _Sink:
    def __init__(self):
        self.images, self.texts = {}, {}

    def add_image(self, tag, image, step):
        self.images[tag] = (np.asarray(image), step)

    def add_text(self, tag, text, step):
        self.texts[tag] = (text, step)


def test_generative_grids_are_large_captioned_and_labelled(tmp_path):
    from lab.models import vae
    from lab.tasks import generative

    model = vae.VAE(image_shape=(8, 8, 1), latent_dim=4, channels=(4, 8), hidden=16)
    rng = np.random.default_rng(0)
    task = generative.VAETask(model, None, rng.standard_normal((64, 4)).astype(np.float32),
                              rng.uniform(size=(16, 8, 8, 1)).astype(np.float32))
    variables = jax.tree.map(np.asarray, task.init(jax.random.key(0)))
    workdir = str(tmp_path / "vae_digits")
    sink = _Sink()
    with report.eval_outputs(500, {"test": {"fd": 12.5, "elbo": -30.25, "class_histogram": np.ones(10)}}, sink):
        task.on_eval(variables, 500, workdir, jax.random.key(1))
    samples = Image.open(os.path.join(workdir, "samples.png"))
    # The old digits grid was 8 x (8*3 + 1) + 1 = 201 px wide: now at least 4 times that.
    assert samples.size[0] >= 4 * 201 and samples.size[1] >= 4 * 201
    assert samples.text["Title"] == "vae_digits | step 500 | test fd 12.5 | samples"
    assert Image.open(os.path.join(workdir, "samples", "samples_0000500.png")).size == samples.size
    recon = Image.open(os.path.join(workdir, "reconstructions.png"))
    assert recon.text["Title"] == "vae_digits | step 500 | test elbo -30.25 | reconstructions"
    assert recon.size[0] > samples.size[0]  # the row labels' band to the left
    pixels = np.asarray(recon.convert("L"))
    band = pixels[report.CAPTION_PX:, :recon.size[0] - samples.size[0]]
    rows = np.array_split(band, 4)
    assert all((row < 128).any() for row in rows), "every grid row has its label"
    # The same pictures went to TensorBoard at the eval's step.
    assert set(sink.images) == {"samples", "reconstructions", "interpolation"}
    image, step = sink.images["samples"]
    assert step == 500 and image.shape == (samples.size[1], samples.size[0], 3) and image.dtype == np.uint8


def test_text_samples_of_the_lm_and_the_chatbot_go_to_tensorboard(tmp_path):
    from lab.models import transformer
    from lab.tasks.language_model import CausalLMTask

    task = CausalLMTask(transformer.TransformerConfig.tiny(vocab_size=5), sample=lambda p, step, rng: f"to be {step}")
    sink = _Sink()
    with report.eval_outputs(7, {"val": {"loss": 1.0}}, sink):
        task.on_eval({"params": {}}, 7, str(tmp_path), jax.random.key(0))
    assert sink.texts == {"samples": ("to be 7", 7)}
    assert (tmp_path / "samples" / "step_7.txt").read_text() == "to be 7"
    # Outside the loop's evaluation nothing is sent anywhere.
    task.on_eval({"params": {}}, 8, str(tmp_path), jax.random.key(0))
    assert "step_8" not in str(sink.texts)


def test_a_long_confusion_title_is_not_cut_and_curves_name_the_run_and_each_head(tmp_path, monkeypatch):
    figures = []
    real_figure = report.figure
    monkeypatch.setattr(report, "figure", lambda *a, **k: figures.append(real_figure(*a, **k)) or figures[-1])
    workdir = tmp_path / "speech"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": s, "train/loss": 1 / s, "train/play_accuracy": s / 10, "train/genre_accuracy": s / 9}
        for s in (1, 2)] + [{"step": 2, "eval_test/loss": 0.7, "eval_test/play_accuracy": 0.2,
                              "eval_test/genre_accuracy": 0.3}]))
    task = ClassificationTask(MLP(features=(4,), num_classes=3), {"inputs": np.zeros((1, 4), np.float32)},
                              label_keys=("play", "genre"))
    results = {"step": 2, "test_genre_confusion_matrix": [[300, 2, 1], [4, 500, 6], [7, 8, 900]]}
    written = report.plot_run(str(workdir), results, {"genre": ["comedy", "history", "tragedy"]}, task.curves)
    curves = figures[0]
    assert curves.get_suptitle() == "speech: step 2"
    assert [ax.get_ylabel() for ax in curves.axes] == ["loss", "play_accuracy", "genre_accuracy"]
    assert all(len(ax.get_lines()) == 2 for ax in curves.axes)  # the running mean and the eval
    # The genre matrix (three classes: a narrow figure) keeps its whole title.
    cm = report.confusion_figure(np.asarray(results["test_genre_confusion_matrix"]), ["comedy", "history", "tragedy"],
                                 "test / genre: accuracy 0.9876 (1728 examples)")
    cm.canvas.draw()
    title = cm.axes[0].title.get_window_extent()
    width = cm.get_size_inches()[0] * cm.dpi
    assert title.x1 > width  # the title runs past the figure's right edge ...
    png = Image.open(next(p for p in written if p.endswith("test_genre_confusion_matrix.png")))
    assert png.size[0] >= title.x1 - min(title.x0, 0)  # ... and the PNG takes it in whole


def test_a_resumed_run_keeps_every_event_file_and_shows_each_step_once(tmp_path):
    """Writers started within one second (the run's, its pictures', a quick resume's) each keep
    a file; the resumed run drops what the first logged past its checkpoint."""
    import shutil

    from experiments.mlp_classifier.__main__ import main

    workdir = str(tmp_path / "run")
    main(small_config(), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))  # killed after step 20's records
    os.remove(os.path.join(workdir, "results.json"))
    main(small_config(), workdir)
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 4
    acc = _events(workdir)
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.step for e in acc.Scalars("eval_test/accuracy")] == [10, 20]
    assert [e.step for e in acc.Images("curves")] == [20]
