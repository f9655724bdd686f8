"""Command-line interface: ``cotune <command> ...`` (see :mod:`cotune.cli.main`)."""
