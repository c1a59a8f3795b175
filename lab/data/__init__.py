"""lab's data layer: offline TFDS datasets read back as whole numpy splits, or streamed.

Every dataset is a TFDS builder (``array_record`` files, no TensorFlow),
registered with TFDS when this package is imported, so ``tfds.builder(
'digits')`` and ``tfds.data_source('digits', split='train')`` also work.
Only numpy crosses this boundary.

    >>> from lab import data
    >>> train = data.load('digits', 'train')     # built once, then cached
    >>> train['inputs'].shape, train['label'].dtype
    ((1437, 8, 8, 1), dtype('int32'))
    >>> data.info('digits')['num_classes']
    10

Datasets (``DATASETS``): digits, fashion_mnist, mnist1d, mnist,
shakespeare_char, shakespeare_plays, co2, sunspots, shakespeare_dialogue.
See ``registry`` for the output keys; ``images``, ``shakespeare``,
``timeseries`` and ``dialogue`` for sources and splits.

A classification split larger than memory streams from its array_record
files instead: ``stream`` gives random access to its rows in ``load``'s form,
and lab's batchers take it in place of the arrays (see ``streaming``):

    >>> rows = data.stream('digits', 'train')
    >>> len(rows), rows.gather([0, 5])['inputs'].shape
    (1437, (2, 8, 8, 1))

Time series come back whole with their chronological split bounds, and are
cut into forecasting windows:

    >>> s = data.series('co2')
    >>> s['value'].shape, s['bounds']['test'], s['season']
    ((526,), (421, 526), 12)
    >>> x, y = data.windows(s['value'], 24, *s['bounds']['test'])
    >>> x.shape, y.shape
    ((105, 24), (105,))
"""

from lab.data.errors import DataError
from lab.data.registry import DATASETS, char_tokenizer, checksum, info, load
from lab.data.shakespeare import CharTokenizer, comedy_or_tragedy, corpus_checksum, joined_speeches
from lab.data.storage import default_data_dir
from lab.data.streaming import STREAMABLE, StreamedSplit, stream
from lab.data.registry import series
from lab.data.timeseries import windows

__all__ = [
    "DATASETS",
    "CharTokenizer",
    "DataError",
    "STREAMABLE",
    "StreamedSplit",
    "char_tokenizer",
    "checksum",
    "comedy_or_tragedy",
    "corpus_checksum",
    "default_data_dir",
    "info",
    "joined_speeches",
    "load",
    "series",
    "stream",
    "windows",
]
