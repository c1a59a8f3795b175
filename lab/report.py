"""PNG plots of a finished run: metric curves from `metrics.jsonl`, the confusion matrices.

Figures are built as `matplotlib.figure.Figure` objects and saved through the Agg canvas,
never through pyplot, so plotting leaves a user's matplotlib backend (a notebook's inline one,
say) and pyplot's figure list alone.

In a multi-process run every process computes what a hook draws (samples are jitted: one
process alone would leave the others waiting), and only process 0 writes: `save_image`,
`save_figure` and `save_text` write on process 0 and do nothing on the others.

`table_reference` reads the `reference` block a config shows in its closing summary from the
reference table (`experiments/reference_results.json`), so no published number lives in code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SUFFIX = "_confusion_matrix"


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`, in order.

    A last line that does not parse is skipped: a run killed mid-write (or a full disk) leaves
    one, and the records before it are still good. A bad line elsewhere still raises.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass  # torn last record, see above
    return records


def _curves(records: list[dict], suffix: str) -> dict[str, tuple[list, list]]:
    curves: dict[str, tuple[list, list]] = {}
    for r in records:
        for k, v in r.items():
            if k.endswith("/" + suffix) and isinstance(v, (int, float)):
                xs, ys = curves.setdefault(k, ([], []))
                xs.append(r["step"])
                ys.append(v)
    return curves


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure drawn by Agg (PNG), whatever the session's backend."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(cm, names: Sequence[str] | None = None, title: str = "") -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) as a figure.

    Colours are row-normalised (each true class's row divided by its count), so small classes
    are as visible as large ones; the counts are written in the cells (at most 20 classes: all
    of them; more: the non-zero ones, smaller). The figure grows with the class count.

    Args:
      cm: (C, C) counts.
      names: C class names for the tick labels; None (or a list of another length) gives the
        class indices.
      title: the figure's title.

    Returns:
      A Figure drawn by Agg: save it with `fig.savefig(path)`; it is in no pyplot figure list.
    """
    cm = np.asarray(cm)
    n = len(cm)
    if names is None or len(names) != n:
        names = [str(i) for i in range(n)]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)

    small = n <= 20
    cell = 0.45 if small else 0.3  # inches per class
    label = 0.07 * max((len(s) for s in names), default=1)  # inches taken by a tick label
    fig = _figure(cell * n + label + 2.2, cell * n + label + 1.2)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.6, label="fraction of the true class")
    for (i, j), v in np.ndenumerate(cm):
        if small or v:
            ax.text(j, i, int(v), ha="center", va="center", fontsize=7 if small else 6,
                    color="white" if frac[i, j] > 0.5 else "black")
    fontsize = 8 if small else 7
    if not small:  # one name per 0.3 inch: only vertical names fit
        xticks = dict(rotation=90)
    elif max((len(s) for s in names), default=0) > 2:
        xticks = dict(rotation=45, ha="right", rotation_mode="anchor")
    else:
        xticks = {}
    ax.set_xticks(range(n), names, fontsize=fontsize, **xticks)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def _split_head(stem: str, heads: Sequence[str]) -> tuple[str, str | None]:
    """`test_play` -> ('test', 'play') for a known head; `test` -> ('test', None)."""
    for head in sorted(heads, key=len, reverse=True):
        if stem.endswith("_" + head):
            return stem[: -len(head) - 1], head
    return stem, None


