"""Load and call an exported lab model: jax and numpy only, never lab's model code, never pickle.

An artifact is a directory written by `python -m lab.export`:

    model.json    the sidecar: format version, jax version and export serialization version, the
                  input and output specs, shape buckets, generation limits, preprocessing, label
                  names or tokenizer, the source run (workdir, step, experiment, config), and
                  SHA-256 of the two files below and of its own other entries
    model.jax     `jax.export.Exported.serialize()`: StableHLO for each platform (cpu, cuda),
                  parameters as the function's first argument (not constants), batch symbolic
    params.npz    the parameters, one array per key path ("hidden_0/kernel"), no pickle

    >>> model = Artifact("exports/mlp_digits")
    >>> model.inputs                         # {'inputs': {'shape': ['b', 8, 8, 1], 'dtype': 'float32'}}
    >>> model(inputs=x_Bx8x8x1)["label"]     # logits (B, 10) as numpy

Shapes are bucketed, so a server that has called `warm_up` never compiles on a request: the batch
is padded up to a power of two (at most `max_batch`; a larger call runs in pieces of `max_batch`
rows), a dimension the sidecar lists under "buckets" (a GPT's prompt length 'p') is padded up to
the next of its sizes with its true length passed as the program's extra input, and the outputs
are cut back to the true sizes. Padding the batch relies on each row's outputs depending on that
row alone, as in every lab export (a decode loop draws its random numbers per row). Each bucket is
compiled once and kept; `compiles` counts them.

Every problem with the files (missing, corrupt, from an incompatible jax, a sidecar that is not an
object, lacks its specs, was edited after export or disagrees with the program, parameters that do
not match the program) raises `ArtifactError` with one line that says what to do: the checkpoint
is the source of truth, so the fix is usually to export again. A call with inputs that do not
match the spec raises `ArtifactInputError` (a server answers it with a 4xx).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import operator
import os
import re
import threading
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

FORMAT = "lab-export"
FORMAT_VERSION = 2  # 2: buckets, limits and the sidecar's own checksum
SIDECAR, PROGRAM, PARAMS = "model.json", "model.jax", "params.npz"
BATCH = "b"  # the symbolic batch dimension's name in the specs
_CONSTRAINT = re.compile(r"\s*(\w+)\s*(<=|>=)\s*(\d+)\s*")  # "p <= 32", as an export states a bound


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
    """The SHA-256 of the file at `path`, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_checksum(meta: dict) -> str:
    """SHA-256 of the sidecar's entries other than 'sha256', as canonical JSON: the sidecar's own
    checksum (stored as sha256['model.json']), so a sidecar edited after export is refused."""
    body = {key: value for key, value in meta.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def batch_buckets(max_batch: int) -> list[int]:
    """The padded batch sizes for calls of up to `max_batch` rows: powers of two, then max_batch."""
    return sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch} | {max_batch})


