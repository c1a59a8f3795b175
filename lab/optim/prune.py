"""Magnitude pruning with a gradual schedule, as an optax transformation.

`magnitude_prune` (Zhu & Gupta 2017, "To prune, or not to prune") raises the sparsity of every
eligible weight (rank >= 2, at least `min_size` elements: kernels, not biases) from 0 at
`begin_step` to `target_sparsity` at `end_step` along the cubic
`s(t) = target * (1 - (1 - (t - begin) / (end - begin))^3)`, recomputing the masks every
`update_every` steps (and at `end_step`), then keeps them. Between recomputations the masks are
held: pruned weights stay exactly zero, the others train. It goes last in a chain, after the
optimizer, so it sees the final updates:

    tx = optax.chain(optax.adam(1e-3), magnitude_prune(0.9, begin_step=0, end_step=1000))

In lab's loop it is the `optimizer.prune` block (see `lab.optim`). `sparsity(params)` checks
the result on saved params.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


PyTree = Any
__all__ = ["DEFAULT_MIN_SIZE", "eligible", "MagnitudePruneState", "magnitude_prune", "sparsity", "sparsity_at"]

DEFAULT_MIN_SIZE = 1024  # elements: every MLP kernel qualifies, every bias stays float


def eligible(leaf: Any, min_size: int) -> bool:
    """Whether a parameter is compressed: a matrix or higher-rank kernel (ndim >= 2) with at
    least `min_size` elements. Shared by pruning and quantization (`lab.compress.quantize`)."""
    return np.ndim(leaf) >= 2 and np.size(leaf) >= min_size


class MagnitudePruneState(NamedTuple):
    """count: int32, updates seen; masks: bool per eligible weight (its shape; True = kept),
    a scalar True for every other leaf (never pruned)."""

    count: jax.Array
    masks: PyTree


def sparsity_at(step, target_sparsity: float, begin_step: int, end_step: int):
    """The schedule's sparsity after `step` updates (0 before `begin_step`, `target_sparsity`
    from `end_step` on); works on ints and traced int arrays."""
    span = max(end_step - begin_step, 1)
    progress = jnp.clip((step - begin_step) / span, 0.0, 1.0)
    if end_step == begin_step:  # one-shot pruning at begin_step
        progress = jnp.where(step >= begin_step, 1.0, 0.0)
    return target_sparsity * (1.0 - (1.0 - progress) ** 3)


def _magnitude_mask(w: jax.Array, old_mask: jax.Array, fraction) -> jax.Array:
    """The mask zeroing exactly round(fraction * w.size) entries of `w` of least magnitude.

    Scores are |w| with already-pruned entries at 0, so they are dropped first and stay
    dropped (the schedule only grows). Ranks (an argsort of the argsort) rather than a
    threshold make the count exact whatever the ties.
    """
    score = (jnp.abs(w) * old_mask).ravel()
    num_pruned = jnp.round(fraction * score.size).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)  # 0 = smallest
    return (rank >= num_pruned).reshape(w.shape)


def magnitude_prune(target_sparsity: float, begin_step: int, end_step: int, update_every: int = 100,
                    min_size: int = DEFAULT_MIN_SIZE) -> optax.GradientTransformation:
    """A transformation that prunes eligible weights to `target_sparsity` by magnitude.

    Args:
      target_sparsity: final fraction of zeros in each eligible weight, in [0, 1).
      begin_step, end_step: the sparsity ramps from 0 after update `begin_step` to the target
        after update `end_step` (equal: one-shot pruning there); counted in the updates this
        transformation has seen, which is the loop's step.
      update_every: masks are recomputed every this many updates within the ramp (and at its end).
      min_size: weights of fewer elements (and every vector) are never pruned.
    Returns:
      An `optax.GradientTransformation` whose `update(updates, state, params)` needs `params`;
      its updates make `params + updates` zero exactly where the masks are False.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity={target_sparsity} must be in [0, 1)")
    if not 0 <= begin_step <= end_step or update_every < 1:
        raise ValueError(f"need 0 <= begin_step ({begin_step}) <= end_step ({end_step}), update_every >= 1")

    def init_fn(params):
        masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool) if eligible(p, min_size)
                             else jnp.ones((), bool), params)
        return MagnitudePruneState(count=jnp.zeros((), jnp.int32), masks=masks)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_prune needs params: call update(updates, state, params)")
        step = state.count + 1  # the step these updates produce
        on_ramp = (step >= begin_step) & (step <= end_step)
        recompute = on_ramp & (((step - begin_step) % update_every == 0) | (step == end_step))
        fraction = sparsity_at(step, target_sparsity, begin_step, end_step)

        def new_masks():
            return jax.tree.map(lambda p, u, m: _magnitude_mask(p + u, m, fraction) if m.ndim else m,
                                params, updates, state.masks)

        # The sort runs only at schedule points; between them the masks are carried.
        masks = jax.lax.cond(recompute, new_masks, lambda: state.masks)
        # -p where pruned: p + (-p) is exactly 0 in floating point; elsewhere the update as is.
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, masks)
        return updates, MagnitudePruneState(count=state.count + 1, masks=masks)

    return optax.GradientTransformation(init_fn, update_fn)


def sparsity(params: PyTree, min_size: int = DEFAULT_MIN_SIZE) -> float:
    """Fraction of exact zeros over all eligible weights of `params` (numpy or jax arrays): the
    check of a pruned run's saved params. 0.0 when nothing is eligible."""
    leaves = [np.asarray(p) for p in jax.tree.leaves(params) if eligible(p, min_size)]
    total = sum(p.size for p in leaves)
    return float(sum(np.count_nonzero(p == 0) for p in leaves) / total) if total else 0.0
