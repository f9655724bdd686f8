"""Who may talk to the server: API keys, the Host header, cross-site requests, slow clients.

* **API keys** (:func:`read_api_keys`): ``--api-key KEY``, ``--api-key-file PATH`` (one key per
  line; blank lines and ``#`` comments ignored) or ``$COTUNE_API_KEY``. When any is set, every
  endpoint but ``GET /health`` needs ``Authorization: Bearer KEY`` (what OpenAI and vLLM clients
  send) or HTTP Basic with the key as password (what a browser sends for the chat page); anything
  else gets 401. Keys are compared in constant time.
* **Host header** (DNS rebinding): a server listening on a loopback address answers only requests
  whose ``Host`` is a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``), so a web page whose
  domain was re-pointed at 127.0.0.1 cannot reach it; ``--allowed-hosts`` names others (``*``: any).
  A server on any other address accepts any ``Host`` unless ``--allowed-hosts`` is given.
* **Cross-site requests** (CSRF): a POST must be ``Content-Type: application/json`` (a web page
  can send other types to any site without asking; JSON needs a CORS preflight, which this server
  never grants) and, when it carries an ``Origin`` header, that origin must be the server itself.
* **Slow clients**: a connection must deliver a request's headers within ``--read-timeout``
  seconds of opening (or of its previous answer) or it is closed (:func:`http_protocol`); the
  body has the same time again once the headers are in (408, in the app).

:class:`Guard` is the ASGI middleware applying the first three to every request, before FastAPI
sees it. Nothing here has parameters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cotune.config import ConfigError

log = logging.getLogger(__name__)

KEY_ENV = "COTUNE_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/health",)
REALM = "cotune serve"


def read_api_keys(key: str | None = None, key_file: str | Path | None = None, environ=None) -> tuple[str, ...]:
    """The keys from ``--api-key``, else ``--api-key-file``, else ``$COTUNE_API_KEY`` (at most one
    of the two flags); ConfigError for an empty or unreadable source."""
    environ = os.environ if environ is None else environ
    if key is not None and key_file is not None:
        raise ConfigError("--api-key and --api-key-file exclude each other: give the key one way")
    if key is not None:
        return (key.strip(),) if key.strip() else _empty("--api-key")
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--api-key-file: cannot read {path}: {type(err).__name__}: {err}") from None
        keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        return keys or _empty(f"--api-key-file {path}")
    value = environ.get(KEY_ENV)
    if value is not None:
        return (value.strip(),) if value.strip() else _empty(f"${KEY_ENV}")
    return ()


def _empty(source: str):
    raise ConfigError(f"{source}: holds no key (an empty key would let everyone in)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a host name) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_allowed_hosts(allowed: Iterable[str] | None, bind_host: str) -> frozenset[str] | None:
    """The host names a request's ``Host`` may carry (None: any), from ``--allowed-hosts`` or, by
    default, from the address the server listens on (loopback: loopback names only)."""
    if allowed is not None:
        hosts = frozenset(h.strip("[]").lower() for h in allowed)
        return None if "*" in hosts else hosts
    return frozenset(LOOPBACK_NAMES) if is_loopback(bind_host) else None


def exposure_warning(bind_host: str, keys: tuple[str, ...], allowed: frozenset[str] | None) -> str | None:
    """A warning when the server is reachable from other machines without a key, else None."""
    if keys or is_loopback(bind_host):
        return None
    hosts = "any Host header" if allowed is None else f"Host headers {', '.join(sorted(allowed))}"
    return (f"serving on {bind_host} without an API key: anyone who can reach this port can use the model "
            f"({hosts} accepted; a web page can reach it through DNS rebinding); set --api-key-file FILE or "
            f"${KEY_ENV}, or listen on 127.0.0.1")


def _host_name(value: str) -> str:
    """``example.com:8000`` / ``[::1]:8000`` -> ``example.com`` / ``::1`` (lowercase)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _key_of(authorization: str | None) -> str | None:
    """The key a request presents: ``Bearer KEY`` or ``Basic base64(user:KEY)``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value
    if scheme == "basic":
        try:
            return base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError):
            return None
    return None


def _json_error(status: int, message: str, kind: str, code: str, headers: Iterable[tuple[str, str]] = ()):
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return {"type": "http.response.start", "status": status, "headers": raw}, {"type": "http.response.body", "body": body}


class Guard:
    """ASGI middleware: Host check (400), API key (401, not on ``/health``), then for POST the
    origin (403) and the content type (415). ``closing()`` tells whether the server is shutting
    down: a request the server cancels then, before it answered, gets the 503 "shutting down"
    error instead of uvicorn's plain-text 500."""

    def __init__(self, app, keys: tuple[str, ...], allowed_hosts: frozenset[str] | None, closing: Callable[[], bool],
                 shutting_down: str) -> None:
        self.app, self.keys, self.allowed_hosts, self.closing = app, tuple(k.encode() for k in keys), allowed_hosts, closing
        self.shutting_down = shutting_down

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            start, body = refusal
            await send(start)
            await send(body)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started or not self.closing():
                raise
            start, body = _json_error(503, self.shutting_down, "server_busy", "shutting_down", [("Connection", "close")])
            await send(start)
            await send(body)

    def refusal(self, scope):
        """The (start, body) messages refusing this request, or None to let it through."""
        host = _header(scope, b"host")
        if self.allowed_hosts is not None and (host is None or _host_name(host) not in self.allowed_hosts):
            shown = "none" if host is None else repr(host[:100])
            return _json_error(400, f"Host header {shown} is not allowed on this server (see --allowed-hosts)",
                               "invalid_request_error", "invalid_host")
        if self.keys and scope["path"] not in OPEN_PATHS:
            given = _key_of(_header(scope, b"authorization"))
            # every key compared, each in constant time
            if given is None or not any([hmac.compare_digest(given.encode("utf-8", "replace"), key) for key in self.keys]):
                message = ("missing API key: send 'Authorization: Bearer KEY'" if given is None
                           else "invalid API key")
                # one challenge per header: Chromium reads only the first challenge of a header, so
                # "Bearer ..., Basic ..." in one would never show its login prompt for the chat page
                challenges = [("WWW-Authenticate", f'{scheme} realm="{REALM}"') for scheme in ("Bearer", "Basic")]
                return _json_error(401, message, "invalid_request_error", "invalid_api_key", challenges)
        if scope["method"] == "POST":
            origin = _header(scope, b"origin")
            if origin is not None and (host is None or origin.lower().partition("://")[2].rstrip("/") != host.lower()):
                return _json_error(403, f"cross-origin request from {origin[:100]!r} refused", "permission_error",
                                   "cross_origin")
            kind = (_header(scope, b"content-type") or "").partition(";")[0].strip().lower()
            if kind != "application/json":
                return _json_error(415, f"Content-Type must be application/json, got {kind[:100] or 'none'!r}",
                                   "invalid_request_error", "unsupported_media_type")
        return None


def http_protocol(read_timeout: float):
    """uvicorn's h11 protocol class, closing connections that do not deliver a request's headers
    within ``read_timeout`` seconds of opening or of the previous answer (uvicorn itself waits
    forever for half-sent headers). None if uvicorn's h11 protocol cannot be imported."""
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:  # pragma: no cover - a uvicorn without its h11 protocol
        return None

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(read_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                return  # a request is being answered: its body has its own timeout in the app
            if not self.transport.is_closing():
                log.debug("closing a connection that sent no complete request within %g s", read_timeout)
                self.transport.close()

    return HeadTimeoutProtocol
