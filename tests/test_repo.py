"""The repository keeps its promises: .ci/run runs the README's test command, and README's
Python examples run as written."""

import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", read("README.md"), re.S)
    test_commands = [b for b in blocks if "pytest" in b]
    assert len(test_commands) == 1, "README must state exactly one test command"
    ci = read(".ci/run")
    assert test_commands[0].strip() in ci, ".ci/run no longer runs README's test command"


def test_readme_main_command_runs_the_digits_experiment():
    blocks = re.findall(r"```bash\n(.*?)\n```", read("README.md"), re.S)
    assert "experiments.mlp_classifier --workdir=" in blocks[0]


def test_readme_python_examples_run_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)\n```", read("README.md"), re.S)
    assert len(blocks) == 3
    for i, block in enumerate(blocks):
        proc = subprocess.run([sys.executable, "-c", block + "\nprint('ok')"], cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), (i, proc.stderr[-3000:])
    script = blocks[1] + "\nprint(results['test_accuracy'])"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)
    assert float(proc.stdout.strip().splitlines()[-1]) > 0.9  # rerun: a finished run, same result
    assert "is finished" in proc.stdout
    for name in ("results.json", "metrics.jsonl", "test_confusion_matrix.png"):
        assert (tmp_path / "runs" / "my_convnet" / name).is_file()
    # Your own model exports: the artifact predicts the digits as the trained run does.
    from lab.artifact import Artifact
    import lab.data
    test = lab.data.load("digits", "test")
    for name in ("my_convnet", "my_nnx_convnet"):  # linen and NNX
        logits = Artifact(str(tmp_path / "exports" / name))(inputs=test["inputs"][:200])["label"]
        assert np.mean(np.argmax(logits, -1) == test["label"][:200]) > 0.9, name


def test_readme_train_export_serve_curl_works_as_written(tmp_path):
    """README's main job, then its deploy block, run by bash as written: only the workdir and the
    export (moved into tmp_path), the port (a free one) and the venv's python (the one running the tests) differ."""
    from lab.launch import free_port

    blocks = re.findall(r"```bash\n(.*?)\n```", read("README.md"), re.S)
    train = blocks[0].split("&& ")[-1]  # the main job, without the install before it
    (deploy,) = [b for b in blocks if "lab.serve" in b and "curl" in b]
    script = ("set -euo pipefail\n" + train + "\n" + deploy).replace(".venv/bin/python", "python")
    script = (script.replace("runs/mlp_digits", str(tmp_path / "mlp_digits"))
              .replace("exports/mlp_digits", str(tmp_path / "export")).replace("8000", str(free_port())))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    answer = next(line for line in proc.stdout.splitlines() if line.startswith('{"predictions"'))
    assert '"model":{"name":"mlp_classifier","step":1400}' in answer
    assert 'lab_requests_total{route="/predict",status="200"} 1.0' in proc.stdout
