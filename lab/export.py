"""Export a trained run as a deployable artifact: `jax.export` StableHLO + parameters + a sidecar.

    python -m lab.export --workdir=DIR [--step=N] --out=PATH [--spec=MODULE:FUNCTION] [--quantize=int8]
                         [--max_prompt_tokens=P] [--max_new_tokens=N]

reads the run's config and checkpoint (the latest, or step N), builds its serving function (an
`lab.task.ExportSpec`) and writes PATH/ as `lab.artifact` describes: the program lowered for CPU
and CUDA with a symbolic batch dimension, the parameters as its first argument (an array file, no
pickle; not constants folded into the program), and `model.json` with the input spec,
preprocessing, label names or tokenizer, the source run, step and config, the jax version and the
export serialization version, and the checksums of the program, the parameters and its own other
entries (a server refuses an edited sidecar). jax reads an export only within its compatibility
window; the checkpoint stays the source of truth, and re-exporting is this one command.

A text generator's limits are set here: `--max_prompt_tokens` and `--max_new_tokens` (their sum
must fit the model's positions, its block size; by default half of them each, or all the rest
of the one given) are recorded in model.json as 'limits', and a server refuses a request beyond
them. Its prompt length is padded to a few bucket sizes (model.json's 'buckets': powers of two
from 16 up to the longest prompt, and the longest itself), the true length passed as one more
program input, so a server compiles each bucket once at start-up and never on a request.

Where the serving function comes from: `DIR/run.json` names a function `MODULE:FUNCTION` taking the
run's config and returning its `ExportSpec` (every experiment's CLI writes it at the end of a run;
`--spec` names another). A run of your own model exports from Python with the spec its task gives:
`export_run(workdir, out, spec=task.export_spec())` (`ClassificationTask` has one for any model).
lab itself imports no experiment: the run record says what to import.

`--quantize=int8` stores every large weight as int8 with per-channel scales
(`lab.compress.quantize`) and lowers the program with the dequantization inside: the same
artifact format, about 4x fewer parameter bytes, served like any other.

Bad input (no run there, no checkpoint, a run that names no export, an unwritable --out, an --out
that exists and is not an earlier lab export, or an --out inside or around the run) ends with one
`error:` line and exit status 1 (2 for bad flags), before any work.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import shutil
import tempfile
from typing import Any

import flax
import jax
import numpy as np
from jax import export as jax_export

from lab import artifact, checkpoint, configs
from lab.provenance import RUN_RECORD, read_run_config, read_run_record
from lab.compress.quantize import dequantize, quantize as quantize_params
from lab.errors import ConfigValueError, LabError, exit_with_error
from lab.task import ExportSpec

PLATFORMS = ("cpu", "cuda")
def load_spec_builder(name: str):
    """The function `MODULE:FUNCTION` names (config -> ExportSpec).

    Raises:
      ConfigValueError: not of that form, no such module or function.
    """
    module_name, _, function = name.partition(":")
    if not module_name or not function:
        raise ConfigValueError(f"--spec={name!r}: write it MODULE:FUNCTION (e.g. experiments.mlp_classifier.__main__:export_spec)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigValueError(f"export spec {name!r}: no module {e.name!r} (run from the folder that has it, "
                               f"or install it)") from e
    builder = getattr(module, function, None)
    if not callable(builder):
        raise ConfigValueError(f"export spec {name!r}: {module_name} has no function {function!r}")
    return builder


def generation_limits(max_len: int, max_prompt_tokens: int | None = None,
                      max_new_tokens: int | None = None) -> tuple[int, int]:
    """(max prompt tokens, max new tokens) of a generator with `max_len` positions: each given
    one, or by default half the positions each (or all the rest of the one given).

    Raises:
      ConfigValueError: a limit < 1, or a sum over max_len (no sliding window in an export).
    """
    given = [f"--{name}={value}" for name, value in (("max_prompt_tokens", max_prompt_tokens),
                                                     ("max_new_tokens", max_new_tokens)) if value is not None]
    if max_prompt_tokens is None and max_new_tokens is None:
        max_new_tokens = max_len // 2
    if max_prompt_tokens is None:
        max_prompt_tokens = max_len - max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max_len - max_prompt_tokens
    if max_prompt_tokens < 1 or max_new_tokens < 1 or max_prompt_tokens + max_new_tokens > max_len:
        raise ConfigValueError(f"{' and '.join(given)}: a prompt and its new tokens must each be >= 1 and "
                               f"together at most the model's {max_len} positions (its block size)")
    return max_prompt_tokens, max_new_tokens


def length_buckets(longest: int) -> list[int]:
    """The padded sizes of a length of 1..`longest`: powers of two from 16 below `longest`, and
    `longest` (a short prompt costs a little padded prefill; each size is one compile at start-up)."""
    return sorted({1 << k for k in range(4, longest.bit_length()) if 1 << k < longest} | {longest})


def _specs(inputs: dict[str, dict], scope) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract inputs: named dimensions ('b', 'p') symbolic in one scope, numbers fixed."""
    def dims(shape):
        return jax_export.symbolic_shape(", ".join(str(d) for d in shape), scope=scope) if shape else ()
    return {name: jax.ShapeDtypeStruct(dims(spec["shape"]), np.dtype(spec["dtype"])) for name, spec in inputs.items()}


