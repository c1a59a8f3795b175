"""lab.export -> lab.artifact: the exported program gives the live model's outputs, loads with jax
alone, and every unusable artifact or input is one clear error."""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

import lab.data
from lab import artifact, checkpoint
from lab.export import export_run
from tests.helpers import post_json as _post, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_export_computes_the_live_models_logits_for_any_batch(mlp_export):
    from experiments.mlp_classifier.config import get_config
    from lab.tasks.classification import image_classifier

    run, path = mlp_export
    model = artifact.Artifact(path)
    meta = json.loads(open(os.path.join(path, "model.json")).read())
    assert meta["source"]["step"] == 20 and meta["source"]["experiment"] == "mlp_classifier"
    assert meta["platforms"] == ["cpu", "cuda"] and meta["jax_version"] == jax.__version__
    assert meta["inputs"] == {"inputs": {"shape": ["b", 8, 8, 1], "dtype": "float32"}}
    assert meta["class_names"]["label"][:3] == ["0", "1", "2"]
    images = lab.data.load("digits", "test")["inputs"]
    live = image_classifier(get_config().model, 10)
    params = checkpoint.load_params(run)[0]
    for batch in (1, 7, 360):
        got = model(inputs=images[:batch])["label"]
        want = np.asarray(live.apply({"params": params}, images[:batch], train=False))
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The parameters are arguments of the program, not constants folded into it.
    assert os.path.getsize(os.path.join(path, "model.jax")) < 20_000 < os.path.getsize(os.path.join(path, "params.npz"))


_JAX_ONLY = """
import sys, numpy as np
from lab.artifact import Artifact
model = Artifact(sys.argv[1])
out = model(inputs=np.zeros((3, 8, 8, 1), np.float32))
assert out["label"].shape == (3, 10)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow_datasets")
                or m.startswith(("lab.models", "lab.tasks", "lab.train", "experiments")))
assert not loaded, loaded
print("ok")
"""