class Artifact:
    """An exported model, ready to call: `artifact(**inputs) -> {output name: numpy array}`.

    Args:
      path: the artifact directory.
      max_batch: the largest padded batch; a call with more rows runs in pieces of this many
        (None: any power of two).
    Attributes:
      meta: the whole sidecar (dict).
      inputs, outputs: name -> {'shape': [...], 'dtype': str}; 'b' marks the batch dimension.
      buckets: padded dimension -> {'sizes': [...], 'length_input': the program's input taking the
        true length}; the batch's sizes are `batch_buckets(max_batch)`.
      limits: the generation limits set at export ({'max_prompt_tokens', 'max_new_tokens'}), or {}.
      name, step: the source run's experiment and checkpoint step.
      compiles: how many buckets this object has compiled.
    Raises:
      ArtifactError: on load, for any unusable file.
    """

    def __init__(self, path: str, max_batch: int | None = None):
        self.path = os.path.abspath(path)
        self.meta = self._read_sidecar(path)
        self.inputs: dict[str, dict] = self.meta["inputs"]
        self.outputs: dict[str, dict] = self.meta["outputs"]
        self.buckets: dict[str, dict] = self.meta.get("buckets", {})
        self.limits: dict[str, int] = self.meta.get("limits", {})
        try:
            with open(os.path.join(self.path, PROGRAM), "rb") as f:
                self.exported = jax_export.deserialize(bytearray(f.read()))
            with np.load(os.path.join(self.path, PARAMS), allow_pickle=False) as z:
                self.params = unflatten_params({k: z[k] for k in z.files})
        except Exception as e:  # jax and numpy raise many types for a damaged file
            raise ArtifactError(f"{self.path} is unreadable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}): export the run again") from e
        self._check_spec()
        self._check_params()
        source = self.meta.get("source", {})  # a run of your own model has no experiment: its folder names it
        self.name = source.get("experiment") or os.path.basename(str(source.get("workdir", ""))) or None
        self.step = source.get("step")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.compiles = 0
        self._programs: dict[tuple, Any] = {}  # bucket -> compiled program
        self._compile_lock = threading.Lock()
        self._jitted = jax.jit(self.exported.call)
        self._device_params = jax.device_put(self.params)  # copied to the device once, not per call
        self._output_dims = {name: [ast.parse(d, mode="eval") if isinstance(d, str) else None for d in spec["shape"]]
                             for name, spec in self.outputs.items()}

    def _read_sidecar(self, path: str) -> dict:
        """model.json, checked: an object of this format with input and output specs, its files and
        its own entries matching their checksums. Raises ArtifactError."""
        sidecar = os.path.join(self.path, SIDECAR)
        if not os.path.isfile(sidecar):
            raise ArtifactError(f"{self.path} is not a lab export (no {SIDECAR}): "
                                f"write one with python -m lab.export --workdir=RUN --out={path}")
        try:
            with open(sidecar) as f:
                meta = json.load(f)
        except (OSError, ValueError, RecursionError) as e:
            raise ArtifactError(f"{sidecar} is unreadable ({type(e).__name__}): export the run again") from e
        if not isinstance(meta, dict):
            raise ArtifactError(f"{sidecar} is a JSON {type(meta).__name__}, not the object lab.export writes: "
                                f"export the run again")
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{sidecar} is not a lab export of format {FORMAT} v{FORMAT_VERSION} "
                                f"(found {meta.get('format')} v{meta.get('format_version')}): export the run again")
        version = meta.get("serialization_version")
        low, high = (jax_export.minimum_supported_calling_convention_version,
                     jax_export.maximum_supported_calling_convention_version)
        if not isinstance(version, int) or not low <= version <= high:
            raise ArtifactError(f"{self.path} was exported with serialization version {version} (jax "
                                f"{meta.get('jax_version')}); this jax {jax.__version__} reads {low}-{high}: "
                                f"export the run again from its checkpoint with this jax")
        for key in ("inputs", "outputs", "sha256"):
            if not isinstance(meta.get(key), dict) or not meta[key]:
                raise ArtifactError(f"{sidecar} has no {key!r} object: export the run again")
        for key, kind in (("buckets", dict), ("limits", dict), ("constraints", list), ("source", dict)):
            if not isinstance(meta.get(key, kind()), kind):
                raise ArtifactError(f"{sidecar}: {key!r} is not a JSON {'object' if kind is dict else 'list'}: "
                                    f"export the run again")
        for name in (PROGRAM, PARAMS):
            file = os.path.join(self.path, name)
            if not os.path.isfile(file):
                raise ArtifactError(f"{file} is missing: export the run again")
            if sha256(file) != meta["sha256"].get(name):
                raise ArtifactError(f"{file} does not match its checksum in {SIDECAR} (corrupt or "
                                    f"replaced): export the run again")
        if sidecar_checksum(meta) != meta["sha256"].get(SIDECAR):
            raise ArtifactError(f"{sidecar} was changed after export (its entries do not match their checksum "
                                f"sha256[{SIDECAR!r}]): export the run again")
        return meta

    def _check_spec(self) -> None:
        """The sidecar's input and output specs, buckets and constraints are the program's."""
        def described(aval) -> dict:
            return {"shape": [d if isinstance(d, int) else str(d) for d in aval.shape], "dtype": str(aval.dtype)}

        def disagree(what: str) -> ArtifactError:
            return ArtifactError(f"{SIDECAR} in {self.path} disagrees with {PROGRAM}: {what}: export the run again")

        (_, program_inputs), _ = jax.tree.unflatten(self.exported.in_tree, self.exported.in_avals)
        program_outputs = jax.tree.unflatten(self.exported.out_tree, self.exported.out_avals)
        if not isinstance(program_inputs, dict) or not isinstance(program_outputs, dict):
            raise disagree("the program does not take and return dicts of named arrays")
        lengths = {}
        for dim, bucket in self.buckets.items():
            sizes = bucket.get("sizes") if isinstance(bucket, dict) else None
            if not (isinstance(sizes, list) and sizes and all(isinstance(s, int) and s >= 1 for s in sizes)
                    and sizes == sorted(set(sizes)) and isinstance(bucket.get("length_input"), str)):
                raise disagree(f"buckets[{dim!r}] is not {{'sizes': [increasing sizes], 'length_input': NAME}}")
            lengths[bucket["length_input"]] = {"shape": [], "dtype": "int32"}
        expected = {**{name: spec for name, spec in self.inputs.items()}, **lengths}
        if set(program_inputs) != set(expected):
            raise disagree(f"the program takes inputs {sorted(program_inputs)}, the sidecar names {sorted(expected)}")
        if set(program_outputs) != set(self.outputs):
            raise disagree(f"the program returns {sorted(program_outputs)}, the sidecar names {sorted(self.outputs)}")
        for kind, specs, avals in (("input", expected, program_inputs), ("output", self.outputs, program_outputs)):
            for name, spec in specs.items():
                want = described(avals[name])
                if not isinstance(spec, dict) or {"shape": spec.get("shape"), "dtype": spec.get("dtype")} != want:
                    got = f"{shape_text(spec['shape'])} {spec['dtype']}" if isinstance(spec, dict) and "shape" in spec \
                        and isinstance(spec["shape"], list) else repr(spec)[:80]
                    raise disagree(f"{kind} {name!r} is {got} in the sidecar, {shape_text(want['shape'])} "
                                   f"{want['dtype']} in the program")
        symbols = {d for spec in self.inputs.values() for d in spec["shape"] if isinstance(d, str)}
        for name, spec in self.outputs.items():
            for d in spec["shape"]:
                try:
                    _dim_value(ast.parse(d, mode="eval"), dict.fromkeys(symbols, 1)) if isinstance(d, str) else None
                except (SyntaxError, ValueError, KeyError) as e:
                    raise disagree(f"output {name!r} has a dimension {d!r} lab cannot evaluate ({e})") from None
        self._bounds = {}
        for constraint in self.meta.get("constraints", []):
            match = _CONSTRAINT.fullmatch(constraint) if isinstance(constraint, str) else None
            if not match or match.group(1) not in symbols:
                raise disagree(f"constraint {constraint!r} is not 'DIM <= N' or 'DIM >= N' over an input dimension")
            self._bounds.setdefault(match.group(1), []).append((match.group(2), int(match.group(3))))
        for dim, bucket in self.buckets.items():
            if dim not in symbols or dim == BATCH:
                raise disagree(f"buckets names {dim!r}, not a symbolic input dimension other than the batch")
            if any(not _within(size, self._bounds.get(dim, ())) for size in bucket["sizes"]):
                raise disagree(f"buckets[{dim!r}] sizes {bucket['sizes']} break the constraints "
                               f"{self.meta.get('constraints')}")

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
        return self._checked(inputs)[0]

    def _checked(self, inputs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(`check_inputs`, the size of each symbolic dimension)."""
        missing, extra = sorted(set(self.inputs) - set(inputs)), sorted(set(inputs) - set(self.inputs))
        if missing or extra:
            raise ArtifactInputError(f"inputs must be {sorted(self.inputs)}" + (f"; missing {missing}" if missing else "")
                                     + (f"; unknown {extra}" if extra else ""))
        out, sizes = {}, {}
        for name, spec in self.inputs.items():
            try:
                array = np.asarray(inputs[name])
            except (ValueError, TypeError, RecursionError) as e:
                raise ArtifactInputError(f"input {name!r} is not an array of numbers ({type(e).__name__})") from e
            dtype = np.dtype(spec["dtype"])
            if array.dtype == object or not np.issubdtype(array.dtype, np.number) and array.dtype != bool \
                    or array.dtype == bool and dtype != bool:
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
        for dim, size in sizes.items():
            for op, bound in self._bounds.get(dim, ()):
                if not _within(size, [(op, bound)]):
                    raise ArtifactInputError(f"dimension {dim!r} is {size}; the model takes {dim} {op} {bound}")
        return out, sizes

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        """Runs the exported program on this machine's default platform: {output: numpy}."""
        arrays, sizes = self._checked(inputs)
        batch = sizes.get(BATCH, 0)
        if self.max_batch is None or batch <= self.max_batch:
            return self._run(arrays, sizes)
        pieces = [self._run(self._rows(arrays, start, start + self.max_batch),
                            {**sizes, BATCH: min(self.max_batch, batch - start)})
                  for start in range(0, batch, self.max_batch)]
        return {name: np.concatenate([piece[name] for piece in pieces], axis=spec["shape"].index(BATCH))
                if BATCH in spec["shape"] else pieces[0][name] for name, spec in self.outputs.items()}

    def bucket_size(self, dim: str, size: int) -> int:
        """The padded size a call with `size` along symbolic dimension `dim` runs at."""
        if dim == BATCH:
            if self.max_batch is None:
                return 1 << (size - 1).bit_length()
            return next(b for b in batch_buckets(self.max_batch) if b >= size)
        if dim in self.buckets:  # past the largest size (no constraint bounds it): the true size
            return next((s for s in self.buckets[dim]["sizes"] if s >= size), size)
        return size

    def bucket_shapes(self, batch_sizes: list[int] | None = None) -> list[dict[str, int]]:
        """Every bucket a call can run at: the batch sizes (default `batch_buckets(max_batch)`, or
        [1] without max_batch) times each padded dimension's sizes. [] when an input has a
        symbolic dimension without buckets: its sizes are known only once calls arrive."""
        symbols = sorted({d for spec in self.inputs.values() for d in spec["shape"] if isinstance(d, str)})
        if any(d != BATCH and d not in self.buckets for d in symbols):
            return []
        if batch_sizes is None:
            batch_sizes = batch_buckets(self.max_batch) if self.max_batch else [1]
        choices = [batch_sizes if d == BATCH else self.buckets[d]["sizes"] for d in symbols]
        return [dict(zip(symbols, sizes)) for sizes in itertools.product(*choices)]

    def warm_up(self, batch_sizes: list[int] | None = None, on_bucket=None) -> None:
        """Compiles and runs each of `bucket_shapes(batch_sizes)` once, so that calls within them
        never compile; `on_bucket(bucket)` after each."""
        for bucket in self.bucket_shapes(batch_sizes):
            zeros = {name: np.zeros([bucket[d] if isinstance(d, str) else d for d in spec["shape"]], spec["dtype"])
                     for name, spec in self.inputs.items()}
            self._run(zeros, bucket)
            if on_bucket:
                on_bucket(bucket)

    def _run(self, arrays: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
        """Pads `arrays` (true `sizes`) to their bucket, runs its program, cuts the outputs back."""
        bucket = {dim: self.bucket_size(dim, size) for dim, size in sizes.items()}
        padded = {}
        for name, array in arrays.items():
            widths = [(0, bucket[d] - n) if isinstance(d, str) else (0, 0)
                      for d, n in zip(self.inputs[name]["shape"], array.shape)]
            padded[name] = np.pad(array, widths) if any(w for _, w in widths) else array
        for dim, info in self.buckets.items():
            padded[info["length_input"]] = np.int32(sizes[dim])
        outputs = self._program(bucket)(self._device_params, padded)
        result = {}
        for name, value in outputs.items():
            value = np.asarray(value)
            cut = tuple(slice(None) if dim is None else slice(0, _dim_value(dim, sizes))
                        for dim in self._output_dims[name])
            result[name] = value[cut]
        return result

    def _program(self, bucket: dict[str, int]):
        """The compiled program for `bucket`, compiled on first use (counted in `compiles`)."""
        key = tuple(sorted(bucket.items()))
        program = self._programs.get(key)
        if program is None:
            with self._compile_lock:
                program = self._programs.get(key)
                if program is None:
                    specs = {name: jax.ShapeDtypeStruct(tuple(bucket[d] if isinstance(d, str) else d
                                                              for d in spec["shape"]), np.dtype(spec["dtype"]))
                             for name, spec in self.inputs.items()}
                    for info in self.buckets.values():
                        specs[info["length_input"]] = jax.ShapeDtypeStruct((), np.int32)
                    program = self._jitted.lower(self._device_params, specs).compile()
                    self._programs[key] = program
                    self.compiles += 1
        return program

    def _rows(self, arrays: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) of every input with a batch dimension; the others whole."""
        out = {}
        for name, array in arrays.items():
            shape = self.inputs[name]["shape"]
            if BATCH in shape:
                index = [slice(None)] * array.ndim
                index[shape.index(BATCH)] = slice(start, stop)
                array = array[tuple(index)]
            out[name] = array
        return out


def _within(size: int, bounds) -> bool:
    return all(size <= bound if op == "<=" else size >= bound for op, bound in bounds)


_DIM_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                  ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_DIM_FUNCTIONS = {"max": max, "min": min, "floordiv": operator.floordiv, "mod": operator.mod,
                  "non_negative": lambda x: max(x, 0)}


def _dim_value(node: ast.AST, sizes: dict[str, int]) -> int:
    """A dimension expression as jax prints it ('p + 32', '2*p', 'floordiv(p, 2)'), parsed, at `sizes`."""
    if isinstance(node, ast.Expression):
        return _dim_value(node.body, sizes)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return sizes[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _DIM_OPERATORS:
        return _DIM_OPERATORS[type(node.op)](_dim_value(node.left, sizes), _dim_value(node.right, sizes))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_dim_value(node.operand, sizes)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DIM_FUNCTIONS:
        return _DIM_FUNCTIONS[node.func.id](*(_dim_value(arg, sizes) for arg in node.args))
    raise ValueError(f"not a dimension expression: {ast.dump(node)[:80]}")


def shape_text(shape: list) -> str:
    """['b', 28, 28, 1] -> '(b, 28, 28, 1)'."""
    return "(" + ", ".join(str(d) for d in shape) + ")"
