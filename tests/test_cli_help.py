"""The command line explains itself: `python -m experiments`, an experiment's `--help`/`-h`, the
`--config` forms from any folder, paths in configs, and a wheel that ships what the commands read."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import ml_collections
import pytest

from experiments import catalog, cli
from experiments.cli import MALLOC_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ("gan", "lstm_chatbot", "lstm_forecast", "mlp_classifier", "transformer_classifier",
               "transformer_lm", "transformer_mlm", "vae")
TINY = ["--config.num_train_steps=4", "--config.log_every_steps=2", "--config.eval_every_steps=4",
        "--config.checkpoint_every_steps=4"]


def run_from(cwd, *args, pythonpath=ROOT, timeout=300):
    """`python ARGS...` in `cwd` with this tree (or `pythonpath`) importable; CompletedProcess."""
    env = {**MALLOC_ENV, **os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def only_error_line(proc):
    """The one line a usage error prints; nothing else on stderr, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def test_listing_names_every_experiment_in_one_line(tmp_path):
    assert catalog.experiment_names() == list(EXPERIMENTS)
    proc = run_from(tmp_path, "-m", "experiments")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for name in EXPERIMENTS:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 2, line  # a description follows the name
    assert "the DCGAN; variants: digits" in proc.stdout
    assert "experiments.reproduce" in proc.stdout and "--help" in proc.stdout


@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_lists_variants_with_descriptions_and_keys_with_defaults(tmp_path, help_flag):
    proc = run_from(tmp_path, "-m", "experiments.mlp_classifier", help_flag)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("usage: python -m experiments.mlp_classifier --workdir=DIR")
    assert "digits (default)  The seed recipe on scikit-learn digits" in out
    assert "digits_tuned      Adam 3e-3, warmup + cosine, 256-128 hidden, 1,400 steps" in out
    for line in ("  batch_size = 100", "  optimizer.learning_rate = 0.001", "  optimizer.name = 'sgd'",
                 "  model.features = (128, 64)", "  data_dir = None (or a str)", "  --workdir: "):
        assert line in out, line
    assert "  seed = 0  # every random number of the run" in out  # the key's comment in config.py


def test_help_of_a_variant_shows_its_values_and_helpfull_still_works(tmp_path):
    proc = run_from(tmp_path, "-m", "experiments.transformer_lm", "--config=:tuned", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "config keys of variant tuned" in proc.stdout
    assert "  num_train_steps = 7000" in proc.stdout and "  model.num_layers = 4" in proc.stdout
    for variant in ("tuned_bpe", "wide", "tiny"):
        assert f"\n  {variant} " in proc.stdout, variant
    proc = run_from(tmp_path, "-m", "experiments.transformer_lm", "--helpfull")
    assert "--workdir" in proc.stdout and "--config" in proc.stdout, proc.stderr[-2000:]  # absl's, as before


def test_every_variant_has_a_description_and_loads():
    """The variants come from get_config's own comparisons; each has its docstring line."""
    for name in EXPERIMENTS:
        path = catalog.config_file(name)
        described = catalog.variant_descriptions(path)
        for entry in catalog.variant_names(path):
            assert any(described.get(v) for v in entry), (name, entry)
            for variant in entry:
                assert isinstance(catalog.load_config(path, variant), ml_collections.ConfigDict)
        with pytest.raises(ValueError, match="unknown variant"):
            catalog.load_config(path, "no_such_variant")


def test_config_forms_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = catalog.config_file("gan")
    mlp = catalog.config_file("mlp_classifier")
    assert catalog.resolve_config_argument("mlp_classifier:digits_tuned", own) == mlp + ":digits_tuned"
    assert catalog.resolve_config_argument("mlp_classifier", own) == mlp
    assert catalog.resolve_config_argument(":digits", own) == own + ":digits"
    assert catalog.resolve_config_argument("digits", own) == own + ":digits"
    assert catalog.resolve_config_argument("experiments/mlp_classifier/config.py:cnn_digits", own) == mlp + ":cnn_digits"
    (tmp_path / "mine.py").write_text("def get_config():\n    return {}\n")
    assert catalog.resolve_config_argument("mine.py", own) == str(tmp_path / "mine.py")
    with pytest.raises(catalog.ConfigArgumentError, match="no such file"):
        catalog.resolve_config_argument("experiments/mlp_classifier/confg.py", own)
    with pytest.raises(catalog.ConfigArgumentError, match="no experiment 'mlp_clasifier'"):
        catalog.resolve_config_argument("mlp_clasifier:digits_tuned", own)


@pytest.mark.parametrize("config", ["mlp_classifier:digits_tuned", "experiments/mlp_classifier/config.py:digits_tuned"])
def test_a_run_from_another_folder(tmp_path, config):
    """The shorthand and the repo-relative path both work outside the clone; a relative path
    given on the command line is relative to the current folder and recorded absolute."""
    os.makedirs(os.environ["LAB_DATA_DIR"], exist_ok=True)  # a fresh clone has not built any dataset yet
    (tmp_path / "datasets").symlink_to(os.environ["LAB_DATA_DIR"], target_is_directory=True)
    proc = run_from(tmp_path, "-m", "experiments.mlp_classifier", "--workdir=runs/digits", f"--config={config}",
                    "--config.data_dir=datasets", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "runs" / "digits" / "config.json").read_text())
    assert saved["optimizer"]["name"] == "adam" and saved["model"]["features"] == [256, 128]  # digits_tuned
    assert saved["data_dir"] == str(tmp_path / "datasets")


