"""The OpenAI chat request, checked field by field into a :class:`ChatRequest`.

Every problem raises :class:`RequestError` with an HTTP status (400, 403, 404, 413) and a message
that names the offending field by its JSON path (``messages[1].content[0].image_url.url``). Media
are only located here (bytes of a data URL, a path under the media root); decoding them is
:mod:`cotune.serve.prepare`'s job. Nothing here has parameters.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import math
import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from cotune.data.schema import MEDIA_MARKERS, Message
from cotune.serve.config import ServeConfig

#: Request fields this server reads.
FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "stream",
          "stream_options", "n", "user")
#: OpenAI fields it does not implement: accepted only with their neutral value (or null).
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": 0, "parallel_tool_calls": None,
           "tools": None, "tool_choice": None, "response_format": None, "logit_bias": None, "store": False, "metadata": None}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg"}
AUDIO_FORMATS = ("wav", "flac")
MAX_STOPS = 4
#: Longest stop string (each generated token is checked against every prefix of every stop string).
MAX_STOP_CHARS = 256
#: Deepest nesting of arrays and objects a request body may have (a chat request needs 6).
MAX_DEPTH = 32
#: Most commas, ``[`` and ``{`` a request body may hold, strings included: a bound on the number of
#: JSON values, so parsing costs about the body's size in memory (``[[],[],...]`` would cost 25x
#: the body as Python lists). Media payloads (base64) hold none; a conversation that fits a model's
#: context holds far fewer.
MAX_JSON_ITEMS = 50_000


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/503), a message, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class MediaItem:
    """One image or audio item as sent: where in the request, its bytes and declared format."""

    kind: str
    where: str
    data: bytes
    format: str


@dataclass
class ChatRequest:
    """A checked request: cotune messages (media markers placed in the turn that carried each item)
    and the media in marker order, plus the generation settings."""

    messages: list[Message]
    media: list[MediaItem]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    max_tokens_given: bool = True  # False: max_tokens is the server's default (it may be lowered to fit the context)


def _bad(where: str, message: str, status: int = 400) -> RequestError:
    return RequestError(status, f"{where}: {message}", param=where)


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (values are echoed in error messages)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_json(raw: bytes):
    """A request body -> its JSON value; RequestError 400 for anything that is not JSON a request
    can hold: malformed, numbers too long to convert, nested more than MAX_DEPTH levels, or strings
    holding lone surrogates (``"\\ud800"``, which no tokenizer or UTF-8 encoder accepts)."""
    items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if items > MAX_JSON_ITEMS:
        raise RequestError(400, f"the request body holds {items:,} commas and brackets; the limit is {MAX_JSON_ITEMS:,} "
                                "(send media as base64 data, not as JSON arrays)")
    deep = f"the request body is not valid JSON: nested more than {MAX_DEPTH} levels deep"
    try:
        value = json.loads(raw)
    except RecursionError:
        raise RequestError(400, deep) from None
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, and int() of more than 4300 digits
        raise RequestError(400, f"the request body is not valid JSON: {_cut(str(err), 200)}") from None
    stack = [(value, 0)] if isinstance(value, (dict, list)) else []  # containers only: scalars are checked as they are met
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise RequestError(400, deep)
        if isinstance(item, dict):
            for key in item:
                _unicode(key)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, str):
                _unicode(child)
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    if isinstance(value, str):
        _unicode(value)
    return value


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _unicode(text: str) -> None:
    if text.isascii():  # constant time for CPython strings: base64 payloads skip the encode
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(400, f"the request body holds invalid Unicode: {err.reason} at {_short(text[max(0, err.start - 10):err.end + 10])}") from None


def _number(body: dict, key: str, low: float, high: float, default, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not math.isfinite(value):
        raise _bad(key, f"must be {kind}, got {_short(value)}")
    if not low <= value <= high:
        raise _bad(key, f"must be between {low} and {high}, got {_short(value)}")
    return value


def _check_fields(body: dict) -> None:
    for key, value in body.items():
        if key in FIELDS:
            continue
        if key in NEUTRAL:
            if value is not None and value != NEUTRAL[key]:
                raise _bad(key, "is not supported by this server")
            continue
        raise _bad(_cut(key, 40), f"unknown field; valid fields: {', '.join(FIELDS)}")


def parse_chat_request(body, config: ServeConfig, model_id: str) -> ChatRequest:
    """Checks a decoded JSON body against the OpenAI chat format and this server's limits."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    _check_fields(body)
    model = body.get("model")
    if model is not None and model != model_id:
        raise RequestError(404, f"model: {_short(model)} is not served here; this server serves {model_id!r}", "model", "model_not_found")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", f"must be a string, got {_short(body['user'])}")
    if body.get("n") not in (None, 1):
        raise _bad("n", f"only 1 answer per request is supported, got {_short(body['n'])}")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, 1, config.max_tokens_limit, config.max_tokens, integer=True)
    stream, options = body.get("stream") or False, body.get("stream_options") or {}
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {_short(stream)}")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise _bad("stream_options", "must be an object with an optional boolean include_usage")
    messages, media = _messages(body.get("messages"), config)
    return ChatRequest(
        messages, media, max_tokens, temperature=float(_number(body, "temperature", 0, 2, 0.0)),
        top_p=float(_number(body, "top_p", 1e-9, 1, 1.0)), stop=_stops(body.get("stop")),
        seed=_number(body, "seed", -(2**63), 2**63 - 1, None, integer=True), stream=stream,
        include_usage=bool(options.get("include_usage", False)), model=model, max_tokens_given=body.get(key) is not None,
    )


