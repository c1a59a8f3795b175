"""Config helpers: the resolved config of a run, and the check that a workdir holds this run.

Experiment configs are `ml_collections.ConfigDict`s returned by `get_config()`; flags override
them (`--config.key=value`). The keys every experiment has (the train loop reads them):

    seed                    int: every random number of the run derives from it
    dataset                 str: a name from `lab.data.DATASETS`
    data_dir                str or None: where TFDS builds datasets (None: $LAB_DATA_DIR or ~/tensorflow_datasets)
    batch_size              int: global train batch, split over all devices
    eval_batch_size         int: global eval batch (the last one is padded and masked)
    eval_batches            int or None: an eval reads only the first N batches of each split (None: all)
    num_train_steps         int
    log_every_steps         int
    eval_every_steps        int
    checkpoint_every_steps  int
    max_checkpoints_to_keep int >= 1
    parallel                'jit' (jit + NamedSharding, default) or 'pmap'
    mesh                    'data:N,fsdp:M' (see `lab.sharding.parse_mesh`); '': every device on 'data'
    optimizer.*             see `lab.optim` (or `optimizers.<name>.*`, one block per parameter set)
    init_from               optional: workdir of a finished run whose params seed this one
    init_from_params        optional: the top-level param names taken from it, e.g. ('encoder',)
    init_from_step          optional: which of its checkpoints (None: the latest)
    reference               optional: {'metric', 'value', 'source'} shown beside the result
    steps_per_call          optional int >= 1 (default 1): train steps per compiled call, run by one
                            `lax.scan` over that many batches sent at once (small models: less
                            per-call overhead); the same numbers, checkpoints and logs as 1

`base_config()` returns these with defaults: the start of a config for your own model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from lab import optim
from lab.errors import ConfigValueError, WorkdirConfigError
from lab.files import write_json

# Keys that steer a run without changing its math, so a resume may change them: extending
# num_train_steps continues a run (with a schedule that depends on it, the tail differs); a run
# saved on one mesh resumes on another (the same numbers up to the order of float sums); streamed
# and in-memory data give the same batches.
RUN_CONTROL_KEYS = frozenset({
    "num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "max_checkpoints_to_keep", "data_dir", "mesh", "data_source", "steps_per_call",
    "keep_best", "keep_best_mode", "profile_steps",
})
RUN_CONTROL_PREFIXES = ("reference.",)  # shown in the summary, no effect on the numbers
# Keys added after runs were saved: a saved config without one ran with this value.
ADDED_KEY_DEFAULTS = {"accumulate_steps": 1, "ema_decay": 0.0, "model.remat": False, "keep_best": "",
                      "keep_best_mode": "max", "profile_steps": "",
                      "label_smoothing": 0.0, "eval_batches": None}
# The schedule's horizon: compared as a resolved number below, not as the key's raw value.
HORIZON_SUFFIX = ".decay_steps"
PRUNE_HORIZON_SUFFIX = ".prune.end_step"  # likewise the pruning ramp's end (None: num_train_steps // 2)
# Keys that name a folder: where datasets are built, and other runs' workdirs a run reads. The
# experiments' command line makes them absolute before a run starts, so config.json says which
# folder; a saved relative one was relative to the folder its run started in, so a resume
# compares them as absolute paths.
PATH_KEYS = ("data_dir", "init_from", "features_run")


def add_loop_options(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the loop's options on `c` (every experiment's config has them), each off or at its
    default; returns `c`. A config changes a default after this call (the GAN samples from an EMA)."""
    c.parallel = "jit"  # 'jit' (jit + NamedSharding on a Mesh) or 'pmap': the same numbers
    c.mesh = ""  # e.g. 'data:2,fsdp:2' (FSDP: parameters split along fsdp, lab.sharding.parse_mesh); '': all on data
    c.steps_per_call = 1  # train steps per compiled call (one lax.scan); the same numbers as 1
    c.accumulate_steps = 1  # the batch as this many micro-batches (one update; less activation memory)
    c.ema_decay = 0.0  # > 0: a moving average of the parameters, which evaluation uses (e.g. 0.999)
    c.eval_batches = ml_collections.FieldReference(None, field_type=int)  # N: each eval reads only the first N batches of each split (a quick look); None: every example
    c.keep_best = ""  # e.g. 'validation_loss': keep the best eval's checkpoint (workdir/best/) and its results (selected_*)
    c.keep_best_mode = "max"  # 'max' or 'min': which way keep_best's metric is better
    c.profile_steps = ""  # e.g. '10:20': a jax.profiler trace of those steps into workdir/profile/
    return c


