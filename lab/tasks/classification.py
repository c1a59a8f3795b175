"""Classification: a model mapping `batch['inputs']` to logits, trained with cross-entropy.

One head (`logits_BxC`, label key `label`) or several (`{name: logits_BxC}`, each trained on
`batch[name]` and summed into one loss), so a classifier predicting a play and its genre is the
same family as the MLP digit classifier. The model is any flax.linen module or a `flax.nnx.Module`
(your own model on lab's loop). `image_classifier` builds the MLP or CNN that a config's `model`
block names.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lab.tasks import metrics
from lab.models.cnn import CNN
from lab.models.mlp import MLP
from lab.task import ExportSpec, StepTools, Task, TrainState

# The `TrainState.extra` collection of an NNX model's non-parameter state (BatchNorm statistics,
# any other nnx.Variable that is neither an nnx.Param nor RNG state), as nested dicts of arrays.
NNX_STATE = "nnx_state"
# Linen collections a train step never carries (`Module.sow` output: grows per call).
_NOT_CARRIED = frozenset({"params", "intermediates"})


def _takes_train(fn) -> bool:
    """Whether `fn` (a module's `__call__`) has a parameter named `train`."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = parameters.get("train")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


class _Linen:
    """A flax.linen module as the task calls it; `train=` only where its `__call__` takes it."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.train_kwarg = _takes_train(module.__call__)

    def init(self, rng: jax.Array, args: tuple) -> dict:
        params_rng, dropout_rng = jax.random.split(rng)
        kw = {"train": False} if self.train_kwarg else {}
        return dict(self.module.init({"params": params_rng, "dropout": dropout_rng}, *args, **kw))

    def collections(self, args: tuple) -> tuple[str, ...]:
        """The module's variable collections a train step carries (e.g. 'batch_stats')."""
        shapes = jax.eval_shape(self.init, jax.random.key(0), args)
        return tuple(sorted(set(shapes) - _NOT_CARRIED))

    def apply(self, variables: dict, args: tuple, *, train: bool, rng, carried: tuple[str, ...]):
        """(output, the new values of the `carried` collections ({} when none))."""
        kw = {"train": train} if self.train_kwarg else {}
        rngs = {"dropout": rng} if train else None
        if not carried:
            return self.module.apply(variables, *args, rngs=rngs, **kw), {}
        out, mutated = self.module.apply(variables, *args, rngs=rngs, mutable=list(carried), **kw)
        return out, dict(mutated)


def _nnx_tree(state) -> dict:
    """An nnx.State as nested dicts of arrays with string keys (list indices too): a plain
    pytree for Orbax, `lab.export` and `TrainState`."""
    tree: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = var.get_value()
    return tree


def _nnx_state(template, tree: Mapping):
    """`template` (an nnx.State) with the values of `tree` (as `_nnx_tree` writes it). The
    Variables are made where this runs (inside the traced step, as NNX requires to mutate them)."""
    flat = []
    for path, var in nnx.to_flat_state(template):
        value = tree
        for key in path:
            value = value[str(key)]
        flat.append((path, var.replace(value)))
    return nnx.from_flat_state(flat)


class _NNX:
    """A `flax.nnx.Module` as the task calls it: `nnx.split` into (graphdef, params, RNG state,
    other state) once; each call `nnx.merge`s a module from the given variables, sets its mode
    (`train()`/`eval()`, and `train=` where its `__call__` takes it), calls it, and returns the
    new other state. Its RNG streams are reseeded from the key lab passes on every call, so no
    random number comes from state hidden in the module."""

    def __init__(self, module: nnx.Module):
        self.graphdef, self.params, self.rngs, self.other = nnx.split(module, nnx.Param, nnx.RngState, ...)
        self.train_kwarg = _takes_train(module.__call__)

    def init(self, rng: jax.Array, args: tuple) -> dict:
        """The module's own weights (made by its nnx.Rngs when it was built; `rng` is not used)."""
        variables = {"params": _nnx_tree(self.params)}
        if self.collections(args):
            variables[NNX_STATE] = _nnx_tree(self.other)
        return variables

    def collections(self, args: tuple = ()) -> tuple[str, ...]:
        """(NNX_STATE,) if the module has variables besides its params and RNG state, else ()."""
        return (NNX_STATE,) if len(nnx.to_flat_state(self.other)) else ()

    def _rng_state(self, rng):
        """The module's RNG state with every stream's key drawn from `rng` (one fold per stream)."""
        flat = []
        for i, (path, var) in enumerate(nnx.to_flat_state(self.rngs)):
            value = var.get_value()
            if isinstance(var, nnx.RngKey):
                typed = jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
                base = rng if rng is not None else jax.random.key(0)  # eval / export: nothing is drawn
                key = jax.random.fold_in(base, i)
                if np.shape(value):
                    key = jax.random.split(key, np.shape(value))
                value = key if typed else jax.random.key_data(key)
            else:  # RngCount
                value = jnp.zeros(np.shape(value), value.dtype)
            flat.append((path, var.replace(value)))
        return nnx.from_flat_state(flat)

    def module(self, variables: Mapping, rng=None) -> nnx.Module:
        """The module with `variables`' params and other state (its initial one where absent)."""
        other = variables.get(NNX_STATE)
        other = _nnx_tree(self.other) if other is None else other
        return nnx.merge(self.graphdef, _nnx_state(self.params, variables["params"]), self._rng_state(rng),
                         _nnx_state(self.other, other))

    def apply(self, variables: dict, args: tuple, *, train: bool, rng, carried: tuple[str, ...]):
        model = self.module(variables, rng)
        model.train() if train else model.eval()
        out = model(*args, **({"train": train} if self.train_kwarg else {}))
        if not carried:
            return out, {}
        return out, {NNX_STATE: _nnx_tree(nnx.split(model, nnx.Param, nnx.RngState, ...)[3])}


class ClassificationTask(Task):
    """`lab.task.Task` for a classifier: a flax.linen module (`apply(variables, inputs,
    *extra_inputs[, train=...])`) or a `flax.nnx.Module` (`model(inputs, *extra_inputs[, train=...])`).

    Args:
      model: a flax.linen module, or a flax.nnx.Module instance; returns logits (B, C), or a dict
        of them for several heads. `train` is passed only where its `__call__` takes it; an NNX
        module is also put in `train()`/`eval()` mode (its Dropout and BatchNorm).
      example_inputs: a batch of inputs (numpy) to initialise a linen model's parameters with,
        and the input spec of `export_spec`.
      label_keys: batch keys of the labels, one per head, in the model's dict order; a single
        head uses ('label',).
      extra_input_keys: further batch keys passed to the model as positional arguments after
        the inputs (e.g. 'token_mask' for the padding mask of token inputs).
      label_smoothing: > 0: train against labels smoothed towards uniform by this much
        (evaluation reports the plain cross-entropy).
    A model declares where a parameter lives where it defines it (`nn.with_logical_partitioning`,
    see `lab.sharding`); the loop places the others by size.
    The default update trains the parameters and carries the model's other state in
    `TrainState.extra`: a linen model's mutable collections (BatchNorm's 'batch_stats'), an NNX
    model's non-parameter variables (`extra['nnx_state']`). An NNX module brings its own initial
    weights (made by its nnx.Rngs; `config.seed` still seeds the data order and dropout): its
    `nnx.Param`s are `TrainState.params`, its RNG streams are reseeded from the step's key.
    """

    count_unit = "examples"

    def __init__(self, model: nn.Module | nnx.Module, example_inputs: dict[str, np.ndarray],
                 label_keys: tuple[str, ...] = ("label",), extra_input_keys: tuple[str, ...] = (),
                 label_smoothing: float = 0.0):
        self.model = model
        self.label_smoothing = label_smoothing
        self._model = _NNX(model) if isinstance(model, nnx.Module) else _Linen(model)
        self.example_inputs = example_inputs
        self.label_keys = tuple(label_keys)
        self.extra_input_keys = tuple(extra_input_keys)
        self._carried = None
        if len(self.label_keys) > 1:  # each head's accuracy (`<head>_accuracy`) in a panel of its own
            self.curves = ("loss",) + tuple(f"{head}_accuracy" for head in self.label_keys)

    def _example_args(self) -> tuple:
        x = self.example_inputs
        return (x["inputs"], *[x[k] for k in self.extra_input_keys])

    def init(self, rng: jax.Array) -> dict:
        """The model's variables, randomly initialised from `rng` (an NNX module: its own)."""
        return self._model.init(rng, self._example_args())

    def carried_collections(self) -> tuple[str, ...]:
        """The model's variable collections besides `params` that training updates and
        `TrainState.extra` carries (e.g. ('batch_stats',), or ('nnx_state',)); () for most."""
        if getattr(self, "_carried", None) is None:
            self._carried = self._model.collections(self._example_args())
        return self._carried

    def _forward(self, variables, batch, *, train: bool, rng=None, carried=()) -> tuple[dict, dict]:
        """({head: logits}, new values of the `carried` collections)."""
        out, new = self._model.apply(variables, (batch["inputs"], *[batch[k] for k in self.extra_input_keys]),
                                     train=train, rng=rng, carried=carried)
        if not isinstance(out, dict):
            out = {self.label_keys[0]: out}
        return out, new

    def _heads(self, variables, batch, *, train: bool, rng=None) -> dict[str, jax.Array]:
        return self._forward(variables, batch, train=train, rng=rng)[0]

    def _head_sums(self, heads, batch, *, confusion: bool, label_smoothing: float = 0.0) -> dict:
        mask = batch.get("mask")
        per_head = {k: metrics.classification_sums(heads[k], batch[k], mask, confusion=confusion,
                                                   label_smoothing=label_smoothing)
                    for k in self.label_keys}
        if len(per_head) == 1:
            return next(iter(per_head.values()))
        sums = {"loss": sum(s["loss"] for s in per_head.values()),
                "count": per_head[self.label_keys[0]]["count"]}
        for head, s in per_head.items():
            sums.update({f"{head}_{k}": v for k, v in s.items() if k != "count"})
        return sums

    def _sums(self, variables, batch, *, train: bool, rng=None, confusion: bool) -> dict:
        return self._head_sums(self._heads(variables, batch, train=train, rng=rng), batch, confusion=confusion)

    def _train_sums(self, variables, batch, rng, carried=()) -> tuple[dict, dict]:
        """(train sums incl. `loss`, the new values of the `carried` collections)."""
        heads, new = self._forward(variables, batch, train=True, rng=rng, carried=carried)
        return self._head_sums(heads, batch, confusion=False, label_smoothing=self.label_smoothing), new

    def loss(self, params, batch: dict, rng: jax.Array):
        """(summed cross-entropy over heads and examples, sums); `count` counts examples."""
        sums, _ = self._train_sums({"params": params}, batch, rng)
        return sums.pop("loss"), sums

    def update(self, state: TrainState, batch: dict, rng: jax.Array,
               tools: StepTools) -> tuple[TrainState, dict]:
        """The default update (`Task.update`); a model with other state (BatchNorm statistics)
        gets its new values into `state.extra` from the same forward pass."""
        carried = tuple(c for c in self.carried_collections() if c in state.extra) if state.extra else ()
        if not carried:
            return super().update(state, batch, rng, tools)

        def loss(params, batch, rng):
            variables = {"params": params, **{c: state.extra[c] for c in carried}}
            sums, new = self._train_sums(variables, batch, rng, carried)
            return sums.pop("loss"), sums, new

        grads, sums, new = tools.mean_grads(loss, state.params, batch, rng, with_state=True)
        state = tools.apply_gradients(state, grads).replace(extra={**state.extra, **new})
        return state, dict(sums, grad_norm=optax.tree.norm(grads))

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        """Masked sums with confusion matrices, for exact metrics over padded eval batches."""
        return self._sums(variables, batch, train=False, confusion=True)

    def summarize(self, sums: dict) -> dict:
        """loss, accuracy, macro precision/recall/F1, confusion matrix (per head if several)."""
        if len(self.label_keys) == 1:
            return metrics.classification_summary(sums)
        out = {"loss": float(sums["loss"]) / max(float(sums["count"]), 1.0)}
        for head in self.label_keys:
            head_sums = {k[len(head) + 1:]: v for k, v in sums.items() if k.startswith(head + "_")}
            head_sums["count"] = sums["count"]
            out.update({f"{head}_{k}": v for k, v in metrics.classification_summary(head_sums).items()})
        return out

    def nnx_module(self, variables: Mapping) -> nnx.Module:
        """The NNX model with trained variables (`{'params': ..., **extra}`, e.g. a checkpoint's
        `{'params': state['params'], **state['extra']}`), in eval mode."""
        if not isinstance(self._model, _NNX):
            raise TypeError(f"nnx_module: the model is a {type(self.model).__name__}, not a flax.nnx.Module")
        model = self._model.module(jax.tree.map(jnp.asarray, dict(variables)))
        model.eval()
        return model

    def export_spec(self, meta: Mapping | None = None, extra: Mapping | None = None) -> ExportSpec:
        """Inputs (`inputs` and the extra input keys, shaped as `example_inputs` with a symbolic
        batch 'b') -> the logits of every head, `{label_key: (b, C)}` (inference mode).

        `extra`: the run's other collections (`lab.checkpoint.load_state(workdir)[0]['extra']`),
        fixed into the program; a model with such state (BatchNorm statistics) needs them."""
        carried = self.carried_collections()
        constants = {c: jax.tree.map(jnp.asarray, extra[c]) for c in carried if extra is not None and c in extra}
        if set(carried) - set(constants):
            raise ValueError(f"the model has state besides its params ({', '.join(carried)}): pass "
                             f"extra=lab.checkpoint.load_state(workdir)[0]['extra'] to export_spec")

        def logits(params, inputs):
            return self._heads({"params": params, **constants}, inputs, train=False)

        spec = {k: {"shape": ["b", *np.shape(self.example_inputs[k])[1:]],
                    "dtype": str(np.asarray(self.example_inputs[k]).dtype)}
                for k in ("inputs", *self.extra_input_keys)}
        return ExportSpec(logits, spec, {"task": "classifier", **(meta or {})})


class BinaryClassificationTask(ClassificationTask):
    """One sigmoid output (the article's `Dense(1, sigmoid)` head) trained with binary
    cross-entropy on `batch[label_keys[0]]` in {0, 1}.

    The model gives one logit per example: (B,), (B, 1), or a one-entry dict of either. Eval
    sums carry score histograms, so accuracy, the positive class's precision / recall / F1 and
    the ROC AUC are exact dataset-level numbers over padded batches and any device count (the
    AUC to the histogram's 1/2048 resolution). Arguments as `ClassificationTask`'s, one label key.
    """

    curves = ("loss", "accuracy", "f1", "roc_auc")

    @staticmethod
    def _one_logit(heads: dict) -> jax.Array:
        (out,) = heads.values()
        return out.reshape(out.shape[0])

    def _logits(self, variables, batch, *, train: bool, rng=None) -> jax.Array:
        return self._one_logit(self._heads(variables, batch, train=train, rng=rng))

    def _train_sums(self, variables, batch, rng, carried=()) -> tuple[dict, dict]:
        """(summed binary cross-entropy over examples and sums, new carried collections)."""
        heads, new = self._forward(variables, batch, train=True, rng=rng, carried=carried)
        return metrics.binary_sums(self._one_logit(heads), batch[self.label_keys[0]]), new

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        """Masked sums with the score histograms of positives and negatives (for the ROC AUC)."""
        return metrics.binary_sums(self._logits(variables, batch, train=False), batch[self.label_keys[0]],
                                   batch.get("mask"), histograms=True)

    def summarize(self, sums: dict) -> dict:
        """loss, accuracy, precision, recall, f1 (positive class) and, on evals, roc_auc."""
        return metrics.binary_summary(sums)


IMAGE_CLASSIFIERS = ("mlp", "cnn")


def image_classifier(model_cfg: Any, num_classes: int) -> nn.Module:
    """The classifier a config's `model` block names: `model.name` 'mlp' (`features`,
    `dropout_rate`) or 'cnn' (also `channels`, `kernel_size`). A block without `name` is an MLP,
    as every config before the CNN was."""
    name = model_cfg.get("name", "mlp")
    common = dict(features=tuple(model_cfg.features), num_classes=num_classes,
                  dropout_rate=model_cfg.dropout_rate)
    if name == "mlp":
        return MLP(**common)
    if name == "cnn":
        return CNN(channels=tuple(model_cfg.channels), kernel_size=model_cfg.kernel_size, **common)
    raise ValueError(f"unknown model.name {name!r}: use one of {', '.join(IMAGE_CLASSIFIERS)}")
