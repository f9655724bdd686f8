"""Running the app with uvicorn: in the foreground (``cotune serve``) or in a background thread on
a free loopback port (:class:`BackgroundServer`, for tests, benchmarks and notebooks).

Shutdown (SIGTERM, Ctrl-C, leaving a BackgroundServer) answers every request the server accepted:
it stops listening, requests waiting for the model get the 503 "the server is shutting down" error
at once, the running batch may finish within ``shutdown_timeout`` seconds (its unfinished rows then
get that error: a non-streamed request as a 503, a stream as an error event and ``data: [DONE]``),
requests still being read or prepared get it when they would queue, and uvicorn closes the
connections once they are answered. Connections are limited (``max_connections``) and must
deliver their headers within ``read_timeout`` (:func:`cotune.serve.security.http_protocol`).

Needs the ``serve`` extra (FastAPI + uvicorn), imported only when a server is started.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

from cotune.serve.service import Service

log = logging.getLogger(__name__)

MISSING_EXTRA = "cotune serve needs FastAPI and uvicorn: pip install 'cotune[serve]'"


def require_serve_extra() -> None:
    """Raises ImportError with :data:`MISSING_EXTRA` when FastAPI or uvicorn is not installed."""
    try:
        import fastapi  # noqa: F401 - only checking that it is installed
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{MISSING_EXTRA} ({err})") from None


def _uvicorn_config(service: Service, ui: bool, host: str, port: int, log_level: str):
    import uvicorn

    from cotune.serve.app import create_app
    from cotune.serve.security import http_protocol

    config = service.config
    return uvicorn.Config(create_app(service, ui=ui, bind_host=host), host=host, port=port, log_level=log_level,
                          access_log=log_level == "debug", http=http_protocol(config.read_timeout) or "h11",
                          limit_concurrency=config.max_connections, timeout_graceful_shutdown=config.shutdown_timeout + 5)


def _server(service: Service, config):
    """A uvicorn Server whose shutdown first closes the model worker (see the module docstring)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            service.engine.close(service.config.shutdown_timeout)
            await super().shutdown(sockets=sockets)

    return Server(config)


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000, ui: bool = False, log_level: str = "info") -> None:
    """Serves ``service`` until interrupted (Ctrl-C / SIGINT or SIGTERM), then returns normally.

    uvicorn shuts down gracefully on those signals and then re-raises them to the handlers it found;
    in the main thread those are replaced by handlers that only note the signal, so a stopped
    server is a normal exit (status 0), not a KeyboardInterrupt.
    """
    server = _server(service, _uvicorn_config(service, ui, host, port, log_level))
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped%s", f" by {signal.Signals(received[0]).name}" if received else "")


class BackgroundServer:
    """``with BackgroundServer(service) as url:`` serves ``service`` on a free 127.0.0.1 port in a
    daemon thread and stops it (and its model worker) on exit."""

    def __init__(self, service: Service, ui: bool = False, log_level: str = "warning") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = _server(service, _uvicorn_config(service, ui, "127.0.0.1", self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="cotune-serve-http", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.server.config.timeout_graceful_shutdown + 30)
        self.sock.close()
