"""Sequence to sequence on characters: a prompt in, a reply out (the LSTM chatbot).

Token ids on a vocabulary of N characters (`Seq2SeqIds`): characters 0..N-1, PAD = N, BOS = N + 1,
EOS = N + 2, vocab_size = N + 3. A source row is the prompt's last characters (those nearest the
reply) followed by EOS, so even an empty prompt has one real token. A target row is the reply's
first characters followed by EOS when the reply fits, else just its first T characters (a cut
reply does not teach the model to stop there). Training is teacher-forced: the decoder reads
`tgt_in` = BOS + reply and predicts `tgt_out` = reply + EOS.

Shape suffixes: B batch, N examples, S source length, T target length, V vocab.
"""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lab import report
from lab.models import lstm
from lab.task import Task
from lab.tasks.language_model import lm_summary, token_sums


@dataclasses.dataclass(frozen=True)
class Seq2SeqIds:
    """Special token ids around N characters (see the module docstring)."""

    num_chars: int

    @property
    def pad(self) -> int:
        return self.num_chars

    @property
    def bos(self) -> int:
        return self.num_chars + 1

    @property
    def eos(self) -> int:
        return self.num_chars + 2

    @property
    def vocab_size(self) -> int:
        return self.num_chars + 3


def model_config(model_cfg, ids: Seq2SeqIds) -> lstm.Seq2SeqConfig:
    """The `lstm.Seq2SeqConfig` of an experiment's `model` block on these token ids."""
    m = model_cfg
    return lstm.Seq2SeqConfig(
        vocab_size=ids.vocab_size, embed_dim=m.embed_dim, hidden=m.hidden, num_layers=m.num_layers,
        activation=m.activation, attention=m.attention, attention_dim=m.attention_dim,
        use_encoder=m.use_encoder, pad_id=ids.pad, bos_id=ids.bos, eos_id=ids.eos)


# Typographic characters NFKD leaves alone, to their plain forms.
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                              "\u2013": "-", "\u2014": "--", "\u2026": "...", "\t": " "})


def clean_text(text: str, vocab: str) -> tuple[str, str]:
    """`text` in `vocab`'s characters: curly quotes and dashes made plain, others
    compatibility-decomposed (NFKD: 'é' -> 'e'), then characters still unknown dropped.

    Returns:
      (cleaned text, the dropped characters in order of first appearance).
    """
    known = set(vocab)
    out, dropped = [], []
    for ch in text.translate(_TYPOGRAPHIC):
        if ch in known:
            out.append(ch)
            continue
        parts = [c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)]
        if parts and all(c in known for c in parts):
            out.extend(parts)
        elif ch not in dropped:
            dropped.append(ch)
    return "".join(out), "".join(dropped)


def encode_pairs(encode, prompts: Sequence[str], replies: Sequence[str], max_src: int, max_tgt: int,
                 ids: Seq2SeqIds) -> dict[str, np.ndarray]:
    """Fixed-size id rows of (prompt, reply) pairs for `Seq2SeqTask`.

    Args:
      encode: `str -> int array` (a CharTokenizer's encode).
      prompts, replies: N strings each (replies may be empty strings to encode prompts only).
      max_src: S, source row length (the prompt's last S - 1 characters + EOS).
      max_tgt: T, target row length.
      ids: the special ids.

    Returns:
      src int32 (N, S), src_len int32 (N,), tgt_in int32 (N, T), tgt_out int32 (N, T),
      tgt_mask float32 (N, T) (1 on the positions that carry a loss).
    """
    n = len(prompts)
    src = np.full((n, max_src), ids.pad, np.int32)
    src_len = np.zeros((n,), np.int32)
    tgt_in = np.full((n, max_tgt), ids.pad, np.int32)
    tgt_out = np.full((n, max_tgt), ids.pad, np.int32)
    tgt_mask = np.zeros((n, max_tgt), np.float32)
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        p = np.asarray(encode(prompt), np.int32)
        row = np.concatenate([p[len(p) - min(len(p), max_src - 1):], [ids.eos]]).astype(np.int32)
        src[i, :len(row)], src_len[i] = row, len(row)
        r = np.asarray(encode(reply), np.int32)
        r = np.concatenate([r, [ids.eos]]) if len(r) < max_tgt else r[:max_tgt]
        tgt_out[i, :len(r)] = r
        tgt_in[i, 0] = ids.bos
        tgt_in[i, 1:len(r)] = r[:-1]
        tgt_mask[i, :len(r)] = 1.0
    return {"src": src, "src_len": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out, "tgt_mask": tgt_mask}


def decode_reply(tokenizer, tokens_N: np.ndarray, length: int) -> str:
    """The text of a generated reply: its first `length` tokens (those before EOS), special ids
    (an untrained model may sample PAD or BOS) left out."""
    ids = np.asarray(tokens_N[:length])
    return tokenizer.decode(ids[ids < tokenizer.vocab_size])


