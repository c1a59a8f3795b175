"""Optimizers and learning-rate schedules from a config block, through optax.

The `optimizer` block of every experiment config reads:

    optimizer.name           'sgd' | 'adam' | 'adamw' | 'adagrad'
    optimizer.learning_rate  peak learning rate
    optimizer.schedule       'constant' | 'warmup_cosine'
    optimizer.warmup_steps   linear warmup length (warmup_cosine)
    optimizer.end_learning_rate   value the cosine decays to (warmup_cosine)
    optimizer.momentum       sgd momentum (0 = plain SGD)
    optimizer.nesterov       sgd Nesterov momentum
    optimizer.b1, b2, eps    adam / adamw moments
    optimizer.weight_decay   adamw decoupled weight decay
    optimizer.grad_clip_norm global-norm clipping; 0 disables it

Missing keys take the defaults below, so a config names only what it changes.
"""

from __future__ import annotations

from typing import Any

import optax

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
)

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad")
SCHEDULES = ("constant", "warmup_cosine")


def _get(cfg: Any, key: str):
    return cfg[key] if key in cfg else _DEFAULTS[key]


def make_schedule(cfg: Any, num_train_steps: int) -> optax.Schedule:
    """Returns the learning-rate schedule `step -> lr` named by `cfg.schedule`.

    Args:
      cfg: the `optimizer` config block.
      num_train_steps: total steps of the run; the cosine decays over all of them.
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
            decay_steps=max(num_train_steps, warmup + 1),
            end_value=float(_get(cfg, "end_learning_rate")),
        )
    raise ValueError(f"unknown optimizer.schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


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
        )
    elif name == "adagrad":
        tx = optax.adagrad(schedule, eps=_get(cfg, "eps"))
    else:
        raise ValueError(f"unknown optimizer.name {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    clip = float(_get(cfg, "grad_clip_norm"))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx
