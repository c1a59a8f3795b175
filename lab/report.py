"""PNG plots of a finished run: metric curves from `metrics.jsonl`, the confusion matrices.

Figures are built as `matplotlib.figure.Figure` objects and saved through the Agg canvas,
never through pyplot, so plotting leaves a user's matplotlib backend (a notebook's inline one,
say) and pyplot's figure list alone.

In a multi-process run every process computes what a hook draws (samples are jitted: one
process alone would leave the others waiting), and only process 0 writes: `save_image`,
`save_figure` and `save_text` write on process 0 and do nothing on the others.

Inside the loop's evaluation (`eval_outputs`), what a task's `on_eval` saves with a `tag` also
goes to TensorBoard (images, figures, text) at that step, and `caption` names the run, the step
and the eval metrics a picture shows.

`table_reference` reads the `reference` block a config shows in its closing summary from the
reference table (`experiments/reference_results.json`), so no published number lives in code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from lab.files import write_whole

if TYPE_CHECKING:
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


def figure(width: float, height: float, **kwargs) -> Figure:
    """A pyplot-free `matplotlib.figure.Figure` of `width` x `height` inches drawn by Agg (PNG),
    whatever the session's backend; `kwargs` go to `Figure` (e.g. `dpi`, `layout`)."""
    # matplotlib is imported here, when a picture is drawn: it is a second of start-up that a
    # process which draws nothing (--help, a refused flag, export, serve) never pays.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
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
    fig = figure(cell * n + label + 2.2, cell * n + label + 1.2, layout="constrained")
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


def _panel_keys(panel: str | Sequence[str]) -> tuple[str, ...]:
    return (panel,) if isinstance(panel, str) else tuple(panel)


def _curve_label(key: str) -> str:
    """A metrics.jsonl key as a legend reads it: 'train/loss' -> ('train (running mean)', 'loss'),
    'eval_val/loss' -> ('val (eval)', 'loss')."""
    where, metric = key.split("/", 1)
    return (f"{where[len('eval_'):]} (eval)" if where.startswith("eval_") else f"{where} (running mean)"), metric


