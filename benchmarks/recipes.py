"""Recipes the benchmarks pin, so that their recorded results stay reproducible when the demo's
recipe changes."""

from __future__ import annotations

from pathlib import Path

import yaml


def mm_adapter_recipe() -> dict:
    """The MM-Adapter demo recipe (``mm_adapter_recipe.yaml``) as a plain dict, as
    ``cotune.demo.pipeline.packaged_recipe`` returned it when the benchmarks were measured."""
    return yaml.safe_load((Path(__file__).parent / "mm_adapter_recipe.yaml").read_text())
