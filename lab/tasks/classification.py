"""Classification: a model mapping `batch['inputs']` to logits, trained with cross-entropy.

One head (`logits_BxC`, label key `label`) or several (`{name: logits_BxC}`, each trained on
`batch[name]` and summed into one loss), so a classifier predicting a play and its genre is the
same family as the MLP digit classifier.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lab import metrics


class ClassificationTask:
    """`lab.train.Task` for models `apply({'params': p}, inputs, train=..., **model_kwargs)`.

    Args:
      model: a flax.linen module; returns logits (B, C), or a dict of them for several heads.
      example_inputs: a batch of inputs (numpy) to initialise the parameters with.
      label_keys: batch keys of the labels, one per head, in the model's dict order; a single
        head uses ('label',).
      extra_input_keys: further batch keys passed to the model as positional arguments after
        the inputs (e.g. 'token_mask' for the padding mask of token inputs).
      init_params_fn: optional `(rng) -> params` replacing the fresh init (e.g. fresh params with
        a pretrained sub-tree loaded in).
    """

    count_unit = "examples"

    def __init__(self, model: nn.Module, example_inputs: dict[str, np.ndarray],
                 label_keys: tuple[str, ...] = ("label",), extra_input_keys: tuple[str, ...] = (),
                 init_params_fn: Callable[[jax.Array], Any] | None = None):
        self.model = model
        self.example_inputs = example_inputs
        self.label_keys = tuple(label_keys)
        self.extra_input_keys = tuple(extra_input_keys)
        self._init_params_fn = init_params_fn

    def fresh_params(self, rng: jax.Array) -> Any:
        """Randomly initialised parameters from `rng`."""
        params_rng, dropout_rng = jax.random.split(rng)
        x = self.example_inputs
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, x["inputs"],
                               *[x[k] for k in self.extra_input_keys], train=False)["params"]

    def init_params(self, rng: jax.Array) -> Any:
        return (self._init_params_fn or self.fresh_params)(rng)

    def _heads(self, params, batch, *, train: bool, rng=None) -> dict[str, jax.Array]:
        out = self.model.apply({"params": params}, batch["inputs"],
                               *[batch[k] for k in self.extra_input_keys], train=train,
                               rngs={"dropout": rng} if train else None)
        if not isinstance(out, dict):
            out = {self.label_keys[0]: out}
        return out

    def _sums(self, params, batch, *, train: bool, rng=None, confusion: bool) -> dict:
        heads = self._heads(params, batch, train=train, rng=rng)
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
        sums = self._sums(params, batch, train=True, rng=rng, confusion=False)
        return sums.pop("loss"), sums

    def evaluate(self, params, batch: dict) -> dict:
        """Masked sums with confusion matrices, for exact metrics over padded eval batches."""
        return self._sums(params, batch, train=False, confusion=True)

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

    def predict(self, params, batch: dict) -> Any:
        """Class ids (B,) (or a dict of them) of a batch of inputs, in eval mode."""
        heads = self._heads(params, batch, train=False)
        ids = {k: jnp.argmax(v, -1) for k, v in heads.items()}
        return ids if len(ids) > 1 else next(iter(ids.values()))