def plot_run(workdir: str, results: dict,
             class_names: Mapping[str, Sequence[str]] | None = None,
             panels: Sequence[str | Sequence[str]] = ("loss", "accuracy")) -> list[str]:
    """Writes a finished run's PNGs into `workdir`.

    `curves.png`: one panel per entry of `panels` (by default loss and accuracy), each metric
    per split over steps, from `metrics.jsonl`, titled with the run's name (the workdir's) and
    step; an entry that is a tuple of metric names draws them in one panel (labelled by the
    first). One
    `<key>.png` per `<split>_confusion_matrix` or `<split>_<head>_confusion_matrix` key of
    `results` (the unprefixed `confusion_matrix` copy is skipped). Saved with a tight bounding
    box: no title or label is cut off.

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
    drawn = []
    for panel in panels:
        names = _panel_keys(panel)
        curves = {k: c for name in names for k, c in _curves(records, name).items()}
        if curves:
            drawn.append((names, curves))
    if drawn:
        fig = figure(5.5 * len(drawn), 4.3, layout="constrained")
        for ax, (names, curves) in zip(fig.subplots(1, len(drawn), squeeze=False)[0], drawn):
            for key, (xs, ys) in sorted(curves.items()):
                where, metric = _curve_label(key)
                ax.plot(xs, ys, label=where if len(names) == 1 else f"{where} {metric}",
                        marker="." if len(xs) < 30 else None)
            ax.set_xlabel("step")
            ax.set_ylabel(names[0])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{run_name(workdir)}: step {results.get('step', '?')}")
        path = os.path.join(workdir, "curves.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)

    for key in sorted(k for k in results if k.endswith(_SUFFIX)):
        cm = np.asarray(results[key])
        split, head = _split_head(key[: -len(_SUFFIX)], [h for h in class_names if h != "label"])
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        title = (f"{split}" + (f" / {head}" if head else "")
                 + f": accuracy {accuracy:.4f} ({int(cm.sum())} examples)")
        fig = confusion_figure(cm, class_names.get(head or "label"), title)
        path = os.path.join(workdir, f"{key}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    return written


def run_name(workdir: str) -> str:
    """The name a run goes by in pictures: its workdir's last component."""
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def image_grid(images: np.ndarray, cols: int, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """Tiles images (N, H, W[, C]) in [0, 1] into one (rows*(H*u+pad)+pad, cols*(W*u+pad)+pad[, C])
    array (u = `upscale`) on a blank (0: no ink) background, each image enlarged `upscale` times
    (nearest), so small digits stay readable."""
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


@dataclass
class EvalOutputs:
    """One evaluation as its hooks see it (`eval_outputs`).

    Attributes:
      step: the step evaluated.
      metrics: split -> that split's eval summary (name -> value), the headline split first.
      sink: where tagged pictures and text also go, or None: an object with
        `add_image(tag, image (H, W, 3) uint8, step)` and `add_text(tag, text, step)`
        (`lab.logbook.MetricLogger`).
    """

    step: int
    metrics: Mapping[str, Mapping[str, Any]]
    sink: Any = None


_CURRENT: EvalOutputs | None = None


@contextlib.contextmanager
def eval_outputs(step: int, metrics: Mapping[str, Mapping[str, Any]], sink: Any = None):
    """The loop's evaluation at `step`, around a task's `on_eval`: `caption` reads `metrics`
    (split -> summary), and `save_image` / `save_figure` / `save_text` given a `tag` also
    send what they write to `sink` (see `EvalOutputs`)."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, EvalOutputs(step, metrics, sink)
    try:
        yield _CURRENT
    finally:
        _CURRENT = previous


def caption(workdir: str, step: int, keys: Sequence[str] = ()) -> str:
    """'RUN | step S | SPLIT KEY VALUE, ...': the run's name, the step and, inside the loop's
    evaluation of that step, the headline split's metrics named by `keys` (those it has)."""
    parts = [run_name(workdir), f"step {step:,}"]
    current = _CURRENT if _CURRENT is not None and _CURRENT.step == step else None
    for split, summary in (current.metrics.items() if current is not None and keys else ()):
        shown = [f"{k} {float(summary[k]):.4g}" for k in keys if k in summary and np.ndim(summary[k]) == 0]
        if shown:
            parts.append(f"{split} " + ", ".join(shown))
            break
    return " | ".join(parts)


def _sink():
    """(sink, step) of the evaluation under way, or (None, None)."""
    if _CURRENT is None or _CURRENT.sink is None:
        return None, None
    return _CURRENT.sink, _CURRENT.step


CAPTION_PX, LABEL_CHAR_PX = 26, 7  # the caption band's height; a row label's width per character


def render_image(image: np.ndarray, caption: str = "", row_labels: Sequence[str] = ()) -> np.ndarray:
    """An image as an (H', W', 3) uint8 RGB picture at its own pixels (no resampling): grey
    (H, W) in [0, 1] as dark ink on white (1 - x, as the datasets store ink as high values),
    (H, W, 3) as it is; with `caption`, a line of text above it; with `row_labels` (one per
    row of a grid, top to bottom, rows of equal height), each row's label to its left.
    H' = H (+ CAPTION_PX with a caption); W' = W (+ the labels' width), at least the caption's."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    rgb = np.repeat((1.0 - image)[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    pixels = np.round(rgb * 255).astype(np.uint8)
    h, w = pixels.shape[:2]
    top = CAPTION_PX if caption else 0
    left = 12 + LABEL_CHAR_PX * max((len(s) for s in row_labels), default=0) if row_labels else 0
    width = max(left + w, 16 + LABEL_CHAR_PX * len(caption))
    height = top + h
    canvas = np.full((height, width, 3), 255, np.uint8)
    if caption or row_labels:
        fig = figure(width / 100, height / 100, dpi=100, facecolor="white")
        if caption:
            fig.text(6 / width, 1 - (top / 2) / height, caption, fontsize=10, va="center", ha="left")
        for i, label in enumerate(row_labels):
            y = top + (i + 0.5) * h / len(row_labels)
            fig.text((left - 6) / width, 1 - y / height, label, fontsize=9, va="center", ha="right")
        fig.canvas.draw()
        drawn = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        hh, ww = min(height, drawn.shape[0]), min(width, drawn.shape[1])
        canvas[:hh, :ww] = drawn[:hh, :ww]
    canvas[top:top + h, left:left + w] = pixels
    return canvas


def _writes(path: str) -> bool:
    """True on process 0 (after making `path`'s folder); False on every other process."""
    if jax.process_index() != 0:
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return True


def save_text(path: str, text: str, tag: str | None = None) -> None:
    """Writes `text` to `path` (process 0 only; its folder is made if needed); with `tag`,
    inside the loop's evaluation, also to TensorBoard's text tab at the eval's step."""
    if _writes(path):
        write_whole(path, text)
        sink, step = _sink()
        if sink is not None and tag:
            sink.add_text(tag, text, step)


def save_figure(figure: Figure, path: str, tag: str | None = None) -> None:
    """Saves a Figure as a PNG at 100 dpi with a tight bounding box (no title cut off), process
    0 only; with `tag`, inside the loop's evaluation, also as a TensorBoard image."""
    if _writes(path):
        figure.savefig(path, dpi=100, bbox_inches="tight")
        sink, step = _sink()
        if sink is not None and tag:
            sink.add_image(tag, read_png(path), step)


def read_png(path: str) -> np.ndarray:
    """A PNG file as an (H, W, 3) uint8 RGB array (alpha dropped)."""
    from matplotlib import image as mpimage

    pixels = mpimage.imread(path)
    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels[..., :3]


def save_image(path: str, image: np.ndarray, caption: str = "", row_labels: Sequence[str] = (),
               tag: str | None = None) -> None:
    """Writes an (H, W) grey or (H, W, 3) array in [0, 1] as a PNG (`render_image`: grey as
    dark ink on white, the caption above, row labels to the left; the caption is also the PNG's
    Title). Process 0 only. With `tag`, inside the loop's evaluation, the same picture also
    goes to TensorBoard at the eval's step."""
    from matplotlib import image as mpimage  # imsave draws no pyplot figure

    if not _writes(path):
        return
    picture = render_image(image, caption, row_labels)
    mpimage.imsave(path, picture, metadata={"Title": caption} if caption else None)
    sink, step = _sink()
    if sink is not None and tag:
        sink.add_image(tag, picture, step)


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
