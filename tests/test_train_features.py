"""Training features a researcher expects, each a config key that is off by default: gradient
accumulation and a moving average of the parameters."""

import numpy as np
import pytest

from experiments.mlp_classifier.__main__ import main
from lab.checkpoint import load_state
from lab.errors import ConfigValueError
from tests.helpers import final_params, math_records, max_abs_diff
from tests.test_train import small_config


def _losses(workdir):
    return np.array([r["train/loss"] for r in math_records(str(workdir)) if "train/loss" in r])


def test_accumulated_micro_batches_give_the_whole_batchs_update(tmp_path):
    # No dropout: the micro-batches then compute exactly the whole batch's loss terms.
    config = {"batch_size": 32, "log_every_steps": 1, "model.dropout_rate": 0.0}
    whole = main(small_config(**config), str(tmp_path / "whole"))
    accumulated = main(small_config(accumulate_steps=4, **config), str(tmp_path / "accumulated"))
    np.testing.assert_allclose(_losses(tmp_path / "accumulated"), _losses(tmp_path / "whole"), rtol=1e-6, atol=1e-6)
    assert max_abs_diff(final_params(str(tmp_path / "whole")), final_params(str(tmp_path / "accumulated"))) < 1e-6
    assert accumulated["test_loss"] == pytest.approx(whole["test_loss"], abs=1e-6)
    with pytest.raises(ConfigValueError, match="x 3 micro-batches"):
        main(small_config(accumulate_steps=3, **config), str(tmp_path / "bad"))


def test_the_moving_average_is_evaluated_and_resumes_exactly(tmp_path):
    plain = main(small_config(), str(tmp_path / "plain"))
    ema = main(small_config(ema_decay=0.9), str(tmp_path / "ema"))
    # Training is the same; evaluation runs on the average, so it differs.
    np.testing.assert_array_equal(_losses(tmp_path / "ema"), _losses(tmp_path / "plain"))
    assert ema["test_loss"] != plain["test_loss"]
    state, _ = load_state(str(tmp_path / "ema"))
    assert max_abs_diff(state["extra"]["ema"], state["params"]) > 0
    # Stopped at step 10 and resumed: the same average, bit for bit.
    main(small_config(ema_decay=0.9, num_train_steps=10), str(tmp_path / "resumed"))
    resumed = main(small_config(ema_decay=0.9), str(tmp_path / "resumed"))
    again, _ = load_state(str(tmp_path / "resumed"))
    assert max_abs_diff(again["extra"]["ema"], state["extra"]["ema"]) == 0
    assert resumed["test_loss"] == ema["test_loss"]
    with pytest.raises(ConfigValueError, match="ema_decay"):
        main(small_config(ema_decay=1.0), str(tmp_path / "bad"))


def test_step_tools_run_the_batch_as_micro_batches():
    import jax
    import jax.numpy as jnp
    import optax

    from lab.task import StepTools

    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(32, 3)).astype(np.float32), "y": rng.normal(size=(32,)).astype(np.float32)}
    params = {"w": jnp.asarray([0.5, -1.0, 2.0])}

    def loss_fn(p, b, key):
        err = b["x"] @ p["w"] - b["y"]
        rows = jnp.float32(b["x"].shape[0])  # the batch this call sees
        return jnp.sum(err ** 2), {"count": rows, "rows_squared": rows ** 2}

    whole_grads, whole_sums = StepTools(optax.sgd(0.1)).mean_grads(loss_fn, params, batch, jax.random.key(0))
    grads, sums = jax.jit(lambda p, b: StepTools(optax.sgd(0.1), accumulate_steps=4).mean_grads(
        loss_fn, p, b, jax.random.key(0)))(params, batch)
    assert float(sums["rows_squared"]) == 4 * 8 ** 2 and float(whole_sums["rows_squared"]) == 32 ** 2
    assert float(sums["count"]) == 32
    np.testing.assert_allclose(grads["w"], whole_grads["w"], rtol=1e-6)


