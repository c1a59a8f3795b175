"""Data parallelism: the two ways lab runs one step over all local devices, and state shardings.

A family writes `loss_fn(params, batch, rng) -> (loss_sum, sums)`: the SUM of its per-example
(or per-token) losses and a dict of other sums that includes `count`, the number of examples
(or tokens) the sums run over. lab turns that into the gradient of the global mean,

    grad = d(sum of losses over the global batch) / d(params) / (global count),

which is exactly the gradient of the mean loss whether the batch is split over devices or not,
and stays exact with masks (padded batches, padded tokens) because it divides by the true global
count rather than averaging per-device means.

* `MeshParallel` (default, `config.parallel='jit'`): `jax.jit` over global arrays on a
  `Mesh(devices, ('data', 'fsdp'))` of the shape `config.mesh` names (default: every device on
  'data'). The batch's leading axis is split over all devices (both axes); a parameter is placed
  where its model declares it, at the parameter (`nn.with_logical_partitioning`: logical axis
  names, which LOGICAL_AXIS_RULES maps to mesh axes; `declared_specs`), and its optimizer moments
  follow it. With `fsdp` > 1, a leaf with no declaration is split along 'fsdp' if it is large
  (`fsdp_spec`), so parameters and optimizer state are stored once per 'data' replica and
  gathered by XLA where the step needs them (FSDP, in GSPMD's terms). XLA inserts every collective.
* `PmapParallel` (`config.parallel='pmap'`): `jax.pmap` over a leading device axis. Every device
  computes its local sums, and lab inserts the `lax.psum`s, so the result is the same global
  quantity. Nothing in a family changes. Parameters are replicated (declarations refused if they split).

The step never asks which of the two runs it: each strategy gives its `StepEngine` (the global-mean
gradient, the per-device key, the global step metrics, as functions) to `lab.task.StepTools` and
to the loop's step, and reads the step's metric shapes itself (`step_metric_shapes`). pmap's axis
name is known in this module only.

Evaluation runs under jit on the mesh in both modes: global arrays, so the numbers of an eval
(including any randomness it draws, e.g. masked-LM masks) do not depend on the device count.
One device is the N=1 case of either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lab.errors import ConfigValueError
from lab.sharding import DATA_AXIS, FSDP_AXIS, MESH_AXES, make_mesh, shardings_from_declarations

PyTree = Any
LossFn = Callable[[PyTree, dict, jax.Array], tuple]

PARALLEL_MODES = ("jit", "pmap")

# Metric keys ending in this are per-step values (norms), averaged over steps and devices;
# every other metric is a sum over examples, added over steps and devices.
PER_STEP_SUFFIX = "_norm"


def global_mean_grads(loss_fn: LossFn, params: PyTree, batch: dict, rng: jax.Array,
                      axis_name: str | None = None, *, with_state: bool = False,
                      gather: Callable[[PyTree], PyTree] | None = None):
    """Gradient of the global mean loss, and this device's sums, for one (per-device) batch.

    The loss sum is divided by the global count inside the differentiated function (a constant
    there), so the scaling rides the backward pass instead of costing a pass over the gradients.

    Args:
      loss_fn: `(params, batch, rng) -> (loss_sum, sums)`, sums holding at least `count`; with
        `with_state`, `-> (loss_sum, sums, new_state)` (e.g. updated BatchNorm statistics).
      params: the parameters to differentiate.
      batch: this device's (or, under jit, the global) batch.
      rng: key for dropout and other train-time noise.
      axis_name: the pmap axis; None under jit, where arrays are already global.
      with_state: see `loss_fn`; the new state is averaged over devices under pmap.
      gather: applied to the params inside the differentiated function (FSDP: the stored shards
        gathered whole for the computation, so the gradient comes back to the shards).
    Returns:
      (grads, sums[, new_state]): grads of the global mean loss (same tree as params), identical
      on every device; sums with `loss` (the loss sum) added, over this device's batch (the loop
      adds them over devices).
    """

    def mean_loss(p):
        loss_sum, sums, *state = loss_fn(p if gather is None else gather(p), batch, rng)
        sums = dict(sums, loss=loss_sum)
        count = jax.lax.stop_gradient(sums["count"])
        if axis_name is not None:
            count = jax.lax.psum(count, axis_name)
        return loss_sum / jnp.maximum(count, 1).astype(loss_sum.dtype), (sums, state)

    grads, (sums, state) = jax.grad(mean_loss, has_aux=True)(params)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        state = jax.lax.pmean(state, axis_name)
    return (grads, sums, state[0]) if with_state else (grads, sums)


def reduce_step_metrics(metrics: dict, axis_name: str | None) -> dict:
    """Global step metrics from per-device ones: sums added, per-step norms averaged (pmap)."""
    if axis_name is None:
        return metrics
    return {k: (jax.lax.pmean if k.endswith(PER_STEP_SUFFIX) else jax.lax.psum)(v, axis_name)
            for k, v in metrics.items()}


@dataclass(frozen=True)
class StepEngine:
    """What a train step needs from the strategy that runs it, as functions: the loop's step
    and a family's `StepTools` call these, and never name a device axis.

    Attributes:
      mean_grads: `(loss_fn, params, batch, rng, *, with_state=False, gather=None)` ->
        `(grads, sums[, new_state])`, the gradient of the global mean loss and this device's sums
        (see `global_mean_grads`).
      device_rng: the step's key -> this device's key for train-time noise (dropout).
      reduce_metrics: this device's step metrics -> the global ones (sums added over devices,
        per-step `_norm` values averaged).
    """

    mean_grads: Callable[..., tuple]
    device_rng: Callable[[jax.Array], jax.Array]
    reduce_metrics: Callable[[dict], dict]


def _unchanged(x):
    return x


# jit over global arrays (one device, or a mesh of any shape): XLA inserts every collective, the
# step's key already draws over the global batch, the step's metrics are already global.
GLOBAL_ARRAYS = StepEngine(mean_grads=global_mean_grads, device_rng=_unchanged, reduce_metrics=_unchanged)


def _pmap_engine(axis_name: str) -> StepEngine:
    """The engine inside `jax.pmap(..., axis_name)`: each device sees its slice of the batch, so
    lab inserts the psums, and each device folds its index into the key (distinct dropout per
    device, as one global batch would have)."""
    return StepEngine(
        mean_grads=functools.partial(global_mean_grads, axis_name=axis_name),
        device_rng=lambda rng: jax.random.fold_in(rng, jax.lax.axis_index(axis_name)),
        reduce_metrics=functools.partial(reduce_step_metrics, axis_name=axis_name))


# Functions compiled once (init): on CPU, compiling random initialisers (threefry, truncated
# normals) with LLVM's expensive passes costs seconds, and a function run once gains nothing by them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_once(fn: Callable, *args, out_shardings=None) -> Callable:
    """jit for a function called once: compiled without expensive optimisation on CPU."""
    jitted = jax.jit(fn) if out_shardings is None else jax.jit(fn, out_shardings=out_shardings)
    lowered = jitted.lower(*args)
    return lowered.compile(compiler_options=_FAST_COMPILE if jax.default_backend() == "cpu" else None)


def host_to_global(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host arrays, the same on every process, as global arrays with `shardings`: each device
    takes only its own shard (no device holds a full copy of a split leaf)."""
    def place(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(place, tree, shardings)


class _Strategy:
    """What both strategies share: the mesh over all devices, and evaluation on it."""

    name: str
    engine: StepEngine  # what the step calls to reduce over devices (see StepEngine)
    gather_for_compute: Callable[[PyTree], PyTree] | None = None  # see MeshParallel

    def __init__(self, mesh: str | None = None):
        self.mesh = make_mesh(mesh)
        # XLA:CPU with several devices deadlocks when many steps are dispatched and not yet run:
        # across processes (gloo, ~100 in flight) and within one (a device's all-reduce never
        # joins; 6 of 9 runs of 160 MLP steps on 4 simulated devices, 3 runs sharing 2 cores).
        # The loop waits for the step every this many.
        self.max_steps_in_flight = 8 if jax.device_count() > 1 and jax.default_backend() == "cpu" else None
        self.num_devices = jax.device_count()
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(MESH_AXES))  # the batch: over every device

    def global_batch(self, batch: dict) -> dict:
        """This process's numpy batch (its slice of the global batch) as global arrays.

        One device: the numpy arrays go to jit as they are (its own transfer is the cheapest
        path, cheaper per step than an explicit device_put). Several devices of one
        process: split over 'data' by device_put. Several processes: each gives its own slice.
        """
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
                    for k, v in batch.items()}
        if self.num_devices == 1:
            return batch
        return jax.device_put(batch, self.data_sharding)

    def global_batches(self, batches: dict) -> dict:
        """`global_batch` of K batches stacked on a leading axis (K, B, ...): the K steps of one
        `steps_per_call` call, split over the devices along B."""
        sharding = NamedSharding(self.mesh, P(None, MESH_AXES))
        if jax.process_count() > 1:
            return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batches.items()}
        if self.num_devices == 1:
            return batches
        return jax.device_put(batches, sharding)

    def compile_eval(self, fn: Callable) -> Callable:
        """jit of `fn(variables, batch, rng) -> sums` over global arrays; the sums come out
        replicated, so every process reads them whole."""
        return jax.jit(fn, out_shardings=self.replicated)

    def metrics_to_host(self, metrics: Any) -> Any:
        """Eval sums (global arrays) as numpy."""
        return jax.device_get(metrics)

    def acc_to_host(self, acc) -> np.ndarray:
        """The step's metric accumulator as one numpy vector."""
        return np.asarray(jax.device_get(acc))

    def step_metric_shapes(self, step_fn: Callable, state: PyTree, batch: dict) -> dict:
        """The shapes (`jax.ShapeDtypeStruct`s) of the metrics `step_fn(state, batch) -> (state,
        metrics)` returns for one step, from a placed state and batch (nothing is computed)."""
        return jax.eval_shape(step_fn, state, batch)[1]


