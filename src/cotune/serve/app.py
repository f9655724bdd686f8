"""The HTTP application: OpenAI-compatible chat completions, model list, health, the web chat UI.

``POST /v1/chat/completions`` reads the body (at most ``max_request_mb``), checks it
(:mod:`cotune.serve.schema`), renders the prompt and decodes the media in a worker thread of the
server (:mod:`cotune.serve.prepare`), then queues it for the model (:mod:`cotune.serve.engine`).
It answers once the request reached the model: as one ``chat.completion`` object, or with
``"stream": true`` as server-sent events, one ``chat.completion.chunk`` per piece of text, ending
with ``data: [DONE]``. Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status for bad requests and 503 when the model is too busy. Needs the ``serve`` extra
(FastAPI); this module is imported only by the serving code.
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

from cotune.serve.engine import Answer, EngineBusy
from cotune.serve.prepare import prepare
from cotune.serve.schema import ChatRequest, RequestError, parse_chat_request
from cotune.serve.service import Service

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               503: "server_busy"}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(service: Service, ui: bool = False) -> FastAPI:
    """The FastAPI app serving ``service``; the model worker runs while the app does (lifespan).
    With ``ui``, ``GET /`` is the web chat page."""

    async def lifespan(_app):
        service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    app = FastAPI(title=f"cotune: {service.name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestError)
    async def request_error(_request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.get("/health")
    async def health():
        engine = service.engine
        return {"status": "ok", "model": service.name, "waiting": engine.waiting, "busy": engine.busy, "completed": engine.completed}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [service.describe()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_json(request, service.config.max_request_bytes)
        chat = parse_chat_request(body, service.config, service.name)
        generation = await run_in_threadpool(prepare, chat, service.spec, service.config)
        return await _answer(service, chat, generation)

    if ui:
        page = resources.files("cotune.serve").joinpath("static/index.html").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        async def index():
            return HTMLResponse(page)

    return app


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {int(declared):,} bytes; the limit is {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the request body is not valid JSON: {err}") from None


class _Events:
    """Carries the worker's events into the event loop (the sink passed to Engine.submit)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


async def _answer(service: Service, chat: ChatRequest, generation):
    events = _Events()
    try:
        job = service.engine.submit(generation, events)
    except EngineBusy as busy:
        raise RequestError(503, f"server busy: {busy}", code="queue_full") from None
    timeout = service.config.queue_timeout
    try:
        kind, value = await asyncio.wait_for(events.queue.get(), timeout)
    except asyncio.TimeoutError:
        job.cancel()
        raise RequestError(503, f"server busy: the request waited {timeout:g} s for the model; try again later",
                           code="queue_timeout") from None
    except asyncio.CancelledError:  # the client went away while waiting
        job.cancel()
        raise
    if kind == "error":
        return error_response(503, str(value))
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": service.name}
    if chat.stream:
        return StreamingResponse(_sse(events, job, meta, chat.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        while True:
            kind, value = await events.queue.get()
            if kind == "done":
                return _completion(meta, value)
            if kind == "error":
                return error_response(500, str(value))
    finally:
        job.cancel()  # no-op when finished; stops the generation if the client went away


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
                yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away mid-answer: stop generating for it
