"""On-device metric sums agree with scikit-learn, with masks and across split batches."""

import jax.numpy as jnp
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lab import metrics


def test_classification_metrics_match_sklearn_with_padding():
    rng = np.random.default_rng(0)
    n, c = 97, 5
    logits = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int32)
    # Two batches, the second padded with junk rows masked out.
    pad = 23
    logits2 = np.concatenate([logits[50:], rng.normal(size=(pad, c)).astype(np.float32)])
    labels2 = np.concatenate([labels[50:], np.zeros(pad, np.int32)])
    mask2 = np.concatenate([np.ones(n - 50), np.zeros(pad)]).astype(np.float32)
    s1 = metrics.classification_sums(jnp.array(logits[:50]), jnp.array(labels[:50]), confusion=True)
    s2 = metrics.classification_sums(jnp.array(logits2), jnp.array(labels2), jnp.array(mask2), confusion=True)
    total = {k: np.asarray(s1[k]) + np.asarray(s2[k]) for k in s1}
    out = metrics.classification_summary(total)

    pred = logits.argmax(-1)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    assert out["accuracy"] == np.mean(pred == labels)
    np.testing.assert_allclose([out["precision"], out["recall"], out["f1"]], [p, r, f], rtol=1e-6)
    np.testing.assert_array_equal(out["confusion_matrix"], confusion_matrix(labels, pred))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(out["loss"], -logp[np.arange(n), labels].mean(), rtol=1e-5)
