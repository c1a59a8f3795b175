"""What makes a run reproducible, recorded beside its numbers: `WORKDIR/environment.json`.

The train loop appends one entry per start of a run (a resume may run on another machine):

    {"starts": [{"step": 0, "time_utc": ..., "git": {"revision", "dirty"[, "diff_sha256"]}, "versions": {python, jax,
      jaxlib, flax, optax, orbax-checkpoint, tensorflow-datasets, numpy}, "devices": {"platform",
      "kind", "count", "process_count"}, "cpu": {"model_name", "family_model", "avx2", "avx512f",
      "avx512_bf16", "amx_bf16", "count"}, "xla_flags", "prng_impl", "seed", "dataset": {"name", "sha256"}},
      ...]}

The resolved config itself is `config.json`; `run.json` names the experiment that trained the run
and the function that exports it. `read_run_config` is the one way a command opens another run.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess

import jax

from lab.errors import ConfigValueError, WorkdirConfigError
from lab.files import write_json

FILENAME = "environment.json"
RUN_RECORD = "run.json"
CONFIG_FILE = "config.json"
CODE_PATHS = ("lab", "experiments", "pyproject.toml")  # what a run's numbers can depend on
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_info() -> dict:
    """The CPU's model name, family/model and the vector extensions that change XLA:CPU's
    kernels (from /proc/cpuinfo; {} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    return {"model_name": fields.get("model name", platform.processor()),
            "family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            **{flag: flag in flags for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
            "count": len(os.sched_getaffinity(0))}


def isa_level(cpu: dict) -> str | None:
    """The highest of AMX, AVX512_BF16, AVX-512, AVX2 that `cpu_info` found (None: none known):
    the vector instructions XLA:CPU's kernels are chosen by."""
    for flag, level in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if cpu.get(flag):
            return level
    return None


def git_state(repo: str = _REPO) -> dict:
    """{'revision': HEAD's sha (None outside a git checkout), 'dirty': tracked files changed,
    and when dirty 'diff_sha256': the sha256 of `git diff HEAD` over CODE_PATHS}."""
    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"revision": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        state = {"revision": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
        if state["dirty"]:  # which uncommitted change to the code: a rerun can tell one edit from another
            diff = git("diff", "HEAD", "--", *CODE_PATHS).stdout
            state["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
        return state
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def versions() -> dict:
    """Python's and every stack package's version (None: not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(config, step: int = 0) -> dict:
    """This process's entry for a run of `config` starting at `step` (see the module docstring).
    The dataset's sha256 is `lab.data.checksum` of `config.dataset` (None: not a lab dataset)."""
    name = config.get("dataset")
    checksum = dataset_checksum(config)
    devices = jax.devices()
    return {
        "step": int(step),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "versions": versions(),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
                    "process_count": jax.process_count()},
        "cpu": cpu_info(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "seed": config.get("seed"),
        "dataset": {"name": name, "sha256": checksum},
    }


def dataset_checksum(config) -> str | None:
    """`lab.data.checksum` of `config.dataset` (None: not a lab dataset)."""
    import lab.data

    name = config.get("dataset")
    return lab.data.checksum(name, data_dir=config.get("data_dir")) if name in lab.data.DATASETS else None


def check_dataset(workdir: str, config, allow_config_change: bool = False) -> None:
    """Refuses to resume a run whose dataset's content differs from the one its first start
    recorded in `environment.json` (the same name, another sha256: a rebuilt or changed dataset).

    Raises:
      WorkdirConfigError: naming the dataset and `--allow_config_change`, the way to go on anyway.
    """
    try:
        with open(os.path.join(workdir, FILENAME)) as f:
            first = json.load(f)["starts"][0]["dataset"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return  # nothing recorded (a run older than the record): nothing to compare
    if allow_config_change or first.get("name") != config.get("dataset") or not first.get("sha256"):
        return
    now = dataset_checksum(config)
    if now is not None and now != first["sha256"]:
        raise WorkdirConfigError(
            f"the dataset {first['name']} changed since this run started (sha256 {first['sha256'][:12]}... -> "
            f"{now[:12]}...): resuming would train on other data; use a new --workdir, or pass "
            f"--allow_config_change to resume on the new data anyway")


def record(workdir: str, entry: dict) -> None:
    """Appends `entry` to `workdir/environment.json` (an unreadable file starts over)."""
    path = os.path.join(workdir, FILENAME)
    starts = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                starts = json.load(f)["starts"]
        except (OSError, ValueError, KeyError, TypeError):
            starts = []
    starts = [s for s in starts if s.get("step") != entry["step"]] + [entry]  # a rerun from the same step: once
    write_json(path, {"starts": starts}, indent=2)


def read_run_record(workdir: str) -> dict:
    """`workdir/run.json` ({'experiment': NAME, 'export_spec': 'MODULE:FUNCTION'}), or {}."""
    try:
        with open(os.path.join(workdir, RUN_RECORD)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_run_record(workdir: str, experiment: str, export_spec: str | None = None) -> None:
    """`workdir/run.json`: which experiment trained the run and, where it can export, the
    `MODULE:FUNCTION` that builds its `ExportSpec` from the config (process 0; written whole)."""
    if jax.process_index() != 0 or not os.path.isdir(workdir):
        return
    found = {"experiment": experiment, **({"export_spec": export_spec} if export_spec else {})}
    path = os.path.join(workdir, RUN_RECORD)
    write_json(path, found)


def read_run_config(workdir: str, experiment: str | None = None, *, needs: tuple[str, ...] = (),
                    what: str = "--workdir") -> dict:
    """The resolved config (a plain dict) of the run in `workdir`, checked to be `experiment`'s.

    Args:
      workdir: a run's directory.
      experiment: the experiment the caller needs (None: any). A run whose `run.json` names
        another is refused; a run without one (trained before it existed) must have `needs`.
      needs: dotted config keys the caller reads ('model.num_layers').
      what: how the message names the directory (the flag or config key that gave it).
    Raises:
      ConfigValueError: one line: no run there, a damaged config, another experiment's run.
    """
    kind = f"a run of {experiment}" if experiment else "a lab run"
    want = f"{what} must be {kind}"
    path = os.path.join(workdir or "", CONFIG_FILE)
    if not workdir or not os.path.isfile(path):
        raise ConfigValueError(f"{what}={workdir!r} holds no run (no {CONFIG_FILE}): {want}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigValueError(f"{path} is damaged ({type(e).__name__}): {want}") from None
    if not isinstance(config, dict):
        raise ConfigValueError(f"{path} is not a config (a JSON object): {want}")
    trained_by = read_run_record(workdir).get("experiment")
    if experiment and trained_by and trained_by != experiment:
        raise ConfigValueError(f"{workdir} is a run of {trained_by}, not of {experiment}: {want}")
    for key in needs:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ConfigValueError(f"{workdir} is not {kind} (its config has no {key}): {want}")
    return config
