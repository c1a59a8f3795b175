"""Shared test setup: a persistent XLA compilation cache, one dataset dir per session, the exported
digits MLP that the export, serving and page tests share, and a list of the pictures tests wrote.

The environment variables are set before jax is imported, so they reach in-process jax and
every subprocess a test starts (multi-device runs, CLI error cases).
"""

import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Datasets build once per machine into the repo's ignored cache, shared by all tests.
os.environ.setdefault("LAB_DATA_DIR", os.path.join(_ROOT, ".cache", "tensorflow_datasets"))


@pytest.fixture(scope="session")
def data_dir():
    """The directory datasets are built into for the whole test session."""
    return os.environ["LAB_DATA_DIR"]


@pytest.fixture
def run_cli():
    """Runs `python -m MODULE ARGS...` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    from experiments.cli import MALLOC_ENV

    def run(module, *args, env=None, timeout=300, input=None):
        # The malloc settings up front: the CLI would otherwise re-exec itself to get them.
        full_env = {**MALLOC_ENV, **os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", module, *args], cwd=_ROOT, env=full_env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    return run


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory):
    """A 20-step digits MLP run (with its run record, as the CLI writes it) and its export."""
    from experiments.mlp_classifier.__main__ import main
    from lab.export import export_run
    from lab.provenance import write_run_record
    from tests.test_train import small_config

    root = tmp_path_factory.mktemp("export")
    run = str(root / "run")
    main(small_config(), run)
    write_run_record(run, "mlp_classifier", "experiments.mlp_classifier.__main__:export_spec")
    export_run(run, str(root / "model"))
    return run, str(root / "model")


_SESSION_START = __import__("time").time()


def pytest_terminal_summary(terminalreporter):
    """Lists the pictures tests wrote to test-output/ in this run (e.g. the page in Chromium)."""
    out = os.path.join(_ROOT, "test-output")
    if not os.path.isdir(out):
        return
    new = sorted(name for name in os.listdir(out)
                 if name.endswith(".png") and os.path.getmtime(os.path.join(out, name)) >= _SESSION_START)
    if new:
        terminalreporter.write_sep("-", "pictures written by the tests")
        for name in new:
            terminalreporter.write_line(os.path.join("test-output", name))