def test_a_run_says_what_it_is_before_it_compiles(tmp_path, capsys):
    main(small_config(), str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    start = out.index(f"run: {tmp_path} (fresh)")
    block = out[start:start + 7]
    params = final_params(str(tmp_path))
    total = sum(int(np.prod(np.shape(x))) for x in __import__("jax").tree.leaves(params))
    assert block[1] == f"  model: {total:,} parameters (hidden_0 8,320, hidden_1 8,256, logits 650)"
    assert block[2].startswith("  devices: 1 cpu in 1 process(es); parallel=jit, mesh data=1 x fsdp=1")
    assert block[3] == "  data: train 1,437 examples, test 360 examples; global batch 100"
    assert block[4:6] == ["  steps: 0 -> 20", "  compiling the train step ..."]
    assert block[6].startswith("  compiled the train step in ")


def test_the_trained_parameters_come_back_and_a_stub_results_file_is_not_a_finished_run(tmp_path):
    import json

    import lab.data
    from lab import train
    from lab.models.mlp import MLP
    from lab.tasks.classification import ClassificationTask

    config = small_config()
    digits = {split: lab.data.load("digits", split) for split in ("train", "test")}
    task = ClassificationTask(MLP(features=(32,), num_classes=10), {"inputs": digits["train"]["inputs"][:1]})
    data = train.epoch_data(digits["train"], {"test": digits["test"]}, config)
    results, params = train.train_and_evaluate(config, str(tmp_path), task, data, return_params=True)
    assert max_abs_diff(params, final_params(str(tmp_path))) == 0
    again, params_again = train.train_and_evaluate(config, str(tmp_path), task, data, return_params=True)
    assert again == results and max_abs_diff(params_again, params) == 0  # finished: read back
    (tmp_path / "results.json").write_text(json.dumps({"step": 20}))  # no metrics: not finished
    redone = train.train_and_evaluate(config, str(tmp_path), task, data)
    assert redone["test_loss"] == results["test_loss"]
    assert json.loads((tmp_path / "results.json").read_text())["test_loss"] == results["test_loss"]


def test_a_workdir_saved_before_the_new_keys_still_resumes(tmp_path):
    import json

    first = main(small_config(num_train_steps=10), str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("accumulate_steps", "ema_decay"):  # as an older lab wrote it
        del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert main(small_config(num_train_steps=10), str(tmp_path)) == first
    with pytest.raises(Exception, match="different config .ema_decay"):
        main(small_config(num_train_steps=10, ema_decay=0.5), str(tmp_path))


def test_the_best_evaluation_keeps_its_own_checkpoint_and_a_profile_can_be_traced(tmp_path):
    import json
    import os

    config = small_config(num_train_steps=40, eval_every_steps=5, keep_best="test_loss", keep_best_mode="min",
                          profile_steps="10:20")
    main(config, str(tmp_path))
    losses = {r["step"]: r["eval_test/loss"] for r in math_records(str(tmp_path)) if "eval_test/loss" in r}
    best_step = min(losses, key=losses.get)
    assert os.listdir(tmp_path / "best") == [str(best_step)]
    with open(tmp_path / "best" / str(best_step) / "meta" / "metadata") as f:
        best = json.load(f)["best"]
    assert (best["metric"], best["value"]) == ("test_loss", pytest.approx(losses[best_step]))
    results = json.loads((tmp_path / "results.json").read_text())  # the selected eval beside the last one
    assert (results["selected_by"], results["selected_step"]) == ("test_loss", best_step)
    assert results["selected_test_loss"] == pytest.approx(losses[best_step])
    assert results["selected_test_accuracy"] == best["results"]["test_accuracy"]
    from lab.checkpoint import BestCheckpointer
    reopened = BestCheckpointer(str(tmp_path / "best"), "test_loss", "min")  # as a resumed run finds it
    assert reopened.selected() == {k: v for k, v in results.items() if k.startswith("selected_")}
    reopened.close()
    traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files if f.endswith(".xplane.pb")]
    assert traces
    with pytest.raises(ConfigValueError, match="is not a result of this run"):
        main(small_config(keep_best="test_nothing"), str(tmp_path / "bad"))
    with pytest.raises(ConfigValueError, match="names no split this run evaluates: .* a split of test"):
        main(small_config(keep_best="valid_loss"), str(tmp_path / "bad_split"))
    assert not [d for d in os.listdir(tmp_path / "bad_split" / "checkpoints") if d.isdigit()]  # before a step
    with pytest.raises(ConfigValueError, match="profile_steps"):
        main(small_config(profile_steps="20:10"), str(tmp_path / "bad2"))
