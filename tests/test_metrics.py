"""On-device metric sums agree with scikit-learn, with masks and across split batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lab.tasks import metrics


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


def test_frechet_distance_matches_scipy_and_is_zero_for_identical_sets():
    import scipy.linalg

    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 6))
    b = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6)) + 0.7
    m1, c1 = a.mean(0), np.cov(a, rowvar=False)
    m2, c2 = b.mean(0), np.cov(b, rowvar=False)
    reference = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    np.testing.assert_allclose(metrics.frechet_distance(m1, c1, m2, c2), reference, rtol=1e-9)
    assert abs(metrics.frechet_distance(m1, c1, m1, c1)) < 1e-9
    # A rank-deficient covariance (fewer samples than features) stays real and finite.
    few = rng.standard_normal((3, 6))
    assert np.isfinite(metrics.frechet_distance(few.mean(0), np.cov(few, rowvar=False), m2, c2))


def test_feature_moment_sums_give_the_masked_mean_and_covariance():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((10, 4)).astype(np.float32)
    mask = np.array([1] * 7 + [0] * 3, np.float32)
    first, outer = metrics.feature_moment_sums(features, mask)
    mean, cov = metrics.gaussian_from_sums(first, outer, mask.sum())
    np.testing.assert_allclose(mean, features[:7].mean(0), atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(features[:7], rowvar=False), atol=1e-5)


def test_class_entropy():
    np.testing.assert_allclose(metrics.class_entropy(np.full(10, 7.0)), np.log(10))
    assert metrics.class_entropy(np.array([0, 5.0, 0])) == 0.0
    np.testing.assert_allclose(metrics.class_entropy(np.array([1.0, 1.0, 0.0])), np.log(2))


def test_binary_sums_give_sklearns_f1_and_roc_auc_over_padded_batches():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    logits = rng.normal(size=1000) + 1.5 * labels  # informative, not perfect
    total = None
    for start in range(0, 1000, 300):  # uneven batches, the last padded
        x = np.zeros(300, np.float32)
        y = np.zeros(300, np.int32)
        m = np.zeros(300, np.float32)
        n = min(300, 1000 - start)
        x[:n], y[:n], m[:n] = logits[start:start + n], labels[start:start + n], 1
        sums = metrics.binary_sums(jnp.asarray(x), jnp.asarray(y), jnp.asarray(m), histograms=True)
        total = sums if total is None else {k: total[k] + sums[k] for k in sums}
    summary = metrics.binary_summary(jax.tree.map(np.asarray, total))
    assert summary["accuracy"] == pytest.approx(np.mean((logits > 0) == labels))
    assert summary["f1"] == pytest.approx(f1_score(labels, logits > 0))
    assert summary["roc_auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-3)


def test_label_smoothing_trains_against_the_smoothed_targets():
    import optax
    logits = jnp.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = jnp.asarray([0, 2])
    plain = metrics.classification_sums(logits, labels)
    smoothed = metrics.classification_sums(logits, labels, label_smoothing=0.1)
    targets = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 2]]
    expected = -np.sum(targets * np.asarray(jax.nn.log_softmax(logits)))
    assert float(smoothed["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(smoothed["loss"]) != pytest.approx(float(plain["loss"]))
    assert plain["loss"] == optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    assert smoothed["correct"] == plain["correct"] == 2