class MeshParallel(_Strategy):
    """jit + NamedSharding over the ('data', 'fsdp') mesh: the default strategy."""

    name = "jit"
    engine = GLOBAL_ARRAYS  # arrays are global: no collective for a family or lab to write

    def state_shardings(self, abstract_state: PyTree, variables: PyTree = None) -> PyTree:
        """The sharding of every state leaf (`shardings_from_declarations`): `variables` is the
        task's boxed init (`jax.eval_shape(task.init, rng)`), whose declarations place it."""
        return shardings_from_declarations(abstract_state, self.mesh, variables)

    @property
    def gather_for_compute(self) -> Callable[[PyTree], PyTree] | None:
        """With 'fsdp' > 1: `params -> params` constrained to be whole on every device, for use
        inside the step. Left to itself, XLA's sharding propagation follows the split parameters
        into the activations (split by width, the batch's logits gathered on every device: several
        times the replicated step's temporaries; benchmarks/scale_memory.py measures them);
        gathered parameters keep the activations split by batch, as in data parallelism, while
        parameters and optimizer state stay stored split. None without FSDP."""
        if self.mesh.shape[FSDP_AXIS] == 1:
            return None
        return lambda tree: jax.lax.with_sharding_constraint(tree, self.replicated)

    def init_state(self, init_fn: Callable, rng: jax.Array, shardings: PyTree) -> PyTree:
        """`init_fn(rng)` compiled with the state's shardings as outputs: each device builds
        only its own shards (no full copy of a sharded parameter on one device)."""
        return compile_once(init_fn, rng, out_shardings=shardings)(rng)

    def put_state(self, state: PyTree, shardings: PyTree) -> PyTree:
        return jax.device_put(state, shardings)

    def get_state(self, placed: PyTree) -> PyTree:
        """The canonical (global-array) state, for checkpoints and for evaluation."""
        return placed

    put_batch = _Strategy.global_batch
    put_batches = _Strategy.global_batches

    def compile_step(self, fn: Callable, state_shardings: PyTree, acc_sharding) -> Callable:
        """jit of `fn(state, acc, batch) -> (state, acc)`, the state donated, its shardings kept."""
        return jax.jit(fn, donate_argnums=(0,), out_shardings=(state_shardings, acc_sharding))

    def put_acc(self, acc: np.ndarray):
        return jax.device_put(acc, self.replicated)


