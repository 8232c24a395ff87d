"""The OpenAI-compatible HTTP API over one engine (serve/engines.py), as a FastAPI app.

    app = create_app(open_engine("runs/tiny/student-kd/final"), Settings(api_key="secret"))
    uvicorn.run(app, host="127.0.0.1", port=8000)        # what `python -m serve` does

POST /v1/chat/completions (text and image_url parts; `stream: true` as server-sent events ending with
[DONE], the first chunk sent with the first token; usage and `timings` {ttft_ms, tokens_per_s,
total_ms} in every reply), GET /v1/models, GET /health, GET /metrics (Prometheus). The engine answers
one request at a time; up to `max_queue` more wait, and the next gets 429. Every refusal is an
OpenAI-style error body naming the limit: 413 for a body, image or pixel count over its limit, 400
for malformed JSON, a bad field, bad base64, bytes that are no image, too many images, max_tokens
over the cap or a prompt that leaves no room in the context, 401 for a missing or wrong API key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.engines import Engine
from serve.errors import ApiError, error_body
from serve.generation import Completion
from serve.images import ImageLimits, read_image
from serve.metrics import Metrics
from serve.protocol import ChatRequest, template_messages
from serve.sampling import Sampler


@dataclass
class Settings:
    api_key: str | None = None
    max_request_bytes: int = 20 * 2**20
    images: ImageLimits = field(default_factory=ImageLimits)
    max_images: int = 1
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_queue: int = 16


class Place:
    """One admitted request's place in the gate, freed exactly once: by the engine job that ran the
    request (when it ends, so a client that left cannot make room while its job still waits or runs),
    or, for a request whose job was never submitted, by the request itself."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.lock = threading.Lock()
        self.freed = False
        self.submitted = False

    def free(self) -> None:
        with self.lock:
            if self.freed:
                return
            self.freed = True
        self.gate.leave()

    def free_unless_submitted(self) -> None:
        if not self.submitted:
            self.free()


class Delivery:
    """The text pieces of one streamed completion, handed from the engine thread to the event loop
    that writes the reply. Made on that loop; `send` may be called from any thread."""

    def __init__(self, on_cancel: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.on_cancel = on_cancel  # called once when the job skips or stops because the client left

    def send(self, kind: str, value: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def produce(self, completion: Completion) -> None:
        """The engine job: run the completion unless the client has already left, stop when it leaves."""
        try:
            left = self.cancelled.is_set()
            if not left:
                for text in completion:
                    self.send("text", text)
                    if self.cancelled.is_set():
                        left = True
                        break
            if left and self.on_cancel is not None:
                self.on_cancel()
            self.send("end", None)
        except Exception as error:  # reported in the stream by the reader
            self.send("error", error)

    async def pieces(self) -> AsyncIterator[str]:
        """The pieces as they come; leaving early (the client went away) stops the generation."""
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.cancelled.set()


class Gate:
    """One request in the engine at a time, at most `max_queue` waiting; beyond that, 429.

    Every engine call runs on one dedicated thread: the queue is that thread's, and the runtimes'
    thread pools (OpenMP for torch and llama.cpp) are built once, not once per calling thread. A
    request takes its place before its images are decoded, and keeps it until its job has ended."""

    def __init__(self, max_queue: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.count_lock = threading.Lock()
        self.admitted = 0
        self.limit = max_queue + 1

    def admit(self) -> Place:
        with self.count_lock:
            if self.admitted >= self.limit:
                raise ApiError(
                    429,
                    f"the server is busy: {self.admitted} requests running or queued (limit {self.limit})",
                    code="rate_limit_exceeded",
                )
            self.admitted += 1
        return Place(self)

    def leave(self) -> None:
        with self.count_lock:
            self.admitted -= 1

    def idle(self) -> bool:
        """Whether the request just admitted is the only one running or waiting."""
        with self.count_lock:
            return self.admitted == 1

    def submit(self, place: Place, job: Callable[[], Any]) -> Future:
        """Run `job` on the engine thread; the place is freed when it ends."""

        def run() -> Any:
            try:
                return job()
            finally:
                place.free()

        place.submitted = True
        return self.executor.submit(run)


def create_app(engine: Engine, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    gate = Gate(settings.max_queue)
    metrics = Metrics()
    app = FastAPI(title="edge-llava serve", version="1.0", description=__doc__.split("\n\n")[0])
    app.state.engine, app.state.settings, app.state.metrics, app.state.gate = engine, settings, metrics, gate

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        metrics.error(error.status)
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.error(400)
        return JSONResponse(error_body(400, describe(error.errors())), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        metrics.error(error.status_code)
        return JSONResponse(error_body(error.status_code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        metrics.error(500)
        return JSONResponse(error_body(500, f"internal error: {type(error).__name__}"), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given, expected = token.strip().encode("utf-8", "surrogateescape"), settings.api_key.encode()
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise ApiError(
                401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key"
            )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "backend": engine.backend}

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "local"}],
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post(
        "/v1/chat/completions",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                    }
                },
            }
        },
    )
    async def chat(request: Request) -> Any:
        started = time.perf_counter()
        authorize(request)
        body = await read_body(request, settings.max_request_bytes)
        try:
            chat_request = ChatRequest.model_validate_json(body)
        except ValidationError as error:
            raise ApiError(400, describe(error.errors(include_url=False))) from None
        place = gate.admit()  # 429 before any image is decoded
        delivery = Delivery(metrics.cancelled) if chat_request.stream else None
        try:
            completion, job = await start(engine, settings, chat_request, gate, place, delivery, started)
        except BaseException:
            if delivery is not None:
                delivery.cancelled.set()
            place.free_unless_submitted()
            raise
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if delivery is not None:
            events = stream_events(
                completion, delivery, metrics, reply_id, created, engine.name, chat_request.usage_chunk()
            )
            return StreamingResponse(
                cancelled_on_collection(events, delivery),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text = await asyncio.wrap_future(job)
        metrics.completed(completion)
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": engine.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": completion.usage(),
            "timings": completion.timings(),
        }

    app.openapi_schema = None
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original_openapi()
        definitions = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}").pop(
            "$defs", {}
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return schema

    app.openapi = openapi
    return app


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"request body is {int(declared):,} bytes, over the limit of {limit:,}",
            code="request_too_large",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(
                413, f"request body is over the limit of {limit:,} bytes", code="request_too_large"
            )
    return bytes(body)


