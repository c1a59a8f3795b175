"""PNG plots of a finished run: metric curves from `metrics.jsonl`, the confusion matrix.

matplotlib with the Agg backend (no display needed); only process 0 calls these.
"""

from __future__ import annotations

import json
import os

import numpy as np


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`, in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _curves(records: list[dict], suffix: str) -> dict[str, tuple[list, list]]:
    curves: dict[str, tuple[list, list]] = {}
    for r in records:
        for k, v in r.items():
            if k.endswith("/" + suffix) and isinstance(v, (int, float)):
                xs, ys = curves.setdefault(k, ([], []))
                xs.append(r["step"])
                ys.append(v)
    return curves


def plot_run(workdir: str, results: dict) -> list[str]:
    """Writes `curves.png` (loss and accuracy per split) and `<split>[_<head>]_confusion_matrix.png`
    for every confusion matrix in the results. Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    records = read_metrics(workdir)
    panels = [(name, _curves(records, name)) for name in ("loss", "accuracy")]
    panels = [(n, c) for n, c in panels if c]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (name, curves) in zip(axes[0], panels):
            for label, (xs, ys) in sorted(curves.items()):
                ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = os.path.join(workdir, "curves.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    # One PNG per split (and head) that has a confusion matrix: `test_confusion_matrix.png`,
    # `test_play_confusion_matrix.png`, ... (the unprefixed copy in results is skipped).
    for key in sorted(k for k in results if k.endswith("_confusion_matrix")):
        cm = np.asarray(results[key])
        fig, ax = plt.subplots(figsize=(1.5 + 0.3 * len(cm), 1.2 + 0.3 * len(cm)))
        ax.imshow(cm, cmap="Blues")
        if len(cm) <= 20:  # numbers stay legible up to ~20 classes
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, int(v), ha="center", va="center", fontsize=7,
                        color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(len(cm)))
        ax.set_yticks(range(len(cm)))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{key[:-len('_confusion_matrix')]}: accuracy {np.trace(cm) / max(cm.sum(), 1):.4f}")
        fig.tight_layout()
        path = os.path.join(workdir, f"{key}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
