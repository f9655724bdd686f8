"""Serving a tuned model over HTTP: an OpenAI-compatible chat endpoint and a web chat page.

``cotune serve RUN_DIR`` (:mod:`cotune.cli.serve`) is the command; in Python::

    from cotune.serve import ServeConfig, load_service
    from cotune.serve.server import BackgroundServer
    service = load_service("runs/first", ServeConfig(max_images=2))
    with BackgroundServer(service, ui=True) as url:
        ...  # POST f"{url}/v1/chat/completions"

Files: ``config.py`` (limits), ``schema.py`` (request checking), ``prepare.py`` (prompt and media),
``engine.py`` (the model worker; streamed text and stop strings come from
:mod:`cotune.model.stream`, shared with ``cotune chat``), ``rows.py`` (a request's job, answer and
row in a batch, with its own sampler), ``service.py``
(loading), ``app.py`` (HTTP routes, needs FastAPI), ``server.py`` (uvicorn), ``static/index.html``
(the chat page). FastAPI and uvicorn (the ``serve`` extra) are imported only by ``app.py`` and
``server.py``.
"""

from cotune.serve.config import ServeConfig
from cotune.serve.engine import Answer, Engine, EngineBusy
from cotune.serve.prepare import GenerationRequest, prepare
from cotune.serve.schema import ChatRequest, RequestError, parse_chat_request
from cotune.serve.service import Service, load_service

__all__ = [
    "Answer", "ChatRequest", "Engine", "EngineBusy", "GenerationRequest", "RequestError", "ServeConfig", "Service",
    "load_service", "parse_chat_request", "prepare",
]