def prepare(engine: Engine, settings: Settings, request: ChatRequest) -> tuple[Any, Sampler, int]:
    """Images read, prompt rendered and measured against the context, limits checked: before any queueing."""
    try:
        messages, urls = template_messages(request, engine.image_text)
    except ValueError as error:
        raise ApiError(400, str(error), "messages") from None
    if len(urls) > settings.max_images:
        raise ApiError(
            400, f"{len(urls)} images in the request; the limit is {settings.max_images}", "messages"
        )
    images = [read_image(url, settings.images) for url in urls]
    try:
        prompt = engine.prompt(messages, images)
    except Exception as error:  # a template that refuses the roles, an image placeholder typed as text
        raise ApiError(400, f"the messages cannot be rendered: {error}", "messages") from None
    requested = request.requested_tokens()
    if requested is not None and requested > settings.max_tokens_cap:
        raise ApiError(
            400, f"max_tokens {requested} is over the server's cap of {settings.max_tokens_cap}", "max_tokens"
        )
    max_tokens = requested or min(settings.default_max_tokens, settings.max_tokens_cap)
    room = engine.context - prompt.tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {prompt.tokens} tokens; the model's context is {engine.context}",
            "messages",
            "context_length_exceeded",
        )
    if requested is not None and requested > room:
        raise ApiError(
            400,
            f"prompt ({prompt.tokens} tokens) + max_tokens ({requested}) exceeds the context of {engine.context}",
            "max_tokens",
            "context_length_exceeded",
        )
    max_tokens = min(max_tokens, room)
    try:
        sampler = Sampler(request.temperature, request.top_p, request.sampling_seed())
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    return prompt, sampler, max_tokens


async def start(
    engine: Engine,
    settings: Settings,
    request: ChatRequest,
    gate: Gate,
    place: Place,
    delivery: Delivery | None,
    started: float,
) -> tuple[Completion, Future]:
    """Prepare the request (images, prompt, limits) and submit its generation; returns the completion
    once prepared and the job's future (a streamed job sends its pieces to `delivery`, any other
    returns the whole text). An idle engine thread prepares the request itself and goes straight on to
    generate: one thread hop from the event loop instead of three, which is 1 ms of the tiny model's
    5 ms time to first token here. Behind other requests, a worker thread prepares it, so a bad
    request is refused at once, not after the queue."""

    def prepared() -> Completion:
        prompt, sampler, max_tokens = prepare(engine, settings, request)
        return Completion(engine, prompt, sampler, max_tokens, request.stop_strings(), started)

    def generate(completion: Completion) -> str | None:
        if delivery is not None:
            delivery.produce(completion)
            return None
        return "".join(completion)

    if gate.idle():
        ready: Future = Future()

        def prepare_then_generate() -> str | None:
            try:
                completion = prepared()
            except BaseException as error:
                ready.set_exception(error)
                return None
            ready.set_result(completion)
            return generate(completion)

        job = gate.submit(place, prepare_then_generate)
        return await asyncio.wrap_future(ready), job
    completion = await run_in_threadpool(prepared)
    return completion, gate.submit(place, lambda: generate(completion))


def cancelled_on_collection(events: AsyncIterator[str], delivery: Delivery) -> AsyncIterator[str]:
    """A client gone before the first chunk: Starlette never starts the generator, so its job is told
    to skip when the generator is collected (the job frees the request's place when it comes up)."""
    weakref.finalize(events, delivery.cancelled.set)
    return events


async def stream_events(
    completion: Completion,
    delivery: Delivery,
    metrics: Metrics,
    reply_id: str,
    created: int,
    model: str,
    usage_chunk: bool = False,
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text (the first carries the role and goes out with the
    first token, its content "" when nothing is visible yet), a last chunk with the finish reason, usage
    and timings, then [DONE]. With `usage_chunk` (stream_options.include_usage) the usage comes as
    OpenAI sends it: null in every chunk, then one more chunk with no choices and the usage."""

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
            **({"usage": None} if usage_chunk else {}),
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    try:
        first = True
        async for text in delivery.pieces():
            yield chunk({"role": "assistant", "content": text} if first else {"content": text})
            first = False
        if usage_chunk:
            yield chunk({}, completion.finish_reason, timings=completion.timings())
            yield chunk(None, usage=completion.usage())
        else:
            yield chunk({}, completion.finish_reason, usage=completion.usage(), timings=completion.timings())
        metrics.completed(completion)
        yield "data: [DONE]\n\n"
    except Exception as error:  # the status line is gone: report in the stream, then end it
        metrics.error(500)
        yield f"data: {json.dumps(error_body(500, f'generation failed: {type(error).__name__}'))}\n\n"
        yield "data: [DONE]\n\n"


def describe(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts[:5])
