"""lab.serve: once /healthz is ready no request compiles, every bad request is a counted 4xx (an
unexpected error a counted 500 with its traceback), and a damaged sidecar or a busy port stops
the start-up with one error line."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from lab import artifact
from tests.helpers import post_json as _post, serving


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(base) -> dict[str, float]:
    """/metrics as {series: value} (comments left out)."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_no_request_compiles_once_healthz_is_ready(mlp_export):
    """Requests of many batch sizes at once (the batcher merges them into yet other sizes, and
    one is larger than --max_batch) compile nothing: the start-up compiled every bucket."""
    model = artifact.Artifact(mlp_export[1])
    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 5, 6, 7, 9, 11, 13, 16, 17, 23, 31, 40] + [1] * 6
    images = {n: rng.random((n, 8, 8, 1)).astype(np.float32) for n in set(sizes)}
    with serving(mlp_export[1], "--max_batch=16", "--max_wait_ms=20") as (base, health):
        assert health["status"] == "ok"
        ready = metrics(base)
        assert ready["lab_ready"] == 1 and ready["lab_model_compiles"] == 5  # batches of 1, 2, 4, 8, 16
        answers = {}
        threads = [threading.Thread(target=lambda i=i, n=n: answers.__setitem__(
            i, _post(base + "/predict", json.dumps({"inputs": images[n].tolist()}).encode())))
            for i, n in enumerate(sizes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = metrics(base)
    assert after["lab_xla_compilations"] == ready["lab_xla_compilations"], "a request compiled"
    assert after["lab_model_compiles"] == 5
    assert after['lab_responses_total{route="/predict",status_class="2xx"}'] == len(sizes)
    for i, n in enumerate(sizes):  # padding and pieces change no answer: the program called unpadded
        status, answer = answers[i]
        logits = np.asarray(model.exported.call(model.params, {"inputs": images[n]})["label"])
        assert status == 200 and len(answer["predictions"]) == n
        assert [p["label"]["label"] for p in answer["predictions"]] == [str(k) for k in logits.argmax(1)]


def test_bad_inputs_are_counted_4xx_and_the_server_keeps_serving(mlp_export):
    deep = "[" * 5000 + "]" * 5000
    row = [0.5] * 64
    cases = [(b"{not json", 400, "not JSON"),
             (('{"inputs": ' + deep + "}").encode(), 400, "nests too deeply"),
             (json.dumps({"inputs": [[[[[[0.5]]]]]]}).encode(), 422, "nest more than"),
             (json.dumps({"inputs": [["0.5"] * 64]}).encode(), 422, "found strings"),
             (json.dumps({"inputs": [[True] * 64]}).encode(), 422, "found booleans"),
             (json.dumps({"inputs": [row[:-1] + [None]]}).encode(), 422, "found nulls"),
             (json.dumps({"inputs": [row, row[:10]]}).encode(), 422, "ragged"),
             (json.dumps({"inputs": [row[:-1] + [10 ** 400]]}).encode(), 422, "beyond float32"),
             (json.dumps({"inputs": [[1, 2, 3]]}).encode(), 422, "shape [8, 8, 1]"),
             (json.dumps({"inputs": [[3e38] * 64]}).encode(), 422, "not finite"),  # finite in, inf logits out
             (json.dumps({"inputs": [row[:-1] + [float("nan")]]}).encode(), 422, "NaN"),
             (json.dumps({"prompt": "hi"}).encode(), 422, '{"inputs"'),
             (json.dumps([row]).encode(), 422, "JSON object")]
    with serving(mlp_export[1]) as (base, _):
        for body, status, message in cases:
            got, answer = _post(base + "/predict", body)
            assert got == status and message in answer["error"], (body[:60], got, answer)
            assert "\n" not in answer["error"]
        assert _post(base + "/generate", b'{"prompt": "x"}')[0] == 404
        assert _get(base + "/nowhere")[0] == 404
        assert _post(base + "/predict", json.dumps({"inputs": [row]}).encode())[0] == 200
        counts = metrics(base)
    assert counts['lab_responses_total{route="/predict",status_class="4xx"}'] == len(cases)
    assert counts['lab_requests_total{route="/predict",status="422"}'] == len(cases) - 2
    assert counts['lab_responses_total{route="/generate",status_class="4xx"}'] == 1
    assert counts['lab_responses_total{route="other",status_class="4xx"}'] == 1
    assert counts['lab_responses_total{route="/predict",status_class="2xx"}'] == 1
    assert not any(name.startswith("lab_responses_total") and "5xx" in name and "/healthz" not in name
                   for name in counts)  # /healthz: 503 while warming up


@contextlib.contextmanager
def _in_thread(app):
    """`app` served by uvicorn in a thread of this process on a free port; yields its base URL."""
    import uvicorn

    from lab.serve import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    # log_config=None: uvicorn leaves logging alone (its handlers would keep pytest's captured stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_healthz_is_503_while_warming_and_a_bug_is_a_counted_500_with_its_traceback(mlp_export, monkeypatch, capfd):
    from lab import serve

    release = threading.Event()
    warm_up = artifact.Artifact.warm_up
    monkeypatch.setattr(artifact.Artifact, "warm_up", lambda self, *a, **k: (release.wait(60), warm_up(self, *a, **k)))
    body = json.dumps({"inputs": [[0.5] * 64]}).encode()
    with _in_thread(serve.build_app(mlp_export[1])) as base:
        status, text = _get(base + "/healthz")
        assert status == 503 and json.loads(text)["status"] == "warming up"
        status, answer = _post(base + "/predict", body)
        assert status == 503 and "warming up" in answer["error"]
        release.set()
        deadline = time.monotonic() + 60
        while _get(base + "/healthz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _post(base + "/predict", body)[0] == 200

        def broken(self, outputs):
            raise RuntimeError("a bug in the predictions")
        monkeypatch.setattr(serve.Predictor, "predictions", broken)
        status, answer = _post(base + "/predict", body)
        assert status == 500 and "traceback" in answer["error"]
        counts = metrics(base)
    assert counts['lab_responses_total{route="/predict",status_class="5xx"}'] == 2  # the 503 and the 500
    assert counts['lab_requests_total{route="/predict",status="500"}'] == 1
    assert counts['lab_requests_total{route="/healthz",status="503"}'] >= 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug in the predictions" in err


def _edited(source: str, path, change, checksum: bool = False) -> str:
    """A copy of the export at `source` with its model.json changed by `change(meta) -> meta`
    (its own checksum recomputed if `checksum`)."""
    shutil.copytree(source, path)
    meta = change(json.loads((path / "model.json").read_text()))
    if checksum:
        meta["sha256"]["model.json"] = artifact.sidecar_checksum(meta)
    (path / "model.json").write_text(json.dumps(meta))
    return str(path)


def test_a_sidecar_that_is_not_the_programs_stops_the_start_up(mlp_export, tmp_path, run_cli):
    source = mlp_export[1]

    def spec(meta):
        meta["inputs"]["inputs"]["shape"] = ["b", 64]
        return meta

    def output(meta):
        meta["outputs"]["logits"] = meta["outputs"].pop("label")
        return meta

    def buckets(meta):
        meta["buckets"] = {"b": {"sizes": [1, 2], "length_input": "n"}}
        return meta

    def version_1(meta):  # an export from before buckets and limits: the server would misuse it
        meta["format_version"] = 1
        return meta

    cases = {"list": (lambda meta: [meta], False, "is a JSON list"),
             "v1": (version_1, False, "not a lab export of format lab-export v2 (found lab-export v1)"),
             "no_inputs": (lambda meta: {k: v for k, v in meta.items() if k != "inputs"}, False, "no 'inputs'"),
             "edited": (spec, False, "changed after export"),
             "spec": (spec, True, "input 'inputs' is (b, 64) float32 in the sidecar, (b, 8, 8, 1) float32 in the"),
             "output": (output, True, "the program returns ['label']"),
             "buckets": (buckets, True, "the program takes inputs ['inputs']")}
    paths = {}
    for name, (change, checksum, message) in cases.items():
        paths[name] = _edited(source, tmp_path / name, change, checksum)
        with pytest.raises(artifact.ArtifactError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")) as e:
            artifact.Artifact(paths[name])
        assert "export the run again" in str(e.value) and "\n" not in str(e.value)
    from lab.launch import free_port
    for name in ("list", "spec"):
        proc = run_cli("lab.serve", f"--model={paths[name]}", f"--port={free_port()}", timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        assert cases[name][2] in lines[0] and "serving" not in proc.stdout


def test_a_model_that_fails_its_warm_up_is_reported_and_the_server_stops(mlp_export, monkeypatch):
    """In process: /healthz says 'failed' with the error, /predict answers 503, the callback hears
    it. As a command: one error line, exit 1, after the 'serving' line."""
    from lab import serve

    def broken(self, *args, **kwargs):
        raise RuntimeError("no kernel for this machine")
    monkeypatch.setattr(artifact.Artifact, "warm_up", broken)
    heard = []
    with _in_thread(serve.build_app(mlp_export[1], on_warm_up_failure=heard.append)) as base:
        deadline = time.monotonic() + 30
        while not heard:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, text = _get(base + "/healthz")
        health = json.loads(text)
        assert status == 503 and (health["status"], health["error"]) == ("failed", "RuntimeError: no kernel for this machine")
        status, answer = _post(base + "/predict", json.dumps({"inputs": [[0.5] * 64]}).encode())
        assert status == 503 and "the model failed to start" in answer["error"]
    from lab.launch import free_port
    script = ("import sys; from lab import artifact, serve\n"
              "def broken(self, *a, **k): raise RuntimeError('no kernel for this machine')\n"
              "artifact.Artifact.warm_up = broken\n"
              f"serve.main(['--model={mlp_export[1]}', '--port={free_port()}'])")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert "failed on its start-up call (RuntimeError: no kernel for this machine)" in errors[0]


def test_a_busy_port_is_one_error_line_before_serving(mlp_export, run_cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli("lab.serve", f"--model={mlp_export[1]}", f"--port={port}", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and f"port {port} is in use" in lines[0]
    assert "serving" not in proc.stdout


def test_batches_are_padded_to_buckets_and_cut_back(mlp_export):
    model = artifact.Artifact(mlp_export[1], max_batch=8)
    images = np.random.default_rng(1).random((21, 8, 8, 1)).astype(np.float32)
    assert [b["b"] for b in model.bucket_shapes()] == [1, 2, 4, 8] and model.compiles == 0
    got = model(inputs=images)["label"]  # pieces of 8, 8 and 5 (padded to 8)
    want = np.asarray(model.exported.call(model.params, {"inputs": images})["label"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert model.compiles == 1
    model(inputs=images[:3])
    model(inputs=images[:4])
    assert model.compiles == 2  # 3 and 4 rows: one bucket
    assert artifact.batch_buckets(20) == [1, 2, 4, 8, 16, 20]