def plot_run(workdir: str, results: dict,
             class_names: Mapping[str, Sequence[str]] | None = None,
             panels: Sequence[str] = ("loss", "accuracy")) -> list[str]:
    """Writes a finished run's PNGs into `workdir`.

    `curves.png`: one panel per metric of `panels` (by default loss and accuracy), each metric
    per split over steps, from `metrics.jsonl`. One
    `<key>.png` per `<split>_confusion_matrix` or `<split>_<head>_confusion_matrix` key of
    `results` (the unprefixed `confusion_matrix` copy is skipped).

    Args:
      workdir: the run's directory.
      results: the run's results (`results.json`'s content).
      class_names: label key -> class names in label-id order, as `lab.data.info(name)
        ['class_names']` gives them: a `<split>_confusion_matrix` takes the names of 'label'
        (single-head classifiers), a `<split>_<head>_confusion_matrix` those of `head`.
        Missing names (or names of the wrong length) give class indices.
      panels: metric names to plot (a task's `curves`), those that were logged.

    Returns:
      The paths written.
    """
    class_names = dict(class_names or {})
    written = []
    records = read_metrics(workdir)
    panels = [(name, _curves(records, name)) for name in panels]
    panels = [(n, c) for n, c in panels if c]
    if panels:
        fig = _figure(5.5 * len(panels), 4)
        for ax, (name, curves) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            for label, (xs, ys) in sorted(curves.items()):
                ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        path = os.path.join(workdir, "curves.png")
        fig.savefig(path, dpi=100)
        written.append(path)

    for key in sorted(k for k in results if k.endswith(_SUFFIX)):
        cm = np.asarray(results[key])
        split, head = _split_head(key[: -len(_SUFFIX)], [h for h in class_names if h != "label"])
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        title = (f"{split}" + (f" / {head}" if head else "")
                 + f": accuracy {accuracy:.4f} ({int(cm.sum())} examples)")
        fig = confusion_figure(cm, class_names.get(head or "label"), title)
        path = os.path.join(workdir, f"{key}.png")
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def image_grid(images: np.ndarray, cols: int, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """Tiles images (N, H, W[, C]) in [0, 1] into one (rows*(H+pad)+pad, cols*(W+pad)+pad[, C])
    array on a blank (0: no ink) background, each image enlarged `upscale` times (nearest), so
    small digits stay readable."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad) + images.shape[3:], np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return grid


def _writes(path: str) -> bool:
    """True on process 0 (after making `path`'s folder); False on every other process."""
    import jax

    if jax.process_index() != 0:
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return True


def save_text(path: str, text: str) -> None:
    """Writes `text` to `path` (process 0 only; its folder is made if needed)."""
    if _writes(path):
        with open(path, "w") as f:
            f.write(text)


def save_figure(figure: Figure, path: str) -> None:
    """Saves a Figure as a PNG at 100 dpi (process 0 only)."""
    if _writes(path):
        figure.savefig(path, dpi=100)


def save_image(path: str, image: np.ndarray) -> None:
    """Writes an (H, W) grey or (H, W, 3) array in [0, 1] as a PNG (dark ink on white: 1 - x for
    grey, as the datasets store ink as high values). Process 0 only."""
    from matplotlib import image as mpimage  # imsave draws no pyplot figure

    if not _writes(path):
        return
    image = np.asarray(image)
    if image.ndim == 2:
        mpimage.imsave(path, 1.0 - image, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        mpimage.imsave(path, np.clip(image, 0.0, 1.0))


def print_summary(config, results: dict, workdir: str, wall_seconds: float) -> None:
    """The block a run ends with: headline metrics, the reference they compare to, time, files."""
    if jax.process_index() != 0:
        return
    headline = {k: v for k, v in results.items()  # `<split>_<metric>` (not the unprefixed copies)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and "_" in k
                and set(k.split("_")[1:]) & {"accuracy", "loss", "perplexity", "f1", "rmse", "mae",
                                                   "fd", "elbo", "entropy"}}
    lines = [f"done: step {results.get('step')} in {wall_seconds:.1f} s wall "
             f"({results.get('train_seconds', 0.0):.1f} s in the loop)"]
    lines += [f"  {k:<24} {v:.4f}" for k, v in headline.items()]
    reference = config.get("reference")
    if reference:
        ours = results.get(reference.metric)
        verdict = "" if ours is None else f" (this run: {ours:.4f})"
        lines.append(f"  reference: {reference.metric} {reference.value} from {reference.source}{verdict}")
    files = sorted(f for f in os.listdir(workdir) if f.endswith((".json", ".jsonl", ".png")))
    lines.append(f"  files in {workdir}: {', '.join(files)}, checkpoints/, tensorboard/")
    print("\n".join(lines), flush=True)
