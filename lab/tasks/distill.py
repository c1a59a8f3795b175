"""Knowledge distillation (Hinton et al. 2015) as a classification task on the one loop.

The student's loss per example mixes the teacher's softened predictions with the labels:

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)

(T^2 keeps the soft term's gradients on the scale of the hard term's as T grows). The teacher's
parameters live in the train state, `TrainState.extra['teacher']`: they are arguments of the
compiled step (not constants folded into it), are checkpointed with the run, and are never
trained (only `params` are). Evaluation scores the student alone.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.tasks import metrics
from lab.task import StepTools, TrainState
from lab.tasks.classification import ClassificationTask

PyTree = Any
TEACHER = "teacher"  # the collection of the teacher's parameters in `TrainState.extra`


def distillation_sums(student_BxC: jax.Array, teacher_BxC: jax.Array, labels_B: jax.Array,
                      mask_B: jax.Array | None, temperature: float, alpha: float) -> dict[str, jax.Array]:
    """Sums over a batch: `loss` (the mixed loss), `kd_loss` (T^2 KL), `ce_loss`, `count`, `correct`.

    Args:
      student_BxC, teacher_BxC: logits.
      labels_B: int class ids.
      mask_B: 1 for real examples, 0 for padding (None: all real).
      temperature: T > 0, the softmax temperature of the soft term.
      alpha: the soft term's weight in [0, 1].
    """
    hard = metrics.classification_sums(student_BxC, labels_B, mask_B)
    w_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B.astype(jnp.float32)
    log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_BxC).astype(jnp.float32) / temperature)
    log_p_s = jax.nn.log_softmax(student_BxC.astype(jnp.float32) / temperature)
    kl_B = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    kd = temperature ** 2 * jnp.sum(kl_B * w_B)
    return {"loss": alpha * kd + (1.0 - alpha) * hard["loss"], "kd_loss": kd, "ce_loss": hard["loss"],
            "count": hard["count"], "correct": hard["correct"]}


class DistillationTask(ClassificationTask):
    """A classifier (the student) trained on a teacher's soft targets and the labels, head by head.

    Args:
      model: the student, a flax.linen module `apply(variables, inputs, *extra_inputs, train=...)
        -> logits (B, C)`, or a dict of them for several heads (as `ClassificationTask`).
      example_inputs: a batch of inputs (numpy) to initialise the student with.
      teacher_apply: `(teacher_params, inputs, *extra_inputs) -> logits (B, C)` (or the same dict of
        heads as the student) in eval mode, e.g. `lambda p, x: teacher_model.apply({'params': p}, x)`.
      teacher_params: the trained teacher's parameters (e.g. `lab.checkpoint.load_params(dir)[0]`).
      temperature: T of the soft targets (> 0).
      alpha: weight of the soft term; 1 - alpha weights the labels' cross-entropy.
      label_keys, extra_input_keys: as `ClassificationTask` (one term per head,
        summed into the loss).
    `init` returns `{'params': student, 'teacher': teacher_params}`, so the teacher rides in
    `TrainState.extra`; `update` reads it from there.
    """

    def __init__(self, model: nn.Module, example_inputs: dict[str, np.ndarray],
                 teacher_apply: Callable[..., Any], teacher_params: PyTree,
                 temperature: float = 4.0, alpha: float = 0.9, label_keys: tuple[str, ...] = ("label",),
                 extra_input_keys: tuple[str, ...] = ()):
        super().__init__(model, example_inputs, label_keys, extra_input_keys)
        if not temperature > 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need temperature > 0 (got {temperature}) and alpha in [0, 1] (got {alpha})")
        self.teacher_apply = teacher_apply
        self.teacher_params = teacher_params
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.curves = ("loss", "accuracy", "kd_loss", "ce_loss") if len(self.label_keys) == 1 else \
            ("loss",) + tuple(f"{h}_{k}" for h in self.label_keys for k in ("accuracy", "kd_loss"))

    def init(self, rng: jax.Array) -> dict:
        """The student's fresh variables plus the teacher's parameters as the 'teacher' collection."""
        variables = super().init(rng)
        return {**variables, TEACHER: jax.tree.map(jnp.asarray, self.teacher_params)}

    def distill_loss(self, teacher_params: PyTree) -> Callable:
        """`(student_params, batch, rng) -> (loss_sum, sums)` against the given teacher params; with
        several heads the sums are per head (`play_kd_loss`, ...) and the loss is their total."""
        def loss_fn(params, batch, rng):
            student = self._heads({"params": params}, batch, train=True, rng=rng)
            teacher = self.teacher_apply(teacher_params, batch["inputs"], *[batch[k] for k in self.extra_input_keys])
            if not isinstance(teacher, dict):
                teacher = {self.label_keys[0]: teacher}
            per_head = {k: distillation_sums(student[k], teacher[k], batch[k], batch.get("mask"),
                                             self.temperature, self.alpha) for k in self.label_keys}
            if len(per_head) == 1:
                sums = next(iter(per_head.values()))
                return sums.pop("loss"), sums
            sums = {"count": per_head[self.label_keys[0]]["count"]}
            for head, s in per_head.items():
                sums.update({f"{head}_{k}": v for k, v in s.items() if k != "count"})
            return sum(s["loss"] for s in per_head.values()), sums
        return loss_fn

    def loss(self, params: PyTree, batch: dict, rng: jax.Array):
        """The distillation loss sum against the teacher given at construction (for code that
        calls `loss` directly; the loop's `update` uses the state's copy)."""
        return self.distill_loss(self.teacher_params)(params, batch, rng)

    def update(self, state: TrainState, batch: dict, rng: jax.Array,
               tools: StepTools) -> tuple[TrainState, dict]:
        """One step on the student's parameters; the teacher is read from `state.extra`."""
        grads, sums = tools.mean_grads(self.distill_loss(state.extra[TEACHER]), state.params, batch, rng)
        return tools.apply_gradients(state, grads), dict(sums, grad_norm=optax.tree.norm(grads))

    def evaluate(self, variables: dict, batch: dict, rng: jax.Array) -> dict:
        """The student's masked classification sums (the teacher's collection left out)."""
        student = {k: v for k, v in variables.items() if k != TEACHER}
        return super().evaluate(student, batch, rng)

    def summarize(self, sums: dict) -> dict:
        """The classification summary, plus the mean soft and hard terms (per head) on train windows."""
        out = super().summarize(sums)
        count = max(float(sums["count"]), 1.0)
        prefixes = [""] if len(self.label_keys) == 1 else [f"{h}_" for h in self.label_keys]
        for prefix in prefixes:
            for key in ("kd_loss", "ce_loss"):
                if prefix + key in sums:
                    out[prefix + key] = float(sums[prefix + key]) / count
        return out
