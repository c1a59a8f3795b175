"""The families' metric sums, computed on device (summed over the batch, masks respected), and their
host summaries.

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
                        *, confusion: bool = False, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
    """Cross-entropy loss sum, count, correct count (and the CxC confusion matrix) of a batch.

    Args:
      logits_BxC: unnormalised class scores.
      labels_B: int class ids.
      mask_B: 1 for real examples, 0 for padding (None: all real).
      confusion: also return `confusion` [true, predicted] counts, float32 (C, C).
      label_smoothing: > 0: the loss against labels smoothed towards uniform by this much (a
        train-time regulariser; evaluation keeps the plain cross-entropy).
    """
    num_classes = logits_BxC.shape[-1]
    w_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B.astype(jnp.float32)
    if label_smoothing:
        targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
        ce_B = optax.softmax_cross_entropy(logits_BxC.astype(jnp.float32), targets_BxC)
    else:
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


AUC_BINS = 2048  # score histogram resolution of the ROC AUC (ties within a bin count one half)


def binary_sums(logits_B: jax.Array, labels_B: jax.Array, mask_B: jax.Array | None = None,
                *, histograms: bool = False) -> dict[str, jax.Array]:
    """Sigmoid binary cross-entropy sum, count, correct, and true/false positive and false
    negative counts of a batch (threshold 0.5); with `histograms`, `pos_hist` and `neg_hist`
    (AUC_BINS,): counts of sigmoid(logit) per bin for positives and negatives, for the ROC AUC.

    Args:
      logits_B: one logit per example (the positive class's).
      labels_B: 0 or 1.
      mask_B: 1 for real examples, 0 for padding (None: all real).
    """
    logits_B = logits_B.astype(jnp.float32)
    y_B = labels_B.astype(jnp.float32)
    w_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B.astype(jnp.float32)
    pred_B = (logits_B > 0).astype(jnp.float32)
    sums = {
        "loss": jnp.sum(optax.sigmoid_binary_cross_entropy(logits_B, y_B) * w_B),
        "count": jnp.sum(w_B),
        "correct": jnp.sum((pred_B == y_B) * w_B),
        "true_positives": jnp.sum(pred_B * y_B * w_B),
        "false_positives": jnp.sum(pred_B * (1 - y_B) * w_B),
        "false_negatives": jnp.sum((1 - pred_B) * y_B * w_B),
    }
    if histograms:
        bin_B = jnp.clip((jax.nn.sigmoid(logits_B) * AUC_BINS).astype(jnp.int32), 0, AUC_BINS - 1)
        one_hot_BxH = jax.nn.one_hot(bin_B, AUC_BINS)
        sums["pos_hist"] = (y_B * w_B) @ one_hot_BxH
        sums["neg_hist"] = ((1 - y_B) * w_B) @ one_hot_BxH
    return sums


def roc_auc_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties (same bin) counting 1/2;
    NaN without positives or negatives."""
    pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg  # negatives in lower bins
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))


def binary_summary(sums: dict) -> dict:
    """loss, accuracy, precision / recall / F1 of the positive class, and (given the histograms)
    roc_auc."""
    count = max(float(sums["count"]), 1.0)
    tp, fp, fn = (float(sums[k]) for k in ("true_positives", "false_positives", "false_negatives"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count,
           "precision": precision, "recall": recall,
           "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}
    if "pos_hist" in sums:
        out["roc_auc"] = roc_auc_from_histograms(sums["pos_hist"], sums["neg_hist"])
    return out


def feature_moment_sums(features_BxF: jax.Array, mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Masked first and second moment sums of a batch of features: (sum_b f_b (F,),
    sum_b f_b f_b^T (F, F)). Added over batches and devices, they give the exact mean and
    covariance of a whole split (`gaussian_from_sums`)."""
    weighted = features_BxF if mask_B is None else features_BxF * mask_B[:, None]
    return jnp.sum(weighted, axis=0), weighted.T @ features_BxF


def gaussian_from_sums(feature_sum: np.ndarray, outer_sum: np.ndarray, count: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), unbiased covariance (F, F)) in float64 from `feature_moment_sums` over `count`
    examples."""
    n = float(count)
    mean = np.asarray(feature_sum, np.float64) / n
    cov = (np.asarray(outer_sum, np.float64) - n * np.outer(mean, mean)) / max(n - 1.0, 1.0)
    return mean, (cov + cov.T) / 2


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """The Frechet distance between N(mean1, cov1) and N(mean2, cov2) (the FID formula):
    |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix C1^(1/2) C2 C1^(1/2) (same spectrum as C1 C2), so no non-symmetric
    matrix square root (and none of its complex round-off) is needed. float64 throughout.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(cov1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt1 @ cov2 @ sqrt1
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    return float(np.sum(np.square(mean1 - mean2)) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def class_entropy(counts_C: np.ndarray) -> float:
    """Entropy in nats of the class histogram `counts_C` (log C when every class is equally
    frequent, 0 when one class takes all)."""
    p = np.asarray(counts_C, np.float64)
    p = p / max(p.sum(), 1e-12)
    nz = p[p > 0]
    return float(-np.sum(nz * np.log(nz)))