# A sentence's end: . ! or ?, then any closing quotes or brackets, then a space or the text's end.
_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s|$)""")
CUT_MARK = "..."  # ends a reply that `trim_reply` cut at a word boundary


def trim_reply(text: str, complete: bool) -> str:
    """A generated reply for people to read: `text` itself when the model ended it (`complete`:
    it emitted EOS before the length limit), else `text` cut where the limit left it mid-word.

    A reply the limit stopped ends at its last sentence end (. ! ? and closing quotes) when that
    keeps at least half of it; otherwise at its last word boundary (whitespace), with the
    punctuation before the cut dropped and `CUT_MARK` appended. A reply without whitespace (one
    unbroken word) is kept whole, also marked. Nothing is ever cut inside a word.
    """
    if complete or not text.strip():
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] * 2 >= len(text.rstrip()):
        return text[:ends[-1]]
    if text[-1].isspace():  # the limit fell between two words: the last one is whole
        kept = text
    else:
        boundary = max(text.rfind(c) for c in " \n\t")
        kept = text[:boundary] if boundary > 0 and text[:boundary].strip() else text
    return kept.rstrip().rstrip(",;:-") + CUT_MARK


class Seq2SeqTask(Task):
    """`lab.task.Task` for `lstm.Seq2Seq` on batches of `encode_pairs` rows.

    Loss and metrics are per target token (count_unit 'tokens'): cross-entropy over `tgt_mask`,
    so perplexities of models with and without an encoder compare one to one.

    Args:
      config: the model's `lstm.Seq2SeqConfig`.
      samples: optional host-side (tokenizer, encoded rows of a few fixed prompts, their texts,
        max_new_tokens, temperature) for `on_eval`: greedy and sampled replies to
        `workdir/samples/step_<N>.txt`, and, with attention, `workdir/attention.png` for the
        first prompt (both also to TensorBoard: text 'replies', image 'attention').
    """

    count_unit = "tokens"
    curves = ("loss", "perplexity", "accuracy")

    def __init__(self, config: lstm.Seq2SeqConfig, samples: dict | None = None):
        self.config = config
        self.model = lstm.Seq2Seq(config)
        self.samples = samples

    def init(self, rng: jax.Array) -> dict:
        src = jnp.zeros((1, 2), jnp.int32)
        return {"params": self.model.init(rng, src, jnp.ones((1,), jnp.int32), src)["params"]}

    def _sums(self, params, batch: dict, weights_BxT) -> dict:
        logits = self.model.apply({"params": params}, batch["src"], batch["src_len"], batch["tgt_in"])
        return token_sums(logits, batch["tgt_out"], weights_BxT)

    def loss(self, params, batch: dict, rng: jax.Array):
        del rng  # no dropout
        sums = self._sums(params, batch, batch["tgt_mask"])
        return sums.pop("loss"), sums

    def evaluate(self, variables, batch: dict, rng: jax.Array) -> dict:
        del rng
        weights = batch["tgt_mask"]
        if "mask" in batch:
            weights = weights * batch["mask"][:, None]
        return self._sums(variables["params"], batch, weights)

    def summarize(self, sums: dict) -> dict:
        return lm_summary(sums)

    def replies(self, params, rows: dict, rng: jax.Array, max_new_tokens: int,
                temperature: float, top_k: int | None = None):
        """Generated reply tokens for encoded rows: (tokens (B, max_new_tokens), lengths (B,),
        attention (B, max_new_tokens, S)), numpy."""
        out = lstm.generate(self.config, params, jnp.asarray(rows["src"]), jnp.asarray(rows["src_len"]),
                            max_new_tokens, rng, temperature=temperature, top_k=top_k)
        return tuple(np.asarray(x) for x in out)

    def on_eval(self, variables, step: int, workdir: str, rng: jax.Array) -> None:
        """Writes sample replies (greedy, then sampled) and the first prompt's attention map."""
        if self.samples is None:
            return
        s = self.samples
        tokenizer, rows, prompts = s["tokenizer"], s["rows"], s["prompts"]
        greedy, greedy_len, attention = self.replies(variables["params"], rows, rng, s["max_new_tokens"], 0.0)
        sampled, sampled_len, _ = self.replies(variables["params"], rows, rng, s["max_new_tokens"],
                                               s["temperature"], s.get("top_k"))
        lines = []
        for i, prompt in enumerate(prompts):
            lines += [f"PROMPT: {prompt}",
                      f"GREEDY: {decode_reply(tokenizer, greedy[i], int(greedy_len[i]))}",
                      f"T={s['temperature']}: {decode_reply(tokenizer, sampled[i], int(sampled_len[i]))}", ""]
        report.save_text(os.path.join(workdir, "samples", f"step_{step}.txt"), "\n".join(lines), tag="replies")
        if self.config.attention != "none" and self.config.use_encoder:
            n_src = int(rows["src_len"][0])
            n_out = max(1, min(int(greedy_len[0]) + 1, attention.shape[1]))
            src_chars = list(tokenizer.decode(rows["src"][0, :n_src - 1])) + ["<eos>"]
            out_chars = list(decode_reply(tokenizer, greedy[0], n_out))
            out_chars += ["<eos>"] * (n_out - len(out_chars))
            figure = attention_figure(attention[0, :n_out, :n_src], src_chars, out_chars,
                                      title=f"{self.config.attention} attention, step {step}")
            report.save_figure(figure, os.path.join(workdir, "attention.png"), tag="attention")


def attention_figure(weights_TxS: np.ndarray, src_chars: Sequence[str], out_chars: Sequence[str],
                     title: str = ""):
    """A Figure of attention weights: a row per generated character, a column per source one."""
    t, s = weights_TxS.shape
    fig = report.figure(min(2 + 0.14 * s, 24), min(1.5 + 0.14 * t, 24))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(weights_TxS, aspect="auto", cmap="viridis", vmin=0.0)
    show = lambda c: {"\n": "\u21b5", " ": "\u2423"}.get(c, c)  # noqa: E731  newline, space visible
    ax.set_xticks(range(s), [show(c) for c in src_chars], fontsize=6)
    ax.set_yticks(range(t), [show(c) for c in out_chars], fontsize=6)
    ax.set_xlabel("prompt (source) characters")
    ax.set_ylabel("reply (generated) characters")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig
