"""Metric sums computed on device (summed over the batch, masks respected) and their host summaries.

Sums, not means, cross devices and batches: the loop adds them up (psum under pmap, plain
addition over eval batches), and the summary divides once at the end, so padded eval batches
and uneven shards give exact dataset-level numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def classification_sums(logits_BxC: jax.Array, labels_B: jax.Array, mask_B: jax.Array | None = None,
                        *, confusion: bool = False) -> dict[str, jax.Array]:
    """Cross-entropy loss sum, count, correct count (and the CxC confusion matrix) of a batch.

    Args:
      logits_BxC: unnormalised class scores.
      labels_B: int class ids.
      mask_B: 1 for real examples, 0 for padding (None: all real).
      confusion: also return `confusion` [true, predicted] counts, float32 (C, C).
    """
    num_classes = logits_BxC.shape[-1]
    w_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B.astype(jnp.float32)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), labels_B)
    pred_B = jnp.argmax(logits_BxC, axis=-1)
    sums = {
        "loss": jnp.sum(ce_B * w_B),
        "count": jnp.sum(w_B),
        "correct": jnp.sum((pred_B == labels_B) * w_B),
    }
    if confusion:
        true_BxC = jax.nn.one_hot(labels_B, num_classes) * w_B[:, None]
        sums["confusion"] = true_BxC.T @ jax.nn.one_hot(pred_B, num_classes)
    return sums


def classification_summary(sums: dict) -> dict:
    """loss, accuracy and (given `confusion`) macro precision / recall / F1 and the matrix.

    Macro averages run over classes present in the labels or predictions; a class never
    predicted has precision 0 (scikit-learn's `zero_division=0`).
    """
    count = max(float(sums["count"]), 1.0)
    out = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
    if "confusion" in sums:
        cm = np.asarray(sums["confusion"], np.float64)
        tp = np.diag(cm)
        predicted, actual = cm.sum(0), cm.sum(1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * precision * recall, precision + recall,
                       out=np.zeros_like(tp), where=(precision + recall) > 0)
        present = (predicted + actual) > 0
        out.update(precision=float(precision[present].mean()), recall=float(recall[present].mean()),
                   f1=float(f1[present].mean()), confusion_matrix=np.rint(cm).astype(np.int64).tolist())
    return out