@pytest.mark.parametrize("args, expected", [
    (["--config=mlp_classifier:nope"], "unknown variant 'nope': use digits, fashion"),
    (["--config=:nope", "--help"], "unknown variant 'nope'"),
    (["--config=experiments/mlp_classifier/confg.py:digits_tuned"], "no such file experiments/mlp_classifier/confg.py"),
    (["--config=mlp_clasifier:digits_tuned"], "no experiment 'mlp_clasifier'"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, args, expected):
    proc = run_from(tmp_path, "-m", "experiments.mlp_classifier", f"--workdir={tmp_path / 'run'}", *args)
    assert proc.returncode == 2
    assert expected in only_error_line(proc)
    assert not (tmp_path / "run").exists()


def test_paths_typed_are_relative_to_here_and_a_config_files_run_is_beside_the_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ml_collections.ConfigDict({"features_run": "cnn_fashion", "init_from": "", "data_dir": None})
    cli.absolute_paths(config, "runs/gan_fashion", given=set())
    assert config.features_run == str(tmp_path / "runs" / "cnn_fashion")  # README: runs/cnn_fashion, then runs/gan_fashion
    assert config.init_from == "" and config.data_dir is None
    config = ml_collections.ConfigDict({"features_run": "mine/cnn", "init_from": "/abs/run", "data_dir": "~/data"})
    cli.absolute_paths(config, "/elsewhere/gan", given={"features_run", "data_dir"})
    assert config.features_run == str(tmp_path / "mine" / "cnn")
    assert config.init_from == "/abs/run"
    assert config.data_dir == os.path.expanduser("~/data")


def test_a_run_saved_with_a_relative_path_resumes_with_its_absolute_path(tmp_path, monkeypatch):
    from lab import configs
    monkeypatch.chdir(tmp_path)
    saved = configs.base_config({"features_run": "runs/cnn_fashion"})
    configs.check_workdir(str(tmp_path / "run"), saved)
    resumed = configs.base_config({"features_run": str(tmp_path / "runs" / "cnn_fashion")})
    configs.check_workdir(str(tmp_path / "run"), resumed)  # the same folder: no "different config"
    elsewhere = configs.base_config({"features_run": str(tmp_path / "other")})
    with pytest.raises(configs.WorkdirConfigError, match="features_run"):
        configs.check_workdir(str(tmp_path / "run"), elsewhere)


def _build_wheel(source, out):
    """`pip wheel` of the package at `source` into `out`; returns the wheel's path. Without
    `wheel` in this venv (older setuptools cannot build wheels alone) pip gets the build backend
    from the package index it is set up with, as README's `pip install -e .` does."""
    can_build_here = (importlib.util.find_spec("wheel") is not None
                      or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]
    if can_build_here:
        command[4:4] = ["--no-build-isolation", "--no-index"]
    proc = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = glob.glob(str(out / "*.whl"))
    return wheel


def test_the_wheel_ships_package_data_and_its_commands_run_installed(tmp_path):
    """Builds the wheel (a copy of the sources, so the clone gets no build/ folder), checks its
    files, then runs the unzipped package from another folder."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for package in ("lab", "experiments"):
        shutil.copytree(os.path.join(ROOT, package), source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = _build_wheel(source, tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("experiments/reference_results.json", "lab/serve_page.html", "experiments/__main__.py",
                   "experiments/catalog.py", "experiments/mlp_classifier/config.py"):
        assert needed in names, needed
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_from(elsewhere, "-m", "experiments", pythonpath=site)
    assert proc.returncode == 0 and "transformer_mlm" in proc.stdout, proc.stderr[-2000:]
    proc = run_from(elsewhere, "-m", "experiments.mlp_classifier", "--help", pythonpath=site)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "digits_tuned" in proc.stdout and str(site / "experiments" / "mlp_classifier" / "config.py") in proc.stdout
    proc = run_from(elsewhere, "-c", "import json, experiments; print(len(json.load(open(experiments.REFERENCE_TABLE))))",
                    pythonpath=site)
    assert proc.returncode == 0 and int(proc.stdout) > 0, proc.stderr[-2000:]