def base_config(overrides: Any = None) -> ml_collections.ConfigDict:
    """The keys the train loop reads, with defaults: start your own model's config from it.

    Set at least `num_train_steps`, `batch_size` and `optimizer.learning_rate` for your data.

    Args:
      overrides: a plain dict (or ConfigDict) of values to set: nested blocks merge into the
        defaults (`{'optimizer': {'learning_rate': 0.01}}` keeps `optimizer.name`), dotted keys
        reach into them (`{'optimizer.learning_rate': 0.01}`), new keys are added (a `model`
        block, say); an `optimizers` block (one optimizer per parameter set) replaces `optimizer`.
    Raises:
      TypeError: a value of another type than the default's (e.g. a string for `batch_size`).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, dropout) derives from it
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $LAB_DATA_DIR or ~/tensorflow_datasets
    c.batch_size = 32  # global batch, split over all devices
    c.eval_batch_size = 256  # the last eval batch is padded and masked: every example counts once
    c.num_train_steps = 1000
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500  # 0: only at the end
    c.max_checkpoints_to_keep = 3
    add_loop_options(c)
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # sgd | adam | adamw | adagrad (see lab.optim for every key)
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"  # constant | warmup_cosine
    c.optimizer.warmup_steps = 0
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # None: num_train_steps
    if overrides is None:
        return c
    if hasattr(overrides, "to_dict"):  # a ConfigDict
        overrides = overrides.to_dict()

    def plain(value):  # a copy: the caller's dicts are never changed
        return {str(k): plain(v) for k, v in value.items()} if isinstance(value, dict) else value

    nested: dict = {}
    for key, value in plain(dict(overrides)).items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = {**node[last], **value} if isinstance(node.get(last), dict) and isinstance(value, dict) else value
    if "optimizers" in nested and "optimizer" not in nested:
        del c["optimizer"]
    c.update(nested)
    return c


_POSITIVE_INTS = ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps",
                  "eval_every_steps", "max_checkpoints_to_keep")


def validate(config: Any, num_devices: int = 1, workdir: str | None = None, num_processes: int = 1) -> None:
    """Checks every key the loop reads, before any data is loaded or any step compiled.

    Args:
      config: the run's config.
      num_devices: global device count; batch sizes must split evenly over them, and
        `config.mesh` must use exactly them.
      num_processes: `jax.process_count()` (pmap runs one process only).
      workdir: the run's directory; a fresh one (no checkpoints) needs its `init_from` run.
    Raises:
      ConfigValueError: one line naming the key, its value and what is allowed.
    """
    def require_int(key, low):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = "a positive integer" if low == 1 else "an integer >= 0"
            raise ConfigValueError(f"config.{key}={value!r} is invalid: use {kind}")

    if not isinstance(config.get("seed"), int):
        raise ConfigValueError(f"config.seed={config.get('seed')!r} is invalid: use an integer")
    for key in _POSITIVE_INTS:
        if key == "num_train_steps" and config.get(key) is None and "num_epochs" in config:
            require_int("num_epochs", 1)  # the experiment derives the steps from the epochs
            continue
        require_int(key, 1)
    require_int("checkpoint_every_steps", 0)
    if "steps_per_call" in config:
        require_int("steps_per_call", 1)
    if "accumulate_steps" in config:
        require_int("accumulate_steps", 1)
    if config.get("eval_batches") is not None:
        require_int("eval_batches", 1)
    accumulate = config.get("accumulate_steps", 1)
    if config.batch_size % (num_devices * accumulate):
        split = f"{num_devices} devices" + (f" x {accumulate} micro-batches (accumulate_steps)" if accumulate > 1 else "")
        raise ConfigValueError(f"config.batch_size={config.batch_size} is not divisible by the {split}; "
                               f"use a multiple of {num_devices * accumulate}")
    if config.eval_batch_size % num_devices:
        raise ConfigValueError(
            f"config.eval_batch_size={config.eval_batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}")
    if config.get("keep_best_mode", "max") not in ("max", "min"):
        raise ConfigValueError(f"config.keep_best_mode={config.keep_best_mode!r}: use max or min")
    from lab import logbook  # here: it imports jax
    try:
        logbook.parse_profile_steps(config.get("profile_steps", ""))
    except ValueError as e:
        raise ConfigValueError(str(e)) from None
    ema = config.get("ema_decay", 0.0)
    if not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0.0 <= ema < 1.0:
        raise ConfigValueError(f"config.ema_decay={ema!r} is invalid: use a number in [0, 1) (0: no moving average)")
    from lab import parallel, sharding  # here: they import jax
    if config.get("parallel") not in parallel.PARALLEL_MODES:
        raise ConfigValueError(f"config.parallel={config.get('parallel')!r} is unknown; "
                               f"choose one of {', '.join(parallel.PARALLEL_MODES)}")
    mesh = sharding.parse_mesh(config.get("mesh"), num_devices)
    if config.parallel == "pmap" and (mesh[sharding.FSDP_AXIS] > 1 or num_processes > 1):
        raise ConfigValueError(
            "config.parallel='pmap' runs one process and replicates every parameter; "
            f"this run has {num_processes} process(es) and config.mesh={config.get('mesh')!r}: "
            "use config.parallel='jit'")
    for where, block in optim.optimizer_blocks(config).items():
        optim.validate(block, where)
    fresh = workdir is not None and not _has_checkpoints(workdir)
    if fresh and config.get("init_from") and not _has_checkpoints(config.init_from):
        raise ConfigValueError(f"config.init_from={config.init_from!r} holds no checkpoints: "
                               f"give the --workdir of a finished run")


def to_dict(config: Any) -> dict:
    """A plain JSON-able dict of a ConfigDict (or dict)."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else json.loads(json.dumps(config))


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """A run's `config.json` back as a ConfigDict (lists where the config had tuples)."""
    return ml_collections.ConfigDict(d)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """`{'a.b': 1}` -> `{'a': {'b': 1}}`."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def check_workdir(workdir: str, config: Any, allow_config_change: bool = False) -> None:
    """Refuses a workdir whose `config.json` differs from `config` beyond run-control keys.

    A changed `num_train_steps` is a run-control change, unless the learning-rate schedule is
    shaped over it: a resumed run must keep its schedule's horizon (`optimizer.decay_steps`).
    Then writes the new resolved config to `workdir/config.json`.

    Raises:
      WorkdirConfigError: naming the differing keys and what to do.
    """
    path = os.path.join(workdir, "config.json")
    new = to_dict(config)
    if os.path.exists(path) and not allow_config_change:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise WorkdirConfigError(f"{path} is damaged ({type(e).__name__}): use a new --workdir, or pass "
                                     f"--allow_config_change to write this run's config over it") from None
        if not isinstance(saved, dict):
            raise WorkdirConfigError(f"{path} is not a config (a JSON object): use a new --workdir, or pass "
                                     f"--allow_config_change to write this run's config over it")
        old, flat = flatten(saved), flatten(new)
        for side in (old, flat):
            side.update({k: os.path.abspath(side[k]) for k in PATH_KEYS if isinstance(side.get(k), str) and side[k]})
        diff = sorted(k for k in set(old) | set(flat)
                      if old.get(k, ADDED_KEY_DEFAULTS.get(k)) != flat.get(k, ADDED_KEY_DEFAULTS.get(k))
                      and k not in RUN_CONTROL_KEYS
                      and not k.startswith(RUN_CONTROL_PREFIXES) and not k.endswith((HORIZON_SUFFIX, PRUNE_HORIZON_SUFFIX)))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in diff[:4])
            raise WorkdirConfigError(
                f"workdir {workdir} holds a run of a different config ({shown}); "
                f"use a new --workdir, or pass --allow_config_change to resume it anyway")
        old_config = unflatten(old)
        for where, block in optim.optimizer_blocks(config).items():
            old_block = old_config
            for part in where.split("."):
                old_block = old_block.get(part, {})
            was = optim.schedule_horizon(old_block, old_config.get("num_train_steps")) if old_block else None
            now = optim.schedule_horizon(block, config.num_train_steps)
            if was != now:
                raise WorkdirConfigError(
                    f"workdir {workdir} was trained with its {where} schedule shaped over {was} steps; "
                    f"this run's is over {now} steps, which would reshape it: to extend the run, keep its schedule "
                    f"with --config.{where}.decay_steps={was}, use a new --workdir, or pass --allow_config_change "
                    f"to reshape it anyway")
            was = (optim.prune_settings(old_block, old_config.get("num_train_steps")) or {}).get("end_step")
            now = (optim.prune_settings(block, config.num_train_steps) or {}).get("end_step")
            if was != now and was is not None:
                raise WorkdirConfigError(
                    f"workdir {workdir} was pruned along a ramp ending at step {was}; this run's ends at {now}, "
                    f"which would revive pruned weights: to extend the run, keep it with "
                    f"--config.{where}.prune.end_step={was}, use a new --workdir, or pass --allow_config_change "
                    f"to reshape it anyway")
    os.makedirs(workdir, exist_ok=True)
    write_json(path, new, indent=2, sort_keys=True)


def _has_checkpoints(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def check_block(block: Any, where: str, *, positive_ints: tuple[str, ...] = (),
                fractions: tuple[str, ...] = ()) -> None:
    """Checks an experiment's own keys (a model block, say) before any work.

    Args:
      block: a ConfigDict (e.g. `config.model`).
      where: its name in the config, for the message (e.g. 'model'; '' for top-level keys).
      positive_ints: keys that must be integers >= 1 (a tuple of them is checked element-wise).
      fractions: keys that must be numbers in [0, 1).
    Raises:
      ConfigValueError: naming the first bad key.
    """
    prefix = f"config.{where}." if where else "config."
    for key in positive_ints:
        value = block.get(key)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
            raise ConfigValueError(f"{prefix}{key}={value!r} is invalid: use a positive integer"
                                   + (" for each entry" if isinstance(value, (tuple, list)) else ""))
    for key in fractions:
        value = block.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise ConfigValueError(f"{prefix}{key}={value!r} is invalid: use a number in [0, 1)")
