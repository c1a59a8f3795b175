"""Classification: a model mapping `batch['inputs']` to logits, trained with cross-entropy.

One head (`logits_BxC`, label key `label`) or several (`{name: logits_BxC}`, each trained on
`batch[name]` and summed into one loss), so a classifier predicting a play and its genre is the
same family as the MLP digit classifier. `image_classifier` builds the MLP or CNN that a config's
`model` block names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lab import metrics
from lab.models.cnn import CNN
from lab.models.mlp import MLP
from lab.task import ExportSpec, Task


class ClassificationTask(Task):
    """`lab.task.Task` for models `apply(variables, inputs, *extra_inputs, train=...)`.

    Args:
      model: a flax.linen module; returns logits (B, C), or a dict of them for several heads.
      example_inputs: a batch of inputs (numpy) to initialise the parameters with.
      label_keys: batch keys of the labels, one per head, in the model's dict order; a single
        head uses ('label',).
      extra_input_keys: further batch keys passed to the model as positional arguments after
        the inputs (e.g. 'token_mask' for the padding mask of token inputs).
      partition_rules: the model's FSDP placement (e.g. `transformer.PARTITION_RULES`); by
        default `lab.parallel.fsdp_spec` decides for every parameter.
    Models whose only variables are `params` train with the default update; a model with
    mutable collections (BatchNorm) needs an update that carries them (see tests/test_contract.py).
    """

    count_unit = "examples"

    def __init__(self, model: nn.Module, example_inputs: dict[str, np.ndarray],
                 label_keys: tuple[str, ...] = ("label",), extra_input_keys: tuple[str, ...] = (),
                 partition_rules=None):
        self.model = model
        if partition_rules is not None:  # else the class's (a subclass may set its own)
            self.partition_rules = tuple(partition_rules)
        self.example_inputs = example_inputs
        self.label_keys = tuple(label_keys)
        self.extra_input_keys = tuple(extra_input_keys)

    def init(self, rng: jax.Array) -> dict:
        """The model's variables, randomly initialised from `rng`."""
        params_rng, dropout_rng = jax.random.split(rng)
        x = self.example_inputs
        return dict(self.model.init({"params": params_rng, "dropout": dropout_rng}, x["inputs"],
                                    *[x[k] for k in self.extra_input_keys], train=False))

    def _heads(self, variables, batch, *, train: bool, rng=None) -> dict[str, jax.Array]:
        out = self.model.apply(variables, batch["inputs"],
                               *[batch[k] for k in self.extra_input_keys], train=train,
                               rngs={"dropout": rng} if train else None)
        if not isinstance(out, dict):
            out = {self.label_keys[0]: out}
        return out

    def _sums(self, variables, batch, *, train: bool, rng=None, confusion: bool) -> dict:
        heads = self._heads(variables, batch, train=train, rng=rng)
        mask = batch.get("mask")
        per_head = {k: metrics.classification_sums(heads[k], batch[k], mask, confusion=confusion)
                    for k in self.label_keys}
        if len(per_head) == 1:
            return next(iter(per_head.values()))
        sums = {"loss": sum(s["loss"] for s in per_head.values()),
                "count": per_head[self.label_keys[0]]["count"]}
        for head, s in per_head.items():
            sums.update({f"{head}_{k}": v for k, v in s.items() if k != "count"})
        return sums

    def loss(self, params, batch: dict, rng: jax.Array):
        """(summed cross-entropy over heads and examples, sums); `count` counts examples."""
        sums = self._sums({"params": params}, batch, train=True, rng=rng, confusion=False)
        return sums.pop("loss"), sums

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

    def export_spec(self, meta: Mapping | None = None) -> ExportSpec:
        """Inputs (`inputs` and the extra input keys, shaped as `example_inputs` with a symbolic
        batch 'b') -> the logits of every head, `{label_key: (b, C)}` (inference mode)."""
        def logits(params, inputs):
            return self._heads({"params": params}, inputs, train=False)

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

    def _logits(self, variables, batch, *, train: bool, rng=None) -> jax.Array:
        (out,) = self._heads(variables, batch, train=train, rng=rng).values()
        return out.reshape(out.shape[0])

    def loss(self, params, batch: dict, rng: jax.Array):
        """(summed binary cross-entropy over examples, sums); `count` counts examples."""
        sums = metrics.binary_sums(self._logits({"params": params}, batch, train=True, rng=rng),
                                   batch[self.label_keys[0]])
        return sums.pop("loss"), sums

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
