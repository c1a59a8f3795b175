"""The command line of every experiment: flags -> config -> one call into lab.

    python -m experiments.<name> --workdir=DIR [--config=NAME:VARIANT] [--config.key=value ...]
                                  [--allow_config_change]
                                  [--coordinator_address=HOST:PORT|auto --num_processes=N --process_id=I]
    python -m experiments.<name> --help       (or -h: its variants, config keys and flags)
    python -m experiments                     (the experiments, one line each)

`--config` takes `NAME:VARIANT` (an experiment's config: `mlp_classifier:digits_tuned`), `:VARIANT`
or just `VARIANT` (this experiment's), or a config file's path with an optional `:VARIANT`; a
relative path that does not exist from the current folder is looked for beside the installed
`experiments` package, so `experiments/<name>/config.py` works from any folder
(`experiments.catalog.resolve_config_argument`).

Paths in a config (`lab.configs.PATH_KEYS`: data_dir, init_from, features_run) are made absolute
when the flags are parsed, so config.json records the folder a run used: one given on the command
line is relative to the current folder; a config file's own value (`features_run = "cnn_fashion"`)
names a run beside the workdir, in the folder that holds it, whatever the current folder is.

Multi-process (multi-host) runs join JAX's runtime (`lab.distributed.initialize`) before anything
touches a device; `python -m lab.launch` starts such a run on one machine.

lab itself defines no flags; this module is the one place that parses them. Every failure a user
can cause (bad flag, config value, dataset, checkpoint, NaN loss, full disk) ends as one line on
stderr, `error: ...`, that says what to do, and a non-zero exit; set LAB_DEBUG=1 for the traceback.
Those failures are lab's own error classes (`lab.errors.LabError`) and the OS errors of a full or
read-only disk; anything else (a bug, a shape mismatch in a new family) keeps its traceback.
The whole config is validated before the experiment reads any data.

Compiled steps are kept in JAX's persistent compilation cache, so a rerun or a resumed run skips
the compiles (`enable_compilation_cache`): by default in `$XDG_CACHE_HOME/lab/jax` (else
`~/.cache/lab/jax`). The environment, not the config, steers it (the cache never changes a
number): LAB_COMPILATION_CACHE=off runs without it, LAB_COMPILATION_CACHE=DIR keeps it in DIR.
Without LAB_COMPILATION_CACHE, JAX's own JAX_COMPILATION_CACHE_DIR (the tests set it) is used as
JAX reads it. A cache folder that cannot be written costs one warning line, never the run.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shlex
import sys
import tempfile
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import catalog
from lab.errors import EXIT_FAILURE, EXIT_USAGE  # 2: nothing ran; 1: stopped, finished checkpoints kept

# glibc malloc settings for the whole process (they must be in the environment before it
# starts). By default glibc hands freed step buffers back to the OS and faults them in again the
# next step, thousands of page faults per step of a GPT; these keep them. The number of arenas is
# left to glibc: a single one serialises every thread's allocations (XLA's thread pool, the BPE
# tokenizer's), which cost the MLP a quarter to nearly half of its steps/s and made BPE encoding
# slower (BUILD_NOTES, "Start-up"). The entry points of the text families ask for them;
# LAB_MALLOC_TUNING=0 turns them off everywhere.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "268435456",
}


def ensure_malloc_env() -> None:
    """Re-executes this very command once with `MALLOC_ENV` set, unless it already is."""
    if os.environ.get("LAB_MALLOC_TUNING") == "0" or all(k in os.environ for k in MALLOC_ENV):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**MALLOC_ENV, **os.environ})


COMPILATION_CACHE_ENV = "LAB_COMPILATION_CACHE"  # 'off', or the cache folder
# JAX settings of the cache lab chooses, each unless its JAX_* environment variable is set: keep
# compiles of a second or more (the train and eval steps; not the many tiny ones), and at most
# 2 GiB, the least recently used entries dropped first (this needs the `filelock` package).
COMPILATION_CACHE_SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 1.0,
    "jax_compilation_cache_max_size": 2 * 1024**3,
}


def default_compilation_cache_dir() -> str:
    """`$XDG_CACHE_HOME/lab/jax`, else `~/.cache/lab/jax`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lab", "jax")


