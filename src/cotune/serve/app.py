"""The HTTP application: OpenAI-compatible chat completions, model list, health, the web chat UI.

Every request first passes :class:`~cotune.serve.security.Guard` (Host header, API key, and for
POST the origin and ``Content-Type: application/json``). ``POST /v1/chat/completions`` reads the
body (at most ``max_request_mb``, within ``read_timeout`` seconds), then in a worker thread of the
server (at most ``prepare_workers`` requests at a time) parses and checks it
(:mod:`cotune.serve.schema`), renders the prompt and decodes the media (:mod:`cotune.serve.prepare`),
then queues it for the model (:mod:`cotune.serve.engine`). It answers once the request reached the model: as one
``chat.completion`` object, or with ``"stream": true`` as server-sent events, one
``chat.completion.chunk`` per piece of text, ending with ``data: [DONE]``. A client that goes away
stops its generation at the next token, streamed or not. Errors are OpenAI-style ``{"error":
{"message", "type", "param", "code"}}`` with a 4xx status for bad requests and 503 when the model
is too busy or the server is shutting down. Needs the ``serve`` extra (FastAPI); this module is
imported only by the serving code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from cotune.serve.engine import SHUTTING_DOWN, Answer, ContextTooLong, EngineBusy, ShuttingDown, Unroutable
from cotune.serve.prepare import prepare
from cotune.serve.schema import ChatRequest, RequestError, parse_chat_request, parse_json
from cotune.serve.security import Guard, resolve_allowed_hosts
from cotune.serve.service import Service

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 415: "invalid_request_error",
               500: "server_error", 503: "server_busy"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 503 else {"Connection": "close"} if status == 408 else None
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(service: Service, ui: bool = False, bind_host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app serving ``service``; the model worker runs while the app does (lifespan).
    With ``ui``, ``GET /`` is the web chat page. ``bind_host`` (where the server listens) decides
    the default allowed ``Host`` headers (:func:`~cotune.serve.security.resolve_allowed_hosts`)."""
    config = service.config

    async def lifespan(_app):
        service.engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.engine.stop, config.shutdown_timeout)

    app = FastAPI(title=f"cotune: {service.name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, keys=config.api_keys, allowed_hosts=resolve_allowed_hosts(config.allowed_hosts, bind_host),
                       closing=lambda: service.engine.closing, shutting_down=SHUTTING_DOWN)
    preparing = asyncio.Semaphore(config.prepare_workers)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestError)
    async def request_error(_request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.get("/health")
    async def health():
        engine = service.engine
        return {"status": "ok", "model": service.name, "waiting": engine.waiting, "running": engine.running, "busy": engine.busy,
                "completed": engine.completed}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [service.describe()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        # the config is read per request: tests change the service's limits on a running server
        body = await _read_body(request, service.config.max_request_bytes, service.config.read_timeout)
        with service.engine.expecting():  # until it is queued: a batch about to start may wait for it
            # Parsing counts as preparing: at its peak it holds the body, its JSON strings and the
            # decoded media (about 3x the body), so only prepare_workers requests hold that at once;
            # in a thread, so a large body does not stall the event loop's other connections.
            async with preparing:
                chat, generation = await run_in_threadpool(_parse_and_prepare, service, body)
            del body  # not held while the request waits for the model and generates
            events, job = _submit(service, chat, generation)
        return await _answer(request, service, chat, events, job)

    if ui:
        page = resources.files("cotune.serve").joinpath("static/index.html").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        async def index():
            return HTMLResponse(page)

    return app


def _parse_and_prepare(service: Service, body: bytes):
    """(the checked request, what the model worker runs) from a request body; RequestError otherwise."""
    chat = parse_chat_request(parse_json(body), service.config, service.name)
    generation = prepare(chat, service.spec, service.config, service.engine.positions)
    chat.media = []  # their bytes are decoded into generation.media: not held while the request waits
    return chat, generation


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {int(declared):,} bytes; the limit is {limit:,} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s", code="read_timeout") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body was read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Events:
    """Carries the worker's events into the event loop (the sink passed to Engine.submit); without
    ``text``, pieces of text are dropped (a non-streamed answer waits for the whole)."""

    def __init__(self, text: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text = text

    def __call__(self, event) -> None:
        if self.text or event[0] != "text":
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next(self, gone: asyncio.Future, timeout: float | None = None) -> tuple[str, object]:
        """The next event; ("gone", None) when the client left first, ("timeout", None) after ``timeout`` s."""
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({getter, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return ("gone", None) if gone in done else ("timeout", None)


def _failure(value) -> JSONResponse:
    if value == SHUTTING_DOWN:
        return error_response(503, SHUTTING_DOWN, code="shutting_down")
    return error_response(500, str(value), code="generation_failed")


def _submit(service: Service, chat: ChatRequest, generation):
    events = _Events(text=chat.stream)
    try:
        return events, service.engine.submit(generation, events)
    except ShuttingDown:
        raise RequestError(503, SHUTTING_DOWN, code="shutting_down") from None
    except EngineBusy as busy:
        raise RequestError(503, f"server busy: {busy}", code="queue_full") from None
    except Unroutable as err:
        raise RequestError(400, f"messages: {err}", "messages", "unsupported_modalities") from None
    except ContextTooLong as err:
        param = "max_tokens" if chat.max_tokens_given else "messages"
        raise RequestError(400, f"{param}: {err}", param, "context_length_exceeded") from None


async def _answer(request: Request, service: Service, chat: ChatRequest, events: "_Events", job):
    gone = asyncio.ensure_future(_disconnected(request))
    streaming = False
    try:
        timeout = service.config.queue_timeout
        kind, value = await events.next(gone, timeout)
        if kind == "timeout":
            raise RequestError(503, f"server busy: the request waited {timeout:g} s for the model; try again later",
                               code="queue_timeout")
        if kind == "gone":
            return error_response(400, "the client went away")  # never sent
        if kind == "error":
            return _failure(value)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": service.name}
        if chat.stream:
            streaming = True
            return StreamingResponse(_sse(events, job, meta, chat.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while True:
            kind, value = await events.next(gone)
            if kind == "done":
                return _completion(meta, value)
            if kind == "error":
                return _failure(value)
            if kind == "gone":
                return error_response(400, "the client went away")  # never sent
    finally:
        gone.cancel()  # the streaming response watches for the client itself
        if not streaming:
            job.cancel()  # no-op when finished; skips or stops the generation otherwise


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _completion(meta: dict, answer: Answer) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": answer.finish_reason}
    return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(answer)}


def _chunk(meta: dict, delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(events: _Events, job, meta: dict, include_usage: bool):
    try:
        yield _chunk(meta, {"role": "assistant", "content": ""})
        while True:
            kind, value = await events.queue.get()
            if kind == "text":
                yield _chunk(meta, {"content": value})
            elif kind == "done":
                yield _chunk(meta, {}, value.finish_reason)
                if include_usage:
                    yield _chunk(meta, None, usage=_usage(value))
                break
            elif kind == "error":
                kind, code = ("server_busy", "shutting_down") if value == SHUTTING_DOWN else ("server_error", "generation_failed")
                yield f"data: {json.dumps({'error': {'message': str(value), 'type': kind, 'code': code}})}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away mid-answer: stop generating for it
