"""What `lab.serve` reads from a request and writes back: JSON bodies checked field by field into an
artifact's inputs, and its outputs as predictions or generated text.

Every problem with a request is a `BadRequest` (an HTTP status and a one-line message): a body
that is not JSON or nests too deeply, a field of the wrong type (a string or a boolean where a
number belongs), a wrong shape, too many rows, a character outside the tokenizer's vocabulary, a
prompt or a number of new tokens beyond the limits set at export, inputs whose outputs overflow.
The server answers it with that status and never stops.
"""

from __future__ import annotations

import json
import math

import numpy as np

from lab import artifact as artifact_lib

MAX_ROWS_PER_REQUEST = 1024
CHATBOT_MAX_PROMPT = 100_000  # characters a chatbot request may send; it reads the last few only


class BadRequest(Exception):
    """A request the server refuses: (HTTP status, one-line message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes):
    """The request body as JSON; BadRequest (400) for anything else, deep nesting included."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not JSON") from None
    except RecursionError:  # the parser's nesting limit: no request of lab's nests like this
        raise BadRequest(400, "the body's JSON nests too deeply") from None


def _numbers(items: list, what: str, max_ndim: int) -> np.ndarray:
    """Nested lists of JSON numbers (at most `max_ndim` deep) as a float32 array; BadRequest (422)
    naming anything else (a string, a boolean, null, a ragged or too deep list, a number beyond
    float32)."""
    try:
        cells = np.array(items, dtype=object)
    except (ValueError, RecursionError):
        raise BadRequest(422, f"{what} must be nested lists of numbers of one shape") from None
    if cells.ndim > max_ndim:
        raise BadRequest(422, f"{what} nest more than {max_ndim} lists deep")
    kinds = {type(cell) for cell in cells.flat}
    if not kinds <= {int, float}:
        names = {bool: "booleans", str: "strings", type(None): "nulls", list: "ragged or too deeply nested lists",
                 dict: "objects"}
        found = sorted(names.get(kind, kind.__name__) for kind in kinds - {int, float})
        raise BadRequest(422, f"{what} must be numbers; found {', '.join(found)}")
    try:
        with np.errstate(over="raise"):
            return cells.astype(np.float32)
    except (OverflowError, FloatingPointError):
        raise BadRequest(422, f"{what} hold a number beyond float32's range") from None