def _stops(value) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise _bad("stop", f"must be a non-empty string or a list of at most {MAX_STOPS} non-empty strings")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad("stop", f"a stop string may be at most {MAX_STOP_CHARS} characters long")
    return tuple(stops)


def _messages(value, config: ServeConfig) -> tuple[list[Message], list[MediaItem]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of messages")
    messages, media = [], []
    for i, raw in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise _bad(where, "must be an object with role and content")
        unknown = set(raw) - {"role", "content", "name"}
        if unknown:
            raise _bad(where, f"unknown field {_short(sorted(unknown)[0])}; valid fields: role, content, name")
        role = ROLES.get(raw.get("role"))
        if role is None:
            raise _bad(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {_short(raw.get('role'))}")
        text, items = _content(raw.get("content"), f"{where}.content", role, config)
        media += items
        # Markers in front of the turn's text, laid out as the templates place them for a sample
        # without markers (audio before image), so a one-turn request renders as cotune predict's.
        markers = "".join(f"{MEDIA_MARKERS[kind]}\n" for kind in reversed(MEDIA_MARKERS) for item in items if item.kind == kind)
        messages.append(Message(role, markers + text))
    if messages[-1].role != "user":
        raise _bad(f"messages[{len(messages) - 1}]", f"the last message must come from the user, not the {messages[-1].role}")
    for kind, limit in (("image", config.max_images), ("audio", config.max_audio)):
        count = sum(item.kind == kind for item in media)
        if count > limit:
            raise _bad("messages", f"{count} {kind} items; this server accepts at most {limit} per request")
    return messages, media


def _content(value, where: str, role: str, config: ServeConfig) -> tuple[str, list[MediaItem]]:
    if isinstance(value, str):
        return _text(value, where), []
    if not isinstance(value, list):
        raise _bad(where, "must be a string or a list of content parts")
    texts, items = [], []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "image_url", "input_audio"):
            raise _bad(f"{at}.type", f"must be text, image_url or input_audio, got {_short(kind)}")
        unknown = set(part) - {"type", kind}
        if unknown:
            raise _bad(at, f"unknown field {_short(sorted(unknown)[0])} in a {kind} part")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{at}.text", "must be a string")
            texts.append(_text(part["text"], f"{at}.text"))
            continue
        if role != "user":
            raise _bad(at, f"media can only be sent in user messages, not in {role} messages")
        items.append(_image(part.get("image_url"), f"{at}.image_url", config) if kind == "image_url"
                     else _audio(part.get("input_audio"), f"{at}.input_audio", config))
    return "\n".join(texts), items


def _text(text: str, where: str) -> str:
    for marker in MEDIA_MARKERS.values():
        if marker in text:
            raise _bad(where, f"contains {marker!r}, which stands for attached media here; send media as content parts")
    return text


def _decode_base64(data, where: str, config: ServeConfig) -> bytes:
    if not isinstance(data, str) or not data:
        raise _bad(where, "must be a non-empty base64 string")
    if len(data) * 3 // 4 > config.max_media_bytes + 3:
        raise _bad(where, f"about {len(data) * 3 // 4:,} bytes; the limit is {config.max_media_bytes:,} bytes per item", 413)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "is not valid base64") from None


