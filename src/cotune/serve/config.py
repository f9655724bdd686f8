"""The server's limits and defaults: one typed dataclass, checked on construction.

Every field has a ``cotune serve`` flag (``--max-images`` for ``max_images`` and so on); a bad value
raises :class:`~cotune.config.ConfigError` naming the flag. Nothing here has parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from cotune.config import ConfigError

MB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server.

    max_request_mb: largest request body in MiB; a larger one gets 413.
    max_media_mb: largest image or audio item in MiB (a data URL's decoded payload or a file); 413.
    max_image_pixels: largest image (width x height), checked before it is decoded; 413.
    max_images / max_audio: most image / audio items in one request (whole conversation); 400.
    max_audio_seconds: longest audio clip accepted (the encoder still crops to its own window); 400.
    max_tokens: answer length when a request gives no ``max_tokens``.
    max_tokens_limit: largest ``max_tokens`` a request may ask for; 400 beyond.
    queue_timeout: seconds a request may wait for the model before it gets 503.
    max_queue: requests waiting for the model at most; one more gets 503 at once.
    media_root: the directory whose files ``file://`` image URLs may name; None (default) refuses
        every ``file://`` URL.
    """

    max_request_mb: float = 32.0
    max_media_mb: float = 16.0
    max_image_pixels: int = 25_000_000
    max_images: int = 4
    max_audio: int = 2
    max_audio_seconds: float = 60.0
    max_tokens: int = 256
    max_tokens_limit: int = 2048
    queue_timeout: float = 30.0
    max_queue: int = 64
    media_root: Path | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "media_root":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{flag(f.name)}: must be a number, got {value!r}")
            low = 0 if f.name in ("max_images", "max_audio") else 1e-9
            if value < low:
                raise ConfigError(f"{flag(f.name)}: must be {'>= 0' if low == 0 else '> 0'}, got {value}")
        if self.max_tokens > self.max_tokens_limit:
            raise ConfigError(f"--max-tokens: {self.max_tokens} is above --max-tokens-limit {self.max_tokens_limit}")
        if self.media_root is not None:
            root = Path(self.media_root).expanduser()
            if not root.is_dir():
                raise ConfigError(f"--media-root: {root} is not a directory")
            object.__setattr__(self, "media_root", root.resolve())


    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * MB)


def flag(name: str) -> str:
    """The ``cotune serve`` flag of a :class:`ServeConfig` field."""
    return "--" + name.replace("_", "-")
