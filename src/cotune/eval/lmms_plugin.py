"""lmms-eval's entry point into cotune (group ``lmms_eval.models`` in pyproject): the manifest that
registers the model id ``cotune``. lmms-eval calls :func:`manifest` when it builds its model
registry; the model class itself (:mod:`cotune.eval.lmms_model`) is imported only when a run asks
for ``--model cotune``."""

from __future__ import annotations

MODEL_ID = "cotune"
CLASS_PATH = "cotune.eval.lmms_model.CotuneLMM"


def manifest():
    """lmms-eval's ``ModelManifest`` for ``cotune`` (a simple, non-chat model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
