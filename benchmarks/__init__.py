"""cotune's benchmark scripts, a package so they import each other and :mod:`cotune.testing` without path edits.

Run each from the repository root as a module: ``python -m benchmarks.<name> --help``.
"""
