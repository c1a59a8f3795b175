"""Optimizers and learning-rate schedules from a config block, through optax.

The `optimizer` block of every experiment config reads:

    optimizer.name           'sgd' | 'adam' | 'adamw' | 'adagrad'
    optimizer.learning_rate  peak learning rate
    optimizer.schedule       'constant' | 'warmup_cosine'
    optimizer.warmup_steps   linear warmup length (warmup_cosine)
    optimizer.end_learning_rate   value the cosine decays to (warmup_cosine)
    optimizer.decay_steps    the cosine's horizon; None: num_train_steps. A run extended on resume
                             keeps its schedule only if this stays what it was (the workdir check
                             refuses a changed horizon)
    optimizer.momentum       sgd momentum (0 = plain SGD)
    optimizer.nesterov       sgd Nesterov momentum
    optimizer.b1, b2, eps    adam / adamw moments
    optimizer.weight_decay   adamw decoupled weight decay, on matrices only (ndim >= 2: kernels
                             and embeddings), never on biases or LayerNorm scales (as GPT-2)
    optimizer.grad_clip_norm global-norm clipping; 0 disables it
    optimizer.frozen         top-level parameter names to keep fixed, e.g. ('encoder',): their
                             updates are zero (optax.multi_transform), their moments never kept
    optimizer.prune          optional block, off unless present with target_sparsity > 0: magnitude
                             pruning (`lab.optim.prune.magnitude_prune`) chained after the optimizer,
                             on every trained weight of rank >= 2 and >= min_size elements:
        .target_sparsity     final fraction of zeros in each such weight, in [0, 1)
        .begin_step          the sparsity ramps (cubic) from 0 at this step ...
        .end_step            ... to the target at this one; None: num_train_steps // 2, so the second
                             half of the run fine-tunes with the masks fixed
        .update_every        masks recomputed every this many steps of the ramp (default 100)
        .min_size            smaller weights are never pruned (default 1024)

Missing keys take the defaults below, so a config names only what it changes.

A family with several parameter sets (a GAN) names one block per set instead, under
`optimizers`: `optimizers.generator.*`, `optimizers.discriminator.*`, each of the form above,
each stepping `params[<name>]` only (see `make_optimizers`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import optax

from lab.errors import ConfigValueError
from lab.optim import prune as prune_lib

_DEFAULTS = dict(
    schedule="constant",
    warmup_steps=0,
    end_learning_rate=0.0,
    momentum=0.0,
    nesterov=False,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    grad_clip_norm=0.0,
    frozen=(),
    decay_steps=None,
)

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad")
SCHEDULES = ("constant", "warmup_cosine")
_PRUNE_DEFAULTS = dict(target_sparsity=0.0, begin_step=0, end_step=None, update_every=100,
                       min_size=prune_lib.DEFAULT_MIN_SIZE)


def _get(cfg: Any, key: str):
    return cfg[key] if key in cfg else _DEFAULTS[key]


def schedule_horizon(cfg: Any, num_train_steps: int) -> int | None:
    """The step count the schedule is shaped over (None for a constant rate): `decay_steps`,
    or the run's `num_train_steps` when that is None."""
    if _get(cfg, "schedule") == "constant":
        return None
    return int(_get(cfg, "decay_steps") or num_train_steps)


