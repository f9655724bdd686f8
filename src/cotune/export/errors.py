"""The error an export raises when a run cannot be expressed in the asked format."""

from __future__ import annotations

from cotune.config import ConfigError


class ExportError(ConfigError):
    """A run cannot be written in the asked format; the message says why and what would work.
    A user error: the CLI reports it as one ``cotune: error:`` line."""
