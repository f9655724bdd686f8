"""The server's limits and defaults: one typed dataclass, checked on construction.

Every numeric field has a ``cotune serve`` flag (``--max-images`` for ``max_images`` and so on); a
bad value raises :class:`~cotune.config.ConfigError` naming the flag. ``api_keys`` come from
``--api-key``, ``--api-key-file`` or ``$COTUNE_API_KEY`` (:func:`cotune.serve.security.read_api_keys`)
and ``allowed_hosts`` from ``--allowed-hosts``. Nothing here has parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from cotune.config import ConfigError

MB = 1024 * 1024
#: Fields that are not numeric limits (each has its own flag or flags in the CLI).
SPECIAL = ("media_root", "api_keys", "allowed_hosts")
#: Numeric fields that may be 0; every other one must be > 0.
MAY_BE_ZERO = ("max_images", "max_audio", "shutdown_timeout")
#: Numeric fields that must be whole numbers.
INTEGERS = ("max_image_pixels", "max_images", "max_audio", "max_tokens", "max_tokens_limit", "max_queue", "max_batch",
            "prepare_workers", "max_connections")


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server.

    max_request_mb: largest request body in MiB; a larger one gets 413.
    max_media_mb: largest image or audio item in MiB (a data URL's decoded payload or a file); 413.
    max_image_pixels: largest image (width x height), read from its header before it is decoded,
        and largest size the image processor would resize it to (computed from its settings); 413.
    max_image_aspect: largest ratio of an image's long side to its short side; 413. With the
        pixel limits it bounds what decoding and resizing allocate (an 8000x1 PNG of 100 bytes
        would otherwise be resized to 1.8 million x 224 pixels).
    max_images / max_audio: most image / audio items in one request (whole conversation); 400.
    max_audio_seconds: longest audio clip accepted (the encoder still crops to its own window); 400.
    max_tokens: answer length when a request gives no ``max_tokens``.
    max_tokens_limit: largest ``max_tokens`` a request may ask for; 400 beyond.
    queue_timeout: seconds a request may wait for the model before it gets 503.
    max_queue: requests waiting for the model at most; one more gets 503 at once.
    max_batch: most requests generated together in one batch (1: one at a time).
    prepare_workers: requests whose media are decoded at the same time (the others wait); bounds
        the memory decoding takes to about this many requests' worth.
    read_timeout: seconds a client may take to send a request's headers, and again its body; the
        connection is closed (headers) or answered 408 (body) after that.
    shutdown_timeout: seconds running generations may go on after SIGTERM / Ctrl-C before they are
        stopped with the "shutting down" error (queued requests get it at once).
    max_connections: open connections at most; more get a plain 503 from uvicorn.
    media_root: the directory whose files ``file://`` image URLs may name; None (default) refuses
        every ``file://`` URL.
    api_keys: keys a request must present (``Authorization: Bearer KEY``) on every endpoint but
        ``/health``; empty (default): no key needed.
    allowed_hosts: host names the ``Host`` header may carry (``"*"``: any); None (default): the
        loopback names when the server listens on a loopback address, any otherwise.
    """

    max_request_mb: float = 32.0
    max_media_mb: float = 16.0
    max_image_pixels: int = 25_000_000
    max_image_aspect: float = 20.0
    max_images: int = 4
    max_audio: int = 2
    max_audio_seconds: float = 60.0
    max_tokens: int = 256
    max_tokens_limit: int = 2048
    queue_timeout: float = 30.0
    max_queue: int = 64
    max_batch: int = 8
    prepare_workers: int = 2
    read_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    max_connections: int = 128
    media_root: Path | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SPECIAL:
                continue
            integer = f.name in INTEGERS
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value != value:
                raise ConfigError(f"{flag(f.name)}: must be {'an integer' if integer else 'a number'}, got {value!r}")
            low = 0 if f.name in MAY_BE_ZERO else 1e-9
            if value < low:
                raise ConfigError(f"{flag(f.name)}: must be {'>= 0' if low == 0 else '> 0'}, got {value}")
        if self.max_tokens > self.max_tokens_limit:
            raise ConfigError(f"--max-tokens: {self.max_tokens} is above --max-tokens-limit {self.max_tokens_limit}")
        if self.max_image_aspect < 1:
            raise ConfigError(f"--max-image-aspect: must be >= 1 (long side / short side), got {self.max_image_aspect}")
        if self.media_root is not None:
            root = Path(self.media_root).expanduser()
            if not root.is_dir():
                raise ConfigError(f"--media-root: {root} is not a directory")
            object.__setattr__(self, "media_root", root.resolve())
        keys = tuple(self.api_keys)
        for key in keys:
            if not isinstance(key, str) or not key or key != key.strip() or not key.isprintable() or not key.isascii():
                raise ConfigError("--api-key: a key must be a non-empty string of printable ASCII without surrounding spaces")
        object.__setattr__(self, "api_keys", keys)
        if self.allowed_hosts is not None:
            hosts = tuple(h.strip().lower() for h in self.allowed_hosts if h.strip())
            if not hosts:
                raise ConfigError("--allowed-hosts: name at least one host (or '*' for any)")
            object.__setattr__(self, "allowed_hosts", hosts)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * MB)


def flag(name: str) -> str:
    """The ``cotune serve`` flag of a :class:`ServeConfig` field."""
    return "--" + name.replace("_", "-")
