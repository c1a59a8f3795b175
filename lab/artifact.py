"""Load and call an exported lab model: jax and numpy only, never lab's model code, never pickle.

An artifact is a directory written by `python -m lab.export`:

    model.json    the sidecar: format version, jax version and export serialization version, the
                  input and output specs, preprocessing, label names or tokenizer, the source run
                  (workdir, step, experiment, config), SHA-256 of the two files below
    model.jax     `jax.export.Exported.serialize()`: StableHLO for each platform (cpu, cuda),
                  parameters as the function's first argument (not constants), batch symbolic
    params.npz    the parameters, one array per key path ("hidden_0/kernel"), no pickle

    >>> model = Artifact("exports/mlp_digits")
    >>> model.inputs                         # {'inputs': {'shape': ['b', 8, 8, 1], 'dtype': 'float32'}}
    >>> model(inputs=x_Bx8x8x1)["label"]     # logits (B, 10) as numpy

Every problem with the files (missing, corrupt, from an incompatible jax, parameters that do not
match the program) raises `ArtifactError` with one line that says what to do: the checkpoint is
the source of truth, so the fix is usually to export again. A call with inputs that do not match
the spec raises `ArtifactInputError` (a server answers it with a 400).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

FORMAT = "lab-export"
FORMAT_VERSION = 1
SIDECAR, PROGRAM, PARAMS = "model.json", "model.jax", "params.npz"
BATCH = "b"  # the symbolic batch dimension's name in the specs


class ArtifactError(Exception):
    """An artifact that cannot be used (missing, corrupt, incompatible): one line, what to do."""


class ArtifactInputError(ValueError):
    """Inputs that do not match the artifact's spec (names, dtypes, shapes)."""