def enable_compilation_cache() -> str | None:
    """Points JAX's persistent compilation cache at its folder before anything compiles; returns
    the folder (None: no cache). See the module docstring for LAB_COMPILATION_CACHE.

    A folder that cannot be created or written to prints one `warning:` line and the run goes on
    without a cache (JAX itself only warns, too, when an entry cannot be read or written).
    """
    import jax

    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "false", "no", "none"):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if not setting and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]  # JAX's own setting, which JAX has read
    directory = os.path.abspath(os.path.expanduser(setting)) if setting else default_compilation_cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        print(f"warning: no compilation cache: cannot write to {directory} ({e.strerror or e}); set "
              f"{COMPILATION_CACHE_ENV}=DIR to a writable folder, or =off", file=sys.stderr, flush=True)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    for name, value in COMPILATION_CACHE_SETTINGS.items():
        if name.upper() in os.environ:
            continue
        if name == "jax_compilation_cache_max_size" and importlib.util.find_spec("filelock") is None:
            continue  # JAX's size limit needs file locks; without them the cache grows unbounded
        jax.config.update(name, value)
    return directory


def _multi_process() -> bool:
    if "jax" not in sys.modules:
        return False
    import jax
    return jax.distributed.is_initialized()


def _qualified_name(fn: Callable) -> str:
    """`MODULE:NAME` of a module-level function, importable later (a module run with `python -m`
    is named by its import name, not `__main__`)."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise ValueError(f"{fn.__qualname__} is defined in a script run by path: run it with python -m")
        module = spec.name
    return f"{module}:{fn.__qualname__}"


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


def _lost_peer(e: BaseException) -> bool:
    """A collective that failed because another process went away (jax's runtime error)."""
    text = str(e)
    return type(e).__name__ == "JaxRuntimeError" and any(
        s in text for s in ("Gloo", "Connection reset", "Connection closed", "peer", "UNAVAILABLE"))


def _fail(message: str, code: int, after_report=None) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if after_report is not None:  # e.g. release the process that waits until this one has reported
        after_report()
    # The line is the last word. A normal exit would wait: at jax's shutdown barrier for processes
    # still running (minutes), and on background writer threads of a failed checkpoint save that
    # can never finish (Orbax's, forever). Everything finished is on disk already (the loop closes
    # its logs and waits for its saves before an error leaves it), so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_USAGE_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)


def _usage_error(e: Exception) -> None:
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    suggestion = re.search(r'Did you mean "(\S+)" instead of "(\S+)"', text)
    if suggestion:  # config_flags' unknown-key message, with its suggestion
        text = f"unknown config key {suggestion[2]!r}; did you mean {suggestion[1]!r}?"
    elif isinstance(e, (AttributeError, KeyError)):
        text = f"unknown config key {text.strip(chr(39) + chr(34))!r}"
    _fail(f"{text} (--help lists the variants, config keys and flags)", EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every usage error as lab's one `error:` line and exit 2 (for
    `app.run(main, flags_parser=parse_flags)` in every command of `experiments`)."""
    try:
        return flags.FLAGS(argv)
    except _USAGE_ERRORS as e:
        _usage_error(e)


# OS errors a user causes and fixes (disk full, no permission, read-only disk); others are bugs.
_USER_OS_ERRNOS = {errno.ENOSPC: "the disk is full: free space or use a --workdir on another disk; "
                                 "checkpoints already written are kept",
                   errno.EDQUOT: "the disk quota is exceeded: free space or use a --workdir on another disk; "
                                 "checkpoints already written are kept",
                   errno.EACCES: "no permission: use a --workdir you can write to",
                   errno.EPERM: "no permission: use a --workdir you can write to",
                   errno.EROFS: "the disk is read-only: use a --workdir on a writable disk"}


HELP_FLAGS = ("-h", "--help", "-help", "-?", "--helpshort", "-helpshort")  # --helpfull stays absl's
# The flags `run` defines besides --config, in the order --help lists them.
RUN_FLAGS = ("workdir", "allow_config_change", "coordinator_address", "num_processes", "process_id",
             "distributed_timeout")


def resolve_config_flag(argv: list[str], own_config: str) -> tuple[str, str]:
    """Rewrites every `--config` value in `argv`, in place, to the absolute `PATH[:VARIANT]` it
    names (`catalog.resolve_config_argument`); returns the (path, variant) that applies, the last
    one given, else `own_config` and its default ('')."""
    chosen = f"{own_config}:"
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        flag, equals, value = arg.partition("=")
        if flag not in ("--config", "-config"):
            continue
        value_index = i if equals else i + 1  # `--config=VALUE` or `--config VALUE`
        if value_index >= len(argv):
            break
        try:
            chosen = catalog.resolve_config_argument(value if equals else argv[value_index], own_config)
        except catalog.ConfigArgumentError as e:
            _fail(str(e), EXIT_USAGE)
        argv[value_index] = f"{flag}={chosen}" if equals else chosen
    path, _, variant = chosen.partition(":")
    return path, variant


def load_chosen_config(path: str, variant: str):
    """The config `--config` chose, loaded once before absl reads the overrides, so that what a
    config file's `get_config` raises is told apart from a bad override: a ValueError (a variant it
    refuses) is one `error:` line and EXIT_USAGE; any other exception is a bug in the file and keeps
    its traceback."""
    try:
        return catalog.load_config(path, variant)
    except ValueError as e:
        experiment = os.path.basename(os.path.dirname(path))
        _fail(f"{_first_line(e)} (python -m experiments.{experiment} --help lists its variants)", EXIT_USAGE)


def print_help(path: str, variant: str, own_config: str) -> None:
    """Prints the experiment's help (`catalog.experiment_help`) for the config file `path` and its
    `variant`; a variant its `get_config` refuses is one `error:` line and EXIT_USAGE."""
    config = load_chosen_config(path, variant)
    flag_lines = []
    for name in RUN_FLAGS:
        flag = flags.FLAGS[name]
        default = "" if flag.default in (None, False) else f" (default: {flag.default})"
        flag_lines.append(f"  --{name}: {flag.help}{default}")
    name = os.path.basename(os.path.dirname(own_config))
    print(catalog.experiment_help(name, path, variant, config, flag_lines), flush=True)


def absolute_paths(config, workdir: str, given: set[str]) -> None:
    """Makes the relative paths of `config` absolute (see the module docstring): those of `given`
    keys (typed on the command line) against the current folder, the config file's own against
    the folder that holds `workdir`."""
    from lab.configs import PATH_KEYS

    beside_workdir = os.path.dirname(os.path.abspath(workdir))
    for key in PATH_KEYS:
        value = config.get(key)
        if not isinstance(value, str) or not value:
            continue
        value = os.path.expanduser(value)
        if not os.path.isabs(value):
            value = os.path.abspath(value if key in given else os.path.join(beside_workdir, value))
        setattr(config, key, value)


def _validate_config(config, workdir: str, validate: Callable | None) -> None:
    """lab's keys (`lab.configs.validate`), the dataset name, then the experiment's own keys."""
    import jax

    import lab.data
    from lab import configs
    from lab.errors import ConfigValueError

    configs.validate(config, jax.device_count(), workdir, jax.process_count())
    if "dataset" in config and config.dataset not in lab.data.DATASETS:
        raise ConfigValueError(f"config.dataset={config.dataset!r} is unknown; choose one of "
                               f"{', '.join(lab.data.DATASETS)}")
    if validate is not None:
        validate(config)


def check_experiment(workdir: str, experiment: str, allow_config_change: bool) -> None:
    """Refuses a workdir whose `run.json` says another experiment trained it (resuming it would
    mix two runs), unless `--allow_config_change`.

    Raises:
      ConfigValueError: naming both experiments and what to do.
    """
    from lab.errors import ConfigValueError
    from lab.provenance import read_run_record

    trained_by = read_run_record(workdir).get("experiment")
    if trained_by and trained_by != experiment and not allow_config_change:
        raise ConfigValueError(f"workdir {workdir} holds a run of {trained_by}, not of {experiment}: use a new "
                               f"--workdir, or pass --allow_config_change to resume it anyway")


def run(default_config: str, main: Callable, *, validate: Callable | None = None,
        malloc_tuning: bool = False, export_spec: Callable | None = None) -> None:
    """Defines the flags, parses them, validates the config and calls
    `main(config, workdir, allow_config_change)`.

    Args:
      default_config: path of the experiment's config file (its `get_config()` is the default).
      main: the experiment's wiring: builds data and task and calls `lab.train.train_and_evaluate`.
      validate: the experiment's check of its own keys (raises `lab.errors.ConfigValueError`).
      malloc_tuning: run under `MALLOC_ENV` (re-executes the command once to get it).
      export_spec: `config -> lab.task.ExportSpec`, the serving function of a finished run; named
        in the run's `run.json`, where `lab.export` finds it.
    """
    own_config = os.path.abspath(default_config)
    experiment = os.path.basename(os.path.dirname(own_config))
    config_path, variant = resolve_config_flag(sys.argv, own_config)
    flags.DEFINE_string("workdir", None, "Directory of the run: config, metrics, checkpoints, results.")
    flags.DEFINE_bool("allow_config_change", False,
                      "Resume a workdir although it holds a run of a different config.")
    flags.DEFINE_string("coordinator_address", None,
                        "Multi-process run: HOST:PORT of process 0, or 'auto' to read the cluster's settings "
                        "(SLURM, Cloud TPU) through jax.distributed.initialize().")
    flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes.")
    flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, 0 to num_processes - 1.")
    flags.DEFINE_float("distributed_timeout", 300.0,
                       "Multi-process run: seconds start-up and barriers wait for the other processes.")
    if any(arg in HELP_FLAGS for arg in sys.argv[1:sys.argv.index("--") if "--" in sys.argv else None]):
        print_help(config_path, variant, own_config)
        sys.exit(0)
    if malloc_tuning:
        ensure_malloc_env()
    load_chosen_config(config_path, variant)  # a bug in get_config() keeps its traceback
    try:  # config_flags already reads --config.* overrides from sys.argv here
        config_flags.DEFINE_config_file(
            "config", own_config, "Config: NAME:VARIANT, :VARIANT, or a file's path[:VARIANT].", lock_config=True)
    except _USAGE_ERRORS as e:
        _usage_error(e)

    def _main(argv):
        logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines would drown the progress lines
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]}; flags are written --name=value", EXIT_USAGE)
        if not flags.FLAGS.workdir:
            _fail("--workdir is required: the directory that receives the run", EXIT_USAGE)
        enable_compilation_cache()  # before anything compiles
        from lab import distributed, provenance
        from lab.errors import ConfigValueError, Interrupted, LabError

        f = flags.FLAGS
        try:
            distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, f.distributed_timeout)
            absolute_paths(f.config, f.workdir, set(f["config"].override_values))
            _validate_config(f.config, f.workdir, validate)
            check_experiment(f.workdir, experiment, f.allow_config_change)
        except ConfigValueError as e:
            if os.environ.get("LAB_DEBUG"):
                raise
            _fail(" ".join(str(e).split()), EXIT_USAGE)
        try:
            os.makedirs(f.workdir, exist_ok=True)
            # Which experiment trains the run (what sample, chat and lab.export check), from the first start.
            provenance.write_run_record(os.path.abspath(f.workdir), experiment,
                                        _qualified_name(export_spec) if export_spec is not None else None)
            main(f.config, f.workdir, f.allow_config_change)
        except OSError as e:
            if os.environ.get("LAB_DEBUG") or e.errno not in _USER_OS_ERRNOS:
                raise
            _fail(f"{e.strerror or e} ({e.filename or ''}): {_USER_OS_ERRNOS[e.errno]}", EXIT_FAILURE)
        except LabError as e:
            if os.environ.get("LAB_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, Interrupted):  # the command that resumes, as it was typed
                message += ": " + shlex.join(["python", *sys.orig_argv[1:]])
            _fail(message, getattr(e, "exit_code", EXIT_FAILURE), getattr(e, "after_report", None))
        except BaseException as e:
            if not _multi_process():
                raise
            if _lost_peer(e):
                _fail(f"process {__import__('jax').process_index()} lost contact with another process "
                      f"({_first_line(e)}): that process stopped or was killed (see its output); rerun to "
                      f"resume from the last checkpoint", EXIT_FAILURE)
            # A bug keeps its traceback; the process still leaves at once (see `_fail`).
            import traceback
            traceback.print_exc()
            _fail(f"process {__import__('jax').process_index()} stopped on the error above", EXIT_FAILURE)

    app.run(_main, flags_parser=parse_flags)
