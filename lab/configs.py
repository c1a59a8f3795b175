"""Config helpers: the resolved config of a run, and the check that a workdir holds this run.

Experiment configs are `ml_collections.ConfigDict`s returned by `get_config()`; flags override
them (`--config.key=value`). The keys every experiment has (the train loop reads them):

    seed                    int: every random number of the run derives from it
    dataset                 str: a name from `lab.data.DATASETS`
    data_dir                str or None: where TFDS builds datasets (None: $LAB_DATA_DIR or ~/tensorflow_datasets)
    batch_size              int: global train batch, split over all devices
    eval_batch_size         int: global eval batch (the last one is padded and masked)
    num_train_steps         int
    log_every_steps         int
    eval_every_steps        int
    checkpoint_every_steps  int
    max_checkpoints_to_keep int
    parallel                'jit' (jit + NamedSharding, default) or 'pmap'
    optimizer.*             see `lab.optim`
"""

from __future__ import annotations

import json
import os
from typing import Any

# Keys that steer a run without changing its math, so a resume may change them: extending
# num_train_steps continues a run (with a schedule that depends on it, the tail differs).
RUN_CONTROL_KEYS = frozenset({
    "num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "max_checkpoints_to_keep", "data_dir",
})


class WorkdirConfigError(ValueError):
    """The workdir holds a run of a different config."""


def to_dict(config: Any) -> dict:
    """A plain JSON-able dict of a ConfigDict (or dict)."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else json.loads(json.dumps(config))


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


def check_workdir(workdir: str, config: Any, allow_config_change: bool = False) -> None:
    """Refuses a workdir whose `config.json` differs from `config` beyond run-control keys.

    Then writes the new resolved config to `workdir/config.json`.

    Raises:
      WorkdirConfigError: naming the differing keys and what to do.
    """
    path = os.path.join(workdir, "config.json")
    new = to_dict(config)
    if os.path.exists(path) and not allow_config_change:
        with open(path) as f:
            old = flatten(json.load(f))
        flat = flatten(new)
        diff = sorted(k for k in set(old) | set(flat)
                      if old.get(k) != flat.get(k) and k not in RUN_CONTROL_KEYS)
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in diff[:4])
            raise WorkdirConfigError(
                f"workdir {workdir} holds a run of a different config ({shown}); "
                f"use a new --workdir, or pass --allow_config_change to resume it anyway")
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)
