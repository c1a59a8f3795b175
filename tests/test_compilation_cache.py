"""The experiments' CLI keeps compiled steps in JAX's persistent compilation cache
(`experiments.cli.enable_compilation_cache`): LAB_COMPILATION_CACHE=DIR or off, else
$XDG_CACHE_HOME/lab/jax; an unwritable folder never fails a run."""

import os

from tests.test_cli_errors import FAST, MODULE

# Every compile is kept (the tests' own setting, made explicit), so that even this tiny run writes.
ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _entries(directory):
    """The cached executables under `directory` (JAX names them KEY-cache)."""
    return [name for _, _, names in os.walk(directory) for name in names if name.endswith("-cache")]


def test_the_cli_keeps_its_compiles_in_lab_compilation_cache(run_cli, tmp_path):
    cache = tmp_path / "cache"
    proc = run_cli(MODULE, f"--workdir={tmp_path / 'run'}", *FAST, env={**ENV, "LAB_COMPILATION_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _entries(cache), sorted(os.listdir(cache)) if cache.exists() else "no cache folder"


def test_off_turns_the_cache_off_whatever_else_is_set(run_cli, tmp_path):
    env = {**ENV, "LAB_COMPILATION_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = run_cli(MODULE, f"--workdir={tmp_path / 'run'}", *FAST, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _entries(tmp_path / "jax") and not _entries(tmp_path / "xdg")


def test_the_default_cache_is_per_user_under_xdg_cache_home(run_cli, tmp_path):
    # JAX_COMPILATION_CACHE_DIR (which the tests set) emptied: the CLI's own default applies.
    env = {**ENV, "LAB_COMPILATION_CACHE": "", "JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = run_cli(MODULE, f"--workdir={tmp_path / 'run'}", *FAST, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _entries(tmp_path / "xdg" / "lab" / "jax")


def test_an_unwritable_cache_folder_never_fails_a_run(run_cli, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")  # unwritable even for root
    proc = run_cli(MODULE, f"--workdir={tmp_path / 'run'}", *FAST,
                   env={**ENV, "LAB_COMPILATION_CACHE": str(tmp_path / "a_file" / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").exists()
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: no compilation cache")]
    assert len(warnings) == 1, proc.stderr[-2000:]
    assert not any(line.startswith("error:") for line in proc.stderr.splitlines())
