"""A prediction API for one run: `POST /predict` (multipart `file` fields) answers what `predict --json` prints.

Concurrent requests are batched: handlers decode their uploads in the thread pool and queue them; one inference
thread takes whatever is queued (up to MAX_BATCH pictures, waiting at most `batch_wait_s` for more) and runs it as
one batch, so eight clients cost about one forward pass each round, not eight. Uploads are hostile: the body is
capped before it is parsed, every file must decode (Pillow's size guard included), and the file name is only ever
echoed back as text. Loopback by default; any other address needs a token (`Authorization: Bearer`), as the
dashboard needs its password.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tl_core.dashboard import auth
from tl_core.data.images import BadImage, open_rgb
from tl_core.use.predict import Predictor

TOKEN_ENV = "TL_STUDIO_API_TOKEN"
MAX_BODY_BYTES = 32 * 1024 * 1024  # one request: a few phone photos
MAX_FILES = 32
MAX_BATCH = 32  # pictures per forward pass
NAME_CHARS = 200  # an upload's name is echoed back, cut to this


class UploadRejected(Exception):
    """A request the API refuses, with its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    images: list[Image.Image]
    names: list[str]
    top_k: int
    done: threading.Event = field(default_factory=threading.Event)
    result: list[dict] | None = None
    error: str | None = None


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0  # requests answered by one forward pass


class BatchedPredictor:
    """One inference thread over a queue of decoded requests: concurrent requests share forward passes."""

    def __init__(self, predictor: Predictor, batch_wait_s: float = 0.005):
        self.predictor, self.batch_wait_s = predictor, batch_wait_s
        self.stats = Stats()
        self._queue: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._loop, name="tl-serve-inference", daemon=True).start()

    async def predict(self, images: list[Image.Image], names: list[str], top_k: int) -> list[dict]:
        job = _Job(images, names, top_k)
        self._queue.put(job)
        await run_in_threadpool(job.done.wait)
        if job.error:
            raise UploadRejected(500, job.error)
        return job.result or []

    def _take(self) -> list[_Job]:
        jobs = [self._queue.get()]
        deadline = time.monotonic() + self.batch_wait_s
        while sum(len(j.images) for j in jobs) < MAX_BATCH:
            try:
                jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            try:
                k = max(j.top_k for j in jobs)
                predictions = iter(self.predictor.predict([im for j in jobs for im in j.images], k))
                threshold = self.predictor.threshold
                for j in jobs:
                    j.result = []
                    for name in j.names:
                        p = next(predictions)
                        p.file, p.top = name, p.top[: j.top_k]
                        j.result.append({**p.to_dict(), "answer": p.answer(threshold)})
            except Exception as e:  # one failed batch answers 500 to its requests; the thread goes on
                for j in jobs:
                    j.error = f"prediction failed ({type(e).__name__}: {str(e)[:200]})"
            self.stats.requests += len(jobs)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
            for j in jobs:
                j.done.set()