def _flat_params(params) -> dict[str, np.ndarray]:
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if any(not isinstance(k, str) or "/" in k for k in keys):
            raise ValueError(f"parameter path {jax.tree_util.keystr(path)} is not a path of string names")
        flat["/".join(keys)] = np.asarray(value)
    return flat


def check_out(out: str, workdir: str | None = None) -> None:
    """Refuses an `out` that exporting could damage; call it before any work.

    `out` may be missing (it is created) or an earlier lab export (it is replaced). Anything else
    that exists there (a file, a folder of notes, a run, a folder of runs) is left alone and refused,
    and so is any `out` that is the run's workdir, lies inside it or holds it.

    Raises:
      ConfigValueError: with one line naming `out` and what to do.
    """
    out = os.path.realpath(out)
    if workdir is not None:
        run = os.path.realpath(workdir)
        if out == run or out.startswith(run + os.sep) or run.startswith(out + os.sep):
            raise ConfigValueError(f"--out={out} is or overlaps the run's workdir {run}: "
                                   f"give --out a folder outside the run (e.g. {run}_export)")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise ConfigValueError(f"--out={out} exists and is not a folder: give a new path for the export")
    if os.listdir(out) and not artifact.is_export(out):
        extra = sorted(set(os.listdir(out)) - {artifact.SIDECAR, artifact.PROGRAM, artifact.PARAMS})
        what = (f"holds files a lab export does not ({', '.join(extra[:3])})" if os.path.isfile(
            os.path.join(out, artifact.SIDECAR)) and extra else
                f"is not a lab export (no {artifact.SIDECAR} of format {artifact.FORMAT!r})")
        raise ConfigValueError(f"--out={out} exists and {what}; lab replaces only an earlier export: give a new path")


def export(spec: ExportSpec, params, out: str, source: dict) -> dict:
    """Writes the artifact directory `out` (replacing an older export there); returns its sidecar.

    `out` must pass `check_out` (checked again here): nothing but an earlier export is ever removed.

    Args:
      spec: the serving function and its input spec.
      params: the parameters (nested dicts of arrays), passed to the program as its first argument.
      out: the artifact directory.
      source: {'workdir', 'step', 'experiment', 'config'} of the run.
    """
    scope = jax_export.SymbolicScope(list(spec.meta.get("constraints", ())))
    specs = _specs(spec.inputs, scope)
    for bucket in spec.meta.get("buckets", {}).values():  # a padded dimension's true length
        specs[bucket["length_input"]] = jax.ShapeDtypeStruct((), np.int32)
    param_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), params)
    exported = jax_export.export(jax.jit(spec.fn), platforms=PLATFORMS)(param_specs, specs)
    out_avals = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    outputs = {name: {"shape": [d if isinstance(d, int) else str(d) for d in aval.shape], "dtype": str(aval.dtype)}
               for name, aval in out_avals.items()}
    flat = _flat_params(params)
    check_out(out, source.get("workdir"))

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".export-")  # a half-written export is never at `out`
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        with open(os.path.join(staging, artifact.PROGRAM), "wb") as f:
            f.write(exported.serialize())
        with open(os.path.join(staging, artifact.PARAMS), "wb") as f:
            np.savez(f, **flat)
        meta = {
            "format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION,
            "jax_version": jax.__version__, "serialization_version": exported.calling_convention_version,
            "platforms": list(exported.platforms),
            "inputs": spec.inputs, "outputs": outputs,
            "params": {"count": int(sum(v.size for v in flat.values())),
                       "bytes": int(sum(v.nbytes for v in flat.values()))},
            **spec.meta,
            "source": source,
            "sha256": {name: artifact.sha256(os.path.join(staging, name))
                       for name in (artifact.PROGRAM, artifact.PARAMS)},
        }
        meta = json.loads(json.dumps(meta))  # as a reader loads it (tuples as lists), then checksummed
        meta["sha256"][artifact.SIDECAR] = artifact.sidecar_checksum(meta)
        with open(os.path.join(staging, artifact.SIDECAR), "w") as f:
            json.dump(meta, f, indent=2)
        old = None
        if os.path.isdir(out):  # an earlier export (check_out): moved aside, removed once the new one is in
            old = tempfile.mkdtemp(dir=parent, prefix=".export-old-")
            os.replace(out, os.path.join(old, "export"))
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return meta


QUANTIZATIONS = ("none", "int8")


def quantized(spec: ExportSpec, params) -> tuple[ExportSpec, Any]:
    """(a spec taking int8 weights and dequantizing them inside, the int8 parameters)."""
    qparams = quantize_params(params)
    fn = spec.fn
    return dataclasses.replace(spec, fn=lambda q, inputs: fn(dequantize(q), inputs),
                               meta={**spec.meta, "compression": "int8 weights, per-channel scales"}), qparams