def make_schedule(cfg: Any, num_train_steps: int) -> optax.Schedule:
    """Returns the learning-rate schedule `step -> lr` named by `cfg.schedule`.

    Args:
      cfg: the `optimizer` config block.
      num_train_steps: total steps of the run; the cosine decays over them unless
        `cfg.decay_steps` says otherwise.
    """
    name = _get(cfg, "schedule")
    lr = float(cfg.learning_rate)
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "warmup_cosine":
        warmup = int(_get(cfg, "warmup_steps"))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(schedule_horizon(cfg, num_train_steps), warmup + 1),
            end_value=float(_get(cfg, "end_learning_rate")),
        )
    raise ConfigValueError(f"unknown optimizer.schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(cfg: Any, num_train_steps: int) -> optax.GradientTransformation:
    """Builds the optax optimizer named by `cfg.name`, with its schedule and optional clipping.

    Args:
      cfg: the `optimizer` config block (see the module docstring).
      num_train_steps: total steps of the run, for schedules that depend on it.
    Returns:
      An `optax.GradientTransformation` over any parameter pytree.
    """
    schedule = make_schedule(cfg, num_train_steps)
    name = cfg.name
    if name == "sgd":
        momentum = float(_get(cfg, "momentum"))
        tx = optax.sgd(schedule, momentum=momentum or None, nesterov=bool(_get(cfg, "nesterov")))
    elif name == "adam":
        tx = optax.adam(schedule, b1=_get(cfg, "b1"), b2=_get(cfg, "b2"), eps=_get(cfg, "eps"))
    elif name == "adamw":
        tx = optax.adamw(
            schedule, b1=_get(cfg, "b1"), b2=_get(cfg, "b2"), eps=_get(cfg, "eps"),
            weight_decay=_get(cfg, "weight_decay"),
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        )
    elif name == "adagrad":
        tx = optax.adagrad(schedule, eps=_get(cfg, "eps"))
    else:
        raise ConfigValueError(f"unknown optimizer.name {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    clip = float(_get(cfg, "grad_clip_norm"))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    prune = prune_settings(cfg, num_train_steps)
    if prune is not None:  # inside the frozen split below, so frozen parameters are never pruned
        tx = optax.chain(tx, prune_lib.magnitude_prune(**prune))
    frozen = tuple(_get(cfg, "frozen") or ())
    if frozen:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   functools.partial(_freeze_labels, frozen))
    return tx


def prune_settings(cfg: Any, num_train_steps: int) -> dict | None:
    """The `magnitude_prune` keyword arguments of the block's `prune` sub-block (defaults
    filled in, `end_step` resolved), or None when pruning is off (no block, or sparsity 0)."""
    block = cfg["prune"] if "prune" in cfg else None
    if not block:
        return None
    settings = {k: block[k] if k in block else v for k, v in _PRUNE_DEFAULTS.items()}
    if not settings["target_sparsity"]:
        return None
    if settings["end_step"] is None:
        settings["end_step"] = max(num_train_steps // 2, settings["begin_step"])
    return settings


def make_optimizers(config: Any, num_train_steps: int):
    """The run's optimizer(s): one transformation from `config.optimizer`, or, when the config
    has an `optimizers` block, `{name: transformation}`, one per named block."""
    if "optimizers" in config:
        return {name: make_optimizer(block, num_train_steps) for name, block in config.optimizers.items()}
    return make_optimizer(config.optimizer, num_train_steps)


def learning_rate_schedules(config: Any, num_train_steps: int) -> dict[str, optax.Schedule]:
    """The schedule of every optimizer, by name: `{'': schedule}` for the single `optimizer`,
    `{name: schedule}` for named ones. The update at 0-based step s used `schedule(s)` (optax's
    count of updates), so the host can say what rate a step used without touching the state."""
    if "optimizers" in config:
        return {name: make_schedule(block, num_train_steps) for name, block in config.optimizers.items()}
    return {"": make_schedule(config.optimizer, num_train_steps)}


def optimizer_blocks(config: Any) -> dict[str, Any]:
    """`{'optimizer': block}` or `{'optimizers.<name>': block, ...}`: every block, by its key."""
    if "optimizers" in config:
        return {f"optimizers.{name}": block for name, block in config.optimizers.items()}
    return {"optimizer": config.optimizer}


def validate(cfg: Any, where: str = "optimizer") -> None:
    """Checks one optimizer block before anything runs.

    Raises:
      ConfigValueError: naming the key (`where.key`), the value and what is allowed.
    """
    def bad(key, value, allowed):
        raise ConfigValueError(f"config.{where}.{key}={value!r} is invalid: {allowed}")

    if cfg.get("name") not in OPTIMIZERS:
        bad("name", cfg.get("name"), f"choose one of {', '.join(OPTIMIZERS)}")
    if _get(cfg, "schedule") not in SCHEDULES:
        bad("schedule", _get(cfg, "schedule"), f"choose one of {', '.join(SCHEDULES)}")
    lr = cfg.get("learning_rate")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        bad("learning_rate", lr, "use a positive number")
    for key in ("warmup_steps", "decay_steps"):
        value = _get(cfg, key)
        if value is not None and (not isinstance(value, int) or value < (0 if key == "warmup_steps" else 1)):
            bad(key, value, "use a non-negative integer" if key == "warmup_steps" else "use a positive integer or None")
    for key in ("momentum", "b1", "b2"):
        value = _get(cfg, key)
        if not 0 <= value < 1:
            bad(key, value, "use a number in [0, 1)")
    for key in ("eps", "weight_decay", "grad_clip_norm", "end_learning_rate"):
        value = _get(cfg, key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < (1e-30 if key == "eps" else 0):
            bad(key, value, "use a positive number" if key == "eps" else "use a number >= 0")
    if "prune" in cfg and cfg.prune:
        _validate_prune(cfg.prune, bad)


def _validate_prune(block: Any, bad: Callable) -> None:
    """Checks an `optimizer.prune` block; `bad(key, value, allowed)` raises."""
    def get(key):
        return block[key] if key in block else _PRUNE_DEFAULTS[key]

    unknown = sorted(set(block.keys()) - set(_PRUNE_DEFAULTS))
    if unknown:
        bad(f"prune.{unknown[0]}", block[unknown[0]], f"unknown key; use {', '.join(_PRUNE_DEFAULTS)}")
    target = get("target_sparsity")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 <= target < 1:
        bad("prune.target_sparsity", target, "use a number in [0, 1) (0: no pruning)")
    for key, low in (("begin_step", 0), ("update_every", 1), ("min_size", 1)):
        value = get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            bad(f"prune.{key}", value, f"use an integer >= {low}")
    end = get("end_step")
    if end is not None and (not isinstance(end, int) or isinstance(end, bool) or end < get("begin_step")):
        bad("prune.end_step", end, f"use an integer >= prune.begin_step ({get('begin_step')}), or None")


def _freeze_labels(frozen: tuple[str, ...], params) -> Any:
    """'frozen' for every leaf under a top-level key in `frozen`, else 'train'."""
    missing = [k for k in frozen if k not in params]
    if missing:
        raise ConfigValueError(f"optimizer.frozen names {missing}, which the model does not have "
                         f"(top-level params: {sorted(params)})")
    return {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v) for k, v in params.items()}
