"""lab.report: the PNGs of a run, class names on the confusion matrices, pyplot left alone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lab import report

ROOT = str(Path(__file__).resolve().parents[1])
GENRES = ["comedy", "history", "tragedy"]


def _write_metrics(workdir, records, tail=""):
    with open(workdir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write(tail)


def _tick_texts(fig):
    ax = fig.axes[0]
    return ([t.get_text() for t in ax.get_xticklabels()],
            [t.get_text() for t in ax.get_yticklabels()])


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    records = [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.0}]
    _write_metrics(tmp_path, records, tail='{"step": 3, "train/lo')
    assert report.read_metrics(str(tmp_path)) == records
    _write_metrics(tmp_path, records)
    assert report.read_metrics(str(tmp_path)) == records
    assert report.read_metrics(str(tmp_path / "missing")) == []


def test_read_metrics_still_raises_on_a_bad_line_before_the_last(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        report.read_metrics(str(tmp_path))


def test_plot_run_writes_curves_and_one_png_per_confusion_matrix(tmp_path):
    _write_metrics(tmp_path, [{"step": s, "train/loss": 1 / s, "eval_test/accuracy": s / 10}
                              for s in range(1, 6)], tail='{"ste')
    cm3 = np.diag([5, 6, 7]).tolist()
    results = {"test_confusion_matrix": cm3, "confusion_matrix": cm3,
               "test_play_confusion_matrix": np.eye(37, dtype=int).tolist(),
               "validation_genre_confusion_matrix": cm3}
    written = report.plot_run(str(tmp_path), results, {"play": [f"p{i}" for i in range(37)],
                                                       "genre": GENRES})
    names = ["curves.png", "test_confusion_matrix.png", "test_play_confusion_matrix.png",
             "validation_genre_confusion_matrix.png"]
    assert sorted(Path(p).name for p in written) == names
    assert sorted(p.name for p in tmp_path.glob("*.png")) == names
    for p in written:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_matrices_take_the_names_of_their_head(tmp_path, monkeypatch):
    seen = {}

    def spy(cm, names=None, title=""):
        fig = real(cm, names, title)
        seen[title.split(":")[0]] = _tick_texts(fig)[1]
        return fig

    real = report.confusion_figure
    monkeypatch.setattr(report, "confusion_figure", spy)
    cm3, cm2 = np.eye(3, dtype=int).tolist(), np.eye(2, dtype=int).tolist()
    results = {"test_genre_confusion_matrix": cm3, "test_confusion_matrix": cm2,
               "validation_play_confusion_matrix": cm3}
    report.plot_run(str(tmp_path), results, {"genre": GENRES, "label": ["no", "yes"]})
    # 'play' has no names: indices. The single-head matrix takes 'label'.
    assert seen == {"test / genre": GENRES, "test": ["no", "yes"],
                    "validation_play": ["0", "1", "2"]}
    seen.clear()
    report.plot_run(str(tmp_path), results)
    assert seen == {"test_genre": ["0", "1", "2"], "test": ["0", "1"],
                    "validation_play": ["0", "1", "2"]}


def test_confusion_figure_labels_and_title():
    cm = np.array([[8, 2], [0, 0]])  # the second class has no examples: an all-zero row
    fig = report.confusion_figure(cm, ["cat", "dog"], "test: accuracy 0.8")
    assert _tick_texts(fig) == (["cat", "dog"], ["cat", "dog"])
    ax = fig.axes[0]
    assert ax.get_title() == "test: accuracy 0.8"
    # Colours are fractions of each true class's row; counts are written in all 4 cells.
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2], [0.0, 0.0]])
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "2", "8"]
    # Names of the wrong length fall back to class indices.
    assert _tick_texts(report.confusion_figure(cm, ["cat"]))[0] == ["0", "1"]


def test_confusion_figure_at_37_classes_writes_only_non_zero_counts_and_grows():
    cm = np.diag(np.arange(1, 38))
    cm[0, 5] = 3
    names = [f"play {i}" for i in range(37)]
    fig = report.confusion_figure(cm, names, "t")
    assert _tick_texts(fig) == (names, names)
    assert len(fig.axes[0].texts) == 38
    small = report.confusion_figure(np.eye(3), GENRES, "t")
    assert all(a > 2 * b for a, b in zip(fig.get_size_inches(), small.get_size_inches()))


def test_plot_run_leaves_the_backend_and_pyplot_alone(tmp_path):
    # A fresh interpreter: pytest or another test may already have imported pyplot.
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from lab import report\n"
        "out = report.plot_run(sys.argv[1], {'test_confusion_matrix': [[3, 1], [0, 4]]},\n"
        "                      {'label': ['a', 'b']})\n"
        "print(len(out), matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    _write_metrics(tmp_path, [{"step": 1, "train/loss": 1.0}])
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "svg", "False"]
