"""Data parallelism: the two ways lab runs one step over all local devices.

A family writes `loss_fn(params, batch, rng) -> (loss_sum, sums)`: the SUM of its per-example
(or per-token) losses and a dict of other sums that includes `count`, the number of examples
(or tokens) the sums run over. lab turns that into the gradient of the global mean,

    grad = d(sum of losses over the global batch) / d(params) / (global count),

which is exactly the gradient of the mean loss whether the batch is split over devices or not,
and stays exact with masks (padded batches, padded tokens) because it divides by the true global
count rather than averaging per-device means.

* `Mesh` (default): `jax.jit` over global arrays with a `NamedSharding` on `Mesh(devices, ('data',))`.
  The batch's leading axis is split over 'data'; parameters are replicated. XLA inserts the
  all-reduce: the family's sums are already global.
* `Pmap` (`config.parallel='pmap'`): `jax.pmap` over a leading device axis. Every device computes
  its local sums, and lab inserts `lax.psum` of gradients and sums, so the result is the same
  global quantity. Nothing in a family changes.

One device is the N=1 case of either.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
LossFn = Callable[[PyTree, dict, jax.Array], tuple[jax.Array, dict]]

DATA_AXIS = "data"
PARALLEL_MODES = ("jit", "pmap")


def global_mean_grads(loss_fn: LossFn, params: PyTree, batch: dict, rng: jax.Array,
                      axis_name: str | None = None) -> tuple[PyTree, dict]:
    """Gradient of the global mean loss, and the global sums, for one (per-device) batch.

    The loss sum is divided by the global count inside the differentiated function (a constant
    there), so the scaling rides the backward pass instead of costing a pass over the gradients.

    Args:
      loss_fn: `(params, batch, rng) -> (loss_sum, sums)`, sums holding at least `count`.
      params: the parameters to differentiate.
      batch: this device's (or, under jit, the global) batch.
      rng: key for dropout and other train-time noise.
      axis_name: the pmap axis to psum over; None under jit, where arrays are already global.
    Returns:
      (grads, sums): grads of mean loss (same tree as params); sums with `loss` (the loss sum)
      added, all summed over the global batch.
    """

    def mean_loss(p):
        loss_sum, sums = loss_fn(p, batch, rng)
        sums = dict(sums, loss=loss_sum)
        count = jax.lax.stop_gradient(sums["count"])
        if axis_name is not None:
            count = jax.lax.psum(count, axis_name)
        return loss_sum / jnp.maximum(count, 1).astype(loss_sum.dtype), sums

    grads, sums = jax.grad(mean_loss, has_aux=True)(params)
    if axis_name is not None:
        grads, sums = jax.lax.psum((grads, sums), axis_name)
    return grads, sums


class MeshParallel:
    """jit + NamedSharding over `Mesh(local devices, ('data',))`: the default strategy."""

    name = "jit"

    def __init__(self):
        self.mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
        self.num_devices = jax.device_count()
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.axis_name = None  # arrays are global: no collective for a family or lab to write

    def put_state(self, state: PyTree) -> PyTree:
        """Places a (host or device) state replicated on every device."""
        return jax.device_put(state, self.replicated)

    def get_state(self, placed: PyTree) -> PyTree:
        """The canonical (global-array) state, for checkpoints and for returning to users."""
        return placed

    def put_batch(self, batch: dict) -> dict:
        """Turns this process's numpy batch (its slice of the global batch) into global arrays.

        One device: the numpy arrays go to jit as they are (its own transfer is the cheapest
        path, ~0.1 ms less per step than an explicit device_put). Several devices of one
        process: split over 'data' by device_put. Several processes: each gives its own slice.
        """
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
                    for k, v in batch.items()}
        if self.num_devices == 1:
            return batch
        return jax.device_put(batch, self.data_sharding)

    def compile(self, fn: Callable, *, donate_state: bool) -> Callable:
        """jit-compiles `fn(state_or_params, batch)`; the first argument may be donated."""
        return jax.jit(fn, donate_argnums=(0,) if donate_state else ())

    def metrics_to_host(self, metrics: Any) -> Any:
        return jax.device_get(metrics)

    def device_index(self):
        return 0


class PmapParallel:
    """jax.pmap over local devices: the same family loss, with lab's psum inserted."""

    name = "pmap"

    def __init__(self):
        self.devices = jax.local_devices()
        self.num_devices = len(self.devices)
        self.axis_name = DATA_AXIS

    def put_state(self, state: PyTree) -> PyTree:
        stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), state)
        return jax.pmap(lambda x: x, devices=self.devices)(stacked)

    def get_state(self, placed: PyTree) -> PyTree:
        return jax.tree.map(lambda x: x[0], placed)

    def put_batch(self, batch: dict) -> dict:
        n = self.num_devices
        return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}

    def compile(self, fn: Callable, *, donate_state: bool) -> Callable:
        return jax.pmap(fn, axis_name=DATA_AXIS, devices=self.devices,
                        donate_argnums=(0,) if donate_state else ())

    def metrics_to_host(self, metrics: Any) -> Any:
        # Every device holds the same psum'd metrics: read device 0's copy.
        return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(metrics))

    def device_index(self):
        return jax.lax.axis_index(DATA_AXIS)


def make_parallel(mode: str):
    """Returns the data-parallel strategy named by `config.parallel` ('jit' or 'pmap')."""
    if mode == "jit":
        return MeshParallel()
    if mode == "pmap":
        return PmapParallel()
    raise ValueError(f"unknown parallel mode {mode!r}; choose one of {', '.join(PARALLEL_MODES)}")
