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
                  completion is the reply). The same seed gives the same text. The longest prompt
                  and the most new tokens are the limits set at export (GET /info has them).
  GET  /healthz   503 {"status": "warming up", ...} while the model compiles its shapes, then
                  {"status": "ok", ...}.
  GET  /info      the model (name, step, task), its input and output specs, limits and shape buckets.
  GET  /metrics   Prometheus text: responses by route and status (and status class), latency and
                  batch-size histograms, compilations, readiness, the model's name and step.
  GET  /          a page to try the model (draw or upload a digit, type a speech, or a prompt).

Start-up: the artifact is checked (an unusable one, a sidecar edited or disagreeing with the
program, a busy port: one `error:` line and exit status 1), the port is bound, then every shape
bucket the server can meet (batches padded to powers of two up to --max_batch, a GPT's prompt
lengths padded to the export's few sizes) is compiled and run once, in the background: /healthz
answers 503 until that is done, and no request compiles afterwards (`lab_xla_compilations` in
/metrics stays put). Requests that arrive together are run as one batch of up to --max_batch
rows, waiting at most --max_wait_ms for more (0 turns batching off: each request runs alone).

A bad request (not JSON, nested too deeply, a body over --max_body_kb, a wrong shape, a string
or a boolean where a number belongs, a character outside the tokenizer's vocabulary, too many
rows, a prompt or a number of tokens beyond the limits, inputs whose outputs overflow) gets a 4xx
with a one-line message and never stops the server; an unexpected error gets a 500 and its
traceback in the server's log. Every response is counted in /metrics. It binds to 127.0.0.1
unless told otherwise.

Built on Starlette + uvicorn (a small, well-kept ASGI stack: async, so one worker gathers
concurrent requests into a batch while the model runs in a thread) and `prometheus_client`. The
model is a `lab.artifact.Artifact`: jax and numpy, none of lab's model code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import importlib.resources
import re
import socket
import string
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from lab import artifact as artifact_lib
from lab.errors import exit_with_error
from lab.serve_requests import BadRequest, Predictor, parse_json

ROUTES = ("/predict", "/generate", "/healthz", "/info", "/metrics", "/")
_XLA_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring: one per XLA compile (or cache load)


@dataclass
class ServeOptions:
    max_batch: int = 32  # rows per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others (0: no batching)
    max_body_bytes: int = 1 << 20


@functools.cache
def xla_compilations() -> list[int]:
    """[the number of XLA compilations in this process so far], counted from the first call on by
    a jax.monitoring listener (registered once per process)."""
    import jax

    count = [0]

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == _XLA_COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    return count


class CountResponses:
    """ASGI middleware: every HTTP response is recorded by `record(route, status, seconds)` (an
    unknown path as route 'other'), a 404 or a 500 as much as a 200. An exception that escapes a
    route is a bug: its traceback goes to stderr and the client gets a JSON 500."""

    def __init__(self, app, record):
        self.app, self.record = app, record

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        start, statuses = time.perf_counter(), []

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            print(f"error: {scope.get('method')} {scope.get('path')} raised:", file=sys.stderr, flush=True)
            traceback.print_exc()
            if not statuses:
                await JSONResponse({"error": "internal error: the server logged its traceback"},
                                   status_code=500)(scope, receive, send_noting_status)
            else:  # the response had started: the client sees it cut short
                statuses[:] = [500]
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.record(route, statuses[0] if statuses else 500, time.perf_counter() - start)


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
        """Starts the worker that runs the batches (on the running event loop)."""
        self.queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops the worker."""
        if self._worker:
            self._worker.cancel()

    async def submit(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `rows` (each input (n, ...)), once its batch has run."""
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


def build_app(model_path: str, options: ServeOptions | None = None, on_warm_up_failure=None):
    """The Starlette app serving the artifact at `model_path` (raises ArtifactError if unusable).

    Its start-up compiles every shape bucket in a background thread (/healthz: 503 until done);
    `on_warm_up_failure(message)` is called if that fails (the traceback is printed first).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    model = artifact_lib.Artifact(model_path, max_batch=options.max_batch)
    predictor = Predictor(model)
    generates = predictor.kind in ("generator", "chatbot")
    warm_batches = [1] if generates else None  # /generate runs one prompt at a time
    buckets = model.bucket_shapes(warm_batches)
    compilations = xla_compilations()
    warm = {"ready": False, "done": 0, "error": None}

    registry = CollectorRegistry()  # one per app: tests start several
    requests = Counter("lab_requests", "HTTP responses by route and status", ["route", "status"], registry=registry)
    responses = Counter("lab_responses", "HTTP responses by route and status class (2xx, 4xx, 5xx)",
                        ["route", "status_class"], registry=registry)
    latency = Histogram("lab_request_seconds", "request latency by route", ["route"], registry=registry,
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("lab_batch_rows", "rows per model call", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
    info = Gauge("lab_model_info", "the served model", ["name", "step", "path"], registry=registry)
    info.labels(str(model.name), str(model.step), model.path).set(1)
    Gauge("lab_ready", "1 once every shape bucket is compiled", registry=registry).set_function(
        lambda: float(warm["ready"]))
    Gauge("lab_model_compiles", "shape buckets the model has compiled (each once)", registry=registry).set_function(
        lambda: model.compiles)
    Gauge("lab_xla_compilations", "XLA compilations in the server process (jax.monitoring)",
          registry=registry).set_function(lambda: compilations[0])
    batcher = Batcher(lambda inputs: model(**inputs), options, on_batch=batch_sizes.observe)
    model_id = {"name": model.name, "step": model.step}

    def record(route: str, status: int, seconds: float) -> None:
        requests.labels(route, str(status)).inc()
        responses.labels(route, f"{status // 100}xx").inc()
        latency.labels(route).observe(seconds)

    async def bad_request(request: Request, error: BadRequest):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    def check_ready() -> None:
        if not warm["ready"]:
            raise BadRequest(503, f"warming up: compiled {warm['done']} of {len(buckets)} shapes; retry shortly"
                             if not warm["error"] else f"the model failed to start: {warm['error']}")

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
        return parse_json(body)

    async def predict(request: Request):
        check_ready()
        rows = predictor.rows(await read_json(request))
        outputs = await batcher.submit(rows)
        return JSONResponse({"predictions": predictor.predictions(outputs), "model": model_id})

    async def generate(request: Request):
        data = await read_json(request)
        if not generates:
            raise BadRequest(404, "this model is a classifier: POST /predict")
        check_ready()
        inputs, max_tokens = predictor.generation(data)
        outputs = await asyncio.to_thread(lambda: model(**inputs))
        prompt = data["prompt"]
        completion = predictor.completion(outputs, len(prompt), max_tokens)
        return JSONResponse({"prompt": prompt, "completion": completion, "text": prompt + completion,
                             "model": model_id})

    async def healthz(request: Request):
        if warm["ready"]:
            return JSONResponse({"status": "ok", **model_id, "inputs": model.inputs})
        status = {"status": "warming up", "compiled": warm["done"], "shapes": len(buckets)} if not warm["error"] \
            else {"status": "failed", "error": warm["error"]}
        return JSONResponse({**status, **model_id}, status_code=503, headers={"Retry-After": "1"})

    async def describe(request: Request):
        limits = dict(model.limits)
        if generates:
            limits["max_prompt_chars"] = predictor.max_prompt
        shapes = {"batch": sorted({b["b"] for b in buckets if "b" in b}),
                  **{dim: bucket["sizes"] for dim, bucket in model.buckets.items()}}
        return JSONResponse({"model": model_id, "task": predictor.kind, "inputs": model.inputs,
                             "outputs": model.outputs, "limits": limits, "buckets": shapes,
                             "max_batch": options.max_batch, "ready": warm["ready"]})

    async def metrics(request: Request):
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request):
        return HTMLResponse(_page(predictor, model_id))

    def warm_up(loop: asyncio.AbstractEventLoop) -> None:
        """Compiles every bucket (in a daemon thread: a stop during start-up need not wait for it)."""
        def done_one(bucket):
            warm["done"] += 1
        try:
            model.warm_up(warm_batches, on_bucket=done_one)
            # What start-up made (jax, the model, its programs) lives as long as the server: out of
            # the garbage collector's full passes, which would otherwise walk it all and stall
            # every request in flight.
            gc.freeze()
            warm["ready"] = True
        except Exception as e:  # a model that cannot run: a bug to show, and nothing to serve
            traceback.print_exc()
            warm["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            if on_warm_up_failure:
                loop.call_soon_threadsafe(on_warm_up_failure, warm["error"])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        threading.Thread(target=warm_up, args=(asyncio.get_running_loop(),), name="lab.serve warm-up",
                         daemon=True).start()
        yield
        await batcher.stop()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/generate", generate, methods=["POST"]),
                             Route("/healthz", healthz), Route("/info", describe),
                             Route("/metrics", metrics), Route("/", page)],
                     middleware=[Middleware(CountResponses, record=record)],
                     exception_handlers={BadRequest: bad_request}, lifespan=lifespan)


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


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening, for uvicorn to serve on.

    Raises:
      OSError: the port is busy (or the host unknown, or not this machine's).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses a port in TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
    """`python -m lab.serve`: checks the artifact, binds the port, serves until stopped; a bad
    artifact, a busy port or a model failing its start-up call ends with one `error:` line, exit 1."""
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
    failed: list[str] = []

    def stop_on_failure(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    try:
        app = build_app(args.model, ServeOptions(args.max_batch, args.max_wait_ms, args.max_body_kb * 1024),
                        on_warm_up_failure=stop_on_failure)
    except artifact_lib.ArtifactError as e:
        exit_with_error(str(e), 1)
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as e:
        why = f"port {args.port} is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        exit_with_error(f"cannot listen on {args.host}:{args.port}: {why}; choose another --port "
                        f"(or --host)", 1)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"serving {args.model} on http://{args.host}:{args.port} (POST /predict or /generate, GET /healthz, "
          f"/info, /metrics, /); /healthz answers 503 until its shapes are compiled", flush=True)
    server.run(sockets=[sock])
    if failed:
        exit_with_error(f"the model failed on its start-up call ({failed[0]}): export the run again, and report "
                        f"it if it fails again", 1)


if __name__ == "__main__":
    main()