def test_loading_and_calling_needs_jax_only(mlp_export):
    proc = subprocess.run([sys.executable, "-c", _JAX_ONLY, mlp_export[1]], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_bad_inputs_are_refused_with_the_spec(mlp_export):
    model = artifact.Artifact(mlp_export[1])
    cases = [({"inputs": np.zeros((2, 8, 8), np.float32)}, "must have shape (b, 8, 8, 1)"),
             ({"inputs": np.zeros((0, 8, 8, 1), np.float32)}, "batch >= 1"),
             ({"pixels": np.zeros((2, 8, 8, 1))}, "missing ['inputs']"),
             ({"inputs": [[["a"] * 1] * 8] * 8}, "must hold numbers"),
             ({"inputs": np.full((1, 8, 8, 1), np.nan)}, "NaN")]
    for inputs, message in cases:
        with pytest.raises(artifact.ArtifactInputError) as e:
            model(**inputs)
        assert message in str(e.value), (message, str(e.value))


def test_unusable_artifacts_are_one_clear_error(mlp_export, tmp_path):
    import shutil

    def broken(name, change):
        path = tmp_path / name
        shutil.copytree(mlp_export[1], path)
        change(path)
        with pytest.raises(artifact.ArtifactError) as e:
            artifact.Artifact(str(path))
        return str(e.value)

    def corrupt(path):
        (path / "model.jax").write_bytes(b"garbage")

    def other_params(path):  # a consistent checksum, but parameters of another shape
        with np.load(path / "params.npz") as z:
            flat = {k: z[k] for k in z.files}
        flat["hidden_0/kernel"] = np.zeros((3, 3), np.float32)
        np.savez(path / "params.npz", **flat)
        meta = json.loads((path / "model.json").read_text())
        meta["sha256"]["params.npz"] = artifact.sha256(str(path / "params.npz"))
        (path / "model.json").write_text(json.dumps(meta))

    def too_new(path):
        meta = json.loads((path / "model.json").read_text())
        meta["serialization_version"] = 99
        (path / "model.json").write_text(json.dumps(meta))

    assert "does not match its checksum" in broken("corrupt", corrupt)
    assert "does not match model.jax" in broken("params", other_params)
    assert "serialization version 99" in broken("new", too_new)
    assert "not a lab export" in broken("no_sidecar", lambda p: (p / "model.json").unlink())
    assert "is missing" in broken("no_params", lambda p: (p / "params.npz").unlink())
    with pytest.raises(artifact.ArtifactError, match="is not a lab export"):
        artifact.Artifact(str(tmp_path / "nothing"))


def test_export_cli_errors_are_one_line(mlp_export, tmp_path, run_cli):
    cases = [([f"--workdir={tmp_path}", f"--out={tmp_path}/m"], 1, "holds no run"),
             ([f"--workdir={mlp_export[0]}", f"--out={tmp_path}/m", "--spec=lab.export:no_such_builder"],
              1, "has no function 'no_such_builder'"),
             ([f"--workdir={mlp_export[0]}", f"--out={tmp_path}/m",
               "--spec=experiments.transformer_lm.__main__:export_spec"],
              1, "exports transformer_lm runs; " + os.path.abspath(mlp_export[0]) + " is a run of mlp_classifier"),
             ([f"--workdir={mlp_export[0]}", f"--out={tmp_path}/m", "--spec=nowhere"], 1, "MODULE:FUNCTION"),
             ([f"--workdir={mlp_export[0]}"], 2, "--out")]
    from lab.errors import CheckpointError, ConfigValueError
    with pytest.raises(ConfigValueError, match="no module 'nope'"):
        export_run(mlp_export[0], str(tmp_path / "m"), spec="nope:export_spec")
    with pytest.raises(CheckpointError, match="checkpoint"):
        export_run(mlp_export[0], str(tmp_path / "m"), step=3)
    with pytest.raises(ConfigValueError, match="--quantize"):
        export_run(mlp_export[0], str(tmp_path / "m"), quantize="int4")
    old = tmp_path / "old_run"  # a run record that names no export (a GAN's, or an older lab's)
    old.mkdir()
    (old / "config.json").write_text((open(os.path.join(mlp_export[0], "config.json")).read()))
    (old / "run.json").write_text('{"experiment": "gan"}')
    with pytest.raises(ConfigValueError, match="names no export .trained by gan.*--spec="):
        export_run(str(old), str(tmp_path / "m"))
    edited = tmp_path / "edited_run"  # the run with its config's layer widths changed by hand
    shutil.copytree(mlp_export[0], edited)
    config = json.loads((edited / "config.json").read_text())
    config["model"]["features"] = [32]
    (edited / "config.json").write_text(json.dumps(config))
    cases.append(([f"--workdir={edited}", f"--out={tmp_path}/m"], 1, "does not fit the model its config describes"))
    for args, code, message in cases:
        proc = run_cli("lab.export", *args)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == code and len(lines) == 1 and message in lines[0], (args, proc.stderr[-1500:])
    assert not os.path.exists(tmp_path / "m")


def test_export_never_deletes_what_is_not_an_export(mlp_export, tmp_path, run_cli):
    run, model = mlp_export
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me too")
    before = sorted(os.listdir(run))
    from lab.errors import ConfigValueError
    for out, message in [(notes, "is not a lab export"), (a_file, "is not a folder"), (run, "overlaps the run"),
                         (os.path.join(run, "export"), "overlaps the run"), (tmp_path, "is not a lab export"),
                         (os.path.dirname(run), "overlaps the run")]:
        with pytest.raises(ConfigValueError, match=message):
            export_run(run, str(out))
    proc = run_cli("lab.export", f"--workdir={run}", f"--out={run}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "overlaps the run" in lines[0], proc.stderr[-1500:]
    assert (notes / "todo.txt").read_text() == "keep me" and a_file.read_text() == "keep me too"
    assert sorted(os.listdir(run)) == before
    # An earlier export (and an empty folder) is replaced; an export with a stranger file in it is not.
    (tmp_path / "empty").mkdir()
    export_run(run, str(tmp_path / "empty"))
    assert artifact.is_export(str(tmp_path / "empty"))
    export_run(run, str(tmp_path / "empty"))
    (tmp_path / "empty" / "mine.txt").write_text("x")
    with pytest.raises(ConfigValueError, match=r"holds files a lab export does not \(mine.txt\)"):
        export_run(run, str(tmp_path / "empty"))


def test_the_server_answers_with_the_artifacts_predictions_and_survives_bad_requests(mlp_export):
    import threading
    import urllib.request

    with serving(mlp_export[1], "--max_wait_ms=200", "--max_batch=32", "--max_body_kb=64") as (base, health):
        assert health["status"] == "ok" and health["step"] == 20

        images = lab.data.load("digits", "test")["inputs"][:5]
        status, answer = _post(base + "/predict", json.dumps({"inputs": images.tolist()}).encode())
        assert status == 200 and answer["model"] == {"name": "mlp_classifier", "step": 20}
        logits = artifact.Artifact(mlp_export[1])(inputs=images)["label"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        assert [p["label"]["label"] for p in answer["predictions"]] == [str(i) for i in logits.argmax(1)]
        np.testing.assert_allclose([p["label"]["probability"] for p in answer["predictions"]], probs.max(1), rtol=1e-4)

        # Eight one-image requests at once are answered in fewer model calls (dynamic batching).
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            _post(base + "/predict", json.dumps({"inputs": [images[i % 5].ravel().tolist()]}).encode())))
            for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(s for s, _ in results) == [200] * 8

        bad = [(b"{not json", 400, "not JSON"),
               (json.dumps({"inputs": [[1, 2, 3]]}).encode(), 422, "shape [8, 8, 1]"),
               (json.dumps({"inputs": [["x"] * 64]}).encode(), 422, "must be numbers"),
               (json.dumps({"pixels": [1]}).encode(), 422, "inputs"),
               (json.dumps({"inputs": [[0.5] * 64] * 400}).encode(), 413, "over 64 KB")]
        for body, status, message in bad:
            got, answer = _post(base + "/predict", body)
            assert got == status and message in answer["error"], (status, answer)
        assert _post(base + "/predict", json.dumps({"inputs": images[:1].tolist()}).encode())[0] == 200

        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        def value(name):
            return float(next(line.rsplit(" ", 1)[1] for line in metrics.splitlines() if line.startswith(name)))
        assert value('lab_requests_total{route="/predict",status="200"}') == 10
        assert value('lab_requests_total{route="/predict",status="422"}') == 3
        assert value('lab_requests_total{route="/predict",status="400"}') == 1
        assert value('lab_requests_total{route="/predict",status="413"}') == 1
        assert value("lab_batch_rows_sum") == 5 + 8 + 1
        assert value("lab_batch_rows_count") < 10  # the eight single images shared model calls
        assert 'lab_model_info{name="mlp_classifier",path=' in metrics
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        assert "<canvas" in page and "mlp_classifier (step 20)" in page


@pytest.fixture(scope="module")
def gpt_export(tmp_path_factory):
    """The tiny GPT run and its export (the decode loop inside, the prompt length symbolic)."""
    from experiments.transformer_lm.__main__ import main
    from experiments.transformer_lm.config import get_config

    root = tmp_path_factory.mktemp("gpt_export")
    main(get_config("tiny"), str(root / "run"))
    export_run(str(root / "run"), str(root / "model"), spec="experiments.transformer_lm.__main__:export_spec")
    return str(root / "run"), str(root / "model")


def test_the_gpt_export_samples_the_live_models_tokens_and_serves_them(gpt_export):
    from experiments.transformer_lm.config import get_config
    from lab.models import decoding
    from lab.tasks.language_model import gpt_config

    run, path = gpt_export
    model = artifact.Artifact(path)
    assert model.meta["constraints"] == ["p <= 8"] and model.meta["max_new_tokens"] == 8
    cfg = gpt_config(get_config("tiny").model, len(model.meta["tokenizer"]["vocab"]))
    params = checkpoint.load_params(run)[0]
    for length, temperature in ((3, 0.8), (8, 0.0)):
        prompt = np.arange(2 * length, dtype=np.int32).reshape(2, length) % 60
        got = model(prompt=prompt, seed=np.uint32(7), temperature=np.float32(temperature), top_k=np.int32(20))["tokens"]
        want = decoding.generate(cfg, params, prompt, 8, jax.random.key(np.uint32(7)),
                                 temperature=temperature, top_k=20)
        np.testing.assert_array_equal(got, np.asarray(want))
    with pytest.raises(artifact.ArtifactInputError, match="p <= 8"):
        model(prompt=np.zeros((1, 9), np.int32), seed=0, temperature=1.0, top_k=1)

    with serving(path) as (base, _):
        request = {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0.8, "top_k": 20, "seed": 7}
        status, first = _post(base + "/generate", json.dumps(request).encode())
        assert status == 200 and len(first["completion"]) == 5 and first["text"] == "ROMEO:" + first["completion"]
        assert _post(base + "/generate", json.dumps(request).encode())[1]["text"] == first["text"]  # same seed
        vocab = model.meta["tokenizer"]["vocab"]
        ids = np.array([[vocab.index(c) for c in "ROMEO:"]], np.int32)
        tokens = model(prompt=ids, seed=np.uint32(7), temperature=np.float32(0.8), top_k=np.int32(20))["tokens"][0]
        assert first["completion"] == "".join(vocab[i] for i in tokens[6:11])
        bad = [({"prompt": "ROMEO:", "max_tokens": 9}, '"max_tokens"'),
               ({"prompt": "ROMEO and Juliet"}, "at most 8"),
               ({"prompt": "Ω"}, "outside the model's vocabulary"),
               ({"prompt": ""}, '"prompt"'),
               ({"prompt": "A", "temperature": "hot"}, '"temperature"'),
               ({"prompt": "A", "max_tokens": True}, '"max_tokens"'),
               ({"prompt": "A", "seed": float("inf")}, '"seed"')]
        for body, message in bad:
            status, answer = _post(base + "/generate", json.dumps(body).encode())
            assert status == 422 and message in answer["error"], (body, answer)
        assert _post(base + "/predict", b'{"inputs": [1]}')[0] == 404
        assert _post(base + "/generate", json.dumps(request).encode())[0] == 200  # still serving

        # Every prompt length ran in the length bucket compiled at start-up: no request compiled.
        info = json.loads(urllib.request.urlopen(base + "/info", timeout=10).read())
        assert info["limits"]["max_prompt_tokens"] == 8 and info["limits"]["max_new_tokens"] == 8
        assert info["buckets"] == {"batch": [1], "p": [8]} and info["ready"]
        compiled = _metric(base, "lab_xla_compilations")
        for length in range(1, 9):
            status, answer = _post(base + "/generate", json.dumps({"prompt": "ROMEO:!?"[:length], "seed": length}).encode())
            assert status == 200 and len(answer["completion"]) == 8, answer
        assert _metric(base, "lab_xla_compilations") == compiled


def _metric(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return float(next(line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_generation_limits_are_set_at_export_and_named_when_a_request_passes_them(gpt_export, tmp_path):
    from lab.errors import ConfigValueError

    run, _ = gpt_export
    spec = "experiments.transformer_lm.__main__:export_spec"
    meta = export_run(run, str(tmp_path / "m"), spec=spec, limits={"max_prompt_tokens": 4, "max_new_tokens": 12})
    assert meta["limits"] == {"max_prompt_tokens": 4, "max_new_tokens": 12} and meta["constraints"] == ["p <= 4"]
    assert meta["buckets"] == {"p": {"sizes": [4], "length_input": "prompt_len"}}
    assert export_run(run, str(tmp_path / "m"), spec=spec, limits={"max_new_tokens": 10})["limits"] == \
        {"max_prompt_tokens": 6, "max_new_tokens": 10}  # the rest of the 16 positions
    with pytest.raises(ConfigValueError, match="together at most the model's 16 positions"):
        export_run(run, str(tmp_path / "n"), spec=spec, limits={"max_prompt_tokens": 8, "max_new_tokens": 9})
    with pytest.raises(ConfigValueError, match="takes no such limit .it is not a text generator"):
        export_run(run, str(tmp_path / "n"), spec="experiments.mlp_classifier.__main__:export_spec",
                   limits={"max_new_tokens": 9})
    model = artifact.Artifact(str(tmp_path / "m"))
    assert model.limits == {"max_prompt_tokens": 6, "max_new_tokens": 10}
    with serving(str(tmp_path / "m")) as (base, _):
        for body, message in [({"prompt": "ROMEO:!"}, "at most 6 (max_prompt_tokens, set at export)"),
                              ({"prompt": "RO", "max_tokens": 11}, "[1, 10] (max_new_tokens, set at export)")]:
            status, answer = _post(base + "/generate", json.dumps(body).encode())
            assert status == 422 and message in answer["error"], answer
        status, answer = _post(base + "/generate", json.dumps({"prompt": "ROMEO:", "max_tokens": 10}).encode())
        assert status == 200 and len(answer["completion"]) == 10


def test_an_int8_export_keeps_the_accuracy_in_a_quarter_of_the_bytes(mlp_export, tmp_path):
    from lab.serve import build_app

    run, f32_path = mlp_export
    meta = export_run(run, str(tmp_path / "int8"), quantize="int8")
    assert meta["compression"].startswith("int8") and meta["params"]["bytes"] < 0.3 * \
        artifact.Artifact(f32_path).meta["params"]["bytes"]
    test = lab.data.load("digits", "test")
    accuracy = {name: float(np.mean(artifact.Artifact(path)(inputs=test["inputs"])["label"].argmax(1) == test["label"]))
                for name, path in (("f32", f32_path), ("int8", str(tmp_path / "int8")))}
    assert abs(accuracy["int8"] - accuracy["f32"]) <= 0.01, accuracy
    build_app(str(tmp_path / "int8"))  # served like any other artifact


def test_the_chatbot_export_replies_as_the_live_model(tmp_path):
    """Exported with freshly initialised parameters (the export does not depend on training):
    the decode loop's replies equal `lstm.generate`'s, and the server's request path decodes them."""
    from experiments.lstm_chatbot.__main__ import build, export_spec
    from experiments.lstm_chatbot.config import get_config
    from lab.export import export
    from lab.models import lstm
    from lab.serve import BadRequest, Predictor

    config = get_config("tiny")
    tokenizer, ids, model_cfg = build(config)
    src = np.full((2, config.max_src), ids.pad, np.int32)
    src[:, :4] = [[5, 6, 7, ids.eos], [8, 9, 10, ids.eos]]
    src_len = np.array([4, 4], np.int32)
    params = lstm.Seq2Seq(model_cfg).init(jax.random.key(0), src, src_len, src)["params"]
    export(export_spec(config), params, str(tmp_path / "chatbot"), {"experiment": "lstm_chatbot", "step": 0})
    model = artifact.Artifact(str(tmp_path / "chatbot"))
    n = model.meta["max_new_tokens"]
    got = model(src=src, src_len=src_len, seed=np.uint32(5), temperature=np.float32(1.0), top_k=np.int32(10))
    tokens, lengths, _ = lstm.generate(model_cfg, params, src, src_len, n, jax.random.key(np.uint32(5)),
                                       temperature=1.0, top_k=10)
    np.testing.assert_array_equal(got["tokens"], np.asarray(tokens))
    np.testing.assert_array_equal(got["lengths"], np.asarray(lengths))

    predictor = Predictor(model)
    inputs, max_tokens = predictor.generation({"prompt": "Good morrow", "max_tokens": n, "seed": 2, "top_k": 5})
    rows = __import__("lab.tasks.seq2seq", fromlist=["encode_pairs"]).encode_pairs(
        tokenizer.encode, ["Good morrow"], [""], config.max_src, config.max_tgt, ids)
    np.testing.assert_array_equal(inputs["src"], rows["src"])
    reply = predictor.completion(model(**inputs), len("Good morrow"), max_tokens)
    live, live_len, _ = lstm.generate(model_cfg, params, rows["src"], rows["src_len"], n,
                                      jax.random.key(np.uint32(2)), temperature=0.8, top_k=5)
    from lab.tasks.seq2seq import decode_reply
    assert reply == decode_reply(tokenizer, np.asarray(live[0]), int(live_len[0]))
    with pytest.raises(BadRequest, match="max_tokens"):
        predictor.generation({"prompt": "Hi", "max_tokens": n + 1})