def _image(value, where: str, config: ServeConfig) -> MediaItem:
    if not isinstance(value, dict) or set(value) - {"url", "detail"} or not isinstance(value.get("url"), str):
        raise _bad(where, "must be an object {\"url\": ...} (and optionally detail)")
    url, where = value["url"], f"{where}.url"
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        mime = header[5:].split(";")[0].lower()
        if not comma or not header.endswith(";base64"):
            raise _bad(where, "a data URL must be data:image/png;base64,... or data:image/jpeg;base64,...")
        if mime not in IMAGE_TYPES:
            raise _bad(where, f"image type {_short(mime or '(none)')} is not supported; send PNG or JPEG")
        return MediaItem("image", where, _decode_base64(payload, where, config), IMAGE_TYPES[mime])
    if url.startswith("file:"):
        data = _read_media_file(url, where, config)
        return MediaItem("image", where, data, "jpeg" if url.lower().endswith((".jpg", ".jpeg")) else "png")
    scheme = urlparse(url).scheme or "(none)"
    raise _bad(where, f"URL scheme {_short(scheme)} is not supported: send a data URL (or file:// under the server's media root)")


def _read_media_file(url: str, where: str, config: ServeConfig) -> bytes:
    """The bytes of the file a ``file://`` URL names, only if it lies under the media root.

    The path is checked against the root by its text (``..`` collapsed) before anything is looked
    up, so a refusal tells nothing about files outside it. Then the file is opened once, one path
    component at a time from the root's directory (``openat`` with ``O_NOFOLLOW``): no symbolic
    link is followed anywhere below the root, so swapping a folder for a link while the request
    runs cannot lead outside it. What was opened is checked (``fstat``: a regular file within the
    size limit) and read from that same descriptor.
    """
    if config.media_root is None:
        raise _bad(where, "file:// URLs are disabled on this server (start it with --media-root DIR to allow them)", 403)
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise _bad(where, f"file:// URLs must name a local path, got host {_short(parsed.netloc)}")
    path = unquote(parsed.path)
    if "\x00" in path:
        raise _bad(where, "the path contains a NUL character")
    if not path.startswith("/"):
        raise _bad(where, "file:// URLs must name an absolute path")
    parts = _under_root(os.path.normpath(path), str(config.media_root))
    if parts is None:
        raise _bad(where, "the path is outside the server's media root", 403)
    shown = "/".join(parts)
    if not parts:
        raise _bad(where, "the path names the media root itself, not a file")
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(config.media_root, flags | getattr(os, "O_DIRECTORY", 0))
    try:
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            mode = flags | nofollow | (getattr(os, "O_NONBLOCK", 0) if last else getattr(os, "O_DIRECTORY", 0))
            try:
                child = os.open(part, mode, dir_fd=fd)
            except FileNotFoundError:
                raise _bad(where, f"no such file under the media root: {shown}") from None
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(part, fd):  # O_NOFOLLOW met a link
                    raise _bad(where, f"{shown}: goes through the symbolic link {part!r}; links are not followed under the media "
                                      "root", 403) from None
                if err.errno == errno.ENOTDIR:
                    raise _bad(where, f"no such file under the media root: {shown}") from None
                raise _bad(where, f"{shown}: cannot be opened ({errno.errorcode.get(err.errno, err.errno)})", 403) from None
            os.close(fd)
            fd = child
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _bad(where, f"{shown} is not a regular file")
        if info.st_size > config.max_media_bytes:
            raise _bad(where, f"{info.st_size:,} bytes; the limit is {config.max_media_bytes:,} bytes per item", 413)
        chunks, size = [], 0
        while size <= config.max_media_bytes:
            chunk = os.read(fd, min(1 << 20, config.max_media_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > config.max_media_bytes:  # it grew while being read
            raise _bad(where, f"over {config.max_media_bytes:,} bytes; the limit is {config.max_media_bytes:,} bytes per item", 413)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _under_root(path: str, root: str) -> list[str] | None:
    """The components of normalised absolute ``path`` below ``root``, or None when it is not under it."""
    if path == root:
        return []
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return [part for part in path[len(prefix):].split("/") if part]


def _audio(value, where: str, config: ServeConfig) -> MediaItem:
    if not isinstance(value, dict) or set(value) != {"data", "format"}:
        raise _bad(where, "must be an object {\"data\": base64, \"format\": \"wav\" or \"flac\"}")
    if value["format"] not in AUDIO_FORMATS:
        raise _bad(f"{where}.format", f"must be wav or flac, got {_short(value['format'])}")
    return MediaItem("audio", where, _decode_base64(value["data"], f"{where}.data", config), value["format"])