def is_export(path: str) -> bool:
    """Whether folder `path` is a lab export and nothing else: its sidecar says format FORMAT and it
    holds no file an export does not write (so replacing it loses nothing of the user's)."""
    try:
        with open(os.path.join(path, SIDECAR)) as f:
            meta = json.load(f)
        names = set(os.listdir(path))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and names <= {SIDECAR, PROGRAM, PARAMS}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """{'a/b': x} -> {'a': {'b': x}} (the params.npz layout back to flax's nested dicts)."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *path, last = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


class Artifact:
    """An exported model, ready to call: `artifact(**inputs) -> {output name: numpy array}`.

    Attributes:
      meta: the whole sidecar (dict).
      inputs, outputs: name -> {'shape': [...], 'dtype': str}; 'b' marks the batch dimension.
      name, step: the source run's experiment and checkpoint step.
    Raises:
      ArtifactError: on load, for any unusable file.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        sidecar = os.path.join(self.path, SIDECAR)
        if not os.path.isfile(sidecar):
            raise ArtifactError(f"{self.path} is not a lab export (no {SIDECAR}): "
                                f"write one with python -m lab.export --workdir=RUN --out={path}")
        try:
            with open(sidecar) as f:
                self.meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{sidecar} is unreadable ({e}): export the run again") from e
        if self.meta.get("format") != FORMAT or self.meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{sidecar} is not a lab export of format {FORMAT} v{FORMAT_VERSION} "
                                f"(found {self.meta.get('format')} v{self.meta.get('format_version')}): export again")
        for name in (PROGRAM, PARAMS):
            file = os.path.join(self.path, name)
            if not os.path.isfile(file):
                raise ArtifactError(f"{file} is missing: export the run again")
            if sha256(file) != self.meta.get("sha256", {}).get(name):
                raise ArtifactError(f"{file} does not match its checksum in {SIDECAR} (corrupt or "
                                    f"replaced): export the run again")
        version = self.meta.get("serialization_version")
        low, high = (jax_export.minimum_supported_calling_convention_version,
                     jax_export.maximum_supported_calling_convention_version)
        if not isinstance(version, int) or not low <= version <= high:
            raise ArtifactError(f"{self.path} was exported with serialization version {version} (jax "
                                f"{self.meta.get('jax_version')}); this jax {jax.__version__} reads {low}-{high}: "
                                f"export the run again from its checkpoint with this jax")
        try:
            with open(os.path.join(self.path, PROGRAM), "rb") as f:
                self.exported = jax_export.deserialize(bytearray(f.read()))
            with np.load(os.path.join(self.path, PARAMS), allow_pickle=False) as z:
                self.params = unflatten_params({k: z[k] for k in z.files})
        except Exception as e:  # jax and numpy raise many types for a damaged file
            raise ArtifactError(f"{self.path} is unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}): export the run again") from e
        self._check_params()
        self.inputs: dict[str, dict] = self.meta["inputs"]
        self.outputs: dict[str, dict] = self.meta["outputs"]
        source = self.meta.get("source", {})  # a run of your own model has no experiment: its folder names it
        self.name = source.get("experiment") or os.path.basename(str(source.get("workdir", ""))) or None
        self.step = self.meta.get("source", {}).get("step")

    def _check_params(self) -> None:
        """The stored parameters have exactly the shapes and dtypes the program was exported for."""
        flat_avals = self.exported.in_avals
        flat_params, params_tree = jax.tree.flatten(self.params)
        n = len(flat_params)
        args_tree = self.exported.in_tree  # ((params, inputs), {})
        expected_params_tree = args_tree.children()[0].children()[0]
        if params_tree != expected_params_tree:
            raise ArtifactError(f"{PARAMS} in {self.path} holds other parameter names than {PROGRAM} "
                                f"expects: export the run again")
        for aval, value in zip(flat_avals[:n], flat_params):
            if tuple(aval.shape) != value.shape or aval.dtype != value.dtype:
                raise ArtifactError(f"{PARAMS} in {self.path} does not match {PROGRAM} (a parameter is "
                                    f"{value.dtype}{list(value.shape)}, the program takes "
                                    f"{aval.dtype}{list(aval.shape)}): export the run again")

    def check_inputs(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """`inputs` as numpy arrays of the spec's dtypes, checked: the same names, the same rank and
        fixed dimensions, each named dimension ('b', 'p') one size >= 1 across the inputs and within
        the export's constraints. Raises ArtifactInputError."""
        missing, extra = sorted(set(self.inputs) - set(inputs)), sorted(set(inputs) - set(self.inputs))
        if missing or extra:
            raise ArtifactInputError(f"inputs must be {sorted(self.inputs)}" + (f"; missing {missing}" if missing else "")
                                     + (f"; unknown {extra}" if extra else ""))
        out, sizes = {}, {}
        for name, spec in self.inputs.items():
            try:
                array = np.asarray(inputs[name])
            except (ValueError, TypeError) as e:
                raise ArtifactInputError(f"input {name!r} is not an array of numbers ({e})") from e
            dtype = np.dtype(spec["dtype"])
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise ArtifactInputError(f"input {name!r} must hold numbers ({spec['dtype']}), got {array.dtype}")
            if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
                if not np.all(np.isfinite(array)) or not np.all(np.floor(array) == array):
                    raise ArtifactInputError(f"input {name!r} must hold integers ({spec['dtype']})")
            shape = spec["shape"]
            if array.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape)):
                raise ArtifactInputError(f"input {name!r} must have shape {shape_text(shape)}, got "
                                         f"{list(array.shape)}")
            for dim, size in zip(shape, array.shape):
                if isinstance(dim, str):  # a symbolic dimension: >= 1, the same in every input
                    what = "batch" if dim == BATCH else f"dimension {dim!r}"
                    if size < 1 or sizes.setdefault(dim, size) != size:
                        raise ArtifactInputError(f"input {name!r} has {what} {size}; every input needs the same "
                                                 f"{what} >= 1")
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise ArtifactInputError(f"input {name!r} holds NaN or infinite values")
            if np.issubdtype(dtype, np.unsignedinteger) and np.any(array < 0):
                raise ArtifactInputError(f"input {name!r} must be >= 0 ({spec['dtype']})")
            out[name] = array.astype(dtype)
        for constraint in self.meta.get("constraints", []):  # e.g. "p <= 32", as the export states it
            dim, op, bound = re.fullmatch(r"\s*(\w+)\s*(<=|>=)\s*(\d+)\s*", constraint).groups()
            size = sizes.get(dim)
            if size is not None and not (size <= int(bound) if op == "<=" else size >= int(bound)):
                raise ArtifactInputError(f"dimension {dim!r} is {size}; the model takes {dim} {op} {bound}")
        return out

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        """Runs the exported program on this machine's default platform: {output: numpy}."""
        arrays = self.check_inputs(inputs)
        outputs = self.exported.call(self.params, arrays)
        return {k: np.asarray(v) for k, v in outputs.items()}


def shape_text(shape: list) -> str:
    """['b', 28, 28, 1] -> '(b, 28, 28, 1)'."""
    return "(" + ", ".join(str(d) for d in shape) + ")"
