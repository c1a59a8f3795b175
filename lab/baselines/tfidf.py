"""TF-IDF + logistic regression baseline for ``shakespeare_plays``.

Fits on ``train`` and reports play (37-way) and genre (3-way) accuracy on
``test``, with word 1-2-gram TF-IDF features (sublinear tf). Run:

    python -m lab.baselines.tfidf [--data_dir DIR] [--train_split SPLIT]

It is the number a neural play classifier should beat (seed-free, deterministic).
``--max_chars=128`` keeps only the first 128 characters of each speech (what the
Transformer classifier sees); its numbers are the outside references of the
``speech_classifier`` row of experiments/reference_results.json. ``--tokenizer=WORKDIR
--max_tokens=128`` keeps the first 128 tokens of a subword run's tokenizer instead
(what a subword classifier of max_len 128 sees).
A random speech-level 80/20 split inflates the play accuracy of the same model:
neighbouring speeches share names and topics, which is why the split is made of
blocks of consecutive speeches.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lab import data


def first_tokens(split: dict[str, np.ndarray], tokenizer, max_tokens: int) -> dict[str, np.ndarray]:
    """``split`` with every ``text`` cut to the text of its first ``max_tokens`` tokens."""
    cut = [tokenizer.decode(tokenizer.encode(str(t))[:max_tokens]) for t in split["text"]]
    return {**split, "text": np.asarray(cut, dtype=object)}


def _features(train: dict[str, np.ndarray], test: dict[str, np.ndarray], max_chars: int | None):
    """Word 1-2-gram TF-IDF (sublinear tf, min_df 2) fit on train: (x_train, x_test) sparse."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
    cut = slice(None, max_chars)
    x_train = vectorizer.fit_transform([str(t)[cut] for t in train["text"]])
    return x_train, vectorizer.transform([str(t)[cut] for t in test["text"]])


def fit_and_score(
    train: dict[str, np.ndarray], test: dict[str, np.ndarray], *, C: float = 3.0,
    max_chars: int | None = None,
) -> dict[str, float]:
    """Fits one TF-IDF + LogisticRegression per label and scores it on test.

    Args:
      train, test: ``lab.data.load('shakespeare_plays', ...)`` outputs:
        ``text`` (N,) str, ``play`` (N,) int32, ``genre`` (N,) int32.
      C: inverse L2 strength of the logistic regressions; 3 was the best of
        {1, 3, 10} on the validation split for play accuracy.
      max_chars: keep only the first ``max_chars`` characters of every speech
        (None: all), to compare with a model that sees only that much.

    Returns:
      ``{'play_accuracy', 'genre_accuracy', 'play_f1', 'genre_f1' (macro), 'play_majority',
      'genre_majority', 'n_train', 'n_test'}``; the ``*_majority`` entries are the accuracy of
      always predicting the most frequent train class.
    """
    # Imported here: scikit-learn is only needed for this baseline.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    x_train, x_test = _features(train, test, max_chars)
    scores = {"n_train": len(train["text"]), "n_test": len(test["text"])}
    for label in ("play", "genre"):
        # saga: much faster than the default lbfgs on these 65k sparse features
        # (lbfgs is slow on the 37-class problem), same accuracy.
        clf = LogisticRegression(C=C, solver="saga", max_iter=300)
        clf.fit(x_train, train[label])
        predicted = clf.predict(x_test)
        scores[f"{label}_accuracy"] = float(np.mean(predicted == test[label]))
        scores[f"{label}_f1"] = float(f1_score(test[label], predicted, average="macro"))
        majority = np.bincount(train[label]).argmax()
        scores[f"{label}_majority"] = float(np.mean(test[label] == majority))
    return scores


def fit_and_score_binary(train: dict[str, np.ndarray], test: dict[str, np.ndarray], *, C: float = 3.0,
                         max_chars: int | None = None) -> dict[str, float]:
    """TF-IDF + logistic regression on comedy vs tragedy (``lab.data.comedy_or_tragedy`` of each split):
    ``{'tragedy_accuracy', 'tragedy_f1' (of the tragedy class), 'tragedy_roc_auc',
    'tragedy_majority', 'n_train', 'n_test'}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score

    train, test = data.comedy_or_tragedy(train), data.comedy_or_tragedy(test)
    x_train, x_test = _features(train, test, max_chars)
    clf = LogisticRegression(C=C, solver="saga", max_iter=300).fit(x_train, train["tragedy"])
    predicted = clf.predict(x_test)
    return {"tragedy_accuracy": float(np.mean(predicted == test["tragedy"])),
            "tragedy_f1": float(f1_score(test["tragedy"], predicted)),
            "tragedy_roc_auc": float(roc_auc_score(test["tragedy"], clf.predict_proba(x_test)[:, 1])),
            "tragedy_majority": float(max(np.mean(test["tragedy"]), 1 - np.mean(test["tragedy"]))),
            "n_train": len(train["text"]), "n_test": len(test["text"])}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Command-line entry point; prints and returns ``fit_and_score``'s dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument(
        "--train_split", default="train", help="e.g. 'train+validation' for the 80/20 setup."
    )
    parser.add_argument("--C", type=float, default=3.0)
    parser.add_argument("--max_chars", type=int, default=None,
                        help="only the first N characters of each speech (default: all)")
    parser.add_argument("--tokenizer", default=None,
                        help="a run's workdir (or tokenizer.json): with --max_tokens, cut by its tokens")
    parser.add_argument("--max_tokens", type=int, default=None, help="only the first N tokens of each speech")
    args = parser.parse_args(argv)
    if (args.tokenizer is None) != (args.max_tokens is None):
        parser.error("--tokenizer and --max_tokens go together")
    start = time.perf_counter()
    train = data.load("shakespeare_plays", args.train_split, data_dir=args.data_dir)
    test = data.load("shakespeare_plays", "test", data_dir=args.data_dir)
    if args.tokenizer:
        from lab.data.subword import SubwordTokenizer
        tokenizer = SubwordTokenizer.load(args.tokenizer)
        train, test = (first_tokens(s, tokenizer, args.max_tokens) for s in (train, test))
    scores = fit_and_score(train, test, C=args.C, max_chars=args.max_chars)
    binary = fit_and_score_binary(train, test, C=args.C, max_chars=args.max_chars)
    scores.update({k: v for k, v in binary.items() if k.startswith("tragedy")})
    scores["seconds"] = time.perf_counter() - start
    print(
        f"shakespeare_plays TF-IDF+LogReg (train={args.train_split}, max_chars={args.max_chars}, "
        f"max_tokens={args.max_tokens}, "
        f"n={scores['n_train']}, test n={scores['n_test']}): "
        f"play acc {scores['play_accuracy']:.3f} "
        f"(majority {scores['play_majority']:.3f}), "
        f"genre acc {scores['genre_accuracy']:.3f} "
        f"(majority {scores['genre_majority']:.3f}), macro F1 play {scores['play_f1']:.3f} genre "
        f"{scores['genre_f1']:.3f}; comedy vs tragedy acc {scores['tragedy_accuracy']:.3f} "
        f"(majority {scores['tragedy_majority']:.3f}), F1 {scores['tragedy_f1']:.3f}, "
        f"ROC AUC {scores['tragedy_roc_auc']:.3f}; {scores['seconds']:.1f}s"
    )
    return scores


if __name__ == "__main__":
    main()
