"""Optional extras: the error that names the extra to install when one is missing."""

from __future__ import annotations


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the ``pip install`` that adds it.
    The CLI reports it as one ``cotune: error:`` line."""


def missing(what: str, package: str, extra: str | None) -> MissingExtra:
    """``what`` needs ``package``: the error naming ``pip install 'cotune[extra]'`` (or the package)."""
    install = f"pip install 'cotune[{extra}]'" if extra else f"pip install {package}"
    return MissingExtra(f"{what} needs the {package} package, which is not installed: {install}")