class PmapParallel(_Strategy):
    """jax.pmap over local devices: the same family loss, with lab's psum inserted."""

    name = "pmap"
    engine = _pmap_engine(DATA_AXIS)

    def __init__(self, mesh: str | None = None):
        super().__init__(mesh)
        if jax.process_count() > 1:
            raise ConfigValueError(f"config.parallel='pmap' runs one process; this run has {jax.process_count()} "
                                   f"processes: use config.parallel='jit'")
        if self.mesh.shape[FSDP_AXIS] > 1:
            raise ConfigValueError("config.parallel='pmap' replicates every parameter: use config.parallel='jit' "
                                   f"with config.mesh={_mesh_text(self.mesh)!r}")
        self.devices = jax.local_devices()
        self.num_local = len(self.devices)

    def state_shardings(self, abstract_state: PyTree, variables: PyTree = None) -> PyTree:
        """Every leaf replicated; refused if a declaration would split one on this mesh (one that
        names 'fsdp' on a mesh with fsdp 1 replicates, so a Transformer runs under pmap)."""
        split = [s for s in jax.tree.leaves(shardings_from_declarations(abstract_state, self.mesh, variables))
                 if not s.is_fully_replicated]
        if split:
            raise ConfigValueError("config.parallel='pmap' replicates every parameter, but this model declares "
                                   "some split on this mesh: use config.parallel='jit'")
        return jax.tree.map(lambda _: self.replicated, abstract_state)

    def init_state(self, init_fn: Callable, rng: jax.Array, shardings: PyTree) -> PyTree:
        return compile_once(init_fn, rng)(rng)

    def put_state(self, state: PyTree, shardings: PyTree = None) -> PyTree:
        stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (self.num_local,) + np.shape(x)), state)
        return jax.pmap(lambda x: x, devices=self.devices)(stacked)

    def get_state(self, placed: PyTree) -> PyTree:
        """Device 0's copy, as global replicated arrays on the mesh (checkpoints, evaluation)."""
        return jax.device_put(jax.tree.map(lambda x: x[0], placed), self.replicated)

    def put_batch(self, batch: dict) -> dict:
        n = self.num_local
        return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}

    def put_batches(self, batches: dict) -> dict:
        """K stacked batches (K, B, ...) -> (devices, K, B / devices, ...)."""
        n = self.num_local
        return {k: np.swapaxes(v.reshape((v.shape[0], n, v.shape[1] // n) + v.shape[2:]), 0, 1)
                for k, v in batches.items()}

    def compile_step(self, fn: Callable, state_shardings: PyTree, acc_sharding) -> Callable:
        return jax.pmap(fn, axis_name=DATA_AXIS, devices=self.devices, donate_argnums=(0,))

    def put_acc(self, acc: np.ndarray):
        return self.put_state(acc)

    def acc_to_host(self, acc) -> np.ndarray:
        # Every device holds the same psum'd metrics: read device 0's copy.
        return np.asarray(jax.device_get(acc[0]))

    def step_metric_shapes(self, step_fn: Callable, state: PyTree, batch: dict) -> dict:
        # The placed arrays carry a leading device axis: the shapes of one device's step.
        _, shapes = jax.eval_shape(jax.vmap(step_fn, axis_name=DATA_AXIS), state, batch)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), shapes)


def _mesh_text(mesh: Mesh) -> str:
    return ",".join(f"{axis}:{size}" for axis, size in mesh.shape.items())


def make_parallel(mode: str, mesh: str | None = None) -> MeshParallel | PmapParallel:
    """Returns the data-parallel strategy named by `config.parallel` ('jit' or 'pmap') on the
    mesh `config.mesh` names (see `parse_mesh`)."""
    if mode == "jit":
        return MeshParallel(mesh)
    if mode == "pmap":
        return PmapParallel(mesh)
    raise ConfigValueError(f"config.parallel={mode!r} is unknown; choose one of {', '.join(PARALLEL_MODES)}")