async def _capped_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes MAX_BODY_BYTES (before any parsing)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise UploadRejected(413, f"request too large ({int(declared):,} bytes; limit {MAX_BODY_BYTES:,})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise UploadRejected(413, f"request too large (over {MAX_BODY_BYTES:,} bytes)")
    return bytes(body)


async def _uploads(request: Request) -> list[tuple[str, bytes]]:
    body = await _capped_body(request)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except Exception as e:  # malformed multipart, too many parts
        raise UploadRejected(400, f"not a multipart form with `file` fields ({str(e)[:120]})") from None
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise UploadRejected(400, "no picture: send one or more multipart fields named `file`")
    return [(_name(f.filename, i), await f.read()) for i, f in enumerate(files)]


def _name(filename: str | None, i: int) -> str:
    """The upload's name as plain text for the answer: its last path part, cut short; never used as a path."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(ch for ch in name if ch.isprintable())[:NAME_CHARS] or f"upload {i + 1}"


def _decode(uploads: list[tuple[str, bytes]], min_side: int) -> list[Image.Image]:
    """Every upload decoded as `predict` decodes a file, or a 400 naming the first that is not a picture."""
    images = []
    for name, data in uploads:
        try:
            images.append(open_rgb(io.BytesIO(data), min_side=min_side))
        except BadImage as e:
            raise UploadRejected(400, f"{name}: {e}") from None
    return images


def _top_k(request: Request, classes: int) -> int:
    raw = request.query_params.get("top_k", "3")
    if not raw.isdigit() or int(raw) < 1:
        raise UploadRejected(400, f"top_k must be a whole number from 1, not {raw[:20]!r}")
    return min(int(raw), classes)


def openapi(classes: list[str]) -> dict:
    """A hand-written OpenAPI 3.1 description of the three routes."""
    prediction = {"type": "object", "properties": {
        "file": {"type": "string", "description": "the upload's file name"},
        "top": {"type": "array", "items": {"type": "array", "prefixItems": [{"type": "string", "enum": classes}, {"type": "number"}]},
                "description": "top-k [class, calibrated probability], most probable first"},
        "answer": {"type": "string", "description": "the top class, or 'unsure / none of these' below the run's threshold"}}}
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    return {"openapi": "3.1.0", "info": {"title": "TL Studio prediction API", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": {
                "/predict": {"post": {
                    "summary": "Classify one or more pictures (the JSON of `predict --json`)",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 3}}],
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                                                   "maxItems": MAX_FILES}}}}}},
                    "responses": {"200": {"description": "one prediction per file, in order",
                                          "content": {"application/json": {"schema": {"type": "array", "items": prediction}}}},
                                  **{code: {"description": why, "content": {"application/json": {"schema": error}}}
                                     for code, why in (("400", "not a picture, no file, bad top_k"), ("401", "token missing or wrong"),
                                                       ("413", f"request over {MAX_BODY_BYTES:,} bytes"))}}}},
                "/health": {"get": {"summary": "The run served and batching counts", "responses": {"200": {"description": "ok"}}}},
                "/openapi.json": {"get": {"summary": "This description", "responses": {"200": {"description": "ok"}}}}}}


def create_app(run_dir: str | Path, token: str | None = None, device: str | None = None,
               batch_wait_s: float = 0.005) -> Starlette:
    """The API for one run; with a token, `/predict` needs `Authorization: Bearer <token>`."""
    predictor = Predictor.from_run(run_dir, device)
    batched = BatchedPredictor(predictor, batch_wait_s)
    run_id = Path(run_dir).name
    schema = openapi(predictor.classes)

    async def predict(request: Request) -> JSONResponse:
        try:
            if token and not auth.check(request.headers.get("authorization", "").removeprefix("Bearer ").strip(), token):
                raise UploadRejected(401, "missing or wrong token: send `Authorization: Bearer <token>`")
            top_k = _top_k(request, len(predictor.classes))
            uploads = await _uploads(request)
            images = await run_in_threadpool(_decode, uploads, predictor.prep.resize)
            return JSONResponse(await batched.predict(images, [n for n, _ in uploads], top_k))
        except UploadRejected as e:
            return JSONResponse({"error": str(e)}, e.status)

    async def health(request: Request) -> JSONResponse:
        s = batched.stats
        return JSONResponse({"status": "ok", "run": run_id, "backbone": predictor.backbone, "classes": predictor.classes,
                             "unsure_below": predictor.threshold, "requests": s.requests, "batches": s.batches,
                             "largest_batch": s.largest_batch})

    async def schema_route(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health),
                             Route("/openapi.json", schema_route)])


def token_for(host: str, token: str | None) -> str | None:
    """The token the server will require: given or from TL_STUDIO_API_TOKEN; an exposed address without one is
    refused (ValueError), as the dashboard refuses to be exposed without its password."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if auth.is_exposed(host) and not token:
        raise ValueError(f"Serving on {host} exposes the model to other machines: set a token with --token or "
                         f"{TOKEN_ENV} (clients send `Authorization: Bearer <token>`), or serve on 127.0.0.1.")
    return token


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str | None = None) -> None:
    import uvicorn

    app = create_app(run_dir, token_for(host, token), device)
    uvicorn.run(app, host=host, port=port, log_level="warning")