class Predictor:
    """Turns request JSON into the artifact's inputs and its outputs into predictions.

    Attributes:
      kind: 'image' or 'text' (classifiers), 'generator' or 'chatbot'.
      max_prompt, max_new_tokens: a generator's or chatbot's limits (characters, tokens).
    """

    def __init__(self, model: artifact_lib.Artifact):
        self.model = model
        meta = model.meta
        if meta.get("task") not in ("classifier", "generator", "chatbot"):
            raise artifact_lib.ArtifactError(f"{model.path} is a {meta.get('task')!r} export; lab.serve serves "
                                             f"classifiers, text generators and chatbots")
        self.class_names = meta.get("class_names", {})
        self.tokenizer = meta.get("tokenizer")
        self.kind = meta["task"] if meta["task"] != "classifier" else "text" if self.tokenizer else "image"
        needs = {"generator": ("vocab", "max_len"), "chatbot": ("vocab", "max_src", "eos_id", "pad_id"),
                 "text": ("vocab", "max_len", "pad_id"), "image": ()}[self.kind]
        if needs and not (isinstance(self.tokenizer, dict) and all(key in self.tokenizer for key in needs)):
            raise artifact_lib.ArtifactError(f"{model.path} is a {self.kind} export whose tokenizer lacks "
                                             f"{', '.join(needs)}: export the run again")
        if self.kind in ("generator", "chatbot"):
            self.max_new_tokens = model.limits.get("max_new_tokens", meta.get("max_new_tokens"))
            if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
                raise artifact_lib.ArtifactError(f"{model.path} is a {self.kind} export without its limit "
                                                 f"max_new_tokens: export the run again")
        if self.kind == "generator":  # the prompt and its continuation share the context
            self.max_prompt = int(model.limits.get("max_prompt_tokens",
                                                   self.tokenizer["max_len"] - self.max_new_tokens))
        if self.kind == "chatbot":  # a longer prompt keeps its last characters, as in training
            self.max_prompt = CHATBOT_MAX_PROMPT
        if self.kind == "image":
            if len(model.inputs) != 1:
                raise artifact_lib.ArtifactError(f"{model.path} is a classifier of {len(model.inputs)} inputs "
                                                 f"without a tokenizer; lab.serve serves image classifiers of one")
            (self.input_name, spec), = model.inputs.items()
            self.row_shape = tuple(spec["shape"][1:])

    def rows(self, body) -> dict[str, np.ndarray]:
        """The request's rows as the artifact's inputs (each (n, ...)); raises BadRequest (422)."""
        if not isinstance(body, dict):
            raise BadRequest(422, 'the body must be a JSON object, e.g. {"inputs": [...]}')
        if self.kind in ("generator", "chatbot"):
            raise BadRequest(404, 'this model generates text: POST /generate {"prompt": ...}')
        if self.kind == "text":
            texts = body.get("text")
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise BadRequest(422, 'give {"text": ["a speech", ...]}: a non-empty list of strings')
            self._check_count(len(texts))
            return self._encode(texts)
        items = body.get("inputs")
        if not isinstance(items, list) or not items:
            raise BadRequest(422, f'give {{"inputs": [...]}}: a non-empty list of inputs, each of shape '
                                  f'{list(self.row_shape)} (or flat, {int(np.prod(self.row_shape))} numbers)')
        self._check_count(len(items))
        array = _numbers(items, f"inputs (each of shape {list(self.row_shape)}, or flat)", 1 + len(self.row_shape))
        if array.shape[1:] != self.row_shape:
            if array.ndim == 2 and array.shape[1] == int(np.prod(self.row_shape)):
                array = array.reshape((len(array),) + self.row_shape)
            else:
                raise BadRequest(422, f"each input must have shape {list(self.row_shape)} (or be flat, "
                                      f"{int(np.prod(self.row_shape))} numbers); got {list(array.shape[1:])}")
        try:
            return self.model.check_inputs({self.input_name: array})
        except artifact_lib.ArtifactInputError as e:
            raise BadRequest(422, str(e)) from None

    def generation(self, body) -> tuple[dict[str, np.ndarray], int]:
        """A /generate request as the artifact's inputs and the number of tokens to return;
        raises BadRequest (422) naming the bad field, or the limit a request goes beyond."""
        if not isinstance(body, dict):
            raise BadRequest(422, 'the body must be a JSON object, e.g. {"prompt": "ROMEO:", "max_tokens": 16}')
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(422, '"prompt" must be a non-empty string')
        if len(prompt) > self.max_prompt:
            limit = "max_prompt_tokens, set at export" if self.kind == "generator" else "the server's limit"
            raise BadRequest(422, f"the prompt has {len(prompt)} characters; this model takes at most "
                                  f"{self.max_prompt} ({limit})")
        vocab = self.tokenizer["vocab"]

        def number(key, default, kind, low, high, limit=""):
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (kind is int and value != int(value)) or not low <= value <= high:
                raise BadRequest(422, f'"{key}" must be {"an integer" if kind is int else "a number"} in '
                                      f'[{low}, {high}]{limit}')
            return kind(value)

        max_tokens = number("max_tokens", self.max_new_tokens, int, 1, self.max_new_tokens,
                            " (max_new_tokens, set at export)")
        temperature = number("temperature", 0.8, float, 0.0, 100.0)
        top_k = number("top_k", len(vocab), int, 1, len(vocab))
        seed = number("seed", 0, int, 0, 2**32 - 1)
        ids = self._ids(prompt, "the prompt")
        sampling = {"seed": np.uint32(seed), "temperature": np.float32(temperature), "top_k": np.int32(top_k)}
        if self.kind == "chatbot":
            t = self.tokenizer
            row = np.concatenate([ids[len(ids) - min(len(ids), t["max_src"] - 1):], [t["eos_id"]]])
            src = np.full((1, t["max_src"]), t["pad_id"], np.int32)
            src[0, :len(row)] = row
            return {"src": src, "src_len": np.array([len(row)], np.int32), **sampling}, max_tokens
        return {"prompt": ids[None], **sampling}, max_tokens

    def completion(self, outputs: dict[str, np.ndarray], prompt_length: int, max_tokens: int) -> str:
        """The new characters of the first row: a GPT's continuation, or a chatbot's reply up to
        its EOS (special ids left out)."""
        vocab = self.tokenizer["vocab"]
        if self.kind == "chatbot":
            tokens = outputs["tokens"][0][:min(int(outputs["lengths"][0]), max_tokens)]
        else:
            tokens = outputs["tokens"][0][prompt_length:prompt_length + max_tokens]
        return "".join(vocab[i] for i in tokens if 0 <= i < len(vocab))

    def _ids(self, text: str, what: str) -> np.ndarray:
        """`text` as ids into the tokenizer's vocabulary; BadRequest (422) naming unknown characters."""
        index = {c: i for i, c in enumerate(self.tokenizer["vocab"])}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise BadRequest(422, f"{what} has characters outside the model's vocabulary: {''.join(unknown)[:20]!r}")
        return np.array([index[c] for c in text], np.int32)

    def _check_count(self, n: int) -> None:
        if n > MAX_ROWS_PER_REQUEST:
            raise BadRequest(413, f"{n} inputs in one request; send at most {MAX_ROWS_PER_REQUEST}")

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        length, pad = self.tokenizer["max_len"], self.tokenizer["pad_id"]
        ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            if not text:
                raise BadRequest(422, f"text {row} is empty")
            codes = self._ids(text, f"text {row}")[:length]
            ids[row, :len(codes)] = codes
            mask[row, :len(codes)] = 1
        return {"inputs": ids, "token_mask": mask}

    def predictions(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        """Per row: for each head its label, probability and all probabilities. BadRequest (422)
        when a row's outputs are not finite (inputs far outside what the model was trained on)."""
        for head, logits in outputs.items():
            finite = np.isfinite(logits).reshape(len(logits), -1).all(axis=1)
            if not finite.all():
                rows = [int(i) for i in np.flatnonzero(~finite)[:5]]
                raise BadRequest(422, f"the model's {head!r} outputs for input(s) {rows} are not finite (they "
                                      f"overflow): send inputs in the range the model was trained on")
        out = []
        heads = {head: _softmax(logits) for head, logits in outputs.items()}
        n = len(next(iter(heads.values())))
        for i in range(n):
            row = {}
            for head, probs in heads.items():
                names = self.class_names.get(head) or [str(j) for j in range(probs.shape[1])]
                best = int(np.argmax(probs[i]))
                row[head] = {"label": names[best], "probability": float(probs[i, best]),
                             "probabilities": {name: round(float(p), 6) for name, p in zip(names, probs[i])}}
            out.append(row)
        return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
