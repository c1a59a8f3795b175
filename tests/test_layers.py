"""lab's layers (pyproject.toml, [tool.importlinter]): the contracts hold, and an upward import
breaks them with the offending import named."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT, "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_layer_contracts_hold():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_them(tmp_path):
    for name in ("lab", "experiments"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.html"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    with open(tmp_path / "lab" / "models" / "mlp.py", "a") as f:  # a model reaching for the loop
        f.write("\nfrom lab import train  # noqa\n")
    with open(tmp_path / "lab" / "optim" / "__init__.py", "a") as f:  # core reaching for an experiment
        f.write("\nimport experiments.cli  # noqa\n")
    proc = _lint(str(tmp_path))
    assert proc.returncode != 0
    assert "lab.models.mlp -> lab.train" in proc.stdout
    assert "lab.optim -> experiments.cli" in proc.stdout


def test_no_measurements_or_history_in_code_and_the_notes_stay_short():
    """Numbers live in experiments/reference_results.json; history in git log; BUILD_NOTES <= 700 lines."""
    import re

    pattern = re.compile(r"session [0-9]|issue [0-9]|zen [0-9]|epyc|xeon", re.I)
    offenders = []
    for top in ("lab", "experiments", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        offenders += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1)
                                      if pattern.search(line)]
    assert not offenders, offenders
    with open(os.path.join(ROOT, "BUILD_NOTES.md")) as f:
        notes = f.read()
    assert notes.count("\n") <= 700 and not re.search(r"session [0-9]|issue [0-9]", notes, re.I)
    for folder, _, files in os.walk(os.path.join(ROOT, "lab")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    assert f.read().count("\n") <= 500, name
