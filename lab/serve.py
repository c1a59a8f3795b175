"""Serve an exported model over HTTP: dynamic batching, Prometheus metrics, a page to try it.

    python -m lab.serve --model=PATH [--host=127.0.0.1] [--port=8000] [--max_batch=32]
                        [--max_wait_ms=5] [--max_body_kb=1024]

Routes:
  POST /predict   JSON in, JSON out. An image classifier takes {"inputs": [image, ...]} (each image
                  as nested lists of the artifact's input shape, or flat); a text classifier takes
                  {"text": ["a speech", ...]}. Answers {"predictions": [{head: {"label", "probability",
                  "probabilities"}}, ...], "model": {"name", "step"}}.
  POST /generate  a text generator (the GPT export) or a chatbot (the LSTM seq2seq export) takes
                  {"prompt": str, "max_tokens": int, "temperature": float (0: greedy), "top_k": int,
                  "seed": int}; answers {"prompt", "completion", "text"} (for a chatbot the
                  completion is the reply). The same seed gives the same text.
  GET  /healthz   {"status": "ok", ...} once the model is loaded.
  GET  /metrics   Prometheus text: requests by route and status, latency and batch-size histograms,
                  the model's name and step.
  GET  /          a page to try the model (draw or upload a digit, type a speech, or a prompt).

Requests that arrive together are run as one batch of up to --max_batch rows, waiting at most
--max_wait_ms for more (0 turns batching off: each request runs alone). A bad request (not JSON, a
body over --max_body_kb, a wrong shape or type, a character outside the tokenizer's vocabulary, too
many rows or tokens, a prompt too long) gets a 4xx with a one-line message and never stops the server. It binds to 127.0.0.1
unless told otherwise.

Built on Starlette + uvicorn (a small, well-kept ASGI stack: async, so one worker gathers
concurrent requests into a batch while the model runs in a thread) and `prometheus_client`. The
model is a `lab.artifact.Artifact`: jax and numpy, none of lab's model code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import json
import re
import string
import time
from dataclasses import dataclass

import numpy as np

from lab import artifact as artifact_lib
from lab.errors import exit_with_error

MAX_ROWS_PER_REQUEST = 1024


class BadRequest(Exception):
    """A request the server refuses: (HTTP status, one-line message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    max_batch: int = 32  # rows per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others (0: no batching)
    max_body_bytes: int = 1 << 20


class Predictor:
    """Turns request JSON into the artifact's inputs and its outputs into predictions."""

    def __init__(self, model: artifact_lib.Artifact):
        self.model = model
        meta = model.meta
        if meta.get("task") not in ("classifier", "generator", "chatbot"):
            raise artifact_lib.ArtifactError(f"{model.path} is a {meta.get('task')!r} export; lab.serve serves "
                                             f"classifiers, text generators and chatbots")
        self.class_names = meta.get("class_names", {})
        self.tokenizer = meta.get("tokenizer")
        self.kind = meta["task"] if meta["task"] != "classifier" else "text" if self.tokenizer else "image"
        if self.kind in ("generator", "chatbot"):
            self.max_new_tokens = int(meta["max_new_tokens"])
        if self.kind == "generator":  # the prompt and its continuation share the context
            self.max_prompt = self.tokenizer["max_len"] - self.max_new_tokens
        if self.kind == "chatbot":  # a longer prompt keeps its last characters, as in training
            self.max_prompt = 100_000
        if self.kind == "image":
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
        try:
            array = np.asarray(items, dtype=np.float32)
        except (ValueError, TypeError):
            raise BadRequest(422, f"inputs must be numbers, each input of shape {list(self.row_shape)} "
                                  f"(or flat, {int(np.prod(self.row_shape))} numbers)") from None
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
        raises BadRequest (422) naming the bad field."""
        if not isinstance(body, dict):
            raise BadRequest(422, 'the body must be a JSON object, e.g. {"prompt": "ROMEO:", "max_tokens": 16}')
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(422, '"prompt" must be a non-empty string')
        if len(prompt) > self.max_prompt:
            raise BadRequest(422, f"the prompt has {len(prompt)} characters; this model takes at most {self.max_prompt}")
        vocab = self.tokenizer["vocab"]

        def number(key, default, kind, low, high):
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                    or not low <= value <= high:
                raise BadRequest(422, f'"{key}" must be {"an integer" if kind is int else "a number"} in [{low}, {high}]')
            return kind(value)

        max_tokens = number("max_tokens", self.max_new_tokens, int, 1, self.max_new_tokens)
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
        return "".join(vocab[i] for i in tokens if i < len(vocab))

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
        """Per row: for each head its label, probability and all probabilities."""
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


class Batcher:
    """Gathers concurrent requests into one model call of up to `max_batch` rows.

    The first request of a batch waits at most `max_wait_ms` for others; a request larger than
    the room left waits for the next batch; the model runs in a thread so the event loop keeps
    accepting requests meanwhile.
    """

    def __init__(self, call, options: ServeOptions, on_batch=None):
        self.call, self.options, self.on_batch = call, options, on_batch  # call: inputs -> outputs
        self.queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()

    async def submit(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def _run(self) -> None:
        pending = None
        while True:
            first = pending or await self.queue.get()
            pending = None
            batch = [first]
            size = _rows(first[0])
            deadline = time.monotonic() + self.options.max_wait_ms / 1000
            while size < self.options.max_batch and self.options.max_wait_ms > 0:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                if size + _rows(item[0]) > self.options.max_batch:
                    pending = item
                    break
                batch.append(item)
                size += _rows(item[0])
            inputs = {k: np.concatenate([rows[k] for rows, _ in batch]) for k in batch[0][0]}
            try:
                outputs = await asyncio.to_thread(self.call, inputs)
            except Exception as e:  # a failure of the model: every request of the batch gets it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            if self.on_batch:
                self.on_batch(size)
            start = 0
            for rows, future in batch:
                n = _rows(rows)
                if not future.done():
                    future.set_result({k: v[start:start + n] for k, v in outputs.items()})
                start += n


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def build_app(model_path: str, options: ServeOptions | None = None):
    """The Starlette app serving the artifact at `model_path` (raises ArtifactError if unusable)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    model = artifact_lib.Artifact(model_path)
    predictor = Predictor(model)
    registry = CollectorRegistry()  # one per app: tests start several
    requests = Counter("lab_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram("lab_request_seconds", "request latency by route", ["route"], registry=registry,
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("lab_batch_rows", "rows per model call", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
    info = Gauge("lab_model_info", "the served model", ["name", "step", "path"], registry=registry)
    info.labels(str(model.name), str(model.step), model.path).set(1)
    batcher = Batcher(lambda inputs: model(**inputs), options, on_batch=batch_sizes.observe)
    model_id = {"name": model.name, "step": model.step}

    def counted(route):
        def wrap(handler):
            async def endpoint(request: Request):
                start = time.perf_counter()
                try:
                    response = await handler(request)
                except BadRequest as e:
                    response = JSONResponse({"error": str(e)}, status_code=e.status)
                requests.labels(route, str(response.status_code)).inc()
                latency.labels(route).observe(time.perf_counter() - start)
                return response
            return endpoint
        return wrap

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > options.max_body_bytes:
            raise BadRequest(413, f"the body is over {options.max_body_bytes // 1024} KB; send fewer inputs per request")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > options.max_body_bytes:
                raise BadRequest(413, f"the body is over {options.max_body_bytes // 1024} KB; send fewer inputs "
                                      f"per request")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest(400, "the body is not JSON") from None

    @counted("/predict")
    async def predict(request: Request):
        rows = predictor.rows(await read_json(request))
        outputs = await batcher.submit(rows)
        return JSONResponse({"predictions": predictor.predictions(outputs), "model": model_id})

    @counted("/generate")
    async def generate(request: Request):
        data = await read_json(request)
        if predictor.kind not in ("generator", "chatbot"):
            raise BadRequest(404, "this model is a classifier: POST /predict")
        inputs, max_tokens = predictor.generation(data)
        outputs = await asyncio.to_thread(lambda: model(**inputs))
        prompt = data["prompt"]
        completion = predictor.completion(outputs, len(prompt), max_tokens)
        return JSONResponse({"prompt": prompt, "completion": completion, "text": prompt + completion,
                             "model": model_id})

    @counted("/healthz")
    async def healthz(request: Request):
        return JSONResponse({"status": "ok", **model_id, "inputs": model.inputs})

    async def metrics(request: Request):
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @counted("/")
    async def page(request: Request):
        return HTMLResponse(_page(predictor, model_id))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/generate", generate, methods=["POST"]),
                             Route("/healthz", healthz),
                             Route("/metrics", metrics), Route("/", page)], lifespan=lifespan)


def _page(predictor: Predictor, model_id: dict) -> str:
    """A page to try the model: draw or upload a digit (scaled to the model's input), type a speech or a prompt.

    The HTML is lab/serve_page.html (package data): its "page" section with the form and script
    sections of the model's kind filled in.
    """
    part = _page_sections()
    if predictor.kind in ("generator", "chatbot"):
        start, limit, button = ("ROMEO:", predictor.max_prompt, "Generate") if predictor.kind == "generator" else \
            ("What say you, my lord?", 2000, "Reply")
        form = part["prompt form"].substitute(limit=limit, start=start, button=button,
                                              max_new_tokens=predictor.max_new_tokens)
        script = part["prompt script"].substitute()
    elif predictor.kind == "text":
        form, script = part["text form"].substitute(), part["text script"].substitute()
    else:
        form = part["image form"].substitute()
        script = part["image script"].substitute(h=predictor.row_shape[0], w=predictor.row_shape[1])
    return part["page"].substitute(title=f"{model_id['name']} (step {model_id['step']})", form=form, script=script)


@functools.cache
def _page_sections() -> dict[str, string.Template]:
    """lab/serve_page.html's sections by name (each runs from its `<!-- section: NAME -->` line to the next)."""
    text = importlib.resources.files("lab").joinpath("serve_page.html").read_text(encoding="utf-8")
    parts = re.split(r"^<!-- section: ([\w ]+) -->\n", text, flags=re.M)[1:]
    return {name: string.Template(body.removesuffix("\n")) for name, body in zip(parts[::2], parts[1::2])}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an artifact directory written by python -m lab.export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=int, default=32, help="rows per model call")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="batching wait; 0 turns batching off")
    parser.add_argument("--max_body_kb", type=int, default=1024)
    parser.error = lambda message: exit_with_error(f"{message} (see python -m lab.serve --help)", 2)
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_body_kb < 1 or not 0 < args.port < 65536:
        exit_with_error("--max_batch and --max_body_kb must be >= 1, --max_wait_ms >= 0, --port in 1..65535", 2)
    try:
        app = build_app(args.model, ServeOptions(args.max_batch, args.max_wait_ms, args.max_body_kb * 1024))
    except artifact_lib.ArtifactError as e:
        exit_with_error(str(e), 1)
    import uvicorn

    print(f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /healthz, /metrics, /)",
          flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as e:
        exit_with_error(f"cannot listen on {args.host}:{args.port} ({e.strerror}): choose another --port", 1)


if __name__ == "__main__":
    main()