def export_run(workdir: str, out: str, step: int | None = None, spec: ExportSpec | str | None = None,
               quantize: str = "none", limits: dict[str, int | None] | None = None) -> dict:
    """Exports the run in `workdir` (checkpoint `step`, default the latest) to `out`; the sidecar.

    Args:
      spec: the serving function: an `ExportSpec` (e.g. `task.export_spec()`), a `MODULE:FUNCTION`
        building one from the run's config, or None for the one `run.json` names.
      quantize: 'int8' stores large weights as int8 (see `quantized`).
      limits: a generator's {'max_prompt_tokens', 'max_new_tokens'} (None: its defaults), passed
        to the `MODULE:FUNCTION` as keyword arguments.
    Raises:
      LabError subclasses with one line: no run, no checkpoint, a run that names no export, limits
      for an export that takes none or limits it cannot fit.
    """
    workdir = os.path.abspath(workdir)
    raw = read_run_config(workdir)  # one line for no run or a damaged config, before anything is written
    check_out(out, workdir)
    if quantize not in QUANTIZATIONS:
        raise ConfigValueError(f"--quantize={quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    record = read_run_record(workdir)
    if spec is None:
        spec = record.get("export_spec")
        if not spec:
            trained_by = f" (trained by {record['experiment']}, which has no export)" if record.get("experiment") else ""
            raise ConfigValueError(f"{workdir}/{RUN_RECORD} names no export{trained_by}: pass --spec=MODULE:FUNCTION, "
                                   f"a function from the run's config to its lab.task.ExportSpec")
    name = spec if isinstance(spec, str) else None
    limits = {key: value for key, value in (limits or {}).items() if value is not None}
    if name is None and limits:
        raise ConfigValueError(f"--{next(iter(limits))}: limits apply to an export named MODULE:FUNCTION "
                               f"(a text generator's), not to a given ExportSpec")
    module = (name or "").partition(":")[0].split(".")
    trained_by = record.get("experiment")
    if trained_by and len(module) > 1 and module[0] == "experiments" and module[1] != trained_by:
        raise ConfigValueError(f"--spec={name} exports {module[1]} runs; {workdir} is a run of {trained_by}"
                               + (f" (its export: {record['export_spec']}, the default)" if record.get("export_spec") else ""))
    if name is not None:
        builder = load_spec_builder(name)
        takes = inspect.signature(builder).parameters
        for key in limits:
            if key not in takes:
                known = [f"--{k}" for k in ("max_prompt_tokens", "max_new_tokens") if k in takes]
                raise ConfigValueError(f"--{key}: the export {name} takes no such limit ("
                                       + (f"it takes {', '.join(known)})" if known else "it is not a text generator's)"))
        spec = builder(configs.from_dict(raw), **limits)
    params, where = checkpoint.load_params(workdir, step)
    saved_step = int(os.path.basename(where))
    if quantize == "int8":
        spec, params = quantized(spec, params)
    source = {"workdir": workdir, "step": saved_step, "experiment": record.get("experiment"), "config": raw}
    if name is not None:
        source["export_spec"] = name
    try:
        return export(spec, params, out, source)
    except (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError) as e:
        # The checkpoint's parameters are not the model's that config.json describes (an edited
        # config, or a spec for another model): flax names the first parameter that differs.
        raise ConfigValueError(f"the checkpoint {where} does not fit the model its config describes "
                               f"({str(e).splitlines()[0]}): export with the config the run was trained with") from None


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.export", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the trained run")
    parser.add_argument("--out", required=True, help="the artifact directory to write")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--spec", default=None,
                        help="MODULE:FUNCTION building the run's ExportSpec from its config (default: run.json's)")
    parser.add_argument("--quantize", default="none", help="int8: large weights as int8 with per-channel scales")
    parser.add_argument("--max_prompt_tokens", type=int, default=None,
                        help="a text generator's longest prompt (default: half its block size, or what "
                             "--max_new_tokens leaves)")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="the most tokens a text generator writes per request (default: the rest of its block size)")
    parser.error = lambda message: exit_with_error(f"{message} (see python -m lab.export --help)", 2)  # one line
    args = parser.parse_args(argv)
    try:
        meta = export_run(args.workdir, args.out, args.step, args.spec, args.quantize,
                          {"max_prompt_tokens": args.max_prompt_tokens, "max_new_tokens": args.max_new_tokens})
    except (LabError, OSError) as e:
        if os.environ.get("LAB_DEBUG"):
            raise
        exit_with_error(" ".join(str(e).split()), 1)
    print(f"exported {meta['source']['experiment'] or 'the run'} step {meta['source']['step']} to {os.path.abspath(args.out)} "
          f"({meta['params']['count']:,} parameters, {', '.join(meta['platforms'])}; inputs "
          + ", ".join(f"{k} {artifact.shape_text(v['shape'])} {v['dtype']}" for k, v in meta["inputs"].items())
          + ")" + "".join(f"; {k} {v}" for k, v in meta.get("limits", {}).items()), flush=True)


if __name__ == "__main__":
    main()
