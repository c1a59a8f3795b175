"""Where state lives: the ('data', 'fsdp') device mesh and the sharding of every train-state leaf.

A model declares a parameter's placement where it defines it, by logical axis names
(`nn.with_logical_partitioning(init, ('embed', 'mlp'))`); LOGICAL_AXIS_RULES maps those names to
mesh axes, and the parameter's optimizer moments and moving average follow it. A leaf nobody
declares is split along 'fsdp' when it is large (`fsdp_spec`), else replicated. `lab.parallel`
runs the step over the mesh; this module only says where each array is.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lab.errors import ConfigValueError

PyTree = Any
# {path of a declared variable, e.g. ('params', 'block_0', 'attn', 'qkv', 'kernel'): (its shape, its
# PartitionSpec over mesh axes)}: what `declared_specs` reads from a task's boxed init.
Declared = Mapping[tuple, tuple[tuple[int, ...], P]]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# The default rule splits a leaf along 'fsdp' from this many elements on (a 64x64 kernel):
# smaller leaves (biases, norms, scalars) cost more in collectives than they save in memory.
FSDP_MIN_SIZE = 4096
# The mesh axis each logical axis name a model declares (`nn.with_logical_partitioning`) is split
# along, by `flax.linen.logical_to_mesh_axes`: the rules in order of precedence, a mesh axis used
# at most once per array (so an array named ('heads', 'embed') is split on 'heads' only); a name
# mapped to None, or not listed, stays whole. The Transformer's names (`lab.models.transformer`):
# its kernels and embeddings are split along one width (D) dimension, 'heads' (attention's joined
# heads x head_dim, the input of its output projection) before 'embed' (the residual stream).
LOGICAL_AXIS_RULES = (
    ("heads", FSDP_AXIS),
    ("embed", FSDP_AXIS),
    ("qkv", None),  # the fused q | k | v outputs
    ("mlp", None),  # the MLP's hidden width F
    ("vocab", None),
    ("length", None),  # positions (max_len)
)


def parse_mesh(text: str | None, num_devices: int) -> dict[str, int]:
    """`config.mesh` as axis sizes: "data:2,fsdp:2" -> {'data': 2, 'fsdp': 2}.

    An axis left out is 1, except 'data', which takes the devices the others leave
    ("fsdp:4" on 8 devices is data:2,fsdp:4); "" or None puts every device on 'data'.
    Raises ConfigValueError (one line) for an unknown axis, a bad size, or sizes whose product
    is not the device count.
    """
    sizes: dict[str, int] = {}
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        axis, _, size = part.partition(":")
        if axis not in MESH_AXES or not size.isdigit() or int(size) < 1 or axis in sizes:
            raise ConfigValueError(f"config.mesh={text!r} is invalid: write axis:size pairs of the axes "
                                   f"{', '.join(MESH_AXES)}, e.g. 'data:2,fsdp:2'")
        sizes[axis] = int(size)
    others = int(np.prod([v for k, v in sizes.items() if k != DATA_AXIS]))
    if DATA_AXIS not in sizes and num_devices % others == 0:
        sizes[DATA_AXIS] = num_devices // others
    sizes = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ConfigValueError(f"config.mesh={text!r} needs {int(np.prod(list(sizes.values())))} devices, but "
                               f"this run has {num_devices}: make the sizes multiply to {num_devices}")
    return sizes


def make_mesh(text: str | None = None) -> Mesh:
    """The ('data', 'fsdp') mesh over all global devices that `config.mesh` names.

    `jax.make_mesh` orders the devices for the platform's topology (on CPU: `jax.devices()`
    order; on GPU: by device id). Both axes are `AxisType.Auto` (jax's default is Explicit now):
    lab places arrays with explicit `NamedSharding`s and leaves the rest to XLA's propagation.
    The batch is split over the mesh's devices in their flat order, and each process's data
    pipeline reads one contiguous block of it, in process order; a topology order that would
    interleave the processes' devices (possible on TPU slices) is replaced by `jax.devices()`
    order, which keeps every process's block whole.
    """
    sizes = tuple(parse_mesh(text, jax.device_count()).values())
    mesh = jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    if jax.process_count() > 1 and not _process_blocks(mesh.devices.flat):
        mesh = Mesh(np.array(jax.devices()).reshape(sizes), MESH_AXES,
                    axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return mesh


def _process_blocks(devices) -> bool:
    """Whether `devices`, in order, hold each process's devices as one block, in process order."""
    processes = [d.process_index for d in devices]
    return processes == sorted(processes)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """The default FSDP placement of a leaf of `shape`: its largest dimension divisible by
    `fsdp_size` split along 'fsdp' when the leaf has at least `min_size` elements; else
    replicated (P())."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            return P(*[FSDP_AXIS if d == dim else None for d in range(len(shape))])
    return P()


def _names(path) -> tuple:
    """A key path as plain names: dict keys, attribute names and sequence indices."""
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def _is_declared(x) -> bool:
    return isinstance(x, nn.Partitioned)  # nn.with_partitioning's box (and its logical subclass)


def declared_specs(variables: PyTree) -> Declared:
    """The placements a model declares at its parameters, read from its boxed variables.

    Args:
      variables: a task's init as it returns it, boxed (abstract or not: e.g.
        `jax.eval_shape(task.init, rng)`); None or a tree without boxes declares nothing.
    Returns:
      {path: (shape, PartitionSpec)} for every leaf boxed by `nn.with_logical_partitioning`
      (logical names mapped to mesh axes by LOGICAL_AXIS_RULES, or by the box's own rules) or
      `nn.with_partitioning` (mesh axis names as they are). A spec that splits nothing is P().
    """
    declared = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables or {}, is_leaf=_is_declared)[0]:
        if _is_declared(leaf):
            names = nn.get_partition_spec(leaf)
            spec = (nn.logical_to_mesh_axes(tuple(names), leaf.rules or LOGICAL_AXIS_RULES)
                    if isinstance(leaf, nn.LogicallyPartitioned) else names)
            declared[_names(path)] = (tuple(leaf.value.shape), P() if all(a is None for a in spec) else spec)
    return declared


def _followers(declared: Declared) -> dict:
    """{path suffix: [(top-level name or None, shape, spec)]}: where a declared variable's path
    can end a state leaf's path. The variable itself ('params', ...: `TrainState.params`, or its
    collection in `TrainState.extra`); its path within the collection (optimizer moments, the EMA:
    trees of the params' shape); within a top-level entry of it (the moments of a named
    optimizer, which sees only `params[name]`: then `name` must come earlier in the leaf's path)."""
    suffixes: dict = {}
    for path, (shape, spec) in declared.items():
        suffixes.setdefault(path, []).append((None, shape, spec))
        if len(path) > 1:
            suffixes.setdefault(path[1:], []).append((None, shape, spec))
        if len(path) > 2:
            suffixes.setdefault(path[2:], []).append((path[1], shape, spec))
    return suffixes


def _followed_spec(names: tuple, shape: tuple, followers: dict) -> P | None:
    """The spec of the declared variable whose path (or a suffix of it, `_followers`) ends `names`
    with the same shape, the longest such path first; None when none does."""
    for start in range(len(names)):
        for top, want, spec in followers.get(names[start:], ()):
            if want == shape and (top is None or top in names[:start]):
                return spec
    return None


def shardings_from_declarations(abstract: PyTree, mesh: Mesh, variables: PyTree = None) -> PyTree:
    """A `NamedSharding` per leaf of `abstract` (a train state): the placement its model declares
    at the parameter (`declared_specs` of the boxed `variables`), which the parameter's optimizer
    moments and moving average follow (a leaf whose path ends in the parameter's path, with its
    shape); else `fsdp_spec` (replicated on a mesh without an 'fsdp' axis or with 'fsdp' of size 1).

    The default depends only on the shape, so an undeclared parameter's moments are split like it.
    Raises ConfigValueError when a declaration splits a dimension the mesh's axis does not divide,
    ValueError when it names more dimensions than the leaf has or an axis the mesh has not.
    """
    followers = _followers(declared_specs(variables))
    fsdp_size = dict(mesh.shape).get(FSDP_AXIS, 1)

    def sharding(path, leaf):
        shape = tuple(leaf.shape)
        spec = _followed_spec(_names(path), shape, followers)
        if spec is None:
            return NamedSharding(mesh, fsdp_spec(shape, fsdp_size))
        name = jax.tree_util.keystr(path)
        if len(spec) > len(shape):
            raise ValueError(f"the model declares {spec} for {name} of shape {shape}")
        for dim, axes in zip(shape, spec):
            unknown = [a for a in np.atleast_1d(axes) if a is not None and a not in mesh.shape]
            if unknown:
                raise ValueError(f"the model declares {name} split along {unknown}, which lab's mesh "
                                 f"{tuple(mesh.shape)} does not have: name logical axes (LOGICAL_AXIS_RULES)")
            size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes) if a is not None]))
            if axes is not None and dim % size:
                raise ConfigValueError(
                    f"config.mesh {dict(mesh.shape)} splits {name} (shape {shape}) "
                    f"{size} ways along {axes!r}, which does not divide {dim}: choose sizes that divide it")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, abstract)
